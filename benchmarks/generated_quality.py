"""Quality on generated data: train on one seed, match another, print IoU and stage figures.

    .venv/bin/python benchmarks/generated_quality.py --train-rows 50000 --test-rows 20000

Nothing is registered in MLflow; the model is fitted with the library's own
``fit_matcher`` (threshold chosen on a validation fold of the training seed) and the
test seed is blocked, scored and grouped exactly as the match job does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.batch import load_pois
from poimatch.cli import job_parser, start_job
from poimatch.evaluation import candidate_report, iou
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.pipeline import group_scored, score_pairs
from poimatch.workflows import fit_matcher, labelled_candidates


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=20_000)
    parser.add_argument("--train-seed", type=int, default=101)
    parser.add_argument("--test-seed", type=int, default=202)
    args = parser.parse_args()
    settings, spark = start_job(args)
    tmp = Path(tempfile.mkdtemp(prefix="poimatch-genq-"))
    frames = {}
    for name, rows, seed in (
        ("train", args.train_rows, args.train_seed),
        ("test", args.test_rows, args.test_seed),
    ):
        path = tmp / f"{name}.csv"
        write_pois_csv(generate_pois(rows, seed=seed), path)
        pois, _ = load_pois(spark, str(path), quarantine_path=str(tmp / "quarantine"))
        frames[name] = pois.persist(StorageLevel.MEMORY_AND_DISK)
    started = time.perf_counter()
    train_pairs = labelled_candidates(frames["train"], settings=settings)
    fit = fit_matcher(frames["train"], train_pairs, settings=settings)
    fit_seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    test = frames["test"]
    test_pairs = labelled_candidates(test, settings=settings)
    cand = candidate_report(test_pairs.select(S.ID_L, S.ID_R), test)
    scored = score_pairs(fit.model, test_pairs).select(S.ID_L, S.ID_R, S.SCORE)
    grouped = group_scored(
        test.select(S.ID), scored, spec=fit.spec, max_iterations=settings.grouping.max_iterations
    )
    report = iou(grouped, test)
    identity = iou(test.select(S.ID, F.col(S.ID).alias(S.MATCHES)), test)
    print(
        f"train_rows={args.train_rows} seed={args.train_seed} "
        f"test_rows={args.test_rows} seed={args.test_seed}"
    )
    print(
        f"test: candidates={cand.candidates} per_row={cand.per_row:.2f} "
        f"pair_recall={cand.pair_recall:.4f} iou_ceiling={cand.iou_ceiling:.4f}"
    )
    print(
        f"threshold={fit.spec.threshold:.3f} mode={fit.spec.grouping_mode} "
        f"valid_iou={fit.metrics['iou']:.4f} pair_f1={fit.metrics['pair_f1']:.4f}"
    )
    print(f"identity_iou={identity.iou:.4f}")
    print(f"iou={report.iou:.4f}")
    print(f"fit_seconds={fit_seconds:.0f} test_seconds={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
