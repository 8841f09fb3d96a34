"""Ingest a POI CSV into the Delta POI table; bad rows go to quarantine with a reason.

    ./spark-submit.sh jobs/ingest.py --help       (or: poimatch ingest --help)

The spark-submit entry point of ``poimatch ingest``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.ingest`.
"""

from poimatch.apps.commands.ingest import main

if __name__ == "__main__":
    main()
