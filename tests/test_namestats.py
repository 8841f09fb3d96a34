"""Name statistics: counted once over the training places, frozen, looked up by row."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.namestats import NameStats, add_name_stats, count_name_stats

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


def test_lookup_with_and_without_the_rows_own_place(spark: SparkSession) -> None:
    stats = count_name_stats(_corpus(spark))
    matched = {r[S.ID]: r for r in add_name_stats(_corpus(spark), stats).collect()}
    assert matched["a1"][S.N_NAME_FREQ] == 2.0
    assert matched["e"][S.N_NAME_FREQ] is None
    assert matched["e"][S.N_NAME_IDF] is None
    assert matched["d"][S.N_NAME_IDF] == pytest.approx(
        {"red": math.log(6 / 2), "cafe": math.log(6 / 3)}
    )
    own = {r[S.ID]: r for r in add_name_stats(_corpus(spark), stats, exclude_own=True).collect()}
    # training rows: the other places only, so a name unique in the corpus reads as unseen
    assert own["a1"][S.N_NAME_FREQ] == 1.0
    assert own["d"][S.N_NAME_FREQ] == 0.0
    assert own["d"][S.N_NAME_IDF]["red"] == pytest.approx(math.log(6))
    assert own["d"][S.N_NAME_IDF]["red"] == pytest.approx(stats.idf("unseen"))


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


def test_round_trip_and_format_check(tmp_path: Path) -> None:
    stats = NameStats(places=3, names={"café": 2}, tokens={"café": 2, "x": 1})
    stats.save(tmp_path / "s.json")
    assert NameStats.load(tmp_path / "s.json") == stats
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="name-statistics"):
        NameStats.load(tmp_path / "bad.json")
