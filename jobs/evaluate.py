"""IoU of a submission against truth, computed in Spark, plus pairwise metrics.

    ./spark-submit.sh jobs/evaluate.py --help       (or: poimatch evaluate --help)

The spark-submit entry point of ``poimatch evaluate``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.evaluate`.
"""

from poimatch.apps.commands.evaluate import main

if __name__ == "__main__":
    main()
