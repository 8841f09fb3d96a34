"""Blocking: border-safe spatial pass, k cap, key passes, canonical unique pairs."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.stages.blocking import (
    PASS_COLUMNS,
    _key_nearest,
    candidate_pairs,
    haversine_m,
    pass_key,
    pass_key_value,
)

_COLS = (
    f"{S.ID} string, {S.LATITUDE} double, {S.LONGITUDE} double, {S.N_NAME} string, "
    f"{S.N_PHONE} string, {S.N_URL} string"
)

# about 0.0001 degree of latitude = 11 m
_DEG_PER_M = 1 / 111_320


def _points(spark: SparkSession, rows: Sequence[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, _COLS)


def _pairs(df: DataFrame) -> set[tuple[str, str]]:
    return {(r[S.ID_L], r[S.ID_R]) for r in df.collect()}


def test_pair_across_a_cell_border_is_found(spark: SparkSession) -> None:
    cell = 300.0
    border = 48 * 111_320 // cell * cell / 111_320 + cell / 111_320  # a cell edge in latitude
    rows = [
        ("a", border - 5 * _DEG_PER_M, 2.0, "x", None, None),
        ("b", border + 5 * _DEG_PER_M, 2.0, "y", None, None),
    ]
    settings = BlockingSettings(cell_m=cell, k_nearest=5, key_passes=())
    assert _pairs(candidate_pairs(_points(spark, rows), settings=settings)) == {("a", "b")}


def test_k_nearest_caps_dense_cells_and_keeps_the_nearest(spark: SparkSession) -> None:
    # 12 points on a line 10 m apart: with k = 2, each row keeps its 2 nearest
    rows = [(f"p{i:02d}", 48.0 + i * 10 * _DEG_PER_M, 2.0, f"n{i}", None, None) for i in range(12)]
    settings = BlockingSettings(cell_m=500, k_nearest=2, key_passes=())
    got = _pairs(candidate_pairs(_points(spark, rows), settings=settings))
    expected = {(f"p{i:02d}", f"p{i + 1:02d}") for i in range(11)} | {
        (f"p{i:02d}", f"p{i + 2:02d}") for i in range(10)
    }
    # ties broken by id: p00's two nearest are p01 and p02, etc.
    assert got <= expected
    assert {(f"p{i:02d}", f"p{i + 1:02d}") for i in range(11)} <= got
    assert len(got) <= 2 * len(rows)


def test_fine_grids_give_exactly_the_coarse_k_nearest(spark: SparkSession) -> None:
    # a dense centre (fine grids are used there) fading into sparse outskirts
    import random

    from poimatch.stages.blocking import _LVL, _grid_levels, _spatial_nearest

    rng = random.Random(3)
    rows = []
    for i in range(900):
        r = 800 * rng.random() ** 3  # metres from the centre, dense near 0
        a = rng.random() * 2 * math.pi
        lat = 48.0 + r * math.sin(a) * _DEG_PER_M
        lon = 2.0 + r * math.cos(a) * _DEG_PER_M / math.cos(math.radians(48.0))
        rows.append((f"r{i:03d}", lat, lon, None, None, None))
    points = _points(spark, rows)

    def nearest(levels: int) -> set[tuple[str, str]]:
        out = _spatial_nearest(points, 300.0, 4, fine_levels=levels).collect()
        return {(r[S.ID], r["_other"]) for r in out}

    fine, coarse = nearest(4), nearest(0)
    assert len(coarse) == 4 * len(rows)
    assert fine == coarse
    # ... and the fine grids were used: the centre on fine levels, the outskirts not
    levels = Counter(r[_LVL] for r in _grid_levels(points, 300.0, 4, 4).collect())
    assert sum(levels.values()) == len(rows)
    assert levels[0] > 0
    assert sum(n for level, n in levels.items() if level >= 2) > 100


def test_materialized_blocking_computes_the_grid_levels_once(spark: SparkSession) -> None:
    """With ``materialize`` (the batch plan), each row's grid level is materialized:
    both rounds of the spatial pass read it (unmaterialized, every read recomputed the
    levels' copies, counts and joins). The pairs and their passes are the same."""
    from poimatch.stages.blocking import _LVL

    rows = [
        (f"p{i:02d}", 48.0 + i * 10 * _DEG_PER_M, 2.0, f"n{i % 3}", None, None) for i in range(40)
    ]
    points = _points(spark, rows)
    settings = BlockingSettings(cell_m=500, k_nearest=2, key_passes=("name",))
    seen: list[list[str]] = []

    def materialize(df: DataFrame) -> DataFrame:
        seen.append(df.columns)
        return df.localCheckpoint(eager=True)

    kept = candidate_pairs(points, settings=settings, materialize=materialize)
    plain = candidate_pairs(points, settings=settings)
    assert sorted(kept.collect()) == sorted(plain.collect())
    levels = [cols for cols in seen if cols == [S.ID, S.LATITUDE, S.LONGITUDE, _LVL]]
    assert len(levels) == 1, seen


def test_fine_grid_row_with_no_neighbour_within_its_cell_is_redone(spark: SparkSession) -> None:
    # a tight cluster makes the finest grid (18.75 m) dense around rows 20-35 m away
    # that have nobody within 18.75 m: they must be redone on the coarse grid, not lost
    import random

    from poimatch.stages.blocking import _spatial_nearest

    rng = random.Random(7)
    scale = math.cos(math.radians(48.0))
    rows = [
        (f"c{i:02d}", 48.0 + rng.uniform(-1, 1) * _DEG_PER_M, 2.0 + rng.uniform(-1, 1) * _DEG_PER_M)
        for i in range(40)
    ]
    for i in range(8):  # satellites more than 18.75 m from the cluster and each other
        r, a = (22.0, 30.0)[i % 2], i * math.pi / 4
        lat = 48.0 + r * math.sin(a) * _DEG_PER_M
        rows.append((f"s{i:02d}", lat, 2.0 + r * math.cos(a) * _DEG_PER_M / scale))
    points = _points(spark, [(*r, None, None, None) for r in rows])

    def nearest(levels: int) -> set[tuple[str, str]]:
        out = _spatial_nearest(points, 300.0, 4, fine_levels=levels).collect()
        return {(r[S.ID], r["_other"]) for r in out}

    fine, coarse = nearest(4), nearest(0)
    assert {i for i, _ in coarse} == {r[0] for r in rows}
    assert fine == coarse


def test_pair_across_a_band_border_far_east_is_found(spark: SparkSession) -> None:
    # x cells are scaled per latitude band; at large longitudes the bands' x cells
    # drift apart, and a neighbour just across a band border must still be found
    cell = 300.0
    rows = []
    for i in range(8):
        lat0 = 35.0 + i * 0.07
        border = (math.floor(lat0 * 111_320 / cell) + 1) * cell / 111_320
        lon = 139.0 + i * 0.13
        rows.append((f"a{i}", border - 5 * _DEG_PER_M, lon, None, None, None))
        rows.append((f"b{i}", border + 5 * _DEG_PER_M, lon, None, None, None))
    settings = BlockingSettings(cell_m=cell, k_nearest=1, key_passes=())
    got = _pairs(candidate_pairs(_points(spark, rows), settings=settings))
    assert got == {(f"a{i}", f"b{i}") for i in range(8)}


def test_key_passes_find_far_duplicates_but_skip_generic_keys(spark: SparkSession) -> None:
    km = 1000 * _DEG_PER_M
    rows = [
        ("a", 48.0, 2.0, "blue bottle", None, None),
        ("b", 48.0 + 3 * km, 2.0, "blue bottle", None, None),  # same name, 3 km away
        ("c", 48.0, 2.0 + 5 * km, "other", "612345678", None),
        ("d", 48.0 + 4 * km, 2.0 + 5 * km, "different", "612345678", None),  # same phone
        ("e", 48.5, 2.5, "e", None, "shop.example"),
        ("f", 48.5 + 2 * km, 2.5, "f", None, "shop.example"),  # same url domain
        # one value in two passes (h's name is i's phone): the passes never meet
        ("h", 48.2, 2.2, "5550101", None, None),
        ("i", 48.2 + 2 * km, 2.2, "i", "5550101", None),
        ("j", 48.2 + 3 * km, 2.2, "both", "5550199", "both.example"),
        ("k", 48.2 + 4 * km, 2.2, "both", "5550199", "both.example"),
    ]
    generic = [(f"g{i}", 47.0 + i * 0.5 * km, 1.0, "bus stop", None, None) for i in range(6)]
    settings = BlockingSettings(
        cell_m=200,
        k_nearest=3,
        key_cell_m=10_000,
        k_key=3,
        max_key_group=4,
        key_passes=("name", "phone", "url"),
    )
    out = candidate_pairs(_points(spark, rows + generic), settings=settings)
    got = {(r[S.ID_L], r[S.ID_R]): r[S.PASS] for r in out.collect()}
    assert got[("a", "b")] == "name"
    assert got[("c", "d")] == "phone"
    assert got[("e", "f")] == "url"
    assert ("h", "i") not in got
    assert got[("j", "k")] == "name,phone,url"  # found by every pass, named once each
    # "bus stop" is shared by 6 rows > max_key_group: never a key-pass pair
    assert not any(p == "name" and left.startswith("g") for (left, _), p in got.items())


def test_query_rows_key_lists_are_those_of_the_whole_run(spark: SparkSession) -> None:
    """With ``query``, the key passes first drop the rows whose keys no query row holds;
    each query row still gets the key-pass list it gets when every row looks: the same
    nearest sharers, a key generic around it skipped, the others' keys never counted."""
    km = 1000 * _DEG_PER_M
    rng = random.Random(17)
    names = ["blue bottle", "casa pepe", "bus stop", "kfc", "luna", "mar", None]
    rows = []
    for i in range(240):  # names, phones and urls shared within and across ~20 km
        name = rng.choice(names)
        phone = rng.choice([None, None, "5550101", "5550102", f"55509{i % 7}"])
        url = rng.choice([None, None, "a.example", "b.example"])
        lat, lon = 48.0 + rng.uniform(-20, 20) * km, 2.0 + rng.uniform(-20, 20) * km
        rows.append((f"{'q' if i % 9 == 0 else 'r'}{i:03d}", lat, lon, name, phone, url))
    # a name only query rows hold: its pairs come from the query rows' own keys
    rows += [(f"q9{i}", 48.1 + i * km, 2.1, "zz query only", None, None) for i in range(2)]
    settings = BlockingSettings(
        cell_m=300,
        k_nearest=3,
        key_cell_m=10_000,
        k_key=3,
        max_key_group=12,
        key_passes=("name", "name_prefix", "phone", "url"),
    )
    points = _points(spark, rows)
    query = F.col(S.ID).startswith("q")
    cols = [S.ID, "_other", S.PASS]
    for broadcast in (True, False):
        whole = _key_nearest(points, settings, settings.key_passes, None, broadcast)
        cut = _key_nearest(points, settings, settings.key_passes, query, broadcast)
        expected = {tuple(r) for r in whole.where(query).select(*cols).collect()}
        assert {tuple(r) for r in cut.select(*cols).collect()} == expected
        assert len({r[0] for r in expected}) >= 10  # most query rows have key neighbours
        assert ("q90", "q91", "name") in expected


def test_pairs_are_canonical_and_unique(spark: SparkSession) -> None:
    rows = [
        ("z", 48.0, 2.0, "same", "612345678", None),
        ("y", 48.0 + 5 * _DEG_PER_M, 2.0, "same", "612345678", None),
    ]
    settings = BlockingSettings(cell_m=300, k_nearest=5)
    out = candidate_pairs(_points(spark, rows), settings=settings).collect()
    assert len(out) == 1
    assert (out[0][S.ID_L], out[0][S.ID_R]) == ("y", "z")
    assert out[0][S.PASS] == "name,phone,spatial"


def test_haversine_paris_london(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(48.8566, 2.3522, 51.5074, -0.1278)], "a double, b double, c double, d double"
    )
    d = df.select(haversine_m(F.col("a"), F.col("b"), F.col("c"), F.col("d"))).first()
    assert d is not None
    assert d[0] == pytest.approx(343_500, rel=0.005)


