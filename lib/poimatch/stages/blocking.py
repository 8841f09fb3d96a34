"""Blocking: candidate pairs from a spatial k-nearest pass and exact-key passes.

* Spatial pass: every row is put in a square grid cell of ``cell_m`` metres and
  joined with the rows of its 3x3 neighbourhood, so a pair closer than ``cell_m`` is
  never lost at a cell border (x cells are measured in each latitude band's own
  scale, so this holds at band borders too, at any longitude, and they wrap around
  the ±180° meridian). Rows at one identical coordinate beyond the ``k_nearest + 1``
  smallest ids are never anyone's candidates (ties go to the smallest ids), so a
  stack of rows at one point is not joined with itself. Each row keeps its
  ``k_nearest`` nearest candidates: the cap that keeps dense city centres from
  exploding. In dense areas the join itself would grow with the square of the
  density, so a row there is first joined on a finer grid (``cell_m / 2**j``) and
  kept when ``k_nearest`` others lie within that finer cell size (then they are
  exactly its k nearest in the 3x3 cells of ``cell_m``); the few others are redone
  on the ``cell_m`` grid.
* Key passes: rows sharing a normalized name, phone or url domain within a much
  wider area (``key_cell_m``, again with neighbours), ``k_key`` nearest per row, for
  duplicates whose coordinates are far apart. A key shared by more than
  ``max_key_group`` rows in one area ("bus stop", "atm") is too generic to block on;
  such rows are cut before the join (from per-cell key counts).

Passes are unioned; each pair appears once in canonical order (``id_l < id_r``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.columns import cached_column
from poimatch.config import BlockingSettings
from poimatch.stages.features import PAIR_SIDE_COLUMNS, haversine_m, pair_side_col

__all__ = [
    "BITS",
    "DIST",
    "FINE_LEVELS",
    "KTH",
    "LEVEL",
    "OTHER",
    "directed_candidates",
    "kth_distances",
    "level_hint",
    "pass_label",
    "pass_names",
    "rows_near_changes",
    "candidate_pairs",
    "add_pair_sides",
    "haversine_m",
    "PASS_COLUMNS",
    "nearest_rows",
    "pass_key",
    "pass_key_value",
]

_M_PER_DEG = 111_320.0
_CY, _CX = "_cy", "_cx"
_DIST = "_dist_m"
_RANK = "_rank"
_KEY = "_key"
_OTHER = "_other"
_LVL = "_lvl"
_BAND = "_band"
_SRC, _SRC_O = "_src", "_src_o"
# between a key pass's name and its key value (no pass name holds it)
_KEY_SEP = "\u0001"
_SPATIAL = "spatial"
# Finer grids (cell_m / 2, / 4, ...) tried for rows in dense areas, and how many
# other rows (times k) the 3x3 cells of a finer grid must hold for it to be tried.
FINE_LEVELS = 4
_DENSE_FACTOR = 4
Materialize = Callable[[DataFrame], DataFrame]


@cached_column
def _cell_y(lat: Column, cell_m: Column | float) -> Column:
    return F.floor(lat * _M_PER_DEG / cell_m).cast(T.LongType())


@cached_column
def _band_cells(cy: Column, cell_m: Column | float) -> Column:
    """How many x cells latitude band ``cy`` holds around the globe (at least 1).

    A whole number of cells per band, each at least ``cell_m`` wide at the band's
    centre, so that the x cells close up at the ±180° meridian (see :func:`_cell_x`).
    """
    band_lat = F.radians((cy + 0.5) * cell_m / _M_PER_DEG)
    scale = F.greatest(F.cos(band_lat), F.lit(0.01))
    return F.greatest(F.floor(F.lit(360.0 * _M_PER_DEG) * scale / cell_m), F.lit(1)).cast(
        T.LongType()
    )


@cached_column
def _cell_x(lon: Column, cy: Column, cell_m: Column | float) -> Column:
    # x cells are scaled at the latitude of the band's centre, so cells stay square,
    # and numbered 0 .. n-1 eastwards from -180°: cell n-1 (just west of +180°) and
    # cell 0 (just east of -180°) are neighbours, and +180° is cell 0 like -180°
    n = _band_cells(cy, cell_m)
    return F.pmod(F.floor((lon + 180.0) / 360.0 * n).cast(T.LongType()), n)


@cached_column
def _wrap_x(cx: Column, cy: Column, cell_m: Column | float) -> Column:
    """An x cell index shifted past either end of band ``cy``, brought back into it."""
    return F.pmod(cx, _band_cells(cy, cell_m))


@cached_column
def _distinct_neighbour(dx: Column, cy: Column, cell_m: Column | float) -> Column:
    """False for an x offset that lands on a cell already covered (bands of 1-2 cells)."""
    n = _band_cells(cy, cell_m)
    return (dx == 0) | ((dx == 1) & (n >= 2)) | ((dx == -1) & (n >= 3))


def _with_cell(df: DataFrame, cell_m: float) -> DataFrame:
    cy = _cell_y(F.col(S.LATITUDE), cell_m)
    return df.withColumn(_CY, cy).withColumn(_CX, _cell_x(F.col(S.LONGITUDE), F.col(_CY), cell_m))


@cached_column
def _offsets() -> Column:
    return F.array(
        *[
            F.struct(F.lit(dy).alias("dy"), F.lit(dx).alias("dx"))
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
    )


def _spread_counts(counts: DataFrame, keys: list[str], cell_m: Column | float) -> DataFrame:
    """Per cell (and key): rows in the 3x3 cells around it, from per-cell counts ``_c``
    (``cell_m`` a column when each key row has its own cell size, as per grid level)."""
    return (
        counts.select(_CY, _CX, *keys, "_c", F.explode(_offsets()).alias("_o"))
        .withColumn(_CY, F.col(_CY) + F.col("_o.dy"))
        .where(_distinct_neighbour(F.col("_o.dx"), F.col(_CY), cell_m))
        .withColumn(_CX, _wrap_x(F.col(_CX) + F.col("_o.dx"), F.col(_CY), cell_m))
        .groupBy(_CY, _CX, *keys)
        .agg(F.sum("_c").alias("_nn"))
    )


def _thin_stacks(rows: DataFrame, per_point: int, keys: list[str]) -> DataFrame:
    """At most ``per_point`` rows (smallest ids first) per identical coordinate (and key,
    and source when linking sources).

    Rows at one coordinate are all at distance 0 from each other and from any other
    row at equal distance, so ties go to the smallest ids: a row's ``k`` nearest never
    include more than ``k + 1`` rows of one stack (k others, plus itself when it is
    one of them). Offering only those as candidates keeps the result exact and turns
    a stack of ``n`` rows from an ``n x n`` join into ``n x (k + 1)``.
    """
    part = (S.LATITUDE, S.LONGITUDE, *keys, *([_SRC] if _SRC in rows.columns else []))
    position, kept = _stack_columns(part, per_point)
    return rows.withColumn("_pos", position).where(kept).drop("_pos")


@cached_column
def _stack_columns(part: tuple[str, ...], per_point: int) -> tuple[Column, Column]:
    w = Window.partitionBy(*part).orderBy(F.col(S.ID))
    return F.row_number().over(w), F.col("_pos") <= per_point


@cached_column
def _size(cell_m: float) -> Column:
    """Cell size of a row's grid level: ``cell_m / 2**_lvl``."""
    return F.lit(cell_m) / F.pow(F.lit(2.0), F.col(_LVL))


