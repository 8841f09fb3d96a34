"""Blocking of a CSV with the batch plan's materialization: seconds, Spark jobs, stages.

    .venv/bin/python benchmarks/blocking_plan.py /tmp/gen1m.csv [REPEATS]

Reads the CSV (rows breaking an input rule left out), normalizes it (checkpointed, not
timed), then times ``candidate_pairs(..., materialize=BATCH.materialize)`` (what a batch
match run's blocking does) to the count of the persisted pairs, with the number of
Spark jobs and stages it ran (the ``local`` settings: local[2], 6g driver). Run it on two
checkouts (``PYTHONPATH=<checkout>/lib``) to compare them; it prints which blocking
module it measured.
"""

import os
import sys
import time

os.environ["GX_ANALYTICS_ENABLED"] = "false"

from pyspark.sql import functions as F

import poimatch.stages.blocking as B
from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.io.ingest import check_rows, poi_layout
from poimatch.io.tables import read_poi_csv
from poimatch.session import build_session
from poimatch.stages.blocking import candidate_pairs
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH


def main() -> None:
    path = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print("blocking module:", B.__file__, flush=True)
    settings = load_settings("local", [])
    spark = build_session(settings.spark)
    frame = read_poi_csv(spark, path).frame
    pois = poi_layout(check_rows(frame).where(F.col(S.REASON).isNull()))
    started = time.perf_counter()
    points = pois.transform(add_normalized_columns).localCheckpoint(eager=True)
    rows = points.count()
    print(f"rows={rows} normalize_seconds={time.perf_counter() - started:.1f}", flush=True)
    context = spark.sparkContext
    for run in range(repeats):
        context.setJobGroup(f"blocking-{run}", "blocking")
        started = time.perf_counter()
        pairs = candidate_pairs(
            points, settings=settings.blocking, materialize=BATCH.materialize
        ).persist()
        candidates = pairs.count()
        seconds = time.perf_counter() - started
        tracker = context.statusTracker()
        jobs = tracker.getJobIdsForGroup(f"blocking-{run}")
        stages = sum(len(info.stageIds) for j in jobs if (info := tracker.getJobInfo(j)))
        print(
            f"run {run}: candidates={candidates} blocking_seconds={seconds:.1f} "
            f"jobs={len(jobs)} stages={stages}",
            flush=True,
        )
        pairs.unpersist()


if __name__ == "__main__":
    main()
