"""The lookup table: the matched POI table laid out by cell, to answer "which of these
places do we already have, and under which ids?" without scanning the table.

The nightly match of the POI table writes it beside the ``matches`` table
(``storage.lookup_table``): every matched row's normalized comparison columns (what the
blocking and the pair features read, without the model's name statistics, which are
looked up with the serving model) and its ``group_id``, with two cell columns:

* ``lookup_cell``: a ``COARSE_DEG`` degree cell. The table is range-partitioned and
  sorted by it (then by ``fine_cell``) into files of about ``rows_per_file`` rows, the
  cell columns first, so Delta's per-file min/max statistics skip every file whose cells
  a request does not need (data skipping; ``lookup_files_read`` in the tests).
* ``fine_cell``: a ``FINE_DEG`` degree cell, for the spatial pass's neighbourhood.

A request reads, at one pinned table version, the rows of the coarse cells within the
key passes' reach of its rows (3x3 cells of ``blocking.key_cell_m``: at most twice that
far) that either are among an uploaded row's ``k_nearest`` nearest in its 3x3 cells of
``blocking.cell_m`` (found among the rows of the fine cells within that reach) or share
a normalized name, phone or url with an uploaded row: the rows the blocking could pair
with an uploaded row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.tables import write_delta
from poimatch.stages.blocking import PASS_COLUMNS, nearest_rows, pass_key, pass_key_value

__all__ = [
    "READ_SQL_CONF",
    "COARSE_DEG",
    "FINE_DEG",
    "FINE_CELL",
    "LOOKUP_CELL",
    "KnownTable",
    "known_rows",
    "pin_lookup",
    "write_laid_out",
    "write_lookup",
]

LOOKUP_CELL = "lookup_cell"
FINE_CELL = "fine_cell"
COARSE_DEG = 0.5
FINE_DEG = 0.01
_M_PER_DEG = 111_320.0
_X_CELLS = 1_000_000  # cell id = y * _X_CELLS + x
_MARGIN = 1.05  # over the grid's reach: metres per degree vary a little with latitude
_BLOCK_SIZE = "parquet.block.size"
ROW_GROUP_BYTES = 1 << 20  # ~3,000 rows per row group

STORED: tuple[str, ...] = (
    S.ID,
    S.GROUP_ID,
    S.SOURCE,
    S.LATITUDE,
    S.LONGITUDE,
    S.COUNTRY,
    S.N_NAME,
    S.N_NAME_TOKENS,
    S.N_ADDRESS,
    S.N_CITY,
    S.N_ZIP,
    S.N_PHONE,
    S.N_URL,
    S.N_CATEGORIES,
)
"""What the lookup table keeps of a row (after the two cell columns)."""

#: SQL settings to plan a lookup read under: whole-stage code generation on, which the
#: small plan's settings turn off (its compile costs more than it saves on a few thousand
#: rows). A read scans the rows of every fine cell near an upload (600,000 for 1,000
#: uploads in the dense centres of a generated 1M-row table) and ranks them by distance:
#: 18 s interpreted, 5 s compiled (``benchmarks/small_requests.py --against``).
READ_SQL_CONF: dict[str, str] = {
    "spark.sql.codegen.wholeStage": "true",
    "spark.sql.codegen.factoryMode": "FALLBACK",
}


def _cell(lat: Column, lon: Column, deg: float) -> Column:
    y = F.floor((lat + F.lit(90.0)) / F.lit(deg))
    x = F.pmod(F.floor((lon + F.lit(180.0)) / F.lit(deg)), F.lit(round(360 / deg)))
    return (y * F.lit(_X_CELLS) + x).cast(T.LongType())


def write_lookup(
    points: DataFrame,
    groups: DataFrame,
    path: str,
    *,
    rows: int,
    rows_per_file: int,
    user_metadata: str,
) -> None:
    """Write the lookup table of matched points (one Delta commit, overwrite).

    Args:
        points: normalized points (:func:`poimatch.stages.normalize.add_normalized_columns`).
        groups: ``id``, ``group_id`` of the same run.
        path: the table's location (``storage.lookup_table``).
        rows: how many points (to size the files).
        rows_per_file: about this many rows per file.
        user_metadata: the commit's metadata (the POI table version and the model).
    """
    files = max(1, math.ceil(rows / max(rows_per_file, 1)))
    joined = points.drop(S.GROUP_ID).join(groups.select(S.ID, S.GROUP_ID), on=S.ID, how="inner")
    stored = [F.col(c) if c in joined.columns else F.lit(None).alias(c) for c in STORED]
    laid_out = joined.select(
        _cell(F.col(S.LATITUDE), F.col(S.LONGITUDE), COARSE_DEG).alias(LOOKUP_CELL),
        _cell(F.col(S.LATITUDE), F.col(S.LONGITUDE), FINE_DEG).alias(FINE_CELL),
        *stored,
    ).withColumn(S.SOURCE, F.col(S.SOURCE).cast(T.StringType()))
    write_laid_out(laid_out, path, files=files, user_metadata=user_metadata)


def write_laid_out(rows: DataFrame, path: str, *, files: int, user_metadata: str) -> None:
    """Range-partition ``rows`` by cell into ``files`` files, sorted, with small Parquet
    row groups (``ROW_GROUP_BYTES``): the row groups' min/max cells let a read skip
    most of a file as well as whole files."""
    laid_out = rows.repartitionByRange(files, LOOKUP_CELL, FINE_CELL).sortWithinPartitions(
        LOOKUP_CELL, FINE_CELL
    )
    conf = rows.sparkSession.conf
    before = conf.get(_BLOCK_SIZE, None)
    conf.set(_BLOCK_SIZE, str(ROW_GROUP_BYTES))  # the session's SQL settings reach the writer
    try:
        write_delta(laid_out, path, user_metadata=user_metadata)
    finally:
        if before is None:
            conf.unset(_BLOCK_SIZE)
        else:
            conf.set(_BLOCK_SIZE, before)


@dataclass(frozen=True)
class KnownTable:
    """A lookup table pinned at one version (what a response names)."""

    path: str
    version: int
    metadata: str  # the commit's user metadata: the POI table version it was built from

    def label(self) -> str:
        """``<path>@v<version>``."""
        return f"{self.path}@v{self.version}"


def pin_lookup(spark: SparkSession, path: str) -> KnownTable | None:
    """The lookup table's current version, or ``None`` when there is none yet."""
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    row = (
        DeltaTable.forPath(spark, path)
        .history(1)
        .select("version", F.coalesce(F.col("userMetadata"), F.lit("")))
        .first()
    )
    if row is None:
        return None
    return KnownTable(path=path, version=int(row[0]), metadata=str(row[1]))


