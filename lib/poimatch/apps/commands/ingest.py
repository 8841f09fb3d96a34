"""Ingest a POI CSV into the Delta POI table; bad rows go to quarantine with a reason.

./spark-submit.sh jobs/ingest.py --input data/sample/pois.csv
./spark-submit.sh jobs/ingest.py --input labelled.csv --table eval   (promotion gate's table)

The console script runs the same command: ``poimatch ingest [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.contracts import ContractError
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--input", required=True, help="CSV in the input layout")
    parser.add_argument(
        "--table",
        default=None,
        help="table name under storage.root (default storage.pois_table; "
        "lifecycle.eval_table for the promotion gate's evaluation table)",
    )
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    try:
        report = Matcher(settings, spark).ingest(args.input, table=args.table)
    except (InputError, ContractError) as exc:
        fail(str(exc))
        return
    for line in report.lines():
        print(line)
