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
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.tables import write_delta
from poimatch.stages.blocking import PASS_COLUMNS, nearest_rows, pass_key, pass_key_value
from poimatch.stages.features import EARTH_RADIUS_M
from poimatch.stages.plan import COMPILED_SQL_CONF

__all__ = [
    "READ_SQL_CONF",
    "COARSE_DEG",
    "FINE_DEG",
    "FINE_CELL",
    "LOOKUP_CELL",
    "HeldLookup",
    "KnownTable",
    "held_lookup",
    "hold_lookup",
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
READ_SQL_CONF: dict[str, str] = dict(COMPILED_SQL_CONF)


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

    def read(self, spark: SparkSession) -> DataFrame:
        """The table at this version (lazily)."""
        return spark.read.format("delta").option("versionAsOf", self.version).load(self.path)


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


def _reach_deg(lat: np.ndarray, reach_m: float) -> tuple[float, np.ndarray]:
    """Degrees of latitude and (per coordinate) of longitude that ``reach_m`` spans at
    most around each latitude, with a margin."""
    dlat = reach_m * _MARGIN / _M_PER_DEG
    cos = np.maximum(np.cos(np.radians(np.minimum(np.abs(lat) + dlat, 90.0))), 1e-3)
    return dlat, np.minimum(dlat / cos, 180.0)


def _cells_within(lat: np.ndarray, lon: np.ndarray, reach_m: float, deg: float) -> list[int]:
    """Every ``deg`` cell id within ``reach_m`` (a box) of any of the coordinates."""
    return [int(c) for c in np.unique(_cells_each(lat, lon, reach_m, deg)[1])]


def known_rows(
    spark: SparkSession,
    known: KnownTable,
    uploads: pd.DataFrame,
    blocking: BlockingSettings,
    *,
    link_only: bool = False,
    held: HeldLookup | None = None,
) -> DataFrame:
    """The rows of ``known`` the blocking could pair with one of ``uploads``.

    Args:
        spark: the session.
        known: the pinned lookup table.
        uploads: the uploaded rows' ``latitude``, ``longitude``, ``n_name``, ``n_phone``,
            ``n_url`` (normalized, on the driver), and ``source`` with ``link_only``.
        blocking: the model's blocking settings (the reach of its passes).
        link_only: the match links sources (a row's k nearest of other sources).
        held: ``known`` held on the driver (:func:`hold_lookup`): the rows are picked
            there (:meth:`HeldLookup.rows`) and no file is read. Ignored when it holds
            another table or version.

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
    if held is not None and held.known == known:
        return held.rows(spark, uploads, blocking, link_only=link_only)
    lat = uploads[S.LATITUDE].to_numpy(dtype=float)
    lon = uploads[S.LONGITUDE].to_numpy(dtype=float)
    coarse = _cells_within(lat, lon, 2 * blocking.key_cell_m, COARSE_DEG)
    fine = _cells_within(lat, lon, 2 * blocking.cell_m, FINE_DEG)
    table = known.read(spark)
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


#: Rows within this share of ``cell_m`` of an upload lie in its 3x3 cells of ``cell_m``
#: whatever the latitude (the grid's metres per degree against the haversine's, and a
#: band's width at its centre against at its edge, differ by well under 2 %).
_INNER = 0.95


@dataclass(eq=False)
class HeldLookup:
    """A lookup table version held on the driver (an Arrow table) with the indexes that
    pick a request's rows without a Spark job: row positions sorted by cell (of the
    ``HELD_DEG`` grid), and per key pass the rows of each key.

    The service holds the pinned version of a table up to ``service.hold_lookup_max_rows``
    rows (a 1M-row table: ~200 MB of Arrow, loaded in 13-15 s by one Spark job here): a request
    then reads no file, and the rows it needs go to Spark as one small local relation.
    """

    known: KnownTable
    table: pa.Table  # the STORED columns
    schema: T.StructType  # their Spark types
    latitude: np.ndarray
    longitude: np.ndarray
    coarse: np.ndarray  # LOOKUP_CELL per row
    source: np.ndarray  # per row, as object (None where missing)
    by_fine: np.ndarray  # row positions sorted by their HELD_DEG cell (_held_cells)
    fine_sorted: np.ndarray  # those cells in that order
    radians: _Radians  # per row, for the haversine
    keys: dict[str, tuple[pd.Index, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def load(cls, spark: SparkSession, known: KnownTable) -> HeldLookup:
        """Read ``known`` at its version onto the driver (one Spark job) and index it."""
        read = known.read(spark).select(LOOKUP_CELL, *STORED)
        arrow = read.toArrow()
        latitude = arrow.column(S.LATITUDE).to_numpy()
        longitude = arrow.column(S.LONGITUDE).to_numpy()
        fine = _held_cells(latitude, longitude)
        by_fine = np.argsort(fine, kind="stable")
        held = cls(
            known=known,
            table=arrow.select(list(STORED)),
            schema=read.select(*STORED).schema,
            latitude=latitude,
            longitude=longitude,
            coarse=arrow.column(LOOKUP_CELL).to_numpy(),
            source=arrow.column(S.SOURCE).to_numpy(zero_copy_only=False).astype(object),
            by_fine=by_fine,
            fine_sorted=fine[by_fine],
            radians=_Radians.of(latitude, longitude),
        )
        for name in PASS_COLUMNS:
            held.keys[name] = held._key_index(name)
        return held

    def _key_index(self, name: str) -> tuple[pd.Index, np.ndarray, np.ndarray]:
        """Key pass ``name``'s keys (as :func:`pass_key` makes them), the row positions
        sorted by key, and where each key's positions start (one more: the end)."""
        values, distinct = pd.factorize(self.table.column(PASS_COLUMNS[name]).to_pandas())
        # each distinct value's key (a name's prefix, or the value), as the query's keys
        keyed, uniques = pd.factorize(pd.Series([pass_key_value(name, v) for v in distinct]))
        codes = np.append(keyed, -1)[values]  # a missing value (-1) has no key (-1)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        return pd.Index(uniques), order, bounds

    def rows(
        self,
        spark: SparkSession,
        uploads: pd.DataFrame,
        blocking: BlockingSettings,
        *,
        link_only: bool = False,
    ) -> DataFrame:
        """:func:`known_rows` picked on the driver: each upload's nearest rows (those no
        farther than its ``k_nearest``-th nearest within ``_INNER`` of ``cell_m``, or all
        in the box of its fine cells' reach when fewer lie there: a superset of the k
        nearest the spatial pass ranks in its 3x3 cells) and the rows sharing a key with it, minus
        the keys held by ``max_key_group`` or more rows of the area, as the read counts
        them. Returns the rows as a local relation (``STORED`` columns, each row once)."""
        return spark.createDataFrame(self.picked(uploads, blocking, link_only=link_only))

    def picked(
        self, uploads: pd.DataFrame, blocking: BlockingSettings, *, link_only: bool = False
    ) -> pa.Table:
        """The rows :meth:`rows` picks, on the driver (``STORED`` columns, in table order)."""
        lat = uploads[S.LATITUDE].to_numpy(dtype=float)
        lon = uploads[S.LONGITUDE].to_numpy(dtype=float)
        sources = uploads[S.SOURCE].astype(object).to_numpy() if link_only else None
        picked = [self._nearest(lat, lon, sources, blocking)]
        keys = _pass_values(uploads, blocking.key_passes)
        if any(values for _, values in keys):
            area = np.asarray(_cells_within(lat, lon, 2 * blocking.key_cell_m, COARSE_DEG))
            for name, values in keys:
                picked.append(self._sharing(name, values, area, blocking.max_key_group))
        positions = np.unique(np.concatenate(picked))
        return self.table.take(pa.array(positions, pa.int64()))

    def _nearest(
        self,
        lat: np.ndarray,
        lon: np.ndarray,
        sources: np.ndarray | None,
        blocking: BlockingSettings,
    ) -> np.ndarray:
        """Row positions of the uploads' spatial candidates (see :meth:`rows`)."""
        disc = _INNER * blocking.cell_m
        up = _Radians.of(lat, lon)
        # first the box of the inner disc only (a quarter of the full box's rows): it
        # holds each upload's k nearest within the disc, and every row as near as its k-th
        q, r = self._in_box(lat, lon, sources, disc, np.arange(len(lat)))
        d = _haversine_rad(up.take(q), self.radians.take(r))
        # each upload's k-th nearest within the inner disc (sorted by upload, then distance)
        inner = d <= disc
        qi, di = q[inner], d[inner]
        order = np.lexsort((di, qi))
        qi, di = qi[order], di[order]
        rank = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left")
        at_k = rank == blocking.k_nearest - 1
        # it bounds the spatial pass's k nearest (its 3x3 cells hold the disc)
        limit = np.full(len(lat), np.inf)
        limit[qi[at_k]] = di[at_k] * (1 + 1e-9) + 1e-6
        found = np.isfinite(limit)
        near = r[found[q] & (d <= limit[q])]
        # with fewer than k in the disc, every row of the full box is kept
        few = np.flatnonzero(~found)
        if len(few) == 0:
            return np.asarray(near)
        _, rest = self._in_box(lat, lon, sources, 2 * blocking.cell_m, few)
        return np.concatenate([near, rest])

    def _in_box(
        self,
        lat: np.ndarray,
        lon: np.ndarray,
        sources: np.ndarray | None,
        reach_m: float,
        which: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(upload, row position) pairs of the uploads ``which``: the rows within the box
        of ``reach_m`` around each (of another source, with ``sources``)."""
        query, cells = _cells_each(lat[which], lon[which], reach_m, HELD_DEG)
        lo = np.searchsorted(self.fine_sorted, cells, side="left")
        hi = np.searchsorted(self.fine_sorted, cells, side="right")
        counts = hi - lo
        q = which[np.repeat(query, counts)]
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        r = self.by_fine[starts + np.arange(int(counts.sum()))]
        if sources is not None:  # link only: rows of another (or no) source
            mine, theirs = sources[q], self.source[r]
            other = pd.isna(mine) | pd.isna(theirs) | (mine != theirs)
            q, r = q[other], r[other]
        dlat, dlon = _reach_deg(lat, reach_m)
        across = np.abs(self.longitude[r] - lon[q])
        inside = (np.abs(self.latitude[r] - lat[q]) <= dlat) & (
            np.minimum(across, 360.0 - across) <= dlon[q]
        )
        return q[inside], r[inside]

    def _sharing(self, name: str, values: list[str], area: np.ndarray, cap: int) -> np.ndarray:
        """Row positions in ``area`` (coarse cells) holding one of ``values`` as key pass
        ``name``'s key, for each value held by fewer than ``cap`` rows there."""
        uniques, order, bounds = self.keys[name]
        codes = uniques.get_indexer(pd.Index(values))
        codes = codes[codes >= 0]
        # every wanted key's rows at once (one isin, not one per key: 1,345 keys for
        # 1,000 uploads, 0.24 s one by one)
        starts, sizes = bounds[codes], bounds[codes + 1] - bounds[codes]
        key = np.repeat(np.arange(len(codes)), sizes)
        offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        rows = order[np.repeat(starts, sizes) + offset]
        inside = np.isin(self.coarse[rows], area)
        held = np.bincount(key[inside], minlength=len(codes))  # each key's rows in the area
        wanted = (held > 0) & (held < cap)
        return np.asarray(rows[inside & wanted[key]])


@dataclass(frozen=True)
class _Radians:
    """Coordinates in radians, with their latitudes' cosines: what the haversine takes of
    each side, computed once per held row (not per row-upload pair)."""

    lat: np.ndarray
    lon: np.ndarray
    cos: np.ndarray

    @classmethod
    def of(cls, lat: np.ndarray, lon: np.ndarray) -> _Radians:
        p = np.radians(lat)
        return cls(lat=p, lon=np.radians(lon), cos=np.cos(p))

    def take(self, index: np.ndarray) -> _Radians:
        return _Radians(lat=self.lat[index], lon=self.lon[index], cos=self.cos[index])


def _haversine_rad(one: _Radians, two: _Radians) -> np.ndarray:
    """:func:`poimatch.stages.features.haversine_m` in numpy: metres between ``one`` and
    ``two``, element by element (the same operations, in the same order, whether the
    radians were computed before or after a gather)."""
    a = (
        np.sin((two.lat - one.lat) / 2) ** 2
        + one.cos * two.cos * np.sin((two.lon - one.lon) / 2) ** 2
    )
    return np.asarray(2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))))


