"""Name statistics learned once from the training corpus and frozen with the model.

How common a name or a name token is says how much a shared name is worth: two rows
called "Starbucks" 200 m apart are likely two outlets, two rows called "Casa Pepe"
likely one place. Counted over whatever table is being matched, these figures would
describe the table rather than the pair: a 10-row upload, a 5 % sample or a new city
would give values training never saw, and one pair's score would depend on the other
rows of the file. So they are counted once, over the places of the training corpus,
stored with the model (an MLflow artifact beside the matching spec) and looked up at
match time:

* ``n_name_freq``: how many corpus places carry the row's normalized name (a place
  counts once, however many rows it has); 0 for a name the corpus never saw.
* ``n_name_idf``: per name token, ``ln((P + 1) / (df + 1))`` with ``P`` the corpus's
  places and ``df`` the places whose name holds the token; an unseen token has
  ``df = 0`` and so the largest weight, ``ln(P + 1)``.

Training rows must not read statistics that count themselves: a name would count
its own place, and two rows of one name would be two places exactly when the name
counts twice, a leak of the label. Training therefore counts each region fold's
statistics over the other folds (:func:`poimatch.runs.workflows.training_set`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S

__all__ = [
    "NameStats",
    "add_name_stats",
    "count_name_stats",
    "idf_weights",
    "name_stats_arrow",
    "name_stats_schema",
]

_TOK, _COUNT, _OWN = "_tok", "_count", "_own"
_FORMAT = "poimatch-name-stats/1"


@dataclass(frozen=True)
class NameStats:
    """Place counts per normalized name and per name token, over a training corpus."""

    places: int
    names: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    # the lookup tables as Spark frames, per Spark context: built once per model
    _frames: dict[tuple[int, str], DataFrame] = field(
        default_factory=dict, compare=False, repr=False
    )
    # token document count -> weight, as Spark computes it (idf_weights): built once
    _weights: dict[int, float] = field(default_factory=dict, compare=False, repr=False)
    # names and tokens with their counts and weights as Arrow arrays (name_stats_arrow),
    # with the weights they were built from: built once
    _arrow: list[tuple[dict[int, float], tuple[pa.Array, ...]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def idf(self, token: str) -> float:
        """The weight of ``token``: ``ln((places + 1) / (df + 1))``; unseen: ``ln(places + 1)``."""
        return math.log((self.places + 1) / (self.tokens.get(token, 0) + 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the MLflow artifact."""
        return {
            "format": _FORMAT,
            "places": self.places,
            "names": self.names,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NameStats:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on another format."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a poimatch name-statistics file: format {data.get('format')!r}")
        return cls(
            places=int(data["places"]),
            names={str(k): int(v) for k, v in data["names"].items()},
            tokens={str(k): int(v) for k, v in data["tokens"].items()},
        )

    def save(self, path: Path) -> None:
        """Write the statistics as JSON."""
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> NameStats:
        """Read statistics written by :meth:`save`."""
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def count_name_stats(points: DataFrame, *, max_names: int = 1_000_000) -> NameStats:
    """Count the name statistics of labelled, normalized training points (an action).

    Args:
        points: rows with ``point_of_interest``, ``n_name`` and ``n_name_tokens``
            (:func:`poimatch.stages.normalize.add_normalized_columns`).
        max_names: keep at most this many names and tokens each, the most common
            first (a rarer one then reads as unseen: count 0, the largest weight).

    Returns:
        :class:`NameStats` over the corpus's places.
    """
    places_row = points.agg(F.countDistinct(S.POI).alias("p")).first()
    places = int(places_row["p"]) if places_row is not None else 0
    names = (
        points.where(F.col(S.N_NAME).isNotNull())
        .select(S.POI, S.N_NAME)
        .distinct()
        .groupBy(S.N_NAME)
        .agg(F.count(F.lit(1)).alias(_COUNT))
        .orderBy(F.desc(_COUNT), F.col(S.N_NAME))
        .limit(max_names)
        .collect()
    )
    tokens = (
        points.select(S.POI, F.explode(F.array_distinct(S.N_NAME_TOKENS)).alias(_TOK))
        .where(F.col(_TOK) != "")
        .distinct()
        .groupBy(_TOK)
        .agg(F.count(F.lit(1)).alias(_COUNT))
        .orderBy(F.desc(_COUNT), F.col(_TOK))
        .limit(max_names)
        .collect()
    )
    return NameStats(
        places=places,
        names={r[S.N_NAME]: int(r[_COUNT]) for r in names},
        tokens={r[_TOK]: int(r[_COUNT]) for r in tokens},
    )


