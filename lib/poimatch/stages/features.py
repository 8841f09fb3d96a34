"""Pair-feature stage: similarity features for candidate pairs of POIs.

``add_pair_features`` takes a pair table with ``id_l``, ``id_r`` and, for each
base column ``c`` in ``PAIR_SIDE_COLUMNS``, the two columns
``pair_side_col(c, "l")`` / ``pair_side_col(c, "r")`` (i.e. ``c_l`` / ``c_r``),
and adds the double columns of ``FEATURE_COLUMNS`` (all prefixed ``f_``).

A feature is **null** (never a sentinel such as -1) when it cannot be computed
because a side is missing: gradient-boosted trees treat null as "missing".

Everything is a Spark built-in expression except the fuzzy string similarities
(Jaro-Winkler, token-set, partial and plain ratios) and the Levenshtein distances,
which come from one vectorized pandas UDF returning a struct and calling
``rapidfuzz.process.cpdist`` on whole Arrow batches (the distances with Spark's
``levenshtein`` semantics: the same values, a tenth of the cost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import pandas_udf
from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler, Levenshtein
from rapidfuzz.process import cpdist

from poimatch.columns import cached_column, upper_case
from poimatch.schema import (
    COUNTRY,
    F_NAME_FREQ_MAX,
    F_NAME_FREQ_MIN,
    F_NAME_IDF_JACCARD,
    F_NAME_LEN_MAX,
    F_NAME_LEN_MIN,
    ID_L,
    ID_R,
    LATITUDE,
    LONGITUDE,
    N_ADDRESS,
    N_CATEGORIES,
    N_CITY,
    N_NAME,
    N_NAME_FREQ,
    N_NAME_IDF,
    N_NAME_TOKENS,
    N_PHONE,
    N_URL,
    N_ZIP,
)
from poimatch.stages.comparisons import BUILTIN, Comparison

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray
    from pyspark.sql._typing import UserDefinedFunctionLike

    _StrSeries = pd.Series[str]
else:  # pandas has no runtime ``Series[...]``; Spark reads these hints at runtime.
    _StrSeries = pd.Series

__all__ = [
    "EARTH_RADIUS_M",
    "KIND_BUILDERS",
    "DEFAULT_FEATURES",
    "FEATURE_COLUMNS",
    "MONOTONE",
    "PAIR_SIDE_COLUMNS",
    "SIDES",
    "SIDE_L",
    "SIDE_R",
    "add_pair_features",
    "haversine_m",
    "pair_side_col",
]

SIDE_L: Final = "l"
SIDE_R: Final = "r"
SIDES: tuple[str, ...] = (SIDE_L, SIDE_R)

EARTH_RADIUS_M = 6_371_000.0
"""Mean Earth radius used by the haversine distance, in metres."""

PAIR_SIDE_COLUMNS: tuple[str, ...] = (
    LATITUDE,
    LONGITUDE,
    N_NAME,
    N_NAME_TOKENS,
    N_ADDRESS,
    N_CITY,
    N_ZIP,
    N_PHONE,
    N_URL,
    N_CATEGORIES,
    COUNTRY,
    N_NAME_FREQ,
    N_NAME_IDF,
)
"""Base (un-suffixed) columns that a pair table needs for each side."""

FEATURE_COLUMNS: tuple[str, ...] = tuple(c.name for c in BUILTIN)
"""Every built-in feature column added by ``add_pair_features``, in model-input order
(:data:`poimatch.stages.comparisons.BUILTIN`: each one's kind, column, scorer and direction).

Each is a function of the pair's two rows and the model's frozen name statistics
only: adding or removing other rows never changes a pair's features."""

MONOTONE: dict[str, int] = {c.name: c.monotone for c in BUILTIN if c.monotone}
"""Monotone direction of each similarity feature: the score never falls as a ``+1``
feature rises or a ``-1`` feature falls (XGBoost ``monotone_constraints``). Features
not named here (name lengths and frequencies) are unconstrained: more of them is not
more or less evidence by itself."""

DEFAULT_FEATURES: tuple[str, ...] = tuple(
    c for c in FEATURE_COLUMNS if c not in (F_NAME_LEN_MIN, F_NAME_LEN_MAX)
)
"""What a model uses unless ``model.features`` says otherwise."""


def pair_side_col(col: str, side: str) -> str:
    """Name of base column ``col`` on one side of a pair: ``f"{col}_{side}"``.

    ``side`` is ``"l"`` (``SIDE_L``) or ``"r"`` (``SIDE_R``); anything else raises
    ``ValueError``.
    """
    if side not in SIDES:
        msg = f"side must be one of {SIDES}, got {side!r}"
        raise ValueError(msg)
    return f"{col}_{side}"


def _l(col: str) -> Column:
    """Left-side column of base column ``col``."""
    return F.col(pair_side_col(col, SIDE_L))


def _r(col: str) -> Column:
    """Right-side column of base column ``col``."""
    return F.col(pair_side_col(col, SIDE_R))


def _both(col: str) -> Column:
    """True when both sides of ``col`` are non-null."""
    return _l(col).isNotNull() & _r(col).isNotNull()


def _ratio(num: Column, den: Column) -> Column:
    """``num / den`` as a double; null when ``den`` is 0 or null (ANSI-safe)."""
    return F.when(den > 0, num.cast(T.DoubleType()) / den.cast(T.DoubleType()))


def _flag(cond: Column) -> Column:
    """Boolean condition as 1.0 / 0.0 (null stays null)."""
    return cond.cast(T.DoubleType())


# --- geometry -----------------------------------------------------------------


@cached_column
def haversine_m(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    """Great-circle distance in metres between two coordinates, as a Spark expression."""
    p1, p2 = F.radians(lat1), F.radians(lat2)
    dlat = p2 - p1
    dlon = F.radians(lon2) - F.radians(lon1)
    a = F.pow(F.sin(dlat / 2), 2) + F.cos(p1) * F.cos(p2) * F.pow(F.sin(dlon / 2), 2)
    # clamp rounding overshoot (a > 1 near antipodes); not F.least, which skips nulls
    a = F.when(a > 1.0, F.lit(1.0)).otherwise(a)
    return F.lit(2 * EARTH_RADIUS_M) * F.asin(F.sqrt(a))


def _haversine_m() -> Column:
    """Great-circle distance between the two sides' coordinates, in metres."""
    return haversine_m(_l(LATITUDE), _l(LONGITUDE), _r(LATITUDE), _r(LONGITUDE))


# --- generic text / set features ------------------------------------------------


def _equal(col: str, *, fold: Callable[[Column], Column] | None = None) -> Column:
    """1.0 if both sides are equal, 0.0 if they differ, null if either is missing."""
    left, right = _l(col), _r(col)
    if fold is not None:
        left, right = fold(left), fold(right)
    return _flag(left == right)


def _jaccard(left: Column, right: Column) -> Column:
    """|L n R| / |L u R| of two arrays (as sets); null if either is null."""
    inter = F.size(F.array_intersect(left, right))
    union = F.size(F.array_union(left, right))
    return F.when(left.isNotNull() & right.isNotNull(), _ratio(inter, union))


_HAS_DIGIT = r"[0-9]"
_LEADING_ZEROS = r"(?<![0-9])0+(?=[0-9])"


def _numbers(text: Column) -> Column:
    """Sorted distinct digit runs of a string, leading zeros dropped (``[""]`` if none)."""
    runs = F.regexp_replace(F.regexp_replace(text, r"[^0-9]+", " "), _LEADING_ZEROS, "")
    return F.array_sort(F.array_distinct(F.split(F.trim(runs), " ")))


def _number_match(col: str) -> Column:
    """1.0 if both sides hold the same set of numbers, 0.0 if both hold numbers
    and the sets differ, null otherwise (no digit on a side, or missing)."""
    both_have = _l(col).rlike(_HAS_DIGIT) & _r(col).rlike(_HAS_DIGIT)
    return F.when(both_have, _flag(_numbers(_l(col)) == _numbers(_r(col))))


def _fold_country(c: Column) -> Column:
    """Trimmed, uppercase country code; null when blank."""
    return F.when(F.length(F.trim(c)) > 0, upper_case(F.trim(c)))


_VOTING_FIELDS: tuple[str, ...] = (N_NAME, N_ADDRESS, N_CITY, N_ZIP, N_PHONE, N_URL)


def _field_votes(*, agree: bool) -> Column:
    """How many of the name, address, city, zip, phone, url and category fields both
    rows fill and agree on (``agree``) or both fill and disagree on; 0 when none."""
    votes = [_equal(c) for c in _VOTING_FIELDS]
    votes.append(_flag(_l(N_CATEGORIES) == _r(N_CATEGORIES)))
    target = F.lit(1.0 if agree else 0.0)
    return sum((F.when(v == target, F.lit(1.0)).otherwise(F.lit(0.0)) for v in votes), F.lit(0.0))


def _values_sum(weights: Column) -> Column:
    """The sum of a token -> weight map's weights, in key order (null for a null map)."""
    return F.aggregate(F.map_values(weights), F.lit(0.0), lambda acc, w: acc + w)


def _name_stat_features() -> dict[str, Column]:
    """Name frequency (log, rarer and commoner side) and IDF-weighted token Jaccard,
    from the frozen name statistics on each side (:mod:`poimatch.stages.namestats`)."""
    idf_l, idf_r = _l(N_NAME_IDF), _r(N_NAME_IDF)
    keys_r = F.map_keys(idf_r)
    # sums of map values in key order: the same additions, in the same order, as looking
    # each key up (a map lookup scans its keys: quadratic per pair, a quarter of the
    # Spark features' time)
    inter = _values_sum(F.map_filter(idf_l, lambda k, _: F.array_contains(keys_r, k)))
    union = _values_sum(idf_l) + _values_sum(idf_r) - inter
    freq_l, freq_r = _l(N_NAME_FREQ), _r(N_NAME_FREQ)
    return {
        F_NAME_FREQ_MIN: F.log1p(F.least(freq_l, freq_r)),
        F_NAME_FREQ_MAX: F.log1p(F.greatest(freq_l, freq_r)),
        F_NAME_IDF_JACCARD: F.when(union > 0, inter / union),
    }


# --- fuzzy similarities (one vectorized UDF) ------------------------------------

_FUZZY_STRUCT = "__poimatch_fuzzy"


def _scaled(scorer: Callable[..., float], scale: float) -> Callable[..., NDArray[np.float64]]:
    """Row-aligned scores of a rapidfuzz function (``cpdist``), divided by ``scale``."""

    def score(lefts: list[str], rights: list[str]) -> NDArray[np.float64]:
        found: NDArray[np.float64] = cpdist(
            lefts, rights, scorer=scorer, dtype=np.float64, workers=1
        )
        return found / scale

    return score


def _levenshtein_norm(lefts: list[str], rights: list[str]) -> NDArray[np.float64]:
    """``levenshtein(l, r) / greatest(length(l), length(r))`` as Spark computes it (code
    points); NaN (null) when both strings are empty."""
    distance = _scaled(Levenshtein.distance, 1.0)(lefts, rights)
    longest = np.maximum(_lengths(lefts), _lengths(rights)).astype(np.float64)
    return np.divide(distance, longest, out=np.full_like(distance, np.nan), where=longest > 0)


def _lengths(texts: list[str]) -> NDArray[np.int64]:
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))


