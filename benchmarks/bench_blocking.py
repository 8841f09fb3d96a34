"""Candidate-stage figures for a labelled CSV: count, per row, pair recall, IoU ceiling.

.venv/bin/python benchmarks/bench_blocking.py --input ../shared/data/geoer_osm_fsq/geoer_osm_fsq.csv
.venv/bin/python benchmarks/bench_blocking.py --input data/gen.csv --set blocking.k_nearest=15
"""

from __future__ import annotations

import time

from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.apps.cli import job_parser, start_job
from poimatch.io.tables import read_poi_input
from poimatch.lifecycle.evaluation import candidate_report
from poimatch.stages.blocking import candidate_pairs
from poimatch.stages.normalize import add_normalized_columns


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--input", required=True)
    parser.add_argument("--by", default=None, help="report per value of this id infix (city)")
    args = parser.parse_args()
    settings, spark = start_job(args)
    pois = read_poi_input(spark, args.input)
    points = pois.transform(add_normalized_columns).localCheckpoint(eager=True)
    started = time.perf_counter()
    pairs = candidate_pairs(points, settings=settings.blocking).persist()
    n = pairs.count()
    blocked = time.perf_counter() - started
    report = candidate_report(pairs, pois)
    print(f"blocking={settings.blocking.model_dump()}")
    print(
        f"rows={report.rows} candidates={n} per_row={report.per_row:.2f} "
        f"pair_recall={report.pair_recall:.4f} iou_ceiling={report.iou_ceiling:.4f} "
        f"blocking_seconds={blocked:.1f}"
    )
    for row in pairs.groupBy(S.PASS).count().orderBy(F.desc("count")).collect():
        print(f"  pass {row[S.PASS]}: {row['count']}")


if __name__ == "__main__":
    main()