def _lookup(points: DataFrame, key: str, stats: NameStats) -> DataFrame:
    """The ``key`` (name or token) -> count table of ``stats``, a local relation built
    once per Spark context (a model's statistics are read by every request)."""
    spark = points.sparkSession
    cache_key = (id(spark.sparkContext), key)
    cached = stats._frames.get(cache_key)
    if cached is None:
        counts = stats.names if key == S.N_NAME else stats.tokens
        cached = _lookup_frame(points, key, counts)
        stats._frames[cache_key] = cached
    return cached


def _lookup_frame(points: DataFrame, key: str, counts: dict[str, int]) -> DataFrame:
    schema = T.StructType(
        [T.StructField(key, T.StringType(), False), T.StructField(_COUNT, T.LongType(), False)]
    )
    frame = pd.DataFrame(
        {
            key: pd.Series(list(counts), dtype=object),
            _COUNT: pd.Series(counts.values(), dtype="int64"),
        }
    )
    return points.sparkSession.createDataFrame(frame, schema=schema)  # Arrow: fast for big maps


def add_name_stats(points: DataFrame, stats: NameStats) -> DataFrame:
    """Add ``n_name_freq`` (double) and ``n_name_idf`` (map token -> weight) from ``stats``.

    Args:
        points: normalized points (``id``, ``n_name``, ``n_name_tokens``).
        stats: the model's frozen statistics.

    Returns:
        ``points`` with the two columns; a row without a name gets null for both.
        Both lookups are broadcast joins, so a row's values never depend on the other
        rows of ``points``.
    """
    names = F.broadcast(_lookup(points, S.N_NAME, stats))
    with_freq = (
        points.join(names, on=S.N_NAME, how="left")
        .withColumn(
            S.N_NAME_FREQ,
            F.when(F.col(S.N_NAME).isNotNull(), F.coalesce(F.col(_COUNT), F.lit(0))).cast(
                T.DoubleType()
            ),
        )
        .drop(_COUNT)
    )
    tokens = F.broadcast(_lookup(points, _TOK, stats))
    weight = _weight(F.coalesce(F.col(_COUNT), F.lit(0)), stats)
    per_row = (
        points.select(S.ID, F.explode(F.array_distinct(S.N_NAME_TOKENS)).alias(_TOK))
        .where(F.col(_TOK) != "")
        .join(tokens, on=_TOK, how="left")
        .groupBy(S.ID)
        .agg(F.map_from_entries(F.collect_list(F.struct(F.col(_TOK), weight))).alias(S.N_NAME_IDF))
    )
    return with_freq.join(per_row, on=S.ID, how="left")


def _weight(df: Column, stats: NameStats) -> Column:
    """A token's weight from its document count ``df`` (a long)."""
    return F.log(F.lit(float(stats.places + 1)) / (df + F.lit(1.0)))


def idf_weights(spark: SparkSession, stats: NameStats) -> dict[int, float]:
    """Each document count of ``stats``' tokens (and 0, an unseen token's) -> its weight,
    computed by Spark once per statistics (one small job): Spark's ``log`` is Java's
    ``StrictMath.log``, which Python's ``math.log`` need not equal to the last bit, and
    :func:`name_stats_arrow` must give :func:`add_name_stats`' values exactly."""
    if not stats._weights:
        counts = sorted({0, *stats.tokens.values()})
        schema = T.StructType([T.StructField(_COUNT, T.LongType(), False)])
        frame = pd.DataFrame({_COUNT: pd.Series(counts, dtype="int64")})
        rows = (
            spark.createDataFrame(frame, schema=schema)
            .select(F.col(_COUNT), _weight(F.col(_COUNT), stats).alias(_TOK))
            .toPandas()
        )
        stats._weights.update(zip(rows[_COUNT].tolist(), rows[_TOK].tolist(), strict=True))
    return stats._weights


