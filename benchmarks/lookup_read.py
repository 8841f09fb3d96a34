"""The lookup read of ``?against=pois`` alone, with and without the latitude-band cut.

    .venv/bin/python benchmarks/lookup_read.py --lookup /tmp/pm-1m/lake/pois_lookup \
        --sizes 10,1000 --rounds 8

A nightly run's lookup table (``storage.lookup_table``) is read as the service reads it
for an upload of generated rows (their coordinates only: the spatial pass's reads), with
the service's SQL settings and the read's own (``poimatch.io.lookup.READ_SQL_CONF``): the
nearest rows of each upload (:func:`poimatch.stages.blocking.nearest_rows`) given the
uploads' latitudes (``cut``: rows more than one band from every upload are not copied) and
not given them (``whole``). The two variants alternate in one JVM, ``--rounds`` times
each, so the JIT's warm-up and the box's load fall on both alike; the first round is
left out of the medians. Prints the seconds per round, their medians, the work of the
last round's plan (rows the copies into 3x3 cells made, rows shuffled, from Spark's
operator metrics: the same on every run, unlike the seconds on a noisy box) and whether
the two read the same rows. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pandas as pd

from poimatch import schema as S
from poimatch.apps.service import SERVICE_SQL_CONF
from poimatch.config import BlockingSettings, load_settings
from poimatch.io import lookup
from poimatch.io.lookup import READ_SQL_CONF, known_rows, pin_lookup
from poimatch.sample.generator import generate_pois
from poimatch.session import build_session
from poimatch.stages import blocking
from poimatch.stages.plan import session_conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookup", required=True, help="a lookup table (Delta) to read")
    parser.add_argument("--sizes", default="10,1000", help="uploads per read")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()

    settings = load_settings(args.env, [])
    spark = build_session(settings.spark)
    for key, value in SERVICE_SQL_CONF.items():
        spark.conf.set(key, value)
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.service.shuffle_partitions))
    known = pin_lookup(spark, args.lookup)
    if known is None:
        raise SystemExit(f"no lookup table at {args.lookup}")
    settings_b = BlockingSettings()
    cut = blocking.nearest_rows

    def whole(*a: object, **k: object) -> object:
        k.pop("query_latitudes", None)
        return cut(*a, **k)  # type: ignore[arg-type]

    variants = {"cut": cut, "whole": whole}
    print(f"lookup={known.label()}")
    for size in [int(s) for s in args.sizes.split(",")]:
        up = generate_pois(size, seed=5)
        near = pd.DataFrame(
            {
                S.LATITUDE: up[S.LATITUDE].astype(float),
                S.LONGITUDE: up[S.LONGITUDE].astype(float),
                S.N_NAME: None,
                S.N_PHONE: None,
                S.N_URL: None,
            }
        )
        times: dict[str, list[float]] = {name: [] for name in variants}
        ids: dict[str, set[str]] = {}
        work: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):
            for name, nearest in variants.items():
                lookup.nearest_rows = nearest  # type: ignore[assignment]
                try:
                    with session_conf(spark, READ_SQL_CONF):
                        started = time.perf_counter()
                        read = known_rows(spark, known, near, settings_b).select(S.ID)
                        rows = read.collect()
                        times[name].append(time.perf_counter() - started)
                    work[name] = _work(read._jdf.queryExecution().executedPlan())
                finally:
                    lookup.nearest_rows = cut
                ids.setdefault(name, {str(r[0]) for r in rows})
        for name, seconds in times.items():
            warm = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            shown = " ".join(f"{s:.2f}" for s in seconds)
            copies, shuffled = work[name]
            print(
                f"uploads={size} {name}: median={warm:.3f} s rows={len(ids[name])} "
                f"copies={copies} shuffled_rows={shuffled} [{shown}]"
            )
        print(f"uploads={size} same_rows={ids['cut'] == ids['whole']}", flush=True)
    spark.stop()


def _work(plan: Any) -> tuple[int, int]:
    """Rows out of the plan's ``Generate`` operators (the copies into cells, and the
    other explodes) and rows its shuffles wrote, from the executed operators' metrics."""
    copies = shuffled = 0
    stack, seen = [plan], set()
    while stack:
        node = stack.pop()
        if node.hashCode() in seen:
            continue
        seen.add(node.hashCode())
        metrics = node.metrics()
        name = node.nodeName()
        if name == "Generate" and metrics.get("numOutputRows").isDefined():
            copies += int(metrics.get("numOutputRows").get().value())
        if metrics.get("shuffleRecordsWritten").isDefined():
            shuffled += int(metrics.get("shuffleRecordsWritten").get().value())
        kids = node.children()
        stack.extend(kids.apply(i) for i in range(kids.length()))
    return copies, shuffled


if __name__ == "__main__":
    main()
