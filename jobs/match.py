"""Match POIs with a registered model: the nightly batch and ad-hoc runs.

    ./spark-submit.sh jobs/match.py --input IN.csv --output OUT.csv [--model URI]
    ./spark-submit.sh jobs/match.py --incremental        (nightly: the POI table)

Reads a CSV (validated like the ingest: bad rows are quarantined with their reason)
or the POI Delta table, writes the Delta ``matches`` table and, with --output, the
CSV ``id,matches``. The default model is ``models:/<model.name>@champion``.
``--incremental`` reuses the last incremental run's per-row and per-pair UDF results
(state tables beside ``matches``) and recomputes only what changed; the output equals
a full run's.
"""

from __future__ import annotations

from poimatch.batch import run_match
from poimatch.cli import fail, job_parser, start_job
from poimatch.contracts import ContractError
from poimatch.io import InputError


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--input", default=None, help="CSV or Delta table (default: POI table)")
    parser.add_argument("--output", default=None, help="also write the output CSV here")
    parser.add_argument("--model", default=None, help="model URI (default: @champion)")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="redo only rows/pairs changed since the last incremental run (Delta input)",
    )
    args = parser.parse_args()
    settings, spark = start_job(args)
    try:
        lines = run_match(
            spark,
            settings,
            input_path=args.input,
            output_csv=args.output,
            model_uri=args.model,
            incremental=args.incremental,
        )
    except (InputError, ContractError, ValueError) as exc:
        fail(str(exc))
        return
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