def _cells_within(lat: np.ndarray, lon: np.ndarray, reach_m: float, deg: float) -> list[int]:
    """Every ``deg`` cell id within ``reach_m`` (a box) of any of the coordinates."""
    dlat = reach_m * _MARGIN / _M_PER_DEG
    cos = np.maximum(np.cos(np.radians(np.minimum(np.abs(lat) + dlat, 90.0))), 1e-3)
    dlon = np.minimum(dlat / cos, 180.0)
    n_x = round(360 / deg)
    y0 = np.floor((np.maximum(lat - dlat, -90.0) + 90.0) / deg).astype(np.int64)
    y1 = np.floor((np.minimum(lat + dlat, 90.0) + 90.0) / deg).astype(np.int64)
    x0 = np.floor((lon - dlon + 180.0) / deg).astype(np.int64)
    x1 = np.floor((lon + dlon + 180.0) / deg).astype(np.int64)
    cells: set[int] = set()
    for a, b, c, d in zip(y0, y1, x0, x1, strict=True):
        xs = np.arange(c, d + 1) % n_x
        for y in range(int(a), int(b) + 1):
            cells.update(int(y * _X_CELLS + x) for x in xs)
    return sorted(cells)


def known_rows(
    spark: SparkSession,
    known: KnownTable,
    uploads: pd.DataFrame,
    blocking: BlockingSettings,
    *,
    link_only: bool = False,
) -> DataFrame:
    """The rows of ``known`` the blocking could pair with one of ``uploads``.

    Args:
        spark: the session.
        known: the pinned lookup table.
        uploads: the uploaded rows' ``latitude``, ``longitude``, ``n_name``, ``n_phone``,
            ``n_url`` (normalized, on the driver), and ``source`` with ``link_only``.
        blocking: the model's blocking settings (the reach of its passes).
        link_only: the match links sources (a row's k nearest of other sources).

    Returns:
        The lookup rows (``STORED`` columns, each once), lazily: a filter on the cell
        columns that Delta's data skipping turns into a read of only the files holding
        them. For the spatial pass, each upload's ``k_nearest`` nearest rows in its 3x3
        cells (:func:`poimatch.stages.blocking.nearest_rows`): in a dense centre the
        reach of ten uploads held 14,000 rows and that of 1,000 uploads 400,000 (a
        generated 1M-row table), of which the spatial pass pairs at most k with each.
        For the key passes, the rows sharing a key with an upload (a normalized name,
        phone, url or name prefix, as the model's passes block on), unless the key is
        too common to block on.
    """
    lat = uploads[S.LATITUDE].to_numpy(dtype=float)
    lon = uploads[S.LONGITUDE].to_numpy(dtype=float)
    coarse = _cells_within(lat, lon, 2 * blocking.key_cell_m, COARSE_DEG)
    fine = _cells_within(lat, lon, 2 * blocking.cell_m, FINE_DEG)
    table = spark.read.format("delta").option("versionAsOf", known.version).load(known.path)
    area = table.where(_cells_in(LOOKUP_CELL, coarse))
    # the uploads as query rows, under ids no table row has
    queries = pd.DataFrame(
        {
            S.ID: [f"\u0001{i}" for i in range(len(uploads))],
            S.LATITUDE: lat,
            S.LONGITUDE: lon,
            S.SOURCE: uploads[S.SOURCE].astype(object).to_numpy() if link_only else None,
        }
    )
    rows = nearest_rows(
        spark.createDataFrame(queries, schema=_QUERY_SCHEMA),
        area.where(_cells_in(FINE_CELL, fine)),
        settings=blocking,
        link_only=link_only,
        query_latitudes=lat.tolist(),
    ).select(*STORED)
    keys = [(key, values) for key, values in _pass_keys(uploads, blocking.key_passes) if values]
    if not keys:
        return rows
    # a key shared by max_key_group or more rows around a row is too generic for the
    # key passes ("kfc", a chain's url): its rows are not read (they would feed the
    # passes thousands of rows that a chain's uploads never pair with). One small read
    # counts the wanted keys in the area: its 0.5 degree cells are a little wider than
    # the passes' 3x3 key cells, so a key is dropped here a little sooner than the
    # blocking would, and the rows of a dropped key that the spatial reads bring may
    # still count below the cap in the run and be key-paired (the README, *Against*).
    found = (
        area.where(_any([_strings_in(spark, key, values) for key, values in keys]))
        .select(*[key.alias(f"_k{i}") for i, (key, _) in enumerate(keys)])
        .toPandas()
    )
    shared = []
    for i, (key, values) in enumerate(keys):
        counts = found[f"_k{i}"].value_counts()
        common = set(counts[counts >= blocking.max_key_group].index)
        kept = [v for v in values if v not in common]
        if kept:
            shared.append(_strings_in(spark, key, kept))
    if not shared:
        return rows
    return rows.unionByName(area.where(_any(shared)).select(*STORED)).dropDuplicates([S.ID])


