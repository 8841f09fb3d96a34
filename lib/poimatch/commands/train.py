"""Train the matcher on labelled POIs, track it in MLflow and register it.

    ./spark-submit.sh jobs/train.py --input TRAIN.csv          (or a Delta table path)
    ./spark-submit.sh jobs/train.py --input A.csv --input B.csv  (tables blocked apart)

Prints the registered model on a line of its own: ``model_uri=models:/<name>/<version>``.

The console script runs the same command: ``poimatch train [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.batch import load_pois
from poimatch.cli import fail, job_parser, start_job
from poimatch.contracts import ContractError
from poimatch.io import InputError, input_fingerprint
from poimatch.workflows import train_model


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
        storage = settings.storage
        tables, versions = [], {}
        for i, path in enumerate(args.input):
            pois, lines = load_pois(
                spark,
                path,
                quarantine_path=storage.table_path(storage.quarantine_table),
                require_labels=True,
            )
            for line in lines:
                print(line)
            tables.append(pois)
            versions[f"train_input{i if i else ''}"] = input_fingerprint(spark, path)
        result = train_model(
            tables, settings=settings, data_versions=versions, run_name=args.run_name
        )
    except (InputError, ContractError, ValueError) as exc:
        fail(str(exc))
        return
    for key in (
        "candidates_per_row",
        "candidate_pair_recall",
        "iou_ceiling",
        "pair_precision",
        "pair_recall",
        "pair_f1",
        "auc",
        "threshold",
        "iou",
    ):
        print(f"{key}={result.metrics[key]:.4f}")
    print(f"grouping={result.spec.grouping_mode} alias={result.alias} run_id={result.run_id}")
    print(f"model_uri={result.model_uri}")