def name_stats_schema(schema: T.StructType) -> T.StructType:
    """``schema`` with the two columns :func:`add_name_stats` and
    :func:`name_stats_arrow` add (as Spark types them)."""
    return T.StructType(
        [
            *schema.fields,
            T.StructField(S.N_NAME_FREQ, T.DoubleType(), True),
            T.StructField(S.N_NAME_IDF, T.MapType(T.StringType(), T.DoubleType(), True), True),
        ]
    )


def name_stats_arrow(table: pa.Table, stats: NameStats, weights: dict[int, float]) -> pa.Table:
    """:func:`add_name_stats` on the driver: ``table`` (normalized rows, as Arrow) with
    ``n_name_freq`` and ``n_name_idf`` appended, the same values (``weights``:
    :func:`idf_weights`) and each map's entries in the same order (the row's distinct
    tokens in their order, which is the order Spark's ``collect_list`` gathers them in
    and the order a pair feature sums them in). For rows the driver holds already (a
    lookup table held for the service): no Spark job, no broadcast join, and no pandas
    copy (Spark reads the Arrow columns as they are).

    Arrow compute kernels over whole columns, not a Python loop over rows: a service's
    1,000-row upload against the table brings ~15,000 table rows, 0.12 s a request as a
    loop."""
    names, counts, tokens, token_weights = _lookup_arrays(stats, weights)
    name = table.column(S.N_NAME)
    found = pc.take(counts, pc.index_in(name, value_set=names.cast(name.type)))
    freq = pc.if_else(pc.is_null(name), pa.scalar(None, pa.float64()), pc.fill_null(found, 0.0))

    lists = table.column(S.N_NAME_TOKENS).combine_chunks()
    flat = pc.list_flatten(lists)  # a null list adds nothing
    entries = pa.table(
        {
            "row": pc.list_parent_indices(lists),
            "token": flat,
            "pos": pa.array(np.arange(len(flat), dtype=np.int64)),
        }
    ).filter(pc.fill_null(pc.not_equal(flat, ""), False))  # empty and null are not tokens
    # a token repeated in a row counts once, where it is first seen
    first = entries.group_by(["row", "token"], use_threads=False).aggregate([("pos", "min")])
    entries = entries.filter(pc.is_in(entries["pos"], value_set=first["pos_min"].combine_chunks()))
    keys = entries["token"].combine_chunks().cast(pa.string())
    seen = pc.index_in(keys, value_set=tokens)
    items = pc.fill_null(pc.take(token_weights, seen), weights[0])  # unseen: count 0
    per_row = np.bincount(entries["row"].to_numpy(), minlength=table.num_rows)
    offsets = np.zeros(table.num_rows + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    idf = pa.MapArray.from_arrays(
        pa.array(offsets),
        keys,
        items,
        mask=pa.array(per_row == 0),  # no token: no map
    )
    return table.append_column(S.N_NAME_FREQ, freq).append_column(S.N_NAME_IDF, idf)


def _lookup_arrays(
    stats: NameStats, weights: dict[int, float]
) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """``stats``' names with their counts and tokens with their ``weights``, as Arrow
    arrays for :func:`name_stats_arrow`'s lookups: built once per statistics."""
    built = stats._arrow
    if not built or built[0][0] is not weights:
        built[:] = [
            (
                weights,
                (
                    pa.array(list(stats.names), pa.string()),
                    pa.array([float(c) for c in stats.names.values()], pa.float64()),
                    pa.array(list(stats.tokens), pa.string()),
                    pa.array([weights[c] for c in stats.tokens.values()], pa.float64()),
                ),
            )
        ]
    names, counts, tokens, token_weights = built[0][1]
    return names, counts, tokens, token_weights
