"""Tests of poimatch.stages.normalize: folding of names/addresses, zip, phone, url, categories."""

from __future__ import annotations

from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.columns import lower_case, upper_case
from poimatch.stages.normalize import add_normalized_columns, fold_text

_RAW_SCHEMA = T.StructType(
    [
        T.StructField(c, T.DoubleType() if c in (S.LATITUDE, S.LONGITUDE) else T.StringType())
        for c in S.INPUT_COLUMNS
    ]
)


def _raw(spark: SparkSession, *rows: dict[str, Any]) -> DataFrame:
    """Raw-layout frame; every column not given in a row is null."""
    return spark.createDataFrame(
        [tuple(row.get(c) for c in S.INPUT_COLUMNS) for row in rows], _RAW_SCHEMA
    )


def _normalized(spark: SparkSession, column: str, values: list[str | None]) -> list[Any]:
    """Normalize rows that only set the raw column behind ``column``; return its values."""
    raw_of = {
        S.N_NAME: S.NAME,
        S.N_NAME_TOKENS: S.NAME,
        S.N_ADDRESS: S.ADDRESS,
        S.N_CITY: S.CITY,
        S.N_ZIP: S.ZIP,
        S.N_PHONE: S.PHONE,
        S.N_URL: S.URL,
        S.N_CATEGORIES: S.CATEGORIES,
    }
    rows = [{S.ID: str(i), raw_of[column]: v} for i, v in enumerate(values)]
    out = add_normalized_columns(_raw(spark, *rows)).orderBy(F.col(S.ID).cast("int"))
    return [r[column] for r in out.select(column).collect()]


# --- fold_text (pure Python kernel) --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Starbucks Coffee", "starbucks coffee"),
        ("STARBUCKS  coffee!", "starbucks coffee"),
        ("Москва Кафе", "moskva kafe"),
        ("Café Müller", "cafe muller"),
        ("ＣＯＦＦＥＥ　１２３", "coffee 123"),  # full-width: NFKC
        ("McDonald's", "mcdonalds"),
        ("Ben & Jerry's", "ben and jerrys"),
        ("7-Eleven", "7 eleven"),
        ("Main Street", "main st"),
        ("Main Str.", "main st"),
        ("Saint-Germain Ave.", "st germain ave"),
        ("5th Avenue", "5th ave"),
        ("Pizza Rest.", "pizza restaurant"),
        ("Centre Commercial", "center commercial"),
        ("  \t ", None),
        ("!!!", None),
    ],
)
def test_fold_text(text: str, expected: str | None) -> None:
    assert fold_text(text) == expected


def test_fold_text_drops_leading_article_only_when_asked_and_not_alone() -> None:
    assert fold_text("The Coffee Bean", drop_leading_article=True) == "coffee bean"
    assert fold_text("The Coffee Bean") == "the coffee bean"
    assert fold_text("The", drop_leading_article=True) == "the"
    assert fold_text("Under the Bridge", drop_leading_article=True) == "under the bridge"


@pytest.mark.parametrize(
    "text", ["The Main Street Restaurant & Bar", "Suite 5, North Av.", "Sainte-Foy Rest"]
)
def test_fold_text_is_idempotent(text: str) -> None:
    once = fold_text(text, drop_leading_article=True)
    assert once is not None
    assert fold_text(once, drop_leading_article=True) == once


# --- add_normalized_columns ----------------------------------------------------------


def test_name_variants_fold_to_the_same_value(spark: SparkSession) -> None:
    got = _normalized(spark, S.N_NAME, ["Starbucks Coffee", "STARBUCKS  coffee!", None])
    assert got == ["starbucks coffee", "starbucks coffee", None]


def test_name_transliteration_and_leading_article(spark: SparkSession) -> None:
    got = _normalized(spark, S.N_NAME, ["Москва Кафе", "The Ritz & Co.", "東京タワー", "?!"])
    assert got == ["moskva kafe", "ritz and co", "dongjingtawa", None]


def test_name_tokens(spark: SparkSession) -> None:
    got = _normalized(spark, S.N_NAME_TOKENS, ["The  Coffee-Bean & Tea", "...", None])
    assert got == [["coffee", "bean", "and", "tea"], None, None]


def test_address_abbreviations_are_unified_and_numbers_kept(spark: SparkSession) -> None:
    got = _normalized(
        spark,
        S.N_ADDRESS,
        ["123 North Main Street, Suite 4", "123 N. Main St. Ste 4", "Jalan Sudirman No. 5"],
    )
    assert got == ["123 n main st ste 4", "123 n main st ste 4", "jl sudirman no 5"]


def test_city_folding(spark: SparkSession) -> None:
    got = _normalized(spark, S.N_CITY, ["Saint-Étienne", "ST. ETIENNE", "São Paulo", ""])
    assert got == ["st etienne", "st etienne", "sao paulo", None]


def test_zip(spark: SparkSession) -> None:
    got = _normalized(spark, S.N_ZIP, ["sw1a 1aa", "94103-1234", " - ", None])
    assert got == ["SW1A1AA", "941031234", None, None]


def test_phone_keeps_last_nine_digits(spark: SparkSession) -> None:
    got = _normalized(
        spark,
        S.N_PHONE,
        ["+1 (415) 555-0132", "415.555.0132", "+44 20 7946 0958", "020 7946 0958", "12345", None],
    )
    assert got == ["155550132", "155550132", "079460958", "079460958", None, None]


def test_phone_shorter_than_nine_digits_is_kept_whole(spark: SparkSession) -> None:
    assert _normalized(spark, S.N_PHONE, ["12-34-56", "(1234567)"]) == ["123456", "1234567"]


