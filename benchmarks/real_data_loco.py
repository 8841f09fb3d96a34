"""Leave-one-city-out on the real OSM–Foursquare data: train on three cities, match the fourth.

    .venv/bin/python benchmarks/real_data_loco.py \
        --input ../shared/data/geoer_osm_fsq/geoer_osm_fsq.csv

Blocking and features are computed once for all four cities: the cities are
thousands of kilometres apart, far beyond every blocking area, so a city's
candidate pairs and their features are exactly those it gets when matched alone.
For each held-out city the model is fitted on the other three (its threshold and
grouping mode chosen on a validation fold of those three, never on the held-out
city), then the held-out city's pairs are scored and grouped with the match job's
own grouping, and IoU is computed in Spark. Nothing is registered in MLflow.
"""

from __future__ import annotations

import time

from pyspark import StorageLevel
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.batch import load_pois
from poimatch.cli import job_parser, start_job
from poimatch.evaluation import candidate_report, iou
from poimatch.pipeline import group_scored, score_pairs
from poimatch.workflows import fit_matcher, labelled_candidates

_CITY = "_city"


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--input", required=True)
    parser.add_argument("--cities", default="pit,edi,sin,tor")
    args = parser.parse_args()
    settings, spark = start_job(args)
    started = time.perf_counter()
    pois, _ = load_pois(spark, args.input, quarantine_path="/tmp/poimatch-loco-quarantine")
    pois = pois.withColumn(_CITY, F.split(F.col(S.ID), "_").getItem(1)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    pairs = labelled_candidates(pois, settings=settings)
    pairs = pairs.withColumn(_CITY, F.split(F.col(S.ID_L), "_").getItem(1)).localCheckpoint()
    cand = candidate_report(pairs.select(S.ID_L, S.ID_R), pois)
    print(
        f"all cities: rows={cand.rows} candidates={cand.candidates} per_row={cand.per_row:.2f} "
        f"pair_recall={cand.pair_recall:.4f} iou_ceiling={cand.iou_ceiling:.4f} "
        f"features_seconds={time.perf_counter() - started:.0f}"
    )
    results = []
    for city in args.cities.split(","):
        t0 = time.perf_counter()
        held = pois.where(F.col(_CITY) == city)
        fit = fit_matcher(
            pois.where(F.col(_CITY) != city),
            pairs.where(F.col(_CITY) != city),
            settings=settings,
        )
        scored = score_pairs(fit.model, pairs.where(F.col(_CITY) == city)).select(
            S.ID_L, S.ID_R, S.SCORE
        )
        grouped = group_scored(
            held.select(S.ID),
            scored,
            spec=fit.spec,
            max_iterations=settings.grouping.max_iterations,
        )
        report = iou(grouped, held)
        identity = iou(held.select(S.ID, F.col(S.ID).alias(S.MATCHES)), held)
        ceiling = candidate_report(
            pairs.where(F.col(_CITY) == city).select(S.ID_L, S.ID_R), held
        ).iou_ceiling
        results.append(report.iou)
        print(
            f"city={city} rows={report.rows} iou={report.iou:.4f} identity={identity.iou:.4f} "
            f"ceiling={ceiling:.4f} threshold={fit.spec.threshold:.3f} "
            f"mode={fit.spec.grouping_mode} valid_iou={fit.metrics['iou']:.4f} "
            f"seconds={time.perf_counter() - t0:.0f}"
        )
    print(f"mean_iou={sum(results) / len(results):.4f} over {len(results)} held-out cities")
    print(f"total_seconds={time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