def _near_pairs(
    left: DataFrame,
    right: DataFrame,
    cell_m: float,
    *,
    key: bool,
    levels: int = 0,
    broadcast: bool = True,
) -> DataFrame:
    """Directed pairs (id, other, distance) between rows of neighbouring cells.

    Both frames hold ``id``, ``latitude``, ``longitude``, with ``key`` ``_key`` and, to
    link sources only, ``_src`` (pairs of two rows of one source are left out before
    any ranking, so each row keeps its k nearest rows of other sources);
    left rows also ``_lvl``, their grid level (cell size ``cell_m / 2**_lvl``, at
    most ``levels``). Each left row stays in its own cell; each right row is copied,
    on every grid level, into the 3x3 cells around it, its x cell
    measured in each target band's own scale (so a pair closer than the cell size is
    never lost at a band border, whatever the longitude) and wrapped around the ±180°
    meridian (so a pair across it is found like any other). Right copies are first cut
    to the cells that hold a left row (broadcast semi-join), and the output stays
    partitioned by the left row's cell: a per-row window over
    ``(_lvl, _cy, _cx[, _key], id)`` needs no further shuffle. ``broadcast`` False: the
    occupied cells are not broadcast (a table too large to gather its cells on the
    driver; see ``matching.broadcast_max_rows``) and the cut is a shuffled semi-join.
    """
    on = [_LVL, _CY, _CX] + ([_KEY] if key else [])
    size = _size(cell_m)
    own_y = _cell_y(F.col(S.LATITUDE), size)
    lefts = left.withColumn(_CY, own_y).withColumn(
        _CX, _cell_x(F.col(S.LONGITUDE), F.col(_CY), size)
    )
    wanted = lefts.select(*on).distinct()
    link = _SRC in left.columns
    located = right.select(
        F.col(S.ID).alias(_OTHER),
        F.col(S.LATITUDE).alias("_lat_o"),
        F.col(S.LONGITUDE).alias("_lon_o"),
        *([F.col(_SRC).alias(_SRC_O)] if link else []),
        *([_KEY] if key else []),
        F.explode(F.sequence(F.lit(0), F.lit(levels))).alias(_LVL),
    )
    rights = _copies(located, size).join(
        F.broadcast(wanted) if broadcast else wanted, on=on, how="left_semi"
    )
    joined = lefts.join(rights, on=on, how="inner").where(F.col(S.ID) != F.col(_OTHER))
    if link:  # link only: never two rows of one (known) source
        src, other = F.col(_SRC), F.col(_SRC_O)
        joined = joined.where(src.isNull() | other.isNull() | (src != other))
    return joined.withColumn(
        _DIST,
        haversine_m(F.col(S.LATITUDE), F.col(S.LONGITUDE), F.col("_lat_o"), F.col("_lon_o")),
    ).select(*on, S.ID, _OTHER, _DIST, size.alias("_size"))


def _ranked(directed: DataFrame, k: int, key: bool) -> DataFrame:
    """Each row's ``k`` nearest (``_rank`` <= k), with ``_ok``: at least ``k`` others
    lie within the row's cell size (so its k nearest cannot lie outside the 3x3 cells)."""
    kept, rank, ok, top, out = _rank_columns(k, key)
    # A row on a finer grid is kept only when k others lie within its cell size, and
    # then its k nearest all do: its pairs beyond that size (two thirds of its 3x3
    # cells) are never ranked, so they are dropped before the sort.
    return (
        directed.where(kept).withColumn(_RANK, rank).withColumn("_ok", ok).where(top).select(*out)
    )


