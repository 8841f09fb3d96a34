"""The service's start-up, step by step, and the first request after it.

    .venv/bin/python benchmarks/service_start.py [--set section.key=value ...]
    POIMATCH_WORKER_PRELOAD= .venv/bin/python benchmarks/service_start.py   # no preload

What ``Runtime.start_engine`` does, in one process, timed per step (Python imports, the
Spark session with the service's SQL settings, the champion's alias and model, the
warm-up match of the built-in example), then the same example once more (the first
request a client would send after ``/ready``). For the warm-up: each Spark job's time
and the driver-side gap before it (from Spark's status store). Needs a champion
(``make run``); env ``local``.
"""

from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402 - the imports are the first timed step
import os  # noqa: E402

from poimatch.apps.service import (  # noqa: E402
    EXAMPLE_CSV,
    SERVICE_SQL_CONF,
    ModelStore,
    SparkEngine,
    parse_upload,
)
from poimatch.config import load_settings  # noqa: E402
from poimatch.lifecycle.tracking import configure_tracking  # noqa: E402
from poimatch.matcher import Matcher  # noqa: E402
from poimatch.session import build_session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    marks = [("imports", time.time())]
    settings = load_settings("local", args.overrides)
    spark = build_session(settings.spark)
    for key, value in SERVICE_SQL_CONF.items():
        spark.conf.set(key, value)
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.service.shuffle_partitions))
    marks.append(("session", time.time()))
    configure_tracking(settings.tracking)
    store = ModelStore(settings.service.model_uri or f"models:/{settings.model.name}@champion")
    store.refresh()
    loaded = store.current
    assert loaded is not None, "no champion: run make run first"
    marks.append(("model", time.time()))
    engine = SparkEngine(
        Matcher(settings, spark),
        store,
        reuse_plan=settings.service.reuse_plan,
        compiled_pairs=settings.service.compiled_pairs,
    )
    table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=100)
    warm_started = time.time()
    engine.match(table, loaded, "warm-up")
    marks.append(("warm-up match", time.time()))
    engine.match(table, loaded, "first request")
    marks.append(("first request", time.time()))
    previous = STARTED
    for name, at in marks:
        print(f"{name:14s} {at - previous:6.2f} s")
        previous = at
    print(f"ready after {marks[-2][1] - STARTED:.2f} s (process start to the warm-up's end)")
    print(f"preload={os.environ.get('POIMATCH_WORKER_PRELOAD', 'default')}")
    _jobs(spark, "warm-up", warm_started)
    spark.stop()


def _jobs(spark: object, group: str, started: float) -> None:
    """Each job of ``group``: the driver-side gap before it, its time, stages, tasks."""
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)  # type: ignore[attr-defined]
    rows = []
    for i in range(jobs.size()):
        job = jobs.apply(i)
        if job.jobGroup().isDefined() and job.jobGroup().get() == group:
            submitted = job.submissionTime().get().getTime() / 1000
            ended = job.completionTime().get().getTime() / 1000
            described = job.description().get() if job.description().isDefined() else ""
            rows.append((submitted, ended, job.stageIds().size(), job.numTasks(), described))
    previous = started
    for submitted, ended, stages, tasks, described in sorted(rows):
        print(
            f"  gap {submitted - previous:5.2f} s  job {ended - submitted:5.2f} s  "
            f"stages={stages} tasks={tasks}  {described}"
        )
        previous = ended


if __name__ == "__main__":
    main()