def test_link_only_never_pairs_two_rows_of_one_source(spark: SparkSession) -> None:
    # O rows a, b, c and F row f: all within 20 m; g has no source (pairs with all)
    rows = [
        ("a", "O", 0.0),
        ("b", "O", 5.0),
        ("c", "O", 10.0),
        ("f", "F", 15.0),
        ("g", None, 20.0),
    ]
    points = spark.createDataFrame(
        [(i, src, 40.0, -80.0 + m / 85_000.0, None, None, None) for i, src, m in rows],
        f"{S.ID} string, {S.SOURCE} string, {S.LATITUDE} double, {S.LONGITUDE} double, "
        f"{S.N_NAME} string, {S.N_PHONE} string, {S.N_URL} string",
    )
    settings = BlockingSettings(k_nearest=1)
    linked = {(r[S.ID_L], r[S.ID_R]) for r in candidate_pairs(
        points, settings=settings, link_only=True
    ).collect()}  # fmt: skip
    # each O row's nearest row of another source is f (never its O neighbour 5 m
    # away); f's nearest non-F rows are c and g (5 m each, the smaller id wins); g,
    # without a source, takes its nearest row of any source: f
    assert linked == {("a", "f"), ("b", "f"), ("c", "f"), ("f", "g")}
    deduped = {(r[S.ID_L], r[S.ID_R]) for r in candidate_pairs(
        points, settings=settings
    ).collect()}  # fmt: skip
    assert ("a", "b") in deduped
    with pytest.raises(ValueError, match="source"):
        candidate_pairs(points.drop(S.SOURCE), settings=settings, link_only=True)