@cached_column
def _rank_columns(k: int, key: bool) -> tuple[Column, Column, Column, Column, list[Column]]:
    """:func:`_ranked`'s expressions: kept before the sort, rank, ``_ok``, top k, output."""
    part = [_LVL, _CY, _CX, *([_KEY] if key else []), S.ID]
    w = Window.partitionBy(*part).orderBy(F.col(_DIST), F.col(_OTHER))
    per_row = Window.partitionBy(*part)
    # 0.99: margin for the grid's metres per degree (111,320) against the haversine's
    within = F.col(_DIST) <= 0.99 * F.col("_size")
    near = F.sum(F.when(within, 1).otherwise(0)).over(per_row)
    out = [S.ID, _OTHER, _DIST, _RANK, _LVL, "_ok", *([_KEY] if key else [])]
    return (
        (F.col(_LVL) == 0) | within,
        F.row_number().over(w),
        near >= k,
        F.col(_RANK) <= k,
        [F.col(c) for c in out],
    )


def _row_columns(points: DataFrame) -> list[str]:
    return [S.ID, S.LATITUDE, S.LONGITUDE, *([_SRC] if _SRC in points.columns else [])]


def _grid_levels(
    points: DataFrame,
    cell_m: float,
    k: int,
    fine_levels: int,
    query_ids: DataFrame | None = None,
) -> DataFrame:
    """``id``, ``latitude``, ``longitude``, ``_lvl``: the finest grid worth trying per row.

    Level ``j`` has cells of ``cell_m / 2**j``; a row gets the finest level whose 3x3
    cells around it hold at least ``_DENSE_FACTOR * k`` other rows (then its k
    nearest almost always lie within one cell size, which :func:`_ranked` checks).

    All levels in one pass: each row is copied once per fine level (its cell at that
    level), the copies are counted per level and cell, spread to the 3x3 cells and
    flagged dense, and each row keeps its finest dense level; three shuffles and a plan
    of fixed size, however many levels (level by level, it was three shuffles and a
    join per level, and a plan Spark took seconds to analyse, on any table). Ids are
    unique, as everywhere in blocking.

    ``query_ids`` (``id``): levels for those rows alone, counting only the cells around
    them (a broadcast cut before the shuffle). A level only decides where a row is
    tried first (:func:`_spatial_nearest` redoes an unconfirmed row on the coarse
    grid), so the cut changes the work, never the pairs.
    """
    cols = _row_columns(points)
    rows = points.select(*cols)
    size = _size(cell_m)

    def copied(frame: DataFrame) -> DataFrame:
        out = frame.select(
            *cols, F.explode(F.sequence(F.lit(1), F.lit(fine_levels))).alias(_LVL)
        ).withColumn(_CY, _cell_y(F.col(S.LATITUDE), size))
        return out.withColumn(_CX, _cell_x(F.col(S.LONGITUDE), F.col(_CY), size))

    copies = counted = copied(rows)
    if query_ids is not None:
        copies = copied(rows.join(query_ids, on=S.ID, how="left_semi"))
        around = _spread_counts(
            copies.groupBy(_LVL, _CY, _CX).agg(F.lit(0).alias("_c")), [_LVL], size
        ).select(_LVL, _CY, _CX)
        counted = counted.join(F.broadcast(around), on=[_LVL, _CY, _CX], how="left_semi")
    counts = counted.groupBy(_LVL, _CY, _CX).agg(F.count(F.lit(1)).alias("_c"))
    dense = (
        _spread_counts(counts, [_LVL], size)
        .where(F.col("_nn") - 1 >= _DENSE_FACTOR * k)
        .select(_LVL, _CY, _CX, F.lit(True).alias("_dense"))
    )
    finest = F.max(F.when(F.col("_dense"), F.col(_LVL)).otherwise(F.lit(0)))
    return (
        copies.join(dense, on=[_LVL, _CY, _CX], how="left")
        .groupBy(*cols)
        .agg(finest.cast(T.IntegerType()).alias(_LVL))
    )


