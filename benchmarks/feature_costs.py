"""What each pair feature costs, per candidate pair, on a real blocking of a CSV.

    .venv/bin/python benchmarks/feature_costs.py /tmp/gen200k.csv [--each]

Blocks the rows of the CSV a match run would match (``load_match_input``) with the
``local`` settings (name statistics counted from the file itself), checkpoints the pairs
with both sides' columns attached, then times writing (the ``noop`` sink: every column
computed, nothing collected) of: the ids alone (the read), the rapidfuzz UDF alone, the
Spark-expression features alone, and every feature as ``add_pair_features`` builds them
(best of 3 after one warm-up run, so the Python workers and the JIT are warm).
``--each`` also times every Spark-expression feature alone (one run each). Prints
seconds and core-microseconds per pair (seconds x 2 cores / pairs). Run it on two
checkouts (``PYTHONPATH=<checkout>/lib``) to compare."""

from __future__ import annotations

import os
import sys
import time

os.environ["GX_ANALYTICS_ENABLED"] = "false"

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.runs.batch import load_match_input
from poimatch.session import build_session
from poimatch.stages import features
from poimatch.stages.blocking import add_pair_sides, candidate_pairs
from poimatch.stages.candidates import cached_points
from poimatch.stages.namestats import count_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH


def main() -> None:
    path = sys.argv[1]
    settings = load_settings("local", [])
    spark = build_session(settings.spark)
    print("features module:", features.__file__, flush=True)
    pois = load_match_input(spark, path).pois  # the rows a match run matches
    stats = count_name_stats(pois.transform(add_normalized_columns))
    points = cached_points(pois, stats=stats, plan=BATCH)
    pairs = candidate_pairs(points, settings=settings.blocking, materialize=BATCH.materialize)
    sided = add_pair_sides(pairs.localCheckpoint(eager=True), points).localCheckpoint(eager=True)
    n = sided.count()
    cores = spark.sparkContext.defaultParallelism
    print(f"pairs={n} cores={cores}", flush=True)

    def run(label: str, columns: list[Column], repeats: int = 3, frame: DataFrame = sided) -> None:
        best = float("inf")
        for attempt in range(repeats + (1 if repeats > 1 else 0)):
            started = time.perf_counter()
            frame.select(*columns).write.format("noop").mode("overwrite").save()
            if attempt or repeats == 1:
                best = min(best, time.perf_counter() - started)
        print(f"{label:28s} {best:7.2f} s {best * cores / n * 1e6:7.2f} core-us/pair", flush=True)

    struct, built = features._feature_expressions()
    by_udf = {k for k, c in built.items() if features._FUZZY_STRUCT in str(c)}
    ids = [F.col(S.ID_L), F.col(S.ID_R)]
    spark_only = {k: c for k, c in built.items() if k not in by_udf}
    run("read (ids only)", ids)
    run("UDF alone", [*ids, struct.alias("udf")])
    run("Spark features alone", [*ids, *[c.alias(k) for k, c in spark_only.items()]])
    every = sided.transform(features.add_pair_features)
    run("every feature", [*ids, *[F.col(c) for c in features.FEATURE_COLUMNS]], frame=every)
    if "--each" in sys.argv:
        for name, column in spark_only.items():
            run(name, [*ids, column.alias(name)], repeats=1)


if __name__ == "__main__":
    main()
