"""IoU of a submission against truth, computed in Spark, plus pairwise metrics.

    ./spark-submit.sh jobs/evaluate.py --submission OUT.csv --truth TRUTH.csv

Prints ``iou=<value>`` on a line of its own. Either argument may be a Delta table.
"""

from poimatch.commands.evaluate import main

if __name__ == "__main__":
    main()
