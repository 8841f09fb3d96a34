"""Explain the model's score of one pair: each comparison's push, in log-odds.

    ./spark-submit.sh jobs/explain.py --help       (or: poimatch explain --help)

The spark-submit entry point of ``poimatch explain``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.explain`.
"""

from poimatch.apps.commands.explain import main

if __name__ == "__main__":
    main()