def _spatial_nearest(
    points: DataFrame,
    cell_m: float,
    k: int,
    *,
    fine_levels: int = FINE_LEVELS,
    materialize: Materialize | None = None,
    query: Column | None = None,
    broadcast: bool = True,
    query_ids: DataFrame | None = None,
) -> DataFrame:
    """Directed ``(id, _other)``: each row's ``k`` nearest within its 3x3 cells
    (each row that ``query`` selects, or whose id ``query_ids`` holds, when given: the
    others are only candidates). ``query_ids`` may hold a ``level`` per row: the grid
    level to try it on first (:func:`level_hint`; null: counted as for any row).

    Exactly the k nearest among the rows in the 3x3 cells of ``cell_m`` around the
    row (ties by id), without joining every dense cell with its neighbours: a row in
    a dense area is first matched on a finer grid (see :func:`_grid_levels`); if
    fewer than ``k`` others lie within that finer cell size, the row is redone on the
    ``cell_m`` grid. Any row closer than a cell size is within the 3x3 cells, so the
    k nearest found on a finer grid are the k nearest on the coarse one.
    """
    rows = None
    if fine_levels and query_ids is not None and LEVEL in query_ids.columns:
        # rows with a level hint start there; the others are counted for one
        hinted = query_ids.where(F.col(LEVEL).isNotNull())
        rows = (
            points.select(*_row_columns(points))
            .join(hinted.select(S.ID, F.least(F.col(LEVEL), F.lit(fine_levels)).alias(_LVL)), S.ID)
            .unionByName(
                _grid_levels(
                    points,
                    cell_m,
                    k,
                    fine_levels,
                    query_ids.where(F.col(LEVEL).isNull()).select(S.ID),
                )
            )
        )
    elif fine_levels:
        rows = _grid_levels(points, cell_m, k, fine_levels, query_ids)
    if rows is None:
        rows = points.select(*_row_columns(points), F.lit(0).alias(_LVL))
        if query_ids is not None:
            rows = rows.join(query_ids, on=S.ID, how="left_semi")
    if query is not None:
        rows = rows.where(query)
    if materialize is not None and fine_levels:
        rows = materialize(rows)  # read by both rounds (computed twice otherwise)
    right = _thin_stacks(points.select(*_row_columns(points)), k + 1, [])
    if materialize is not None:
        right = materialize(right)  # read by both rounds
    near = _near_pairs(rows, right, cell_m, key=False, levels=fine_levels, broadcast=broadcast)
    first = _ranked(near, k, key=False)
    if materialize is not None:
        first = materialize(first)
    done = first.where(F.col("_ok") | (F.col(_LVL) == 0)).select(S.ID, _OTHER, _DIST)
    if not fine_levels:
        return done
    # every fine-grid row not confirmed by its first round, including one with no
    # candidate at all within its cell size (it has no row in ``first``)
    ok_ids = first.where(F.col("_ok") & (F.col(_LVL) > 0)).select(S.ID).distinct()
    redo = (
        rows.where(F.col(_LVL) > 0)
        .join(ok_ids, on=S.ID, how="left_anti")
        .withColumn(_LVL, F.lit(0))
    )
    again = _ranked(_near_pairs(redo, right, cell_m, key=False, broadcast=broadcast), k, key=False)
    return done.unionByName(again.select(S.ID, _OTHER, _DIST))


def _key_nearest(
    points: DataFrame,
    settings: BlockingSettings,
    passes: Sequence[str],
    query: Column | None = None,
    broadcast: bool = True,
    *,
    query_ids: DataFrame | None = None,
) -> DataFrame:
    """Directed ``(id, _other, block_pass)`` of the key passes: per pass, the ``k_key``
    nearest rows sharing its key.

    The passes run as one: each row is copied once per pass whose key it has, the key
    prefixed by the pass name, so one join, one set of counts and one ranking serve
    every pass (per pass and row, as separate passes would; the prefix keeps a phone
    from ever meeting a name). A row whose key is shared by ``max_key_group`` or more
    other rows in its 3x3 cells of ``key_cell_m`` is skipped (a key that generic says
    nothing); such rows are cut before the join, so a generic key never makes a
    quadratic join.
    """
    cell_m = settings.key_cell_m
    keyed = _pass_keys(passes)
    rows = (
        points.select(*_row_columns(points), F.explode(keyed).alias(_KEY))
        .where(F.col(_KEY).isNotNull())
        .withColumn(_LVL, F.lit(0))
    )
    # a key's counts and pairs are made of the rows holding it alone: only the query
    # rows' keys matter (cut before any shuffle; an incremental run's query ids are few,
    # so their keys are always broadcast)
    holders = None
    if query_ids is not None:
        holders = rows.join(query_ids, on=S.ID, how="left_semi")
    elif query is not None:
        holders = rows.where(query)
    if holders is not None:
        keys = holders.select(_KEY).distinct()
        wide = query_ids is not None or broadcast
        rows = rows.join(F.broadcast(keys) if wide else keys, on=_KEY, how="left_semi")
    celled = _with_cell(rows, cell_m)
    counts = celled.groupBy(_CY, _CX, _KEY).agg(F.count(F.lit(1)).alias("_c"))
    near = _spread_counts(counts, [_KEY], cell_m)
    cap = settings.max_key_group
    left = celled.join(near, on=[_CY, _CX, _KEY], how="inner").where(F.col("_nn") - 1 < cap)
    if query is not None:
        left = left.where(query)
    if query_ids is not None:
        left = left.join(query_ids, on=S.ID, how="left_semi")
    # a right row in a cell with more than cap rows of its key only neighbours skipped rows
    right = celled.join(counts.where(F.col("_c") <= cap), on=[_CY, _CX, _KEY], how="left_semi")
    right = _thin_stacks(right.drop(_CY, _CX, _LVL), settings.k_key + 1, [_KEY])
    directed = _near_pairs(left.drop(_CY, _CX, "_nn"), right, cell_m, key=True, broadcast=broadcast)
    return _ranked(directed, settings.k_key, key=True).select(
        S.ID, _OTHER, F.substring_index(F.col(_KEY), _KEY_SEP, 1).alias(S.PASS), _DIST
    )


def _pass_keys(passes: Sequence[str]) -> Column:
    """A row's keys of the key passes ``passes``, each prefixed by its pass name (so a
    phone never meets a name; null where the row has no key for a pass)."""
    return F.array(*[F.concat(F.lit(name + _KEY_SEP), pass_key(name)) for name in passes])


