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

from poimatch.apps.cli import job_parser, start_job
from poimatch.matcher import Matcher
from poimatch.sample.generator import generate_pois, write_pois_csv


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

    matcher = Matcher(settings, spark)
    for line in matcher.ingest(str(train_csv)).lines():
        print(f"[ingest] {line}")
    # The labelled test sample is also the promotion gate's evaluation table.
    report = matcher.ingest(str(test_csv), table=settings.lifecycle.eval_table)
    eval_table = storage.table_path(settings.lifecycle.eval_table)
    print(f"[ingest] eval_table={eval_table} version={report.pois_version}")

    trained = matcher.train([storage.table_path(storage.pois_table)], run_name="main-job").result
    for key in ("candidates_per_row", "candidate_pair_recall", "iou_ceiling", "iou"):
        print(f"[train] {key}={trained.metrics[key]:.4f}")
    print(f"[train] alias={trained.alias} model_uri={trained.model_uri}")

    output_csv = str(train_csv.with_name("matches_test.csv"))
    matched = matcher.match(str(test_csv), output_csv=output_csv, model_uri=trained.model_uri)
    for line in matched.lines():
        print(f"[match] {line}")
    for line in matcher.evaluate(output_csv, str(test_csv)).lines():
        print(f"[evaluate] {line}")
    print(f"[main] seconds={time.perf_counter() - started:.1f}")