#: what the UDF computes, per ``fuzzy`` scorer (a rapidfuzz function scaled to [0, 1])
#: and per other kind it scores: the Levenshtein kinds, with Spark's semantics (edit
#: distance in code points, null where Spark's is null). rapidfuzz's batched distance
#: costs a fraction of Spark's a pair, and the strings travel to the UDF anyway.
_UDF_SCORERS: dict[str, Callable[..., NDArray[np.float64]]] = {
    "jaro_winkler": _scaled(JaroWinkler.normalized_similarity, 1.0),
    "token_set": _scaled(fuzz.token_set_ratio, 100.0),
    "token_sort": _scaled(fuzz.token_sort_ratio, 100.0),
    "partial": _scaled(fuzz.partial_ratio, 100.0),
    "ratio": _scaled(fuzz.ratio, 100.0),
    "wratio": _scaled(fuzz.WRatio, 100.0),
    "levenshtein": _scaled(Levenshtein.distance, 1.0),
    "levenshtein_norm": _levenshtein_norm,
}
#: the comparison kinds the UDF scores (every other kind is a :data:`KIND_BUILDERS` expression)
_UDF_KINDS = frozenset({"fuzzy", "levenshtein", "levenshtein_norm"})


def _score_pairs(
    left: _StrSeries, right: _StrSeries, scorers: tuple[tuple[str, str], ...]
) -> dict[str, NDArray[np.float64]]:
    """Score row-aligned string pairs with each ``(output name, scorer name)``; NaN
    where a side is null."""
    mask = (left.notna() & right.notna()).to_numpy()
    lefts = left[mask].tolist()
    rights = right[mask].tolist()
    out: dict[str, NDArray[np.float64]] = {}
    for name, scorer in scorers:
        scores = np.full(len(mask), np.nan, dtype=np.float64)
        if lefts:
            scores[mask] = _UDF_SCORERS[scorer](lefts, rights)
        out[name] = scores
    return out