def _cells_each(
    lat: np.ndarray, lon: np.ndarray, reach_m: float, deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cells_within` per coordinate: (coordinate index, cell id) pairs, each
    coordinate's cells once."""
    dlat, dlon = _reach_deg(lat, reach_m)
    n_x = round(360 / deg)
    y0 = np.floor((np.maximum(lat - dlat, -90.0) + 90.0) / deg).astype(np.int64)
    y1 = np.floor((np.minimum(lat + dlat, 90.0) + 90.0) / deg).astype(np.int64)
    x0 = np.floor((lon - dlon + 180.0) / deg).astype(np.int64)
    x1 = np.floor((lon + dlon + 180.0) / deg).astype(np.int64)
    wide = np.minimum(x1 - x0 + 1, n_x)  # a box round the globe holds each x cell once
    per = (y1 - y0 + 1) * wide
    query = np.repeat(np.arange(len(lat), dtype=np.int64), per)
    k = np.arange(int(per.sum()), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)
    width = np.repeat(wide, per)
    y = np.repeat(y0, per) + k // width
    x = (np.repeat(x0, per) + k % width) % n_x
    return query, y * _X_CELLS + x


#: the held table's own grid (degrees): finer than the files' ``FINE_DEG`` cells, so the
#: cells a request's reach covers hold few rows beyond it (1,000 uploads in a generated
#: 1M-row table: 3.8M row-upload pairs in their 0.01-degree cells, 1.8M here)
HELD_DEG = 0.002


def _held_cells(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Each coordinate's ``HELD_DEG`` cell, numbered as :func:`_cells_each` numbers them."""
    y = np.floor((lat + 90.0) / HELD_DEG).astype(np.int64)
    x = np.mod(np.floor((lon + 180.0) / HELD_DEG).astype(np.int64), round(360 / HELD_DEG))
    return np.asarray(y * _X_CELLS + x)


_HELD_LOCK = threading.Lock()
_HELD: dict[str, HeldLookup] = {}  # one per table path: its last version held
_TOO_LARGE: set[tuple[str, int, int]] = set()  # (path, version, max_rows) counted over


def held_lookup(known: KnownTable) -> HeldLookup | None:
    """``known`` as held on the driver, if :func:`hold_lookup` has loaded that version."""
    held = _HELD.get(known.path)
    return held if held is not None and held.known == known else None


def hold_lookup(spark: SparkSession, known: KnownTable, max_rows: int) -> HeldLookup | None:
    """Hold ``known`` on the driver (replacing the table's older version) when it has at
    most ``max_rows`` rows; None (nothing held, nothing read) when it has more.

    The row count comes from the Delta log's file statistics (no data file is read), once
    per version and bound."""
    held = held_lookup(known)
    if held is not None or max_rows <= 0 or (known.path, known.version, max_rows) in _TOO_LARGE:
        return held
    with _HELD_LOCK:
        held = held_lookup(known)
        if held is not None:
            return held
        if known.read(spark).count() > max_rows:
            _TOO_LARGE.add((known.path, known.version, max_rows))
            return None
        _HELD.pop(known.path, None)  # the old version's memory goes before the new loads
        held = HeldLookup.load(spark, known)
        _HELD[known.path] = held
        return held


def _pass_values(uploads: pd.DataFrame, passes: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """Per key pass, its name and the uploads' keys of it."""
    out: list[tuple[str, list[str]]] = []
    for name in passes:
        keys = (pass_key_value(name, str(v)) for v in uploads[PASS_COLUMNS[name]].dropna())
        out.append((name, sorted({k for k in keys if k is not None})))
    return out


def _pass_keys(uploads: pd.DataFrame, passes: tuple[str, ...]) -> list[tuple[Column, list[str]]]:
    """Per key pass, the column it blocks on (:func:`poimatch.stages.blocking.pass_key`)
    and the uploads' values of it."""
    return [(pass_key(name), values) for name, values in _pass_values(uploads, passes)]


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