def _canonical(directed: DataFrame, label: Column) -> DataFrame:
    return directed.select(
        F.least(F.col(S.ID), F.col(_OTHER)).alias(S.ID_L),
        F.greatest(F.col(S.ID), F.col(_OTHER)).alias(S.ID_R),
        label.alias(S.PASS),
    )


#: the normalized column each key pass reads; a name prefix is the first _PREFIX_LEN
#: characters of a name of at least _PREFIX_MIN
PASS_COLUMNS: dict[str, str] = {
    "name": S.N_NAME,
    "name_prefix": S.N_NAME,
    "phone": S.N_PHONE,
    "url": S.N_URL,
}
_PREFIX_MIN, _PREFIX_LEN = 4, 6


def pass_key(name: str) -> Column:
    """The column key pass ``name`` blocks on (of the normalized columns)."""
    if name not in PASS_COLUMNS:
        raise ValueError(f"unknown blocking pass {name!r}")
    column = F.col(PASS_COLUMNS[name])
    if name == "name_prefix":
        return F.when(F.length(column) >= _PREFIX_MIN, F.substring(column, 1, _PREFIX_LEN))
    return column


def pass_key_value(name: str, value: str) -> str | None:
    """:func:`pass_key` of one value of its column, in Python (None: no key)."""
    if name == "name_prefix":
        return value[:_PREFIX_LEN] if len(value) >= _PREFIX_MIN else None
    return value


def candidate_pairs(
    points: DataFrame,
    *,
    settings: BlockingSettings,
    materialize: Materialize | None = None,
    link_only: bool = False,
    fine_levels: int = FINE_LEVELS,
    query: Column | None = None,
    broadcast_cells: bool = True,
) -> DataFrame:
    """Candidate pairs ``(id_l, id_r, block_pass)`` of normalized POIs.

    Args:
        points: rows with ``id``, ``latitude``, ``longitude`` and the normalized
            columns of :func:`poimatch.stages.normalize.add_normalized_columns`.
        settings: the blocking section of the configuration.
        materialize: optional ``DataFrame -> DataFrame`` (e.g. a local checkpoint)
            applied to the spatial pass's candidate rows and first round, which are
            each read twice; without it they are computed twice and the result is a
            pure transform.
        link_only: link sources, not deduplicate them (Splink's ``link_only``): two
            rows that name the same ``source`` are never a pair, and each pass keeps
            a row's nearest rows of other sources. Rows without a source pair with
            any row.
        fine_levels: how many finer grids a row in a dense area tries first (see
            :func:`_spatial_nearest`). They give exactly the coarse grid's k nearest,
            faster on a large dense table; 0 plans the coarse grid alone (a smaller
            plan, the same pairs: what a small upload needs).
        query: a condition on ``id``: only the rows it selects look for their nearest
            (in every pass); the others are candidates only. Matching uploads against
            a table (:mod:`poimatch.runs.against`) asks for the uploads' candidates alone.
        broadcast_cells: cut each pass's copied rows to the occupied cells with a
            broadcast join (the default: fastest while the cells fit on the driver);
            False for a table too large for that (the same pairs, a shuffled join).

    Returns:
        One row per distinct pair, ``id_l < id_r``; ``block_pass`` names the passes
        that found it (comma-separated, in name order: ``name,spatial``).

    Example:
        >>> pairs = candidate_pairs(normalized, settings=BlockingSettings())  # doctest: +SKIP
    """
    if link_only:
        if S.SOURCE not in points.columns:
            raise ValueError(f"link_only needs a {S.SOURCE!r} column naming each row's source")
        points = points.withColumn(_SRC, F.col(S.SOURCE))
    spatial, keyed = _directed_passes(
        points,
        settings,
        fine_levels=fine_levels,
        materialize=materialize,
        query=query,
        broadcast=broadcast_cells,
    )
    # each pass is a bit (in name order), OR-ed per pair: a plain hash aggregate of
    # longs, where collecting, sorting and joining the names per pair was an object
    # aggregate over every directed pair; the label is spelled once per pair after it
    names = pass_names(settings)
    union = _canonical(spatial, F.lit(1 << names.index(_SPATIAL)))
    if keyed is not None:
        union = union.unionByName(_canonical(keyed, _pass_bit(F.col(S.PASS), names)))
    return (
        union.groupBy(S.ID_L, S.ID_R)
        .agg(F.bit_or(S.PASS).alias(S.PASS))
        .withColumn(S.PASS, pass_label(F.col(S.PASS), names))
    )


def _directed_passes(
    points: DataFrame,
    settings: BlockingSettings,
    *,
    fine_levels: int,
    materialize: Materialize | None,
    query: Column | None = None,
    query_ids: DataFrame | None = None,
    broadcast: bool = True,
) -> tuple[DataFrame, DataFrame | None]:
    """The spatial pass's directed ``(id, _other, _dist_m)`` and the key passes' directed
    ``(id, _other, block_pass)`` (None without key passes)."""
    spatial = _spatial_nearest(
        points,
        settings.cell_m,
        settings.k_nearest,
        fine_levels=fine_levels,
        materialize=materialize,
        query=query,
        broadcast=broadcast,
        query_ids=query_ids,
    )
    keyed = None
    if settings.key_passes:
        keyed = _key_nearest(
            points, settings, settings.key_passes, query, broadcast, query_ids=query_ids
        )
    return spatial, keyed


def pass_names(settings: BlockingSettings) -> list[str]:
    """The passes of ``settings`` in name order: pass ``i`` is bit ``1 << i``."""
    return sorted({_SPATIAL, *settings.key_passes})


