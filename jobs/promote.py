"""Promotion gate: promote @challenger to @champion only if it measurably wins.

    ./spark-submit.sh jobs/promote.py --help       (or: poimatch promote --help)

The spark-submit entry point of ``poimatch promote``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.promote`.
"""

from poimatch.apps.commands.promote import main

if __name__ == "__main__":
    main()
