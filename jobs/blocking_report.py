"""Pairs per blocking pass and candidates per row of a table, before any run.

    ./spark-submit.sh jobs/blocking_report.py --help   (or: poimatch blocking-report --help)

The spark-submit entry point of ``poimatch blocking-report``: the command, its options and
what it reads are in :mod:`poimatch.apps.commands.blocking_report`.
"""

from poimatch.apps.commands.blocking_report import main

if __name__ == "__main__":
    main()
