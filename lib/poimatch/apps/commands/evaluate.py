"""IoU of a submission against truth, computed in Spark, plus pairwise metrics.

    ./spark-submit.sh jobs/evaluate.py --submission OUT.csv --truth TRUTH.csv

Prints ``iou=<value>`` on a line of its own. Either argument may be a Delta table.

The console script runs the same command: ``poimatch evaluate [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--submission", required=True, help="CSV or Delta table: id,matches")
    parser.add_argument("--truth", required=True, help="CSV or Delta table with point_of_interest")
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    try:
        evaluation = Matcher(settings, spark).evaluate(args.submission, args.truth)
    except (InputError, ValueError) as exc:
        fail(str(exc))
        return
    for line in evaluation.lines():
        print(line)
