"""Generate synthetic POIs (with point_of_interest labels) as CSV or a Delta table.

    ./spark-submit.sh jobs/generate.py --help       (or: poimatch generate --help)

The spark-submit entry point of ``poimatch generate``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.generate`.
"""

from poimatch.apps.commands.generate import main

if __name__ == "__main__":
    main()
