"""Incremental nightly runs of a small POI table against a full run, in one process.

A generated table of ``--rows`` rows is ingested into a throw-away storage root, then
matched three times with a registered model (default: the champion `make run` registers
in ./mlflow.db): an incremental run with no state (it computes everything and writes
the state), an incremental run with nothing changed (it reuses the state), and a full
run. Prints each run's wall time, plan and candidate count. The session uses the test
suite's settings (local[1], one shuffle partition, interpreted expressions, C1-only JIT)
unless ``--session ci`` is given (conf/ci.yaml as it is).

    .venv/bin/python benchmarks/incremental_runs.py --rows 3000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from poimatch.config import load_settings
from poimatch.io.ingest import ingest_file
from poimatch.runs.batch import run_match
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session

REPO = Path(__file__).resolve().parents[1]
SUITE_SESSION = [
    "spark.master=local[1]",
    "spark.shuffle_partitions=1",
    "spark.driver_memory=4g",
    "spark.extra={spark.default.parallelism: '1', spark.sql.adaptive.enabled: 'false', "
    "spark.sql.codegen.wholeStage: 'false', spark.sql.codegen.factoryMode: NO_CODEGEN, "
    "spark.driver.extraJavaOptions: '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC'}",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=71)
    parser.add_argument("--model", default="models:/poimatch-xgb@champion")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'mlflow.db'}")
    parser.add_argument("--session", choices=("suite", "ci"), default="suite")
    args = parser.parse_args()

    session_sets = SUITE_SESSION if args.session == "suite" else []
    spark = build_session(load_settings("ci", session_sets).spark)
    root = Path(tempfile.mkdtemp(prefix="pm-incremental-"))
    try:
        settings = load_settings(
            "ci",
            [
                f"storage.root={root / 'lake'}",
                f"tracking.tracking_uri={args.tracking_uri}",
                f"tracking.artifact_root={REPO / 'mlartifacts'}",
            ],
        )
        storage = settings.storage
        csv = root / "pois.csv"
        write_pois_csv(generate_pois(args.rows, seed=args.seed), csv)
        started = time.perf_counter()
        ingest_file(
            spark,
            str(csv),
            pois_path=storage.table_path(storage.pois_table),
            quarantine_path=storage.table_path(storage.quarantine_table),
        )
        print(f"ingest {args.rows} rows: {time.perf_counter() - started:.1f} s")
        for what, incremental in (
            ("incremental, no state", True),
            ("incremental, nothing changed", True),
            ("full", False),
        ):
            started = time.perf_counter()
            report = run_match(
                spark,
                settings,
                input_path=None,
                output_csv=None,
                model_uri=args.model,
                incremental=incremental,
            )
            shown = [
                line
                for line in report.lines()
                if line.startswith(("plan=", "candidates=", "incremental"))
            ]
            print(f"{what}: {time.perf_counter() - started:.1f} s  {' | '.join(shown)}")
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
