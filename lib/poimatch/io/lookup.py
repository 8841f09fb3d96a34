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
far) that either lie in a fine cell within the spatial pass's reach (3x3 cells of
``blocking.cell_m``) or share a normalized name, phone or url with an uploaded row:
exactly the rows the blocking could pair with an uploaded row.
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

__all__ = [
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
_KEYS = (S.N_NAME, S.N_PHONE, S.N_URL)


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
    spark: SparkSession, known: KnownTable, uploads: pd.DataFrame, blocking: BlockingSettings
) -> DataFrame:
    """The rows of ``known`` the blocking could pair with one of ``uploads``.

    Args:
        spark: the session.
        known: the pinned lookup table.
        uploads: the uploaded rows' ``latitude``, ``longitude``, ``n_name``, ``n_phone``,
            ``n_url`` (normalized, on the driver).
        blocking: the model's blocking settings (the reach of its passes).

    Returns:
        The lookup rows (``STORED`` columns), lazily: a filter on the cell columns
        that Delta's data skipping turns into a read of only the files holding them
        (one small read, an action, counts how common the uploads' keys are there).
    """
    lat = uploads[S.LATITUDE].to_numpy(dtype=float)
    lon = uploads[S.LONGITUDE].to_numpy(dtype=float)
    coarse = _cells_within(lat, lon, 2 * blocking.key_cell_m, COARSE_DEG)
    fine = _cells_within(lat, lon, 2 * blocking.cell_m, FINE_DEG)
    table = spark.read.format("delta").option("versionAsOf", known.version).load(known.path)
    area = table.where(F.col(LOOKUP_CELL).isin(coarse))
    wanted = {key: sorted({str(v) for v in uploads[key].dropna()}) for key in _KEYS}
    near = F.col(FINE_CELL).isin(fine) & _within_boxes(lat, lon, 2 * blocking.cell_m)
    keyed = [F.col(key).isin(values) for key, values in wanted.items() if values]
    if keyed:
        # a key shared by max_key_group or more rows around a row is too generic for the
        # blocking's key passes ("kfc", a chain's url): reading its rows would only feed
        # the spatial pass rows it never pairs. One small read counts the wanted keys in
        # the area (its 0.5 degree cells are a little wider than the 3x3 key cells, so a
        # key is dropped here a little sooner than the blocking would; within the
        # spatial pass's reach every row is read whatever its keys).
        found = area.where(_any(keyed)).select(*_KEYS).toPandas()
        for key in _KEYS:
            counts = found[key].value_counts()
            common = set(counts[counts >= blocking.max_key_group].index)
            kept = [v for v in wanted[key] if v not in common]
            if kept:
                near = near | F.col(key).isin(kept)
    return area.where(near).select(*STORED)


def _within_boxes(lat: np.ndarray, lon: np.ndarray, reach_m: float) -> Column:
    """True for a row within ``reach_m`` (a box, with the margin) of any coordinate.

    The fine cells bound the read; this cuts the rows of a dense centre to the spatial
    pass's reach (3x3 cells of ``cell_m``: at most twice that far)."""
    dlat = reach_m * _MARGIN / _M_PER_DEG
    boxes = []
    for a, b in sorted(set(zip(np.round(lat, 6), np.round(lon, 6), strict=True))):
        dlon = min(dlat / max(math.cos(math.radians(min(abs(a) + dlat, 90.0))), 1e-3), 180.0)
        box = F.col(S.LATITUDE).between(a - dlat, a + dlat)
        # the meridian: compare longitudes on the side of the box
        gap = F.abs(F.pmod(F.col(S.LONGITUDE) - F.lit(b) + F.lit(180.0), F.lit(360.0)) - 180.0)
        boxes.append(box & (gap <= dlon))
    return _any(boxes)


def _any(conditions: list[Column]) -> Column:
    out = conditions[0]
    for condition in conditions[1:]:
        out = out | condition
    return out
