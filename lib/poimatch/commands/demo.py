"""The main job: the whole chain on built-in generated sample data.

    make run            (same as ./spark-submit.sh jobs/main.py --env local)

generate (train and test samples, different seeds) → ingest (Delta; the test sample
also becomes the promotion gate's evaluation table) → train
(MLflow, registry) → match the test sample with the model just trained →
evaluate, printing ``iou=<value>``.

The console script runs the same command: ``poimatch demo [options]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from poimatch.batch import load_pois, run_evaluate, run_match
from poimatch.cli import job_parser, start_job
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.ingest import ingest_file
from poimatch.io import input_fingerprint
from poimatch.workflows import train_model


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    gen, storage = settings.generator, settings.storage
    started = time.perf_counter()
    train_csv = Path(gen.output)
    test_csv = train_csv.with_name(f"{train_csv.stem}_test{train_csv.suffix}")
    for path, seed in ((train_csv, gen.seed), (test_csv, gen.seed + 1)):
        write_pois_csv(generate_pois(gen.rows, seed=seed), path)
        print(f"[generate] rows={gen.rows} seed={seed} file={path}")

    pois_table = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    gx_project = storage.validations_path()
    report = ingest_file(
        spark,
        str(train_csv),
        pois_path=pois_table,
        quarantine_path=quarantine,
        validations=gx_project,
    )
    for line in report.lines():
        print(f"[ingest] {line}")

    # The labelled test sample is also the promotion gate's evaluation table.
    eval_table = storage.table_path(settings.lifecycle.eval_table)
    report = ingest_file(
        spark,
        str(test_csv),
        pois_path=eval_table,
        quarantine_path=quarantine,
        validations=gx_project,
    )
    print(f"[ingest] eval_table={eval_table} version={report.pois_version}")

    pois, _ = load_pois(spark, pois_table, quarantine_path=quarantine, require_labels=True)
    trained = train_model(
        pois,
        settings=settings,
        data_versions={"pois": input_fingerprint(spark, pois_table)},
        run_name="main-job",
    )
    for key in ("candidates_per_row", "candidate_pair_recall", "iou_ceiling", "iou"):
        print(f"[train] {key}={trained.metrics[key]:.4f}")
    print(f"[train] alias={trained.alias} model_uri={trained.model_uri}")

    output_csv = str(train_csv.with_name("matches_test.csv"))
    for line in run_match(
        spark,
        settings,
        input_path=str(test_csv),
        output_csv=output_csv,
        model_uri=trained.model_uri,
    ):
        print(f"[match] {line}")
    for line in run_evaluate(spark, output_csv, str(test_csv)):
        print(f"[evaluate] {line}")
    print(f"[main] seconds={time.perf_counter() - started:.1f}")
