"""Train the matcher on labelled POIs, track it in MLflow and register it.

    ./spark-submit.sh jobs/train.py --input TRAIN.csv          (or a Delta table path)
    ./spark-submit.sh jobs/train.py --input A.csv --input B.csv  (tables blocked apart)

Prints the registered model on a line of its own: ``model_uri=models:/<name>/<version>``.

The console script runs the same command: ``poimatch train [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.contracts import ContractError
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument(
        "--input",
        required=True,
        action="append",
        help="CSV or Delta table with point_of_interest; repeat for several tables",
    )
    parser.add_argument("--run-name", default=None)
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    try:
        run = Matcher(settings, spark).train(args.input, run_name=args.run_name)
    except (InputError, ContractError, ValueError) as exc:
        fail(str(exc))
        return
    for line in run.lines():
        print(line)
