"""Tests of poimatch.stages.features: pair layout helpers and every pair feature."""

from __future__ import annotations

import math
from typing import Any

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.stages.features import (
    DEFAULT_FEATURES,
    FEATURE_COLUMNS,
    MONOTONE,
    PAIR_SIDE_COLUMNS,
    SIDES,
    add_pair_features,
    pair_side_col,
)
from poimatch.stages.namestats import NameStats, add_name_stats
from poimatch.stages.normalize import add_normalized_columns

_ARRAY_COLUMNS = (S.N_NAME_TOKENS, S.N_CATEGORIES)
_DOUBLE_COLUMNS = (S.LATITUDE, S.LONGITUDE)


def _side_type(col: str) -> T.DataType:
    if col in (*_DOUBLE_COLUMNS, S.N_NAME_FREQ):
        return T.DoubleType()
    if col == S.N_NAME_IDF:
        return T.MapType(T.StringType(), T.DoubleType())
    if col in _ARRAY_COLUMNS:
        return T.ArrayType(T.StringType())
    return T.StringType()


_PAIR_SCHEMA = T.StructType(
    [T.StructField(S.ID_L, T.StringType()), T.StructField(S.ID_R, T.StringType())]
    + [
        T.StructField(pair_side_col(c, side), _side_type(c))
        for side in SIDES
        for c in PAIR_SIDE_COLUMNS
    ]
)

PARIS = {S.LATITUDE: 48.8566, S.LONGITUDE: 2.3522}
LONDON = {S.LATITUDE: 51.5074, S.LONGITUDE: -0.1278}


def _side(name: str | None = None, **values: Any) -> dict[str, Any]:
    """One side of a pair: n_name (tokens derived from it) plus any base column."""
    side: dict[str, Any] = {**PARIS, S.N_NAME: name}
    side[S.N_NAME_TOKENS] = name.split(" ") if name is not None else None
    side.update(values)
    return side


def _pairs(spark: SparkSession, *pairs: tuple[dict[str, Any], dict[str, Any]]) -> DataFrame:
    rows = []
    for i, (left, right) in enumerate(pairs):
        row: list[Any] = [f"l{i}", f"r{i}"]
        for values in (left, right):
            row += [values.get(c) for c in PAIR_SIDE_COLUMNS]
        rows.append(tuple(row))
    return spark.createDataFrame(rows, _PAIR_SCHEMA)


