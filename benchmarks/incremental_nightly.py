"""The nightly incremental match against a full run, as spark-submit jobs.

    .venv/bin/python benchmarks/incremental_nightly.py --pois /tmp/pm-scale/lake-1000000/pois \\
        --csv /tmp/pm-scale/data/gen-1000000-s11.csv --workdir /tmp/pm-nightly \\
        --model models:/poimatch-xgb@champion --set model.name=poimatch-xgb \\
        --mlflow-db /tmp/pm-scale/mlflow.db --out benchmarks/results/incremental-1m.json

Copies the POI Delta table ``--pois`` (generated rows, whose CSV ``--csv`` is read to
make the night's changes) under ``--workdir`` and runs, each as a whole spark-submit job
(JVM start to exit, the wall time a scheduler sees):

1. ``jobs/match.py --incremental``: the first run, no state yet (a full run that keeps
   its state);
2. ``jobs/ingest.py`` of the night's changes (MERGE by id): ``--new`` (1 %) new rows,
   half of them exact copies of existing rows under new ids that sort first, half new
   places of another seed, and ``--changed`` (0.5 %) existing rows renamed;
3. ``jobs/match.py --incremental``: the measured nightly run;
4. ``jobs/match.py``: a full run of the same table version into the same matches table.

Then it reads the matches table's versions and prints: whether the incremental run's
output equals the full run's (every row's ``group_id`` and match set), the share of
unchanged rows (neither new nor renamed) that kept their group id from the first run,
and each job's wall and the job's own lines. It asserts nothing; the equality on a small
table is tested (``tests/test_incremental.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SUBMIT, run_job

from poimatch import schema as S
from poimatch.sample.generator import generate_pois, write_pois_csv


def _sets(args: argparse.Namespace, root: Path) -> list[str]:
    sets = [
        f"storage.root={root}",
        f"tracking.tracking_uri=sqlite:///{args.mlflow_db}",
        *args.overrides,
    ]
    return [a for s in sets for a in ("--set", s)]


def _night(args: argparse.Namespace, work: Path) -> tuple[Path, set[str]]:
    base = pd.read_csv(args.csv, dtype=str, keep_default_na=False)
    rows = len(base)
    n_new = int(rows * args.new)
    copies = base.sample(n=n_new // 2, random_state=1).copy()
    copies[S.ID] = [f"0copy_{i}" for i in range(len(copies))]
    fresh = generate_pois(n_new - len(copies), seed=args.seed)
    fresh[S.ID] = [f"0new_{i}" for i in range(len(fresh))]
    renamed = base.sample(n=int(rows * args.changed), random_state=2).copy()
    renamed[S.NAME] = renamed[S.NAME] + " Annex"
    path = work / "night.csv"
    write_pois_csv(pd.concat([copies, fresh, renamed], ignore_index=True), path)
    return path, set(copies[S.ID]) | set(fresh[S.ID]) | set(renamed[S.ID])


def _versions(matches: Path) -> dict[int, pd.DataFrame]:
    from pyspark.sql import SparkSession

    from poimatch.config import load_settings
    from poimatch.session import build_session

    spark: SparkSession = build_session(load_settings("local").spark)
    out: dict[int, pd.DataFrame] = {}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{matches}`").select("version").collect()
    for v in sorted(int(r[0]) for r in history):
        frame = spark.read.format("delta").option("versionAsOf", v).load(str(matches))
        pdf = frame.select(S.ID, S.GROUP_ID, S.MATCHES).toPandas().set_index(S.ID).sort_index()
        pdf[S.MATCHES] = pdf[S.MATCHES].str.split(" ").map(lambda m: " ".join(sorted(m)))
        out[v] = pdf
    spark.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pois", required=True, help="the POI Delta table to copy")
    parser.add_argument("--csv", required=True, help="the CSV that table was ingested from")
    parser.add_argument("--workdir", default="/tmp/pm-nightly")
    parser.add_argument("--model", required=True, help="model URI")
    parser.add_argument("--mlflow-db", required=True, help="the MLflow sqlite store")
    parser.add_argument("--new", type=float, default=0.01, help="share of new rows")
    parser.add_argument("--changed", type=float, default=0.005, help="share of renamed rows")
    parser.add_argument("--seed", type=int, default=1011, help="the new places' seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/incremental-nightly.json")
    args = parser.parse_args()

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "lake").mkdir(parents=True)
    shutil.copytree(Path(args.pois).resolve(), work / "lake" / "pois")
    env = dict(os.environ)
    env["POIMATCH_DRIVER_MEMORY"] = env.get("POIMATCH_DRIVER_MEMORY", "6g")
    night, touched = _night(args, work)
    sets = _sets(args, work / "lake")
    steps = (
        ("first_incremental", ["jobs/match.py", "--incremental", "--model", args.model]),
        ("ingest_night", ["jobs/ingest.py", "--input", str(night)]),
        ("incremental", ["jobs/match.py", "--incremental", "--model", args.model]),
        ("full", ["jobs/match.py", "--model", args.model]),
    )
    result: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/incremental_nightly.py", *sys.argv[1:]]
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "night_rows": len(touched),
    }
    for name, job in steps:
        print(f"{name} ...", flush=True)
        rc, t0, t1, lines, sampler = run_job([str(SUBMIT), *job, *sets], work / f"{name}.log", env)
        if rc != 0:
            raise SystemExit(f"{name} failed (rc {rc}): see {work / f'{name}.log'}")
        peak = sampler.peak(t0, t1)
        result[name] = {
            "wall_s": round(t1 - t0, 1),
            "cpu_s": peak["cpu_s"],
            "peak_gib": peak["jvm_plus_python_gib"],
            "lines": [line for line in lines if "=" in line][:24],
        }
        print(f"  {result[name]['wall_s']} s wall, {peak['cpu_s']} CPU s", flush=True)
        for line in result[name]["lines"]:
            print(f"    {line}")

    started = time.perf_counter()
    versions = _versions(work / "lake" / "matches")
    first, inc, full = (versions[v] for v in sorted(versions)[-3:])
    same = inc.equals(full)
    unchanged = [i for i in first.index if i in inc.index and i not in touched]
    kept = float((first.loc[unchanged, S.GROUP_ID] == inc.loc[unchanged, S.GROUP_ID]).mean())
    result |= {
        "incremental_equals_full": bool(same),
        "rows_differing": int((inc != full).any(axis=1).sum())
        if inc.index.equals(full.index)
        else -1,
        "unchanged_rows": len(unchanged),
        "unchanged_keep_group_id": round(kept, 5),
        "ratio_incremental_to_full": round(
            result["incremental"]["wall_s"] / result["full"]["wall_s"], 3
        ),
        "compare_s": round(time.perf_counter() - started, 1),
    }
    print(
        f"incremental {result['incremental']['wall_s']} s, full {result['full']['wall_s']} s "
        f"(ratio {result['ratio_incremental_to_full']}); equal: {same}; unchanged rows keeping "
        f"their group id: {kept:.4%} of {len(unchanged)}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