def pass_label(bits: Column, names: list[str]) -> Column:
    """``block_pass`` spelled from OR-ed pass bits (names in name order, comma-separated)."""
    return F.concat_ws(
        ",", *[F.when(bits.bitwiseAND(1 << i) != 0, F.lit(n)) for i, n in enumerate(names)]
    )


#: columns of :func:`directed_candidates`
OTHER, BITS, DIST = "other_id", "pass_bits", "dist_m"


def directed_candidates(
    points: DataFrame,
    *,
    settings: BlockingSettings,
    query_ids: DataFrame | None = None,
    materialize: Materialize | None = None,
    fine_levels: int = FINE_LEVELS,
    broadcast_cells: bool = True,
) -> DataFrame:
    """Each row's own candidates: ``id``, ``other_id``, ``pass_bits`` (the passes that
    found ``other_id`` for ``id``, bits of :func:`pass_names`), ``dist_m`` (their
    distance).

    The pairs of :func:`candidate_pairs` are these, each pair once whichever of its two
    rows found it. ``query_ids`` (``id``): the lists of those rows alone, each exactly as
    a run over all of ``points`` gives it, with the work cut to what they need (the grid
    levels counted around them, or taken from a ``level`` hint, see :func:`level_hint`;
    the key passes cut to their keys): what an incremental run recomputes
    (:mod:`poimatch.runs.incremental`). A level decides only where a row is tried first
    (an unconfirmed row is redone on the coarse grid), never its list.
    """
    spatial, keyed = _directed_passes(
        points,
        settings,
        fine_levels=fine_levels,
        materialize=materialize,
        query_ids=query_ids,
        broadcast=broadcast_cells,
    )
    names = pass_names(settings)
    union = spatial.select(
        S.ID, _OTHER, F.lit(1 << names.index(_SPATIAL)).cast(T.LongType()).alias(BITS), _DIST
    )
    if keyed is not None:
        union = union.unionByName(
            keyed.select(
                S.ID,
                _OTHER,
                _pass_bit(F.col(S.PASS), names).alias(BITS),
                _DIST,
            )
        )
    return (
        union.groupBy(S.ID, _OTHER)
        .agg(F.bit_or(BITS).alias(BITS), F.max(_DIST).alias(DIST))
        .withColumnRenamed(_OTHER, OTHER)
    )


def rows_near_changes(
    points: DataFrame,
    added: DataFrame,
    removed: DataFrame,
    *,
    settings: BlockingSettings,
    fine_levels: int = FINE_LEVELS,
) -> DataFrame:
    """Ids of ``points`` whose candidate lists rows arriving or leaving could change,
    besides the lists holding a leaving row (the caller finds those in the last run's
    pairs).

    Args:
        points: the rows that stay, with the normalized key columns and
            ``kth_dist_m``: per pass name, the distance of the row's k-th nearest
            candidate of that pass in the last run (null or absent: fewer than k).
        added: rows that arrive (new rows, the new values of changed rows).
        removed: rows that leave (the old values of changed rows, deleted rows).
        settings: the blocking settings of the run.
        fine_levels: finer grids to look on (see :func:`_spatial_nearest`).

    A pass's list is a row's k nearest (ties to the smallest ids) among the rows it may
    pair with. A row arriving farther than the k-th cannot enter it, so a row's list
    stays unless an added row lies within that distance (anywhere it could pair with
    when it had fewer than k). A row leaving changes only the lists holding it. The
    spatial rows are looked for on the finest grid whose cells are at least that
    distance, so the join stays small in dense areas. A key pass's list also changes
    when the counts that cut generic keys cross the cap: the row's own (its 3x3 key
    cells), or a cell's whose rows it could pair with. Stacked rows need no rule of
    their own: a row pushed out of a stack's ``k + 1`` offered rows is replaced by an
    arriving row at the same point, at the same distance.
    """
    size = _size(settings.cell_m)
    kth = F.col(KTH)[_SPATIAL]
    finest = level_hint(F.col(KTH), settings.cell_m, fine_levels)
    left = points.select(S.ID, S.LATITUDE, S.LONGITUDE, kth.alias("_kth"), finest.alias(_LVL))
    left = left.withColumn(_CY, _cell_y(F.col(S.LATITUDE), size))
    left = left.withColumn(_CX, _cell_x(F.col(S.LONGITUDE), F.col(_CY), size))
    arriving = _copies(
        added.select(
            F.col(S.ID).alias(_OTHER),
            F.col(S.LATITUDE).alias("_lat_o"),
            F.col(S.LONGITUDE).alias("_lon_o"),
            F.explode(F.sequence(F.lit(0), F.lit(fine_levels))).alias(_LVL),
        ),
        size,
    )
    dist = haversine_m(F.col(S.LATITUDE), F.col(S.LONGITUDE), F.col("_lat_o"), F.col("_lon_o"))
    spatial = (
        left.join(F.broadcast(arriving), on=[_LVL, _CY, _CX])
        .where((F.col(S.ID) != F.col(_OTHER)) & (F.col("_kth").isNull() | (dist <= F.col("_kth"))))
        .select(S.ID)
    )
    if not settings.key_passes:
        return spatial.distinct()
    return spatial.unionByName(_key_neighbours(points, added, removed, settings)).distinct()