def _brute_nearest(rows: Sequence[tuple[Any, ...]], k: int) -> set[tuple[str, str]]:
    """Each row's k nearest others by haversine distance, ties by id (the reference)."""
    out = set()
    for ident, lat, lon, *_rest in rows:
        others = []
        for other, lat_o, lon_o, *_more in rows:
            if other == ident:
                continue
            p1, p2 = math.radians(lat), math.radians(lat_o)
            a = (
                math.sin((p2 - p1) / 2) ** 2
                + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon_o - lon) / 2) ** 2
            )
            others.append((2 * 6_371_008.8 * math.asin(math.sqrt(min(a, 1.0))), other))
        out |= {(ident, o) for _, o in sorted(others)[:k]}
    return out


def test_pairs_across_the_antimeridian_are_found(spark: SparkSession) -> None:
    # 11 m apart across ±180° (and +180° is -180°); the name pass too, 22 km apart
    rows = [
        ("e", 10.0, 179.99995, None, None, None),
        ("w", 10.0, -179.99995, None, None, None),
        ("p", -16.5, 180.0, None, None, None),
        ("q", -16.5, -180.0, None, None, None),
        ("n1", 60.0, 179.9, "fiji ferry", None, None),
        ("n2", 60.0, -179.9, "fiji ferry", None, None),
    ]
    spatial = BlockingSettings(cell_m=300, k_nearest=1, key_passes=())
    got = _pairs(candidate_pairs(_points(spark, rows), settings=spatial))
    assert {("e", "w"), ("p", "q")} <= got
    keyed = BlockingSettings(cell_m=300, k_nearest=1, key_passes=("name",))
    assert ("n1", "n2") in _pairs(candidate_pairs(_points(spark, rows), settings=keyed))


