"""Match POIs with a registered model: the nightly batch and ad-hoc runs.

    ./spark-submit.sh jobs/match.py --help       (or: poimatch match --help)

The spark-submit entry point of ``poimatch match``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.match`.
"""

from poimatch.apps.commands.match import main

if __name__ == "__main__":
    main()
