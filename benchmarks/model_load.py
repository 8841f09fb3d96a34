"""What loading and registering a model costs: seconds and Spark jobs.

    .venv/bin/python benchmarks/model_load.py [--model models:/poimatch-xgb/1] [--repeats 3]
        [--set tracking.tracking_uri=sqlite:////abs/mlflow.db]

One process with a local session (env ``local``): ``load_matcher(--model)`` once (a fresh
process, so a real load), then ``log_matcher`` of the loaded model ``--repeats`` times into
a temporary MLflow store (the first pays MLflow's own first-use costs). Spark jobs are
counted per step by job group. Run it on two checkouts (``PYTHONPATH=<checkout>/lib``) to
compare: a checkout loads and registers the model the way its own code does (the loaded
model is what it registers again)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ["GX_ANALYTICS_ENABLED"] = "false"

import mlflow
import pandas as pd

from poimatch.config import load_settings
from poimatch.lifecycle import tracking
from poimatch.session import build_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models:/poimatch-xgb@champion")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    settings = load_settings("local", args.overrides)
    spark = build_session(settings.spark)
    sc = spark.sparkContext
    tracking.configure_tracking(settings.tracking)

    def jobs(group: str) -> int:
        return len(sc.statusTracker().getJobIdsForGroup(group))

    sc.setJobGroup("bench-load", "load_matcher")
    started = time.perf_counter()
    model, spec, _ = tracking.load_matcher(args.model)
    load_seconds = time.perf_counter() - started
    print(
        f"load seconds={load_seconds:.2f} spark_jobs={jobs('bench-load')} "
        f"model={type(model).__name__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = load_settings(
            "local",
            [
                f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
                f"tracking.artifact_root={tmp}/artifacts",
                "tracking.experiment=bench-model-load",
            ],
        )
        experiment = tracking.configure_tracking(store.tracking)
        example = pd.DataFrame({f: [0.0] for f in spec.features})
        for i in range(args.repeats):
            group = f"bench-log-{i}"
            sc.setJobGroup(group, "log_matcher")
            with mlflow.start_run(experiment_id=experiment):
                started = time.perf_counter()
                tracking.log_matcher(
                    model, registered_name="bench-model-load", spec=spec, input_example=example
                )
                seconds = time.perf_counter() - started
            print(f"register run={i} seconds={seconds:.2f} spark_jobs={jobs(group)}")
    spark.stop()


if __name__ == "__main__":
    main()
