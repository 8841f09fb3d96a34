"""Stable group ids: how many unchanged rows keep their group id across two nightly runs.

    .venv/bin/python benchmarks/stable_ids.py --rows 100000 --workdir /tmp/pm-stable \\
        --out benchmarks/results/stable_ids.json

Generates ``--rows`` POIs, ingests them into a fresh Delta POI table under ``--workdir``
and runs the nightly match (:func:`poimatch.runs.batch.run_match`, the POI table's run) with
the champion of the project's MLflow store (``make run`` registers one; ``--model URI``
names another). Then it changes the table as a night would: ``--new`` (1 %) new rows,
half of them copies of existing rows under new ids that sort first, half new places, and
``--changed`` (0.5 %) existing rows renamed; ingests them (MERGE by id) and runs the
nightly match again. Printed and written: the job's own ``group_ids_changed`` line, and
the share of *unchanged* rows (neither new nor edited) whose ``group_id`` moved, with
and without the carry-over (the second run's output relabelled by smallest member id,
which is what every run did before). Production tables are never touched: everything
lives under ``--workdir``. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.io.ingest import ingest_file
from poimatch.lifecycle.tracking import default_model_uri
from poimatch.runs.batch import run_match
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session


def _groups(spark: SparkSession, path: str) -> pd.DataFrame:
    frame = spark.read.format("delta").load(path)
    return frame.select(S.ID, S.GROUP_ID, S.MATCHES).toPandas().set_index(S.ID)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--new", type=float, default=0.01, help="share of new rows")
    parser.add_argument("--changed", type=float, default=0.005, help="share of renamed rows")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--workdir", default="/tmp/poimatch-stable-ids")
    parser.add_argument("--model", default=None, help="model URI (default: the champion)")
    parser.add_argument("--env", default="local")
    parser.add_argument("--out", default="benchmarks/results/stable_ids.json")
    args = parser.parse_args()

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    work = Path(args.workdir)
    settings = load_settings(args.env, [f"storage.root={work / 'lake'}"])
    spark = build_session(settings.spark)
    storage = settings.storage
    pois_path = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    matches = storage.table_path(storage.matches_table)
    uri = args.model or default_model_uri(settings.model.name)
    work.mkdir(parents=True, exist_ok=True)

    base = generate_pois(args.rows, seed=args.seed)
    write_pois_csv(base, work / "base.csv")
    ingest_file(spark, str(work / "base.csv"), pois_path=pois_path, quarantine_path=quarantine)
    started = time.perf_counter()
    first_lines = run_match(spark, settings, input_path=None, output_csv=None, model_uri=uri)
    first_s = time.perf_counter() - started
    before = _groups(spark, matches)

    n_new = int(args.rows * args.new)
    copies = base.sample(n=n_new // 2, random_state=1).copy()
    # new ids sort before every generated id ("E_..."): a new row becomes its group's
    # smallest member, the case a smallest-id label cannot survive
    copies[S.ID] = [f"0copy_{i}" for i in range(len(copies))]
    fresh = generate_pois(n_new - len(copies), seed=args.seed + 1)
    fresh[S.ID] = [f"0new_{i}" for i in range(len(fresh))]
    renamed = base.sample(n=int(args.rows * args.changed), random_state=2).copy()
    renamed[S.NAME] = renamed[S.NAME].fillna("") + " Annex"
    write_pois_csv(pd.concat([copies, fresh, renamed], ignore_index=True), work / "night.csv")
    ingest_file(spark, str(work / "night.csv"), pois_path=pois_path, quarantine_path=quarantine)
    started = time.perf_counter()
    second_lines = run_match(spark, settings, input_path=None, output_csv=None, model_uri=uri)
    second_s = time.perf_counter() - started
    after = _groups(spark, matches)

    touched = set(copies[S.ID]) | set(fresh[S.ID]) | set(renamed[S.ID])
    unchanged = [i for i in before.index if i in after.index and i not in touched]
    kept = (before.loc[unchanged, S.GROUP_ID] == after.loc[unchanged, S.GROUP_ID]).mean()
    # what the second run would have labelled without the carry-over: the smallest member
    smallest = after[S.MATCHES].str.split(" ").map(min)
    kept_without = (before.loc[unchanged, S.GROUP_ID] == smallest.loc[unchanged]).mean()
    same_members = (
        before.loc[unchanged, S.MATCHES].str.split(" ").map(frozenset)
        == after.loc[unchanged, S.MATCHES].str.split(" ").map(frozenset)
    ).mean()
    changed_line = next((x for x in second_lines.lines() if x.startswith("group_ids_changed=")), "")
    result = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
        },
        "model": uri,
        "rows": args.rows,
        "new_rows": n_new,
        "renamed_rows": len(renamed),
        "first_run_s": round(first_s, 1),
        "second_run_s": round(second_s, 1),
        "unchanged_rows": len(unchanged),
        "unchanged_same_members": round(float(same_members), 5),
        "unchanged_keep_group_id": round(float(kept), 5),
        "unchanged_keep_group_id_without_carry_over": round(float(kept_without), 5),
        "job_line": changed_line,
        "first_lines": first_lines.lines(),
        "second_lines": second_lines.lines(),
        "groups_moved_to_made_up_ids": int(after[S.GROUP_ID].str.contains("~", regex=False).sum()),
    }
    print(f"rows={args.rows} new={n_new} renamed={len(renamed)} (model {uri})")
    print(f"nightly runs: {first_s:.1f} s, then {second_s:.1f} s")
    print(f"job: {changed_line}")
    print(
        f"unchanged rows: {len(unchanged)}; same members {same_members:.4%}; keep their "
        f"group id {kept:.4%} (without the carry-over: {kept_without:.4%})"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    spark.stop()


if __name__ == "__main__":
    main()
