"""Training sets of a small table: the batch plan against the small plan.

    .venv/bin/python benchmarks/training_plan.py --rows 3000 --modes batch small-blocking small

Builds :func:`poimatch.runs.workflows.training_set` of a generated labelled table
(``--rows`` rows) in-process on one session (env ``ci``, what the test suite's small
model trains on), once per mode in the order given (the first is cold: the JVM is new),
and prints each one's wall time and pair count:

* ``batch``: the batch plan (finer grids in dense areas), the session's SQL settings;
* ``small-blocking``: the small plan's blocking (the coarse grid alone), the session's
  SQL settings;
* ``small``: what ``train_model`` runs for a table this small: the small plan's
  blocking and its SQL settings (:func:`poimatch.stages.plan.small_plan_conf`).

Every mode must give the same pairs; the script stops if they differ.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.runs.batch import load_pois
from poimatch.runs.workflows import training_set
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session
from poimatch.stages.plan import BATCH, SMALL, small_plan_conf

MODES = ("batch", "small-blocking", "small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=61)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    settings = load_settings("ci")
    spark = build_session(settings.spark)
    first: list[tuple[str, str]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "train.csv"
        write_pois_csv(generate_pois(args.rows, seed=args.seed), csv)
        pois = load_pois(
            spark, str(csv), quarantine_path=str(Path(tmp) / "q"), require_labels=True
        ).pois
        for mode in args.modes:
            plan = BATCH if mode == "batch" else SMALL
            started = time.perf_counter()
            with small_plan_conf(spark, enabled=mode == "small"):
                data = training_set(pois, settings=settings, plan=plan)
                pairs = sorted((r[S.ID_L], r[S.ID_R]) for r in data.pairs.collect())
            seconds = time.perf_counter() - started
            print(f"mode={mode} rows={args.rows} pairs={len(pairs)} seconds={seconds:.1f}")
            if first is None:
                first = pairs
            elif pairs != first:
                raise SystemExit(f"mode {mode}: other pairs than mode {args.modes[0]}")


if __name__ == "__main__":
    main()
