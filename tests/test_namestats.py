"""Name statistics: counted once over the training places, frozen, looked up by row."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.stages.namestats import (
    NameStats,
    add_name_stats,
    count_name_stats,
    idf_weights,
    name_stats_arrow,
    name_stats_schema,
)

_SCHEMA = f"{S.ID} string, {S.POI} string, {S.N_NAME} string, {S.N_NAME_TOKENS} array<string>"


def _points(spark: SparkSession, rows: list[tuple[str, str, str | None]]) -> DataFrame:
    return spark.createDataFrame(
        [(i, p, n, n.split(" ") if n else None) for i, p, n in rows], _SCHEMA
    )


def _corpus(spark: SparkSession) -> DataFrame:
    return _points(
        spark,
        [
            ("a1", "A", "blue bottle"),
            ("a2", "A", "blue bottle"),  # a second row of place A counts once
            ("b", "B", "blue bottle"),
            ("c", "C", "blue cafe"),
            ("d", "D", "red cafe"),
            ("e", "E", None),
        ],
    )


def test_counts_are_places_not_rows(spark: SparkSession) -> None:
    stats = count_name_stats(_corpus(spark))
    assert stats.places == 5
    assert stats.names == {"blue bottle": 2, "blue cafe": 1, "red cafe": 1}
    assert stats.tokens == {"blue": 3, "bottle": 2, "cafe": 2, "red": 1}
    assert stats.idf("red") == pytest.approx(math.log(6 / 2))
    assert stats.idf("never seen") == pytest.approx(math.log(6))  # the largest weight


def test_max_names_keeps_the_most_common(spark: SparkSession) -> None:
    stats = count_name_stats(_corpus(spark), max_names=1)
    assert stats.names == {"blue bottle": 2}
    assert stats.tokens == {"blue": 3}


def test_lookup_by_name_and_token(spark: SparkSession) -> None:
    stats = count_name_stats(_corpus(spark))
    matched = {r[S.ID]: r for r in add_name_stats(_corpus(spark), stats).collect()}
    assert matched["a1"][S.N_NAME_FREQ] == 2.0
    assert matched["e"][S.N_NAME_FREQ] is None
    assert matched["e"][S.N_NAME_IDF] is None
    assert matched["d"][S.N_NAME_IDF] == pytest.approx(
        {"red": math.log(6 / 2), "cafe": math.log(6 / 3)}
    )
    unseen = add_name_stats(_points(spark, [("z", "Z", "zeta")]), stats).first()
    assert unseen is not None
    assert unseen[S.N_NAME_FREQ] == 0.0
    assert unseen[S.N_NAME_IDF] == {"zeta": pytest.approx(math.log(6))}


def test_training_rows_read_the_other_folds_statistics(spark: SparkSession) -> None:
    """Three regions, one fold each. A training row's name frequency counts places of
    the other folds only: not its own place, not a same-named place next door (with
    statistics over the training rows themselves, a name counting twice would tell
    two rows of it apart as two places)."""
    from poimatch.config import load_settings
    from poimatch.runs.workflows import training_set

    def row(i: str, poi: str, name: str, lat: float, lon: float) -> tuple[object, ...]:
        return (i, name, lat, lon, poi)

    rows = [
        row("a1", "P1", "Alpha Cafe", 40.0, -80.0),
        row("a2", "P1", "Alpha Cafe", 40.0001, -80.0),
        row("a3", "P2", "Alpha Cafe", 40.001, -80.0),  # another place, same fold
        row("b1", "P3", "Alpha Cafe", 45.0, -70.0),  # the other folds' one
        row("b2", "P4", "Gamma Bank", 45.001, -70.0),
        row("c1", "P5", "Beta Bar", 50.0, -60.0),
        row("c2", "P6", "Beta Bar", 50.001, -60.0),
    ]
    pois = spark.createDataFrame(
        rows,
        f"{S.ID} string, {S.NAME} string, {S.LATITUDE} double, {S.LONGITUDE} double, "
        f"{S.POI} string",
    )
    for c in ("address", "city", "zip", "country", "url", "phone", "categories", "state"):
        pois = pois.withColumn(c, F.lit(None).cast("string"))
    data = training_set(pois, settings=load_settings("ci", ["model.sample_rates=[1.0]"]))
    got = {(r[S.ID_L], r[S.ID_R]): r for r in data.pairs.collect()}
    assert got[("a1", "a2")][S.F_NAME_FREQ_MAX] == pytest.approx(math.log1p(1))
    assert got[("c1", "c2")][S.F_NAME_FREQ_MAX] == pytest.approx(0.0)
    # the model keeps the statistics of every fold
    assert data.stats.names["alpha cafe"] == 3


def test_a_rows_statistics_do_not_depend_on_the_table(spark: SparkSession) -> None:
    """Adding rows that share the row's name and tokens changes nothing: the figures
    come from the model's corpus (with table statistics ``blue bottle`` would count 5)."""
    stats = count_name_stats(_corpus(spark))
    alone = _points(spark, [("x", "X", "blue bottle")])
    crowded = _points(
        spark,
        [("x", "X", "blue bottle")] + [(f"y{i}", f"Y{i}", "blue bottle") for i in range(4)],
    )
    one = add_name_stats(alone, stats).where(f"{S.ID} = 'x'").first()
    many = add_name_stats(crowded, stats).where(f"{S.ID} = 'x'").first()
    assert one is not None
    assert many is not None
    assert one[S.N_NAME_FREQ] == many[S.N_NAME_FREQ] == 2.0
    assert one[S.N_NAME_IDF] == many[S.N_NAME_IDF]


