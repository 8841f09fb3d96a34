"""Small match runs with and without the small plan's SQL settings.

    .venv/bin/python benchmarks/small_runs.py --rows 30 --repeats 4
    .venv/bin/python benchmarks/small_runs.py --rows 20000 --repeats 2

Runs ``poimatch.runs.batch.run_match`` in-process on one warm session (env ``ci``) over a
generated file without labels, ``--repeats`` times per mode (the first run of the first
mode is cold), and prints each run's wall time. ``with`` is what a match job does for a
small run (:func:`poimatch.stages.plan.small_plan_conf`); ``without`` replaces that with a
no-op, i.e. the small plan on the session's own SQL settings. The model is
``--model`` (default: the champion of ``make run``'s registry in ``mlflow.db``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from poimatch.config import load_settings
from poimatch.runs import batch
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session


@contextlib.contextmanager
def _no_conf(*_: Any, **__: Any) -> Iterator[None]:
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--model", default=None, help="model URI (default: @champion)")
    parser.add_argument("--modes", default="without,with")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="pm-small-runs-"))
    settings = load_settings(
        "ci",
        [
            f"storage.root={work / 'lake'}",
            f"tracking.tracking_uri=sqlite:///{repo / 'mlflow.db'}",
            f"tracking.artifact_root={repo / 'mlartifacts'}",
            "model.name=poimatch-xgb",
        ],
    )
    spark = build_session(settings.spark)
    source = work / "in.csv"
    write_pois_csv(generate_pois(args.rows, seed=5).drop(columns=["point_of_interest"]), source)
    real = getattr(batch, "small_plan_conf")  # noqa: B009 (swapped below, by name)
    for mode in args.modes.split(","):
        setattr(batch, "small_plan_conf", real if mode == "with" else _no_conf)  # noqa: B010
        times = []
        for i in range(args.repeats):
            started = time.perf_counter()
            batch.run_match(
                spark,
                settings,
                input_path=str(source),
                output_csv=str(work / f"{mode}-{i}.csv"),
                model_uri=args.model,
            )
            times.append(time.perf_counter() - started)
        shown = " / ".join(f"{t:.1f}" for t in times)
        print(f"rows={args.rows} mode={mode} seconds={shown}", flush=True)
    setattr(batch, "small_plan_conf", real)  # noqa: B010
    spark.stop()


if __name__ == "__main__":
    main()
