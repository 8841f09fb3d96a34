"""Normalization stage: fold the raw POI text columns into comparable forms.

``add_normalized_columns`` keeps every input column and adds the ``n_*`` columns
named in :mod:`poimatch.schema`:

* ``n_name``, ``n_address``, ``n_city``: Unicode NFKC, transliterated to ASCII
  (``anyascii``), lowercase, apostrophes dropped, other punctuation turned into
  spaces, whitespace collapsed, ``&`` spelled ``and`` and common abbreviations
  unified to one short form (``street``/``str``/``st``/``saint`` -> ``st``,
  ``avenue``/``ave``/``av`` -> ``ave``, ``rest``/``resto`` -> ``restaurant``...,
  see ``_ABBREVIATIONS``). A leading ``the`` is dropped from names only. Digits
  are kept. An empty result is null. The three columns are computed by a single
  vectorized pandas UDF returning a struct (one Arrow round trip for all three).
* ``n_name_tokens``: ``n_name`` split on spaces (null when ``n_name`` is null).
* ``n_zip``: uppercase ASCII alphanumerics only; null when empty.
* ``n_phone``: digits only, then the last 9 of them, so that country / trunk
  prefixes (``+1``, ``0``) do not matter; null when fewer than 6 digits.
* ``n_url``: the host only (no scheme, user info, ``www.``, port, path, query
  or fragment), lowercase; null when empty.
* ``n_categories``: ``array<string>`` of the comma-separated categories,
  trimmed, lowercase, distinct and sorted. **Null** (never an empty array) when
  the input is null or holds no non-blank category, so "missing" has a single
  representation downstream.
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd
from anyascii import anyascii
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import pandas_udf

from poimatch.columns import cached_column, lower_case
from poimatch.schema import (
    ADDRESS,
    CATEGORIES,
    CITY,
    N_ADDRESS,
    N_CATEGORIES,
    N_CITY,
    N_NAME,
    N_NAME_TOKENS,
    N_PHONE,
    N_URL,
    N_ZIP,
    NAME,
    PHONE,
    URL,
    ZIP,
)

if TYPE_CHECKING:
    from pyspark.sql._typing import UserDefinedFunctionLike

    _StrSeries = pd.Series[str]
else:  # pandas has no runtime ``Series[...]``; Spark reads these hints at runtime.
    _StrSeries = pd.Series

__all__ = [
    "PHONE_MIN_DIGITS",
    "PHONE_TAIL_DIGITS",
    "add_normalized_columns",
    "fold_text",
]

PHONE_TAIL_DIGITS = 9
"""``n_phone`` keeps this many trailing digits."""
PHONE_MIN_DIGITS = 6
"""A phone with fewer digits than this is treated as missing."""

# Every variant maps to one canonical (short) form; applied token by token.
_ABBREVIATIONS: dict[str, str] = {
    # street types
    "street": "st",
    "str": "st",
    "strasse": "st",
    "saint": "st",
    "sainte": "st",
    "avenue": "ave",
    "av": "ave",
    "avenida": "ave",
    "avda": "ave",
    "road": "rd",
    "boulevard": "blvd",
    "drive": "dr",
    "lane": "ln",
    "place": "pl",
    "square": "sq",
    "highway": "hwy",
    "court": "ct",
    "parkway": "pkwy",
    "terrace": "ter",
    "jalan": "jl",
    "jln": "jl",
    "mount": "mt",
    "fort": "ft",
    # compass points
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    # building / business words
    "floor": "fl",
    "suite": "ste",
    "building": "bldg",
    "centre": "center",
    "ctr": "center",
    "rest": "restaurant",
    "resto": "restaurant",
    "restaurante": "restaurant",
    "international": "intl",
    "university": "univ",
    "company": "co",
    "corporation": "corp",
    "incorporated": "inc",
    "limited": "ltd",
    "&": "and",
}
# Resolve any chain (a -> b, b -> c) once so that folding is idempotent.
_ABBREVIATIONS = {k: _ABBREVIATIONS.get(v, v) for k, v in _ABBREVIATIONS.items()}

_APOSTROPHES = re.compile(r"['`\u2019]")
_NON_ALNUM = re.compile(r"[^a-z0-9&]+")
_AMPERSAND = re.compile(r"&")
_LEADING_ARTICLES = frozenset({"the"})

_FOLD_CACHE_SIZE = 1 << 17

_FOLDED_NAME = "name"
_FOLDED_ADDRESS = "address"
_FOLDED_CITY = "city"
_FOLDED_STRUCT = "__poimatch_folded"
_FOLDED_TYPE = T.StructType(
    [
        T.StructField(_FOLDED_NAME, T.StringType(), True),
        T.StructField(_FOLDED_ADDRESS, T.StringType(), True),
        T.StructField(_FOLDED_CITY, T.StringType(), True),
    ]
)

# host = after optional scheme and user info, optional "www." / "www2.", up to : / ? #
_URL_HOST = r"^(?:[a-z][a-z0-9+.\-]*://)?(?:[^@/?#]*@)?(?:www\d*\.)?([^/:?#\s]*)"


@lru_cache(maxsize=_FOLD_CACHE_SIZE)
def fold_text(text: str, *, drop_leading_article: bool = False) -> str | None:
    """Fold one string for comparison (the per-value kernel of the folded columns).

    NFKC, ASCII transliteration, lowercase, apostrophes removed, punctuation to
    spaces, ``&`` -> ``and``, abbreviations unified, whitespace collapsed. With
    ``drop_leading_article`` a leading ``the`` is removed when other tokens remain.
    Returns ``None`` when nothing is left. Cached: POI text repeats a lot.
    """
    if text.isascii():  # NFKC and transliteration leave ASCII as it is
        ascii_text = text.lower()
    else:
        ascii_text = anyascii(unicodedata.normalize("NFKC", text)).lower()
    ascii_text = _APOSTROPHES.sub("", ascii_text)
    ascii_text = _AMPERSAND.sub(" & ", ascii_text)
    tokens = [_ABBREVIATIONS.get(t, t) for t in _NON_ALNUM.sub(" ", ascii_text).split()]
    if drop_leading_article and len(tokens) > 1 and tokens[0] in _LEADING_ARTICLES:
        tokens = tokens[1:]
    return " ".join(tokens) or None


def _fold_series(values: _StrSeries, *, drop_leading_article: bool) -> _StrSeries:
    """Fold a pandas Series, computing each distinct non-null value once.

    Returns an object Series with ``None`` for nulls (an all-null float Series would
    not convert to an Arrow string column).
    """
    uniques = values.dropna().unique()
    mapping = {v: fold_text(v, drop_leading_article=drop_leading_article) for v in uniques}
    folded: _StrSeries = values.map(mapping).astype(object)
    folded[folded.isna()] = None
    return folded


def _fold_batch(name: _StrSeries, address: _StrSeries, city: _StrSeries) -> pd.DataFrame:
    """Vectorized folding of name, address and city in one Arrow round trip."""
    return pd.DataFrame(
        {
            _FOLDED_NAME: _fold_series(name, drop_leading_article=True),
            _FOLDED_ADDRESS: _fold_series(address, drop_leading_article=False),
            _FOLDED_CITY: _fold_series(city, drop_leading_article=False),
        }
    )


# pyspark's stubs lack the type-hint form ``pandas_udf(returnType)``, hence the ignore;
# the eval type (Series... -> DataFrame, i.e. scalar to struct) comes from the hints.
_fold_udf: UserDefinedFunctionLike = pandas_udf(_FOLDED_TYPE)(_fold_batch)  # type: ignore[call-overload]


def _null_if_empty(col: Column) -> Column:
    return F.when(F.length(col) > 0, col)


def _zip_expr() -> Column:
    # only ASCII letters and digits are left: translate is upper case without Spark's
    # case tables (see poimatch.columns.lower_case)
    kept = F.regexp_replace(F.col(ZIP), r"[^0-9A-Za-z]", "")
    return _null_if_empty(F.translate(kept, string.ascii_lowercase, string.ascii_uppercase))


def _phone_expr() -> Column:
    digits = F.regexp_replace(F.col(PHONE), r"[^0-9]", "")
    return F.when(F.length(digits) >= PHONE_MIN_DIGITS, F.right(digits, F.lit(PHONE_TAIL_DIGITS)))


def _url_expr() -> Column:
    host = F.regexp_extract(lower_case(F.trim(F.col(URL))), _URL_HOST, 1)
    return _null_if_empty(F.regexp_replace(host, r"\.+$", ""))


def _categories_expr() -> Column:
    parts = F.transform(F.split(F.col(CATEGORIES), ","), lambda c: lower_case(F.trim(c)))
    cats = F.array_sort(F.array_distinct(F.filter(parts, lambda c: F.length(c) > 0)))
    return F.when(F.size(cats) > 0, cats)


def add_normalized_columns(df: DataFrame) -> DataFrame:
    """Add the ``n_*`` comparison columns (see the module docstring); keep the rest.

    Needs the string columns name, address, city, zip, phone, url, categories.
    Pure: lazy transformations only, chainable with ``df.transform``.
    """
    fold, columns, tokens = _normalized_expressions()
    return (
        df.withColumn(_FOLDED_STRUCT, fold)
        .withColumns(columns)
        .withColumn(N_NAME_TOKENS, tokens)
        .drop(_FOLDED_STRUCT)
    )


@cached_column
def _normalized_expressions() -> tuple[Column, dict[str, Column], Column]:
    """The folding UDF, the ``n_*`` expressions and the name tokens (once per context)."""
    folded = F.col(_FOLDED_STRUCT)
    columns = {
        N_NAME: folded.getField(_FOLDED_NAME),
        N_ADDRESS: folded.getField(_FOLDED_ADDRESS),
        N_CITY: folded.getField(_FOLDED_CITY),
        N_ZIP: _zip_expr(),
        N_PHONE: _phone_expr(),
        N_URL: _url_expr(),
        N_CATEGORIES: _categories_expr(),
    }
    fold = _fold_udf(F.col(NAME), F.col(ADDRESS), F.col(CITY))
    return fold, columns, F.split(F.col(N_NAME), " ")
