"""Comparisons: each pair feature as configuration, resolved through a registry of builders.

A :class:`Comparison` names a feature column (``f_...``), the **kind** of comparison,
the base column it compares on the two sides of a pair (a column of
:data:`poimatch.stages.features.PAIR_SIDE_COLUMNS`: the normalized name, address, city,
phone... or a token array), the **scorer** for the fuzzy kind (a rapidfuzz function)
and the **monotone** direction the model must respect (+1: more similar is never less
likely a match; -1: the opposite, e.g. a distance; 0: unconstrained).

The built-in features (:data:`BUILTIN`) are such records; ``model.comparisons`` in the
configuration adds more without code::

    model:
      comparisons:
        - {name: f_addr_jw, kind: fuzzy, column: n_address, scorer: jaro_winkler, monotone: 1}

A model's matching spec records the full definition of every feature it uses, so a
model trained with an added comparison computes it wherever it is loaded. The Spark
expression of each kind is built by :mod:`poimatch.stages.features` (``KIND_BUILDERS``,
or its one UDF for the fuzzy and Levenshtein kinds);
this module holds only the definitions and their rules, and imports no Spark.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from poimatch import schema as S

__all__ = [
    "ARRAY_COLUMNS",
    "BUILTIN",
    "BUILTIN_NAMES",
    "KINDS",
    "SCORERS",
    "STRING_COLUMNS",
    "Comparison",
    "builtin",
    "definitions",
]

#: Side columns holding normalized text (compared as strings).
STRING_COLUMNS: tuple[str, ...] = (
    S.N_NAME,
    S.N_ADDRESS,
    S.N_CITY,
    S.N_ZIP,
    S.N_PHONE,
    S.N_URL,
    S.COUNTRY,
)
#: Side columns holding token arrays (compared as sets).
ARRAY_COLUMNS: tuple[str, ...] = (S.N_NAME_TOKENS, S.N_CATEGORIES)

#: rapidfuzz scorers of the ``fuzzy`` kind, each scaled to [0, 1].
SCORERS: tuple[str, ...] = (
    "jaro_winkler",
    "token_set",
    "token_sort",
    "partial",
    "ratio",
    "wratio",
)

_ON_STRINGS = (
    "levenshtein",
    "levenshtein_norm",
    "fuzzy",
    "contains",
    "soundex_equal",
    "number_match",
    "length_min",
    "length_max",
    "equal",
    "code_equal",
)
_ON_ARRAYS = ("set_jaccard", "set_overlap")
_NO_COLUMN = (
    "distance_m",
    "log_distance_m",
    "fields_agree",
    "fields_disagree",
    "name_freq_min",
    "name_freq_max",
    "name_idf_jaccard",
)
#: Every kind of comparison, by what it reads.
KINDS: tuple[str, ...] = _ON_STRINGS + _ON_ARRAYS + _NO_COLUMN


class Comparison(BaseModel):
    """One pair feature: ``name`` = ``kind`` of ``column`` (with ``scorer``), ``monotone``.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the problem: a name
    without the ``f_`` prefix, an unknown kind or scorer, a column the kind cannot
    read (or one given to a kind that reads none), a scorer outside ``fuzzy``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^f_[a-z0-9_]+$")
    kind: str
    column: str | None = None
    scorer: str | None = None
    monotone: Literal[-1, 0, 1] = 0

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown kind {value!r}; known: {', '.join(KINDS)}")
        return value

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str | None) -> str | None:
        if value is not None and value not in SCORERS:
            raise ValueError(f"unknown scorer {value!r}; known: {', '.join(SCORERS)}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> Comparison:
        if self.kind in _NO_COLUMN:
            if self.column is not None:
                raise ValueError(f"{self.name}: kind {self.kind} reads no column")
        elif self.kind in _ON_ARRAYS:
            if self.column not in ARRAY_COLUMNS:
                raise ValueError(
                    f"{self.name}: kind {self.kind} needs a token-array column, one of "
                    f"{list(ARRAY_COLUMNS)} (got {self.column!r})"
                )
        elif self.column not in STRING_COLUMNS:
            raise ValueError(
                f"{self.name}: kind {self.kind} needs a text column, one of "
                f"{list(STRING_COLUMNS)} (got {self.column!r})"
            )
        if (self.kind == "fuzzy") != (self.scorer is not None):
            raise ValueError(
                f"{self.name}: a scorer ({', '.join(SCORERS)}) goes with kind fuzzy, and only there"
            )
        return self


def _c(
    name: str, kind: str, column: str | None = None, *, scorer: str | None = None, m: int = 0
) -> Comparison:
    return Comparison.model_validate(
        {"name": name, "kind": kind, "column": column, "scorer": scorer, "monotone": m}
    )


#: The built-in features, in model-input order (``poimatch.stages.features.FEATURE_COLUMNS``).
BUILTIN: tuple[Comparison, ...] = (
    _c(S.F_DIST_M, "distance_m", m=-1),
    _c(S.F_LOG_DIST, "log_distance_m", m=-1),
    _c(S.F_NAME_LEV, "levenshtein", S.N_NAME, m=-1),
    _c(S.F_NAME_LEV_NORM, "levenshtein_norm", S.N_NAME, m=-1),
    _c(S.F_NAME_JW, "fuzzy", S.N_NAME, scorer="jaro_winkler", m=1),
    _c(S.F_NAME_TOKEN_SET, "fuzzy", S.N_NAME, scorer="token_set", m=1),
    _c(S.F_NAME_PARTIAL, "fuzzy", S.N_NAME, scorer="partial", m=1),
    _c(S.F_NAME_RATIO, "fuzzy", S.N_NAME, scorer="ratio", m=1),
    _c(S.F_NAME_CONTAINS, "contains", S.N_NAME, m=1),
    _c(S.F_NAME_TOKEN_JACCARD, "set_jaccard", S.N_NAME_TOKENS, m=1),
    _c(S.F_NAME_TOKEN_OVERLAP, "set_overlap", S.N_NAME_TOKENS, m=1),
    _c(S.F_NAME_SOUNDEX_EQ, "soundex_equal", S.N_NAME, m=1),
    _c(S.F_NAME_NUM_MATCH, "number_match", S.N_NAME, m=1),
    _c(S.F_NAME_LEN_MIN, "length_min", S.N_NAME),
    _c(S.F_NAME_LEN_MAX, "length_max", S.N_NAME),
    _c(S.F_ADDR_TOKEN_SET, "fuzzy", S.N_ADDRESS, scorer="token_set", m=1),
    _c(S.F_ADDR_LEV_NORM, "levenshtein_norm", S.N_ADDRESS, m=-1),
    _c(S.F_ADDR_NUM_MATCH, "number_match", S.N_ADDRESS, m=1),
    _c(S.F_CITY_EQ, "equal", S.N_CITY, m=1),
    _c(S.F_ZIP_EQ, "equal", S.N_ZIP, m=1),
    _c(S.F_PHONE_EQ, "equal", S.N_PHONE, m=1),
    _c(S.F_URL_EQ, "equal", S.N_URL, m=1),
    _c(S.F_CAT_JACCARD, "set_jaccard", S.N_CATEGORIES, m=1),
    _c(S.F_SAME_COUNTRY, "code_equal", S.COUNTRY, m=1),
    _c(S.F_FIELDS_AGREE, "fields_agree", m=1),
    _c(S.F_FIELDS_DISAGREE, "fields_disagree", m=-1),
    _c(S.F_NAME_FREQ_MIN, "name_freq_min"),
    _c(S.F_NAME_FREQ_MAX, "name_freq_max"),
    _c(S.F_NAME_IDF_JACCARD, "name_idf_jaccard", m=1),
)
BUILTIN_NAMES: frozenset[str] = frozenset(c.name for c in BUILTIN)
_BY_NAME = {c.name: c for c in BUILTIN}


def builtin(name: str) -> Comparison:
    """The built-in comparison ``name``; ``KeyError`` if there is none."""
    return _BY_NAME[name]


def definitions(
    features: tuple[str, ...], added: tuple[Comparison, ...] = ()
) -> tuple[Comparison, ...]:
    """The full definition of each of ``features``: a built-in's, or one of ``added``.

    Raises:
        ValueError: an added comparison reuses a built-in's or another's name, or a
            feature is neither built in nor added (the message lists what is known).
    """
    names = [c.name for c in added]
    clash = sorted({n for n in names if n in BUILTIN_NAMES or names.count(n) > 1})
    if clash:
        raise ValueError(f"comparison name(s) {clash} already taken (built in, or given twice)")
    known = {**_BY_NAME, **{c.name: c for c in added}}
    unknown = [f for f in features if f not in known]
    if unknown or not features:
        raise ValueError(
            f"unknown feature(s) {unknown or '(none given)'}; known: {sorted(known)} "
            "(add one with model.comparisons)"
        )
    return tuple(known[f] for f in features)
