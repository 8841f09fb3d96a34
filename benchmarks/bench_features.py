"""Throughput of the normalization and pair-feature stages on synthetic data.

Usage::

    .venv/bin/python benchmarks/bench_features.py --rows 1000000 [--stage features]

The synthetic frames are built with Spark built-ins (no driver-side data), and
each stage is forced with the ``noop`` sink, which materializes every column
without collecting anything. Prints rows/s per stage (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.stages.features import (
    FEATURE_COLUMNS,
    PAIR_SIDE_COLUMNS,
    add_pair_features,
    pair_side_col,
)
from poimatch.stages.normalize import add_normalized_columns

_WORDS: tuple[str, ...] = (
    "starbucks",
    "coffee",
    "cafe",
    "the",
    "restaurant",
    "saint",
    "street",
    "avenue",
    "pizza",
    "hut",
    "mcdonald's",
    "burger",
    "king",
    "7-eleven",
    "bank",
    "of",
    "america",
    "central",
    "park",
    "museum",
    "hotel",
    "hilton",
    "bar",
    "grill",
    "café",
    "münchen",
    "Москва",
    "Кафе",
    "東京",
    "タワー",
    "jalan",
    "sudirman",
    "plaza",
    "mall",
    "station",
    "école",
)
_CATS = ("Cafes", "Coffee Shops", "Restaurants", "Bars", "Hotels", "Banks", "Parks")


def _pick(seed: int, n_words: int, vocab: tuple[str, ...]) -> Column:
    """A space-joined string of ``n_words`` pseudo-random words (deterministic)."""
    arr = F.array(*[F.lit(w) for w in vocab])
    picks = [
        F.element_at(
            arr, (F.abs(F.hash(F.col("id"), F.lit(seed + i))) % len(vocab) + 1).cast("int")
        )
        for i in range(n_words)
    ]
    return F.concat_ws(" ", *picks)


def synthetic_places(spark: SparkSession, rows: int, partitions: int) -> DataFrame:
    """Raw-layout places with repeated, mixed-script text."""
    base = spark.range(rows, numPartitions=partitions)
    num = (F.abs(F.hash(F.col("id"))) % 1000).cast("string")
    return base.select(
        F.col("id").cast("string").alias(S.ID),
        F.concat_ws(" ", _pick(1, 2, _WORDS), num).alias(S.NAME),
        (F.rand(1) * 10 + 40).alias(S.LATITUDE),
        (F.rand(2) * 10).alias(S.LONGITUDE),
        F.concat_ws(" ", num, _pick(3, 2, _WORDS)).alias(S.ADDRESS),
        _pick(4, 1, _WORDS).alias(S.CITY),
        F.lit(None).cast("string").alias(S.STATE),
        F.format_string("%05d", F.abs(F.hash(F.col("id"), F.lit(5))) % 100000).alias(S.ZIP),
        F.lit("US").alias(S.COUNTRY),
        F.concat(F.lit("https://www."), _pick(6, 1, ("a", "b", "c")), F.lit(".com/x?y=1")).alias(
            S.URL
        ),
        F.format_string("+1 (415) 555-%04d", F.abs(F.hash(F.col("id"))) % 10000).alias(S.PHONE),
        F.concat_ws(", ", _pick(7, 1, _CATS), _pick(8, 1, _CATS)).alias(S.CATEGORIES),
    )


def synthetic_pairs(spark: SparkSession, rows: int, partitions: int) -> DataFrame:
    """Pair layout: normalized places joined with a shifted copy of themselves."""
    places = add_normalized_columns(synthetic_places(spark, rows, partitions)).cache()
    places.write.format("noop").mode("overwrite").save()

    def side(s: str) -> DataFrame:
        return places.select(
            F.col(S.ID).alias(pair_side_col(S.ID, s)),
            *[F.col(c).alias(pair_side_col(c, s)) for c in PAIR_SIDE_COLUMNS],
        )

    left, right = side("l"), side("r")
    joined = left.join(
        right,
        (F.col(pair_side_col(S.ID, "l")).cast("long") + 1)
        == F.col(pair_side_col(S.ID, "r")).cast("long"),
    )
    pairs = joined.withColumnsRenamed(
        {pair_side_col(S.ID, "l"): S.ID_L, pair_side_col(S.ID, "r"): S.ID_R}
    ).cache()
    pairs.write.format("noop").mode("overwrite").save()
    return pairs


def _time(df: DataFrame, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    """Parse arguments, build the data, time the stages, print rows/s."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--stage", choices=("normalize", "features", "both"), default="both")
    args = parser.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[*]")
        .appName("bench_features")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.driver.memory", "6g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    if args.stage in ("normalize", "both"):
        places = synthetic_places(spark, args.rows, args.partitions).cache()
        places.write.format("noop").mode("overwrite").save()
        base = _time(places, args.repeat)
        secs = _time(add_normalized_columns(places), args.repeat)
        print(
            f"normalize: {args.rows} rows in {secs:.2f}s (scan {base:.2f}s)"
            f" -> {args.rows / secs:,.0f} rows/s"
        )
        places.unpersist()

    if args.stage in ("features", "both"):
        pairs = synthetic_pairs(spark, args.rows, args.partitions)
        n = args.rows - 1
        base = _time(pairs, args.repeat)
        secs = _time(add_pair_features(pairs).select(S.ID_L, S.ID_R, *FEATURE_COLUMNS), args.repeat)
        print(f"features: {n} pairs in {secs:.2f}s (scan {base:.2f}s) -> {n / secs:,.0f} pairs/s")
    spark.stop()


if __name__ == "__main__":
    main()