def _udf_scorer(c: Comparison) -> str:
    """The name the UDF looks ``c``'s function up by: its scorer, or its kind."""
    return str(c.scorer) if c.kind == "fuzzy" else c.kind


def _fuzzy_udf(fuzzy: tuple[Comparison, ...]) -> tuple[tuple[str, ...], UserDefinedFunctionLike]:
    """The base columns the UDF's comparisons (``fuzzy`` and the other
    :data:`_UDF_KINDS`) read and one vectorized pandas UDF
    scoring all of them on whole Arrow batches (``rapidfuzz.process.cpdist``): its
    arguments are each column's left and right side, its result a struct of one
    double per comparison (the fuzzy ones in [0, 1]), null when a side is null."""
    columns = tuple(dict.fromkeys(str(c.column) for c in fuzzy))
    # only names travel with the UDF (rapidfuzz's functions do not pickle): each batch
    # looks its scorers up in this module on the worker
    plan = tuple(
        (column, tuple((c.name, _udf_scorer(c)) for c in fuzzy if c.column == column))
        for column in columns
    )
    names = [c.name for c in fuzzy]

    def batch(*sides: _StrSeries) -> pd.DataFrame:
        from poimatch.stages.features import _score_pairs

        scores: dict[str, NDArray[np.float64]] = {}
        for i, (_, named) in enumerate(plan):
            scores.update(_score_pairs(sides[2 * i], sides[2 * i + 1], named))
        return pd.DataFrame({n: scores[n] for n in names}, index=sides[0].index)

    result = T.StructType([T.StructField(n, T.DoubleType(), True) for n in names])
    # pyspark's stubs lack the form ``pandas_udf(f, returnType)`` with *args, hence the ignore
    udf: UserDefinedFunctionLike = pandas_udf(batch, result)  # type: ignore[call-overload]
    return columns, udf