def _features(
    spark: SparkSession, columns: list[str], *pairs: tuple[dict[str, Any], dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """The given feature columns of each pair, in input order."""
    out = add_pair_features(_pairs(spark, *pairs)).orderBy(F.substring(S.ID_L, 2, 9).cast("int"))
    return [tuple(r) for r in out.select(*columns).collect()]


def _feature(
    spark: SparkSession, column: str, *pairs: tuple[dict[str, Any], dict[str, Any]]
) -> list[Any]:
    return [r[0] for r in _features(spark, [column], *pairs)]


# --- layout helpers ------------------------------------------------------------------


def test_pair_side_col() -> None:
    assert pair_side_col(S.N_NAME, "l") == "n_name_l"
    assert pair_side_col(S.LATITUDE, "r") == "latitude_r"
    with pytest.raises(ValueError, match="side"):
        pair_side_col(S.N_NAME, "x")


def test_pair_side_columns_cover_what_the_features_read() -> None:
    assert set(PAIR_SIDE_COLUMNS) == {
        S.LATITUDE,
        S.LONGITUDE,
        S.N_NAME,
        S.N_NAME_TOKENS,
        S.N_ADDRESS,
        S.N_CITY,
        S.N_ZIP,
        S.N_PHONE,
        S.N_URL,
        S.N_CATEGORIES,
        S.COUNTRY,
        S.N_NAME_FREQ,
        S.N_NAME_IDF,
    }


def test_feature_columns_are_prefixed_unique_doubles_in_order(spark: SparkSession) -> None:
    assert all(c.startswith(S.FEATURE_PREFIX) for c in FEATURE_COLUMNS)
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    pairs = _pairs(spark, (_side("a"), _side("b")))
    out = add_pair_features(pairs)
    assert out.columns == pairs.columns + list(FEATURE_COLUMNS)
    for col in FEATURE_COLUMNS:
        assert out.schema[col].dataType == T.DoubleType(), col


def test_missing_input_column_is_reported(spark: SparkSession) -> None:
    pairs = _pairs(spark, (_side("a"), _side("b"))).drop(pair_side_col(S.N_PHONE, "r"))
    with pytest.raises(ValueError, match="n_phone_r"):
        add_pair_features(pairs)


def test_is_lazy(spark: SparkSession) -> None:
    """Library transforms run no Spark job (house style: no actions)."""
    pairs = _pairs(spark, (_side("a"), _side("b")))
    sc = spark.sparkContext
    sc.setJobGroup("test_features_is_lazy", "no job expected")
    try:
        add_pair_features(pairs).schema  # noqa: B018
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert sc.statusTracker().getJobIdsForGroup("test_features_is_lazy") == []


# --- distance ----------------------------------------------------------------------


def test_haversine_paris_london(spark: SparkSession) -> None:
    (dist, log_dist), (same, log_same) = _features(
        spark,
        [S.F_DIST_M, S.F_LOG_DIST],
        (_side("a"), _side("b", **LONDON)),
        (_side("a"), _side("b")),
    )
    assert dist == pytest.approx(343_500, rel=0.005)
    assert log_dist == pytest.approx(math.log1p(dist))
    assert (same, log_same) == (0.0, 0.0)


def test_haversine_is_null_when_a_coordinate_is_missing(spark: SparkSession) -> None:
    got = _feature(spark, S.F_DIST_M, (_side("a"), _side("b", **{S.LATITUDE: None})))
    assert got == [None]


def test_haversine_antipodes_do_not_overflow_asin(spark: SparkSession) -> None:
    got = _feature(
        spark,
        S.F_DIST_M,
        (
            _side("a", **{S.LATITUDE: 0.0, S.LONGITUDE: 0.0}),
            _side("b", **{S.LATITUDE: 0.0, S.LONGITUDE: 180.0}),
        ),
    )
    assert got[0] == pytest.approx(math.pi * 6_371_000.0)


# --- names ---------------------------------------------------------------------------

_NAME_FEATURES = [
    S.F_NAME_LEV,
    S.F_NAME_LEV_NORM,
    S.F_NAME_JW,
    S.F_NAME_TOKEN_SET,
    S.F_NAME_PARTIAL,
    S.F_NAME_RATIO,
    S.F_NAME_CONTAINS,
    S.F_NAME_TOKEN_JACCARD,
    S.F_NAME_TOKEN_OVERLAP,
    S.F_NAME_SOUNDEX_EQ,
    S.F_NAME_NUM_MATCH,
    S.F_NAME_LEN_MIN,
    S.F_NAME_LEN_MAX,
]


def test_name_features(spark: SparkSession) -> None:
    got = add_pair_features(
        _pairs(
            spark,
            (_side("kitten"), _side("sitting")),
            (_side("starbucks coffee"), _side("coffee starbucks")),
            (_side("starbucks"), _side("starbucks coffee")),
            (_side("7 eleven 123"), _side("7 eleven 456")),
            (_side("route 066"), _side("route 66")),
            (_side("robert"), _side("rupert")),
        )
    ).select(S.ID_L, *_NAME_FEATURES)
    expected = spark.createDataFrame(
        [
            # lev, lev_norm, jw, token_set, partial, ratio, contains, jaccard, overlap,
            # soundex, num_match, len_min, len_max
            ("l0", 3.0, 3 / 7, 0.746032, 0.615385, 0.666667, 0.615385, 0.0, 0.0, 0.0, 0.0,
             None, 6.0, 7.0),
            ("l1", 14.0, 14 / 16, 0.640152, 1.0, 0.72, 0.5625, 0.0, 1.0, 1.0, 0.0, None,
             16.0, 16.0),
            ("l2", 7.0, 7 / 16, 0.9125, 1.0, 1.0, 0.72, 1.0, 0.5, 1.0, 1.0, None, 9.0, 16.0),
            ("l3", 3.0, 0.25, 0.9, 0.8, 0.857143, 0.75, 0.0, 0.5, 2 / 3, 0.0, 0.0, 12.0, 12.0),
            ("l4", 1.0, 1 / 9, 0.977778, 0.941176, 0.875, 0.941176, 0.0, 1 / 3, 0.5, 1.0, 1.0,
             8.0, 9.0),
            ("l5", 2.0, 2 / 6, 0.8, 0.666667, 0.666667, 0.666667, 0.0, 0.0, 0.0, 1.0, None,
             6.0, 6.0),
        ],
        got.schema,
    )  # fmt: skip
    assert_approx_df_equality(
        got, expected, precision=1e-5, ignore_nullable=True, ignore_row_order=True
    )


def test_name_features_are_null_when_a_name_is_missing(spark: SparkSession) -> None:
    (row,) = _features(spark, _NAME_FEATURES, (_side("starbucks 1"), _side(None)))
    assert row == (None,) * len(_NAME_FEATURES)


# --- address, equality and set features ----------------------------------------------


def test_address_features(spark: SparkSession) -> None:
    cols = [S.F_ADDR_TOKEN_SET, S.F_ADDR_LEV_NORM, S.F_ADDR_NUM_MATCH]
    got = _features(
        spark,
        cols,
        (_side("a", **{S.N_ADDRESS: "12 main st"}), _side("b", **{S.N_ADDRESS: "main st 12"})),
        (_side("a", **{S.N_ADDRESS: "12 main st"}), _side("b", **{S.N_ADDRESS: "14 main st"})),
        (_side("a", **{S.N_ADDRESS: "main st"}), _side("b", **{S.N_ADDRESS: "main st"})),
        (_side("a", **{S.N_ADDRESS: "12 main st"}), _side("b")),
    )
    assert got[0] == (1.0, pytest.approx(0.6), 1.0)
    assert got[1] == (pytest.approx(0.9), pytest.approx(0.1), 0.0)
    assert got[2] == (1.0, 0.0, None)
    assert got[3] == (None, None, None)


_EQUALITY_CASES: list[tuple[str, str, tuple[str | None, str | None], float | None]] = [
    # (feature, base column, (left, right), expected)
    (S.F_PHONE_EQ, S.N_PHONE, ("155550132", "155550132"), 1.0),
    (S.F_PHONE_EQ, S.N_PHONE, ("155550132", "155550133"), 0.0),
    (S.F_PHONE_EQ, S.N_PHONE, ("155550132", None), None),
    (S.F_PHONE_EQ, S.N_PHONE, (None, None), None),
    (S.F_URL_EQ, S.N_URL, ("example.com", "example.com"), 1.0),
    (S.F_URL_EQ, S.N_URL, ("example.com", "example.org"), 0.0),
    (S.F_URL_EQ, S.N_URL, (None, "example.org"), None),
    (S.F_ZIP_EQ, S.N_ZIP, ("75001", "75001"), 1.0),
    (S.F_ZIP_EQ, S.N_ZIP, ("75001", "75002"), 0.0),
    (S.F_ZIP_EQ, S.N_ZIP, ("75001", None), None),
    (S.F_CITY_EQ, S.N_CITY, ("paris", "paris"), 1.0),
    (S.F_CITY_EQ, S.N_CITY, ("paris", "london"), 0.0),
    (S.F_CITY_EQ, S.N_CITY, (None, "london"), None),
    (S.F_SAME_COUNTRY, S.COUNTRY, ("FR", " fr"), 1.0),
    (S.F_SAME_COUNTRY, S.COUNTRY, ("FR", "GB"), 0.0),
    (S.F_SAME_COUNTRY, S.COUNTRY, ("FR", ""), None),
    (S.F_SAME_COUNTRY, S.COUNTRY, (None, "GB"), None),
]


def test_equality_features(spark: SparkSession) -> None:
    """All cases in one Spark job; each row only sets the column under test."""
    pairs = [
        (_side("a", **{column: left}), _side("b", **{column: right}))
        for _, column, (left, right), _ in _EQUALITY_CASES
    ]
    rows = _features(spark, list(FEATURE_COLUMNS), *pairs)
    got = [
        (feature, sides, row[FEATURE_COLUMNS.index(feature)])
        for row, (feature, _, sides, _) in zip(rows, _EQUALITY_CASES, strict=True)
    ]
    assert got == [(feature, sides, want) for feature, _, sides, want in _EQUALITY_CASES]


def test_category_jaccard(spark: SparkSession) -> None:
    cafes = ["cafes", "coffee shops"]
    got = _feature(
        spark,
        S.F_CAT_JACCARD,
        (_side("a", **{S.N_CATEGORIES: cafes}), _side("b", **{S.N_CATEGORIES: ["coffee shops"]})),
        (_side("a", **{S.N_CATEGORIES: cafes}), _side("b", **{S.N_CATEGORIES: ["banks"]})),
        (_side("a", **{S.N_CATEGORIES: cafes}), _side("b", **{S.N_CATEGORIES: cafes})),
        (_side("a", **{S.N_CATEGORIES: cafes}), _side("b")),
        (_side("a", **{S.N_CATEGORIES: []}), _side("b", **{S.N_CATEGORIES: []})),
    )
    assert got == [0.5, 0.0, 1.0, None, None]


# --- normalize -> features ---------------------------------------------------------------


def test_normalized_variants_score_as_identical(spark: SparkSession) -> None:
    """End to end: raw variants of one place, normalized, then paired, agree everywhere."""
    raw_schema = T.StructType(
        [
            T.StructField(c, T.DoubleType() if c in _DOUBLE_COLUMNS else T.StringType())
            for c in S.INPUT_COLUMNS
        ]
    )
    raw = spark.createDataFrame(
        [
            ("1", "Starbucks Coffee", 48.8566, 2.3522, "12 Main Street", "Paris", None,
             "75001", "FR", "https://www.starbucks.fr/", "+33 1 42 60 00 00",
             "Cafes, Coffee Shops"),
            ("2", "STARBUCKS  coffee!", 48.8567, 2.3522, "12, main st.", "PARIS", None,
             "75 001", "fr", "starbucks.fr", "01.42.60.00.00", "coffee shops,cafes"),
        ],
        raw_schema,
    )  # fmt: skip
    stats = NameStats(places=10, names={"starbucks coffee": 4}, tokens={"coffee": 5})
    points = add_name_stats(add_normalized_columns(raw), stats)
    left = points.where(F.col(S.ID) == "1").select(
        F.col(S.ID).alias(S.ID_L),
        *[F.col(c).alias(pair_side_col(c, "l")) for c in PAIR_SIDE_COLUMNS],
    )
    right = points.where(F.col(S.ID) == "2").select(
        F.col(S.ID).alias(S.ID_R),
        *[F.col(c).alias(pair_side_col(c, "r")) for c in PAIR_SIDE_COLUMNS],
    )
    (row,) = add_pair_features(left.crossJoin(right)).select(*FEATURE_COLUMNS).collect()
    got = row.asDict()
    assert got[S.F_DIST_M] == pytest.approx(11.1, abs=0.1)
    for col in (
        S.F_NAME_JW,
        S.F_NAME_TOKEN_SET,
        S.F_NAME_RATIO,
        S.F_NAME_TOKEN_JACCARD,
        S.F_ADDR_TOKEN_SET,
        S.F_CITY_EQ,
        S.F_ZIP_EQ,
        S.F_PHONE_EQ,
        S.F_URL_EQ,
        S.F_CAT_JACCARD,
        S.F_SAME_COUNTRY,
    ):
        assert got[col] == 1.0, col
    assert got[S.F_NAME_LEV] == 0.0
    assert got[S.F_NAME_NUM_MATCH] is None
    assert got[S.F_ADDR_NUM_MATCH] == 1.0
    # name, address, city, zip, phone, url and categories all filled and equal
    assert (got[S.F_FIELDS_AGREE], got[S.F_FIELDS_DISAGREE]) == (7.0, 0.0)
    assert got[S.F_NAME_FREQ_MIN] == got[S.F_NAME_FREQ_MAX] == pytest.approx(math.log1p(4))
    assert got[S.F_NAME_IDF_JACCARD] == 1.0


def test_number_match_compares_sets_of_numbers(spark: SparkSession) -> None:
    got = _feature(
        spark,
        S.F_NAME_NUM_MATCH,
        (_side("7 eleven 123"), _side("123 7 eleven 7")),
        (_side("pier 0"), _side("pier 00")),
        (_side("pier 0"), _side("pier 10")),
        (_side("pier 10"), _side("pier")),
    )
    assert got == [1.0, 1.0, 0.0, None]


# --- field votes, name statistics, monotone directions ----------------------------------


def test_field_votes_count_filled_fields_that_agree_or_disagree(spark: SparkSession) -> None:
    cols = [S.F_FIELDS_AGREE, S.F_FIELDS_DISAGREE]
    got = _features(
        spark,
        cols,
        # names differ; phones agree; address only on one side (no vote)
        (
            _side("a", **{S.N_PHONE: "123456789", S.N_ADDRESS: "1 main st"}),
            _side("b", **{S.N_PHONE: "123456789"}),
        ),
        # name and zip agree, url disagrees
        (
            _side("a", **{S.N_ZIP: "75001", S.N_URL: "x.com"}),
            _side("a", **{S.N_ZIP: "75001", S.N_URL: "y.com"}),
        ),
        # no name on either side: nothing votes
        (_side(None), _side(None)),
    )
    assert got == [(1.0, 1.0), (2.0, 1.0), (0.0, 0.0)]


def test_idf_jaccard_and_frequency_read_the_sides_name_statistics(spark: SparkSession) -> None:
    blue, bottle, cafe = 0.5, 2.0, 1.0
    cols = [S.F_NAME_IDF_JACCARD, S.F_NAME_FREQ_MIN, S.F_NAME_FREQ_MAX]
    got = _features(
        spark,
        cols,
        (
            _side("blue bottle", **{S.N_NAME_IDF: {"blue": blue, "bottle": bottle},
                                    S.N_NAME_FREQ: 3.0}),
            _side("blue cafe", **{S.N_NAME_IDF: {"blue": blue, "cafe": cafe},
                                  S.N_NAME_FREQ: 0.0}),
        ),
    )  # fmt: skip
    (jaccard, low, high) = got[0]
    assert jaccard == pytest.approx(blue / (blue + bottle + cafe))
    assert (low, high) == pytest.approx((0.0, math.log1p(3.0)))


def test_monotone_directions_name_only_features_that_exist() -> None:
    assert set(MONOTONE) <= set(FEATURE_COLUMNS)
    assert set(DEFAULT_FEATURES) <= set(FEATURE_COLUMNS)
    assert MONOTONE[S.F_DIST_M] == -1
    assert MONOTONE[S.F_PHONE_EQ] == MONOTONE[S.F_NAME_JW] == 1
    # frequency is not evidence either way by itself
    assert S.F_NAME_FREQ_MIN not in MONOTONE


# --- the UDF's distances and the IDF sums match Spark's own ---------------------------

_AWKWARD_NAMES: list[tuple[str | None, str | None]] = [
    ("cafe de flore", "café de flore"),
    ("", ""),  # both empty: no longer length, so no normalized distance
    ("", "abc"),
    ("a\U0001f600b", "ab"),  # an astral code point is one character, as in Spark
    ("e\u0301cole", "école"),  # combining accent against the composed letter
    ("東京タワー", "東京 タワー"),
    ("kitten", "sitting"),
    (None, "x"),
    ("x", None),
    (None, None),
]


def test_levenshtein_kinds_equal_sparks_levenshtein(spark: SparkSession) -> None:
    """The Levenshtein features come from the rapidfuzz UDF: the same values as Spark's
    ``levenshtein`` and length (code points), null where Spark's are null, exactly."""
    pairs = _pairs(
        spark,
        *[(_side(a, **{S.N_ADDRESS: a}), _side(b, **{S.N_ADDRESS: b})) for a, b in _AWKWARD_NAMES],
    )
    got = add_pair_features(pairs)
    lev = F.levenshtein(F.col("n_name_l"), F.col("n_name_r"))
    longest = F.greatest(F.length("n_name_l"), F.length("n_name_r"))
    norm = F.when(longest > 0, lev.cast("double") / longest.cast("double"))
    addr = F.levenshtein(F.col("n_address_l"), F.col("n_address_r"))
    addr_longest = F.greatest(F.length("n_address_l"), F.length("n_address_r"))
    addr_norm = F.when(addr_longest > 0, addr.cast("double") / addr_longest.cast("double"))
    rows = got.select(
        S.ID_L,
        S.F_NAME_LEV,
        S.F_NAME_LEV_NORM,
        S.F_ADDR_LEV_NORM,
        lev.cast("double").alias("lev"),
        norm.alias("norm"),
        addr_norm.alias("addr_norm"),
    ).collect()
    assert len(rows) == len(_AWKWARD_NAMES)
    for r in rows:
        assert (r[S.F_NAME_LEV], r[S.F_NAME_LEV_NORM], r[S.F_ADDR_LEV_NORM]) == (
            r["lev"],
            r["norm"],
            r["addr_norm"],
        ), r[S.ID_L]
    by_id = {r[S.ID_L]: r for r in rows}
    assert by_id["l3"][S.F_NAME_LEV] == 1.0  # one code point removed
    assert by_id["l1"][S.F_NAME_LEV_NORM] is None  # two empty names
    assert by_id["l9"][S.F_NAME_LEV] is None


def test_idf_jaccard_sums_equal_a_lookup_of_every_token(spark: SparkSession) -> None:
    """The IDF Jaccard sums map values where it once looked each key up: equal to the
    lookup formulation to the last bit, nulls included."""
    maps: list[tuple[dict[str, float] | None, dict[str, float] | None]] = [
        ({"blue": 0.1, "bottle": 2.3, "cafe": 0.7}, {"cafe": 0.7, "blue": 0.1, "bar": 1.9}),
        ({"a": 1e-9, "b": 3.0}, {"b": 3.0}),
        ({}, {"a": 1.0}),
        ({}, {}),
        (None, {"a": 1.0}),
        ({"x": 0.3}, {"y": 0.6}),
    ]
    pairs = _pairs(
        spark,
        *[(_side("n", **{S.N_NAME_IDF: a}), _side("n", **{S.N_NAME_IDF: b})) for a, b in maps],
    )

    def lookup_sum(idf: Any, tokens: Any) -> Any:
        weights = F.transform(tokens, lambda t: F.coalesce(F.element_at(idf, t), F.lit(0.0)))
        return F.aggregate(weights, F.lit(0.0), lambda acc, w: acc + w)

    idf_l, idf_r = F.col("n_name_idf_l"), F.col("n_name_idf_r")
    keys_l, keys_r = F.map_keys(idf_l), F.map_keys(idf_r)
    inter = lookup_sum(idf_l, F.array_intersect(keys_l, keys_r))
    union = lookup_sum(idf_l, keys_l) + lookup_sum(idf_r, keys_r) - inter
    reference = F.when(union > 0, inter / union)
    rows = (
        add_pair_features(pairs)
        .select(S.ID_L, S.F_NAME_IDF_JACCARD, reference.alias("ref"))
        .collect()
    )
    assert [(r[S.ID_L], r[S.F_NAME_IDF_JACCARD]) for r in rows] == [
        (r[S.ID_L], r["ref"]) for r in rows
    ]
    by_id = {r[S.ID_L]: r[S.F_NAME_IDF_JACCARD] for r in rows}
    assert by_id["l0"] == pytest.approx(0.8 / (0.1 + 2.3 + 0.7 + 1.9))
    assert by_id["l3"] is None  # no token on either side
    assert by_id["l4"] is None  # no statistics on one side
    assert by_id["l5"] == 0.0