def _copies(rows: DataFrame, size: Column | float) -> DataFrame:
    """``rows`` (with ``_lat_o``, ``_lon_o``) copied into the 3x3 cells of ``size``
    around them (``_cy``, ``_cx`` of each copy): each x cell measured in the target band's
    own scale and wrapped around the ±180° meridian, so a pair closer than the cell size
    always meets (:func:`_near_pairs`' right rows, :func:`rows_near_changes`' arrivals)."""
    return (
        rows.select("*", F.explode(_offsets()).alias("_o"))
        .withColumn(_CY, _cell_y(F.col("_lat_o"), size) + F.col("_o.dy"))
        .where(_distinct_neighbour(F.col("_o.dx"), F.col(_CY), size))
        .withColumn(
            _CX,
            _wrap_x(_cell_x(F.col("_lon_o"), F.col(_CY), size) + F.col("_o.dx"), F.col(_CY), size),
        )
        .drop("_o")
    )


def _key_neighbours(
    points: DataFrame, added: DataFrame, removed: DataFrame, settings: BlockingSettings
) -> DataFrame:
    """Ids of ``points`` whose key-pass lists rows arriving or leaving can change: a
    row blocks on its key in one run and not the other (the count in its 3x3 key cells
    crosses ``max_key_group``); a cell its key's copies come from crosses the cap (its
    rows are offered in one run only); or an arriving row sharing its key lands in its
    cell no farther than its k-th nearest of that pass (or it had fewer than k)."""
    cell_m, cap = settings.key_cell_m, settings.max_key_group
    keyed = _pass_keys(settings.key_passes)

    def keys_of(frame: DataFrame) -> DataFrame:
        out = frame.select(S.LATITUDE, S.LONGITUDE, F.explode(keyed).alias(_KEY))
        return _with_cell(out.where(F.col(_KEY).isNotNull()), cell_m)

    arriving, leaving = keys_of(added), keys_of(removed)
    wanted = F.broadcast(arriving.unionByName(leaving).select(_KEY).distinct())
    rows = (
        points.select(S.ID, S.LATITUDE, S.LONGITUDE, KTH, F.explode(keyed).alias(_KEY))
        .where(F.col(_KEY).isNotNull())
        .join(wanted, on=_KEY, how="left_semi")
    )
    rows = _with_cell(rows, cell_m)
    cells = [_CY, _CX, _KEY]

    def counted(frame: DataFrame) -> DataFrame:
        return frame.select(*cells).groupBy(*cells).agg(F.count(F.lit(1)).alias("_c"))

    # counts of the moving keys alone, before and after: per cell, and spread to 3x3
    cell_before = counted(rows.select(*cells).unionByName(leaving.select(*cells)))
    cell_after = counted(rows.select(*cells).unionByName(arriving.select(*cells)))
    crossing = (
        cell_before.withColumnRenamed("_c", "_b")
        .join(cell_after.withColumnRenamed("_c", "_a"), on=cells, how="full")
        .where((F.coalesce("_b", F.lit(0)) > cap) != (F.coalesce("_a", F.lit(0)) > cap))
    )
    near_before = _spread_counts(cell_before, [_KEY], cell_m).withColumnRenamed("_nn", "_nb")
    near_after = _spread_counts(cell_after, [_KEY], cell_m).withColumnRenamed("_nn", "_na")
    status = (
        rows.join(near_before, on=cells, how="left")
        .join(near_after, on=cells, how="left")
        .withColumn("_skip_b", F.coalesce("_nb", F.lit(0)) - 1 >= cap)
        .withColumn("_skip_a", F.coalesce("_na", F.lit(0)) - 1 >= cap)
    )
    flipped = status.where(F.col("_skip_b") != F.col("_skip_a")).select(S.ID)
    # the rows of a crossing cell are offered in one run only: the rows their copies
    # reach may see their lists change
    located = [F.col(S.LATITUDE).alias("_lat_o"), F.col(S.LONGITUDE).alias("_lon_o")]
    members = (
        rows.select(*cells, *located)
        .unionByName(arriving.select(*cells, *located))
        .unionByName(leaving.select(*cells, *located))
        .join(F.broadcast(crossing.select(*cells)), on=cells, how="left_semi")
    )
    offered = _copies(members.drop(_CY, _CX), cell_m).select(*cells).distinct()
    cut_rows = rows.join(F.broadcast(offered), on=cells, how="left_semi").select(S.ID)
    pass_name = F.substring_index(F.col(_KEY), _KEY_SEP, 1)
    incoming = _copies(
        arriving.select(
            _KEY, F.col(S.LATITUDE).alias("_lat_o"), F.col(S.LONGITUDE).alias("_lon_o")
        ),
        cell_m,
    )
    dist = haversine_m(F.col(S.LATITUDE), F.col(S.LONGITUDE), F.col("_lat_o"), F.col("_lon_o"))
    kth = F.col(KTH)[pass_name]
    entering = (
        status.where(~F.col("_skip_a"))
        .join(F.broadcast(incoming), on=cells)
        .where(kth.isNull() | (dist <= kth))
        .select(S.ID)
    )
    return flipped.unionByName(cut_rows).unionByName(entering)