# --- entry point ------------------------------------------------------------------


def _missing_columns(pairs: DataFrame) -> list[str]:
    needed = [ID_L, ID_R] + [pair_side_col(c, s) for c in PAIR_SIDE_COLUMNS for s in SIDES]
    present = set(pairs.columns)
    return [c for c in needed if c not in present]


def add_pair_features(pairs: DataFrame, added: tuple[Comparison, ...] = ()) -> DataFrame:
    """Add the ``FEATURE_COLUMNS`` and the ``added`` comparisons' columns (doubles, null
    when a side is missing) to ``pairs``.

    ``pairs`` must hold ``id_l``, ``id_r`` and ``pair_side_col(c, side)`` for every
    ``c`` in ``PAIR_SIDE_COLUMNS`` and both sides; other columns are kept.
    Features: haversine distance (metres) and its ``log1p``; name Levenshtein
    (raw and divided by the longer name), Jaro-Winkler, token-set / partial /
    plain ratios (rapidfuzz, scaled to [0, 1]), containment, token Jaccard and
    overlap coefficient, soundex equality, equality of the numbers in the names,
    shorter / longer name length; address token-set ratio, normalized
    Levenshtein and house-number equality; equality of city, zip, phone, url and
    country (1.0 / 0.0); category-set Jaccard; each one a
    :class:`poimatch.stages.comparisons.Comparison` built by :data:`KIND_BUILDERS`.

    Raises ``ValueError`` if a needed column is missing (checked on the schema,
    no Spark job is run) or an added comparison takes a built-in's name.
    """
    missing = _missing_columns(pairs)
    if missing:
        msg = f"add_pair_features: missing columns {missing}"
        raise ValueError(msg)
    clash = [c.name for c in added if c.name in FEATURE_COLUMNS]
    if clash:
        raise ValueError(f"add_pair_features: {clash} are built-in features")
    fuzzy_struct, features = _feature_expressions(*added)
    return pairs.withColumn(_FUZZY_STRUCT, fuzzy_struct).withColumns(features).drop(_FUZZY_STRUCT)