def test_dense_cluster_on_the_antimeridian_gives_the_exact_k_nearest(spark: SparkSession) -> None:
    # dense enough for the fine grids; every pair within 200 m < cell_m, so the k
    # nearest by brute force are what the 3x3 cells must give, across the meridian
    import random

    from poimatch.stages.blocking import _spatial_nearest

    rng = random.Random(11)
    rows = []
    for i in range(300):
        r, a = 100 * math.sqrt(rng.random()), rng.random() * 2 * math.pi
        lat = 65.0 + r * math.sin(a) * _DEG_PER_M
        lon = 180.0 + r * math.cos(a) * _DEG_PER_M / math.cos(math.radians(65.0))
        rows.append((f"r{i:03d}", lat, lon - 360.0 if lon > 180.0 else lon, None, None, None))
    assert min(r[2] for r in rows) < -179.99
    assert max(r[2] for r in rows) > 179.99
    out = _spatial_nearest(_points(spark, rows), 300.0, 5).collect()
    assert {(r[S.ID], r["_other"]) for r in out} == _brute_nearest(rows, 5)


def test_rows_at_one_coordinate_are_not_joined_quadratically(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poimatch.stages.blocking as B

    # 400 rows at one point (a geocoder's default), a row 5 m away and one with a
    # shared phone 2 km away
    k = 3
    rows = [(f"s{i:03d}", 48.0, 2.0, None, "123", None) for i in range(400)]
    rows.append(("near", 48.0 + 5 * _DEG_PER_M, 2.0, None, None, None))
    rows.append(("phone", 48.0 + 2000 * _DEG_PER_M, 2.0, None, "123", None))
    joined: list[int] = []
    original = B._near_pairs

    def counted(*args: Any, **kwargs: Any) -> DataFrame:
        out = original(*args, **kwargs)
        joined.append(out.count())
        return out

    monkeypatch.setattr(B, "_near_pairs", counted)
    settings = BlockingSettings(
        cell_m=300, k_nearest=k, key_passes=("phone",), k_key=2, max_key_group=1000
    )
    got = _pairs(candidate_pairs(_points(spark, rows), settings=settings))
    # no join holds more than k + 1 stack rows per row (400 x 399 before)
    assert len(joined) >= 2  # the spatial and the phone pass
    assert max(joined) <= len(rows) * (k + 2)
    # and the result is exact: ties at distance 0 go to the smallest ids; the far
    # phone row has no spatial neighbour, its phone pass takes the stack's 2 smallest
    spatial = _brute_nearest(rows[:401], k)
    assert {b for a, b in spatial if a == "near"} == {"s000", "s001", "s002"}
    phone = _brute_nearest(rows[:400] + rows[401:], 2)
    assert {b for a, b in phone if a == "phone"} == {"s000", "s001"}
    assert got == {(min(a, b), max(a, b)) for a, b in spatial | phone}


def test_cells_are_cut_without_a_broadcast_when_the_table_is_too_large(
    spark: SparkSession,
) -> None:
    """``broadcast_cells=False`` (``matching.broadcast_max_rows``): the same pairs, and no
    broadcast of the occupied cells (gathered on the driver) left in the plan."""
    import random

    rng = random.Random(11)
    rows = [
        (
            f"q{i:03d}",
            48.0 + rng.random() * 0.01,
            2.0 + rng.random() * 0.01,
            f"name{i % 20}",
            f"+33{i % 12}",
            None,
        )
        for i in range(150)
    ]
    points = _points(spark, rows)
    settings = BlockingSettings(cell_m=300.0, k_nearest=4, key_passes=("name", "phone"))
    before = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")  # only the explicit hints
    try:
        hinted = candidate_pairs(points, settings=settings)
        plain = candidate_pairs(points, settings=settings, broadcast_cells=False)
        hinted_plan = hinted._jdf.queryExecution().executedPlan().toString()
        plain_plan = plain._jdf.queryExecution().executedPlan().toString()
        assert "BroadcastExchange" in hinted_plan
        assert "BroadcastExchange" not in plain_plan
        got = sorted((r[S.ID_L], r[S.ID_R], r[S.PASS]) for r in plain.collect())
        assert got == sorted((r[S.ID_L], r[S.ID_R], r[S.PASS]) for r in hinted.collect())
        assert len(got) > len(rows)  # enough pairs for the comparison to mean something
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", before)


def test_a_pass_key_in_python_equals_its_spark_column(spark: SparkSession) -> None:
    """The lookup computes the uploads' keys on the driver (``pass_key_value``); they must
    be the keys the passes block on (``pass_key``), for every pass."""
    values = ["ab", "abc", "abcd", "abcdef", "starbucks café", "東京タワー展望台", "ü"]
    rows = spark.createDataFrame(
        [(v, v, v) for v in values], f"{S.N_NAME} string, {S.N_PHONE} string, {S.N_URL} string"
    )
    for name in PASS_COLUMNS:
        spark_keys = [r[0] for r in rows.select(pass_key(name)).collect()]
        assert spark_keys == [pass_key_value(name, v) for v in values], name
    assert pass_key_value("name_prefix", "abc") is None
    assert pass_key_value("name_prefix", "starbucks café") == "starbu"