def test_the_driver_gives_spark_s_statistics_to_the_last_bit(spark: SparkSession) -> None:
    """:func:`name_stats_arrow` (a held table's rows, on the driver) gives what
    :func:`add_name_stats` gives: the same frequencies, the same weights to the last bit
    (Spark's log is Java's StrictMath) and each map's entries in the same order (a pair
    feature sums them in that order), once read back into Spark; also for rows without
    a name, without tokens, with repeated, empty or null tokens, and unseen tokens."""
    counts = {f"t{i}": 1 + (i * 7919) % 4001 for i in range(300)}
    stats = NameStats(places=123_457, names={"t1 t2": 5, "": 2, "東京 駅": 1}, tokens=counts)
    rows: list[tuple[str, str | None, list[str | None] | None]] = [
        ("a", "t1 t2", ["t1", "t2"]),
        ("b", "t2 t1 t2", ["t2", "t1", "t2"]),  # repeated: once, where first seen
        ("c", None, None),
        ("d", "", []),
        ("e", "x", ["", None, "x"]),  # empty and null tokens are not tokens
        ("f", "東京 駅", ["東京", "駅", "𝔘nseen"]),
        ("g", "z", [""]),  # no token left: no map
        ("h", "many", [f"t{i}" for i in range(299, 0, -3)] + ["new", "t5"]),
    ]
    schema = f"{S.ID} string, {S.N_NAME} string, {S.N_NAME_TOKENS} array<string>"
    points = spark.createDataFrame(rows, schema)
    spark_side = add_name_stats(points, stats)
    local = name_stats_arrow(points.toArrow(), stats, idf_weights(spark, stats))
    driver_side = spark.createDataFrame(local, name_stats_schema(points.schema))

    def read(df: DataFrame) -> list[tuple[object, ...]]:
        got = df.select(S.ID, S.N_NAME_FREQ, F.map_entries(S.N_NAME_IDF).alias("e")).collect()
        return sorted((r[0], r[1], None if r[2] is None else [tuple(x) for x in r[2]]) for r in got)

    expected = read(spark_side)
    assert read(driver_side) == expected
    # a held table's Arrow columns come in chunks, and picked rows as slices of them
    arrow = points.toArrow()
    chunked = pa.concat_tables([arrow.slice(0, 3), arrow.slice(3, 2), arrow.slice(5)])
    assert chunked.column(S.N_NAME_TOKENS).num_chunks == 3
    again = name_stats_arrow(chunked, stats, idf_weights(spark, stats))
    assert read(spark.createDataFrame(again, name_stats_schema(points.schema))) == expected
    by_id = {r[0]: r for r in expected}
    assert [k for k, _ in by_id["b"][2]] == ["t2", "t1"]
    assert by_id["c"][1] is None
    assert by_id["c"][2] is None
    assert by_id["d"][1] == 2.0
    assert by_id["d"][2] is None
    assert by_id["g"][2] is None
    assert dict(by_id["f"][2])["𝔘nseen"] == pytest.approx(math.log(123_458.0))
    assert len(by_id["h"][2]) == 101  # (t5 twice)
    fields = {(f.name, f.dataType, f.nullable) for f in spark_side.schema.fields}
    assert {(f.name, f.dataType, f.nullable) for f in driver_side.schema.fields} == fields


def test_round_trip_and_format_check(tmp_path: Path) -> None:
    stats = NameStats(places=3, names={"café": 2}, tokens={"café": 2, "x": 1})
    stats.save(tmp_path / "s.json")
    assert NameStats.load(tmp_path / "s.json") == stats
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="name-statistics"):
        NameStats.load(tmp_path / "bad.json")