def kth_distances(directed: DataFrame, settings: BlockingSettings) -> DataFrame:
    """``id``, ``kth_dist_m`` of :func:`directed_candidates`' rows: per pass name, the
    distance of the row's k-th nearest candidate of that pass (``k_nearest`` for the
    spatial pass, ``k_key`` for a key pass), null when it has fewer than k."""
    entries: list[Column] = []
    for i, name in enumerate(pass_names(settings)):
        k = settings.k_nearest if name == _SPATIAL else settings.k_key
        has = F.col(BITS).bitwiseAND(1 << i) != 0
        kth = F.when(F.count(F.when(has, 1)) >= k, F.max(F.when(has, F.col(DIST))))
        entries += [F.lit(name), kth]
    return directed.groupBy(S.ID).agg(F.create_map(*entries).alias(KTH))


#: the column of :func:`directed_candidates`' ``query_ids``: a grid level to start on
LEVEL = "level"


def level_hint(kth: Column, cell_m: float, fine_levels: int = FINE_LEVELS) -> Column:
    """The finest grid level whose cells hold a row's last k-th nearest spatial distance
    (``kth``: a :data:`KTH` map; 0 when it had fewer than k): where its k nearest are
    most likely found again, with the least work."""
    dist = kth[_SPATIAL]
    finest = F.lit(0)
    for j in range(1, fine_levels + 1):
        finest = F.when(dist <= 0.99 * cell_m / (2.0**j), F.lit(j)).otherwise(finest)
    return finest


#: the column of :func:`rows_near_changes`' points: per pass name, the distance of the
#: row's k-th nearest candidate of that pass (null: fewer than k)
KTH = "kth_dist_m"


def _pass_bit(name: Column, names: list[str]) -> Column:
    """The bit of pass ``name`` among ``names`` (a long)."""
    bit = F.lit(None).cast(T.LongType())
    for i, n in enumerate(names):
        bit = F.when(name == n, F.lit(1 << i)).otherwise(bit)
    return bit


def add_pair_sides(pairs: DataFrame, points: DataFrame) -> DataFrame:
    """Attach each side's columns (``<col>_l`` / ``<col>_r``) needed by the features."""
    present = set(points.columns)
    cols = tuple(c for c in (*PAIR_SIDE_COLUMNS, S.POI, S.SOURCE) if c in present)
    left = points.select(*_side_columns(cols, "l"))
    right = points.select(*_side_columns(cols, "r"))
    return pairs.join(left, on=S.ID_L, how="inner").join(right, on=S.ID_R, how="inner")


@cached_column
def _side_columns(cols: tuple[str, ...], side: str) -> list[Column]:
    """``id`` as ``id_<side>`` and each of ``cols`` as ``<col>_<side>``."""
    return [
        F.col(S.ID).alias(S.ID_L if side == "l" else S.ID_R),
        *[F.col(c).alias(pair_side_col(c, side)) for c in cols],
    ]


def nearest_rows(
    queries: DataFrame,
    rows: DataFrame,
    *,
    settings: BlockingSettings,
    link_only: bool = False,
    query_latitudes: Sequence[float] | None = None,
) -> DataFrame:
    """The rows of ``rows`` the spatial pass could offer a query row as a candidate: for
    each row of ``queries`` (``id``, ``latitude``, ``longitude``, with ``source`` to link
    sources), its ``k_nearest`` nearest rows of ``rows`` in its 3x3 cells of ``cell_m``
    (ties to the smallest ids), the spatial pass's own join and ranking at the small
    plan's single grid level.

    Whatever else a blocking run holds, a query row's spatial candidates among ``rows``
    are among these: a row of ``rows`` that is one of its k nearest in the run has fewer
    than k rows before it there, so fewer than k of ``rows`` before it (a stack's rows
    beyond its k + 1 smallest ids, which the run never offers, come after those in the
    same order). Query ids must differ from the ids of ``rows`` (a pair of equal ids is
    no pair). Returns ``rows``' columns, each row once.

    ``query_latitudes``: the query rows' latitudes, when the caller holds them on the
    driver. A row's copies land in its own latitude band of ``cell_m`` and the two
    beside it (:func:`_copies`), so a row more than one band from every query's band
    never meets one: such rows are dropped before they are copied (the band computed
    as :func:`_cell_y` does, in the same double arithmetic).

    The nearest ids are few (at most ``k_nearest`` per query) and broadcast to pick the
    rows, so the rows' columns are neither shuffled nor sorted.
    """
    src = [F.col(S.SOURCE).alias(_SRC)] if link_only else []  # k nearest of other sources
    left = queries.select(S.ID, S.LATITUDE, S.LONGITUDE, F.lit(0).alias(_LVL), *src)
    reach = rows
    if query_latitudes is not None:
        bands = sorted(
            {
                math.floor(lat * _M_PER_DEG / settings.cell_m) + d
                for lat in query_latitudes
                for d in (-1, 0, 1)
            }
        )
        # (the bands parsed from SQL text in one call: ``isin`` makes a JVM call per value)
        within = (
            F.expr(f"{_BAND} IN ({','.join(str(b) for b in bands)})") if bands else F.lit(False)
        )
        reach = (
            rows.withColumn(_BAND, _cell_y(F.col(S.LATITUDE), settings.cell_m))
            .where(within)
            .drop(_BAND)
        )
    right = reach.select(S.ID, S.LATITUDE, S.LONGITUDE, *src)
    near = _near_pairs(left, right, settings.cell_m, key=False, levels=0)
    ranked = _ranked(near, settings.k_nearest, key=False)
    ids = ranked.select(F.col(_OTHER).alias(S.ID))
    return rows.join(F.broadcast(ids), on=S.ID, how="left_semi")