def _set_overlap(col: str) -> Column:
    left, right = _l(col), _r(col)
    return F.when(
        left.isNotNull() & right.isNotNull(),
        _ratio(
            F.size(F.array_intersect(left, right)),
            F.least(F.size(F.array_distinct(left)), F.size(F.array_distinct(right))),
        ),
    )


def _length(col: str, pick: Callable[..., Column]) -> Column:
    return F.when(_both(col), pick(F.length(_l(col)), F.length(_r(col))))


def _column(c: Comparison) -> str:
    return str(c.column)


#: The Spark expression of each kind of comparison but the UDF's (:data:`_UDF_KINDS`).
KIND_BUILDERS: dict[str, Callable[[Comparison], Column]] = {
    "distance_m": lambda c: _haversine_m(),
    "log_distance_m": lambda c: F.log1p(_haversine_m()),
    "contains": lambda c: _flag(
        _l(_column(c)).contains(_r(_column(c))) | _r(_column(c)).contains(_l(_column(c)))
    ),
    "soundex_equal": lambda c: _flag(F.soundex(_l(_column(c))) == F.soundex(_r(_column(c)))),
    "number_match": lambda c: _number_match(_column(c)),
    "length_min": lambda c: _length(_column(c), F.least),
    "length_max": lambda c: _length(_column(c), F.greatest),
    "equal": lambda c: _equal(_column(c)),
    "code_equal": lambda c: _equal(_column(c), fold=_fold_country),
    "set_jaccard": lambda c: _jaccard(_l(_column(c)), _r(_column(c))),
    "set_overlap": lambda c: _set_overlap(_column(c)),
    "fields_agree": lambda c: _field_votes(agree=True),
    "fields_disagree": lambda c: _field_votes(agree=False),
    "name_freq_min": lambda c: _name_stat_features()[F_NAME_FREQ_MIN],
    "name_freq_max": lambda c: _name_stat_features()[F_NAME_FREQ_MAX],
    "name_idf_jaccard": lambda c: _name_stat_features()[F_NAME_IDF_JACCARD],
}


@cached_column
def _feature_expressions(*added: Comparison) -> tuple[Column, dict[str, Column]]:
    """The rapidfuzz UDF's struct and every feature's expression, built-in then added
    (built once per context and set of added comparisons)."""
    comparisons = BUILTIN + added
    in_udf = tuple(c for c in comparisons if c.kind in _UDF_KINDS)
    columns, udf = _fuzzy_udf(in_udf)
    struct = F.col(_FUZZY_STRUCT)
    features = {
        c.name: (struct.getField(c.name) if c.kind in _UDF_KINDS else KIND_BUILDERS[c.kind](c))
        for c in comparisons
    }
    sides = [side for column in columns for side in (_l(column), _r(column))]
    return udf(*sides), {c.name: features[c.name].cast(T.DoubleType()) for c in comparisons}