def test_url_keeps_the_domain_only(spark: SparkSession) -> None:
    got = _normalized(
        spark,
        S.N_URL,
        [
            "https://www.Example.com/en/home?x=1",
            "example.com",
            "http://user:pw@www2.shop.example.co.uk:8080/a#frag",
            "WWW.Foo.org.",
            "foo.org?q=1",
            "",
            "https://",
            None,
        ],
    )
    assert got == [
        "example.com",
        "example.com",
        "shop.example.co.uk",
        "foo.org",
        "foo.org",
        None,
        None,
        None,
    ]


def test_categories_are_a_sorted_distinct_set_or_null(spark: SparkSession) -> None:
    got = _normalized(
        spark,
        S.N_CATEGORIES,
        ["Cafes, Coffee Shops", "coffee shops,CAFES,, cafes", " , ", "", None],
    )
    assert got == [["cafes", "coffee shops"], ["cafes", "coffee shops"], None, None, None]


def test_non_ascii_categories_and_hosts_are_lowercased_as_spark_does(spark: SparkSession) -> None:
    cats = _normalized(spark, S.N_CATEGORIES, ["CAFÉS, Ünterführung,cafés", "ΟΔΟΣ", "İSTANBUL"])
    assert cats == [["cafés", "ünterführung"], ["οδος"], ["i̇stanbul"]]
    assert _normalized(spark, S.N_URL, ["HTTP://WWW.MÜNCHEN.DE/x"]) == ["münchen.de"]


_CASE_SAMPLES = [
    "Ab C-9",
    "",
    " ",
    "ÉCOLE ΟΔΟΣ",  # final sigma: context-dependent in ICU's mapping
    "İstanbul",  # one-to-many lowercase
    "straße ß",  # one-to-many uppercase
    "ǅemal ﬁ",  # title-case digraph, ligature
    "𐐀𐐨 astral",  # Deseret: outside the basic plane
    "ＡＢＣ ｄｅｆ",  # full-width
    "e\u0301 combining",
    None,
]


def test_case_helpers_equal_sparks_own_case_mapping(spark: SparkSession) -> None:
    df = spark.createDataFrame([(i, v) for i, v in enumerate(_CASE_SAMPLES)], "i int, s string")
    got = df.select(
        "i",
        lower_case(F.col("s")).alias("lower"),
        upper_case(F.col("s")).alias("upper"),
    )
    want = df.select("i", F.lower("s").alias("lower"), F.upper("s").alias("upper"))
    assert_df_equality(got, want, ignore_row_order=True)
    # and not only equal to each other: the ASCII row is mapped, the others kept intact
    rows = {r.i: (r.lower, r.upper) for r in got.collect()}
    assert rows[0] == ("ab c-9", "AB C-9")
    assert rows[3] == ("école οδος", "ÉCOLE ΟΔΟΣ")
    assert rows[len(_CASE_SAMPLES) - 1] == (None, None)


def test_keeps_original_columns_and_adds_typed_columns(spark: SparkSession) -> None:
    raw = _raw(spark, {S.ID: "1", S.NAME: "Café", S.LATITUDE: 1.0, S.LONGITUDE: 2.0})
    out = add_normalized_columns(raw)
    assert out.columns[: len(raw.columns)] == raw.columns
    types = {f.name: f.dataType for f in out.schema.fields}
    for col in (S.N_NAME, S.N_ADDRESS, S.N_CITY, S.N_ZIP, S.N_PHONE, S.N_URL):
        assert types[col] == T.StringType()
    for col in (S.N_NAME_TOKENS, S.N_CATEGORIES):
        assert isinstance(types[col], T.ArrayType)
        assert types[col].elementType == T.StringType()  # type: ignore[attr-defined]
    assert not [c for c in out.columns if c.startswith("__")]


def test_whole_rows(spark: SparkSession) -> None:
    raw = _raw(
        spark,
        {
            S.ID: "a",
            S.NAME: "The Coffee Bean",
            S.ADDRESS: "1 Main Street",
            S.CITY: "Saint Louis",
            S.ZIP: "63101",
            S.PHONE: "+1 314 555 0100",
            S.URL: "https://www.coffeebean.com/menu",
            S.CATEGORIES: "Coffee Shops, Cafes",
        },
        {S.ID: "b", S.NAME: "Pho 24"},
    )
    got = add_normalized_columns(raw).select(
        S.ID,
        S.N_NAME,
        S.N_NAME_TOKENS,
        S.N_ADDRESS,
        S.N_CITY,
        S.N_ZIP,
        S.N_PHONE,
        S.N_URL,
        S.N_CATEGORIES,
    )
    expected = spark.createDataFrame(
        [
            (
                "a",
                "coffee bean",
                ["coffee", "bean"],
                "1 main st",
                "st louis",
                "63101",
                "145550100",
                "coffeebean.com",
                ["cafes", "coffee shops"],
            ),
            ("b", "pho 24", ["pho", "24"], None, None, None, None, None, None),
        ],
        got.schema,
    )
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_is_lazy(spark: SparkSession) -> None:
    """Library transforms run no Spark job (house style: no actions)."""
    raw = _raw(spark, {S.ID: "1", S.NAME: "x"})
    sc = spark.sparkContext
    sc.setJobGroup("test_normalize_is_lazy", "no job expected")
    try:
        add_normalized_columns(raw).schema  # noqa: B018
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert sc.statusTracker().getJobIdsForGroup("test_normalize_is_lazy") == []
