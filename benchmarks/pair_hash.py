"""A fingerprint of blocking and pair features on a CSV: did a change keep every pair?

    .venv/bin/python benchmarks/pair_hash.py ../shared/data/geoer_osm_fsq/geoer_osm_fsq.csv

Blocks the rows of the CSV a match run would match (``load_match_input``) with the
``local`` settings and the batch plan (name statistics counted from the file itself),
computes every pair feature, and prints the candidate count, the pairs per
``block_pass`` label and the SHA-256 of the sorted pairs with their passes and features
(each double printed with 17 significant digits: equal hashes mean equal values to the
last bit). Run it on two checkouts (``PYTHONPATH=<checkout>/lib``) to compare a speed
change's output with the code before."""

from __future__ import annotations

import hashlib
import os
import sys
import time

os.environ["GX_ANALYTICS_ENABLED"] = "false"


from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.runs.batch import load_match_input
from poimatch.session import build_session
from poimatch.stages import blocking
from poimatch.stages.candidates import cached_candidates, cached_points
from poimatch.stages.namestats import count_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH


def main() -> None:
    settings = load_settings("local", [])
    spark = build_session(settings.spark)
    print("blocking module:", blocking.__file__, flush=True)
    pois = load_match_input(spark, sys.argv[1]).pois  # the rows a match run matches
    stats = count_name_stats(pois.transform(add_normalized_columns))
    points = cached_points(pois, stats=stats, plan=BATCH)
    started = time.perf_counter()
    pairs = cached_candidates(points, settings=settings.blocking, plan=BATCH)
    print(f"candidates={pairs.count()} seconds={time.perf_counter() - started:.1f}")
    table = pairs.toPandas().sort_values([S.ID_L, S.ID_R]).reset_index(drop=True)
    print("passes:", table[S.PASS].value_counts().to_dict())
    text = table[sorted(table.columns)].to_csv(index=False, float_format="%.17g")
    print("sha256:", hashlib.sha256(text.encode()).hexdigest())


if __name__ == "__main__":
    main()
