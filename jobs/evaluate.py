"""IoU of a submission against truth, computed in Spark, plus pairwise metrics.

    ./spark-submit.sh jobs/evaluate.py --submission OUT.csv --truth TRUTH.csv

Prints ``iou=<value>`` on a line of its own. Either argument may be a Delta table.
"""

from __future__ import annotations

from poimatch.batch import run_evaluate
from poimatch.cli import fail, job_parser, start_job
from poimatch.io import InputError


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--submission", required=True, help="CSV or Delta table: id,matches")
    parser.add_argument("--truth", required=True, help="CSV or Delta table with point_of_interest")
    args = parser.parse_args()
    _, spark = start_job(args)
    try:
        lines = run_evaluate(spark, args.submission, args.truth)
    except (InputError, ValueError) as exc:
        fail(str(exc))
        return
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