def _pass_keys(uploads: pd.DataFrame, passes: tuple[str, ...]) -> list[tuple[Column, list[str]]]:
    """Per key pass, the column it blocks on (:func:`poimatch.stages.blocking.pass_key`)
    and the uploads' values of it."""
    out: list[tuple[Column, list[str]]] = []
    for name in passes:
        keys = (pass_key_value(name, str(v)) for v in uploads[PASS_COLUMNS[name]].dropna())
        out.append((pass_key(name), sorted({k for k in keys if k is not None})))
    return out


_QUERY_SCHEMA = T.StructType(
    [
        T.StructField(S.ID, T.StringType(), False),
        T.StructField(S.LATITUDE, T.DoubleType(), False),
        T.StructField(S.LONGITUDE, T.DoubleType(), False),
        T.StructField(S.SOURCE, T.StringType(), True),
    ]
)


# PySpark's ``isin`` makes a JVM call per value: 1 s for the 3,000 names or the 4,000
# cells of a 1,000-row upload. These build the same ``In`` in one or a few calls.
_SEP = "\u0001"


def _cells_in(column: str, cells: list[int]) -> Column:
    """``column IN (cells)``, parsed from SQL text (integers only) in one call."""
    return F.expr(f"`{column}` IN ({','.join(str(int(c)) for c in cells)})")


def _strings_in(spark: SparkSession, column: Column, values: list[str]) -> Column:
    """``column IN (values)``, the values sent to the JVM as one string and split there
    (PySpark's ``isin`` when a value is empty or holds the separator)."""
    jvm = spark._jvm
    if jvm is None or any(not v or _SEP in v for v in values):
        return column.isin(values)
    pattern = jvm.java.util.regex.Pattern.compile(_SEP)
    listed = pattern.splitAsStream(_SEP.join(values)).collect(
        jvm.java.util.stream.Collectors.toList()
    )
    return Column(column._jc.isInCollection(listed))  # type: ignore[operator]


def _any(conditions: list[Column]) -> Column:
    out = conditions[0]
    for condition in conditions[1:]:
        out = out | condition
    return out
