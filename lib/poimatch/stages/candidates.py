"""Stages: typed POIs → normalized points with name statistics; points → candidate
pairs (blocking) with every pair feature. Pure transforms, materialized by the plan.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from functools import partial

from pyspark.sql import Column, DataFrame

from poimatch import schema as S
from poimatch.columns import named_columns
from poimatch.config import BlockingSettings
from poimatch.stages.blocking import add_pair_sides
from poimatch.stages.blocking import candidate_pairs as _candidate_pairs
from poimatch.stages.comparisons import Comparison
from poimatch.stages.features import FEATURE_COLUMNS, add_pair_features
from poimatch.stages.namestats import NameStats, add_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH, SMALL, Plan, mark_stage, row_count, session_conf
from poimatch.stages.prepared import PreparedQuery, fits_one_partition

__all__ = [
    "cached_candidates",
    "cached_points",
    "featured_pairs",
    "prepared_candidates",
    "prepared_name_stats",
    "prepared_points",
]

_KEPT: frozenset[str] = frozenset((S.ID_L, S.ID_R, S.PASS, *FEATURE_COLUMNS))


def cached_points(pois: DataFrame, *, stats: NameStats, plan: Plan = BATCH) -> DataFrame:
    """Typed POIs → normalized points with the model's name statistics, materialized.

    Normalization runs a Python UDF; without materializing it would run again for
    every consumer of the points (each blocking pass, each pair side). A local
    checkpoint rather than a cache keeps later plans small: the plans that read
    these points are joined many times over, and Spark prints a cached plan's whole
    tree into the cache's name. The small plan materializes once, after both steps.
    """
    mark_stage("points:start")
    normalized = pois.transform(add_normalized_columns)
    if not plan.small:
        normalized = plan.materialize(normalized)
    points = plan.materialize(add_name_stats(normalized, stats))
    mark_stage("points:end")
    return points


def featured_pairs(
    pairs: DataFrame,
    points: DataFrame,
    *,
    plan: Plan = BATCH,
    added: tuple[Comparison, ...] = (),
) -> DataFrame:
    """Candidate pairs → every pair feature, materialized.

    Returns ``id_l``, ``id_r``, ``block_pass``, the pair features and, for labelled
    points, ``point_of_interest_l`` / ``_r`` (and ``source_l`` / ``_r``). Only what the
    callers read is kept: the side columns of the pair features (names, addresses,
    token arrays...) would be shuffled by every later join and stored in every
    checkpoint. Materialized by the batch plan only: the small plan scores them in the
    same Spark job. ``added``: comparisons computed besides the built-in features (a
    model's :attr:`MatchingSpec.added`, or ``model.comparisons`` in training).
    """
    featured = add_pair_sides(pairs, points).transform(add_pair_features, added)
    kept = _KEPT | {c.name for c in added}
    keep = [c for c in featured.columns if c in kept or c.startswith((f"{S.POI}_", f"{S.SOURCE}_"))]
    selected = featured.select(*named_columns(keep))
    return selected if plan.small else plan.materialize(selected)


def cached_candidates(
    points: DataFrame,
    *,
    settings: BlockingSettings,
    link_only: bool = False,
    plan: Plan = BATCH,
    query: Column | None = None,
    broadcast_cells: bool = True,
    added: tuple[Comparison, ...] = (),
) -> DataFrame:
    """Blocking, then the pair features (:func:`featured_pairs`, with the ``added``
    comparisons), materialized (batch).

    ``query``: only the rows it selects look for candidates; ``broadcast_cells``: see
    :func:`poimatch.stages.blocking.candidate_pairs` (and :mod:`poimatch.runs.against`);
    the small plan never broadcasts them: its points are one partition, so the join with
    the occupied cells needs no shuffle, and a broadcast costs a Spark job per pass.
    """
    mark_stage("pair_features:start")
    pairs = _candidate_pairs(
        points,
        settings=settings,
        materialize=None if plan.small else plan.materialize,
        link_only=link_only,
        query=query,
        broadcast_cells=broadcast_cells and not plan.small,
        **({"fine_levels": 0} if plan.small else {}),
    )
    featured = featured_pairs(pairs, points, plan=plan, added=added)
    mark_stage("pair_features:end")
    return featured


#: prepared queries per owner (a loaded model) and what they build with which arguments
_prepared: weakref.WeakKeyDictionary[object, dict[tuple[object, ...], PreparedQuery]] = (
    weakref.WeakKeyDictionary()
)


def _prepared_query(
    owner: object,
    key: tuple[object, ...],
    rows: DataFrame,
    build: Callable[[DataFrame], DataFrame],
    *,
    one_partition: bool | None = None,
    sql_conf: Mapping[str, str] | None = None,
) -> PreparedQuery:
    """``owner``'s prepared query ``key`` for ``rows``' schema, prepared from ``build``
    over that schema when it has none for this session and schema (one per schema:
    callers that pass rows of two schemas do not prepare again at every alternation).

    ``one_partition``: which of the two plans (:meth:`PreparedQuery.prepare`); by
    default the one-partition plan where ``rows`` fit one partition
    (:func:`poimatch.stages.prepared.fits_one_partition`; counted without a job when the
    small plan holds them). ``sql_conf``: session settings set while it is prepared (part
    of the key: a query prepared under other settings is another query)."""
    if one_partition is None:
        one_partition = fits_one_partition(row_count(rows))
    by_key = _prepared.setdefault(owner, {})
    settings = tuple(sorted((sql_conf or {}).items()))
    full = (*key, settings, one_partition, rows.schema.json())
    query = by_key.get(full)
    if query is None or query.spark is not rows.sparkSession:
        with session_conf(rows.sparkSession, dict(settings)):
            query = PreparedQuery.prepare(rows, build, one_partition=one_partition)
        by_key[full] = query
    return query


def prepared_points(
    pois: DataFrame,
    *,
    owner: object,
    stats: NameStats,
    layout: Callable[[DataFrame], DataFrame] | None = None,
) -> DataFrame:
    """:func:`cached_points` under the small plan, its query (normalization and the name
    statistics' lookups) planned once per ``owner`` (the model ``stats`` belong to) and
    session: the statistics' broadcasts are built once, not per call.

    ``layout``: a step of the same query before the normalization, from ``pois`` (then
    raw rows) to rows in the POI table's layout plus any columns of its own; one Spark
    job instead of one for it and one for the points (the service's upload rules: a
    warm 10-row request 0.71 -> 0.57 s for these steps and the pair query). A module
    function: it is part of the prepared query's key."""
    mark_stage("points:start")

    def build(rows: DataFrame) -> DataFrame:
        typed = rows if layout is None else layout(rows)
        return add_name_stats(typed.transform(add_normalized_columns), stats)

    query = _prepared_query(owner, ("points", layout), pois, build)
    # read by the prepared pair query (its own one-partition input) and on the driver
    points = SMALL.materialize(query.run(pois), joined=False)
    mark_stage("points:end")
    return points


def prepared_name_stats(points: DataFrame, *, owner: object, stats: NameStats) -> DataFrame:
    """Normalized ``points`` (the lookup table's rows) with the model's name statistics,
    materialized: :func:`poimatch.stages.namestats.add_name_stats` under the small plan,
    planned once per ``owner`` (the model ``stats`` belong to), session and input
    schema, so the statistics' broadcasts are built once, not per call."""

    def build(rows: DataFrame) -> DataFrame:
        return add_name_stats(rows, stats)

    # the rows are a read of the table, not counted first: a plain plan, whatever their size
    query = _prepared_query(owner, ("name_stats",), points, build, one_partition=False)
    return SMALL.materialize(query.run(points))


def prepared_candidates(
    points: DataFrame,
    *,
    owner: object,
    settings: BlockingSettings,
    link_only: bool = False,
    broadcast_cells: bool = True,
    added: tuple[Comparison, ...] = (),
    query: Column | None = None,
    one_partition: bool | None = None,
    sql_conf: Mapping[str, str] | None = None,
) -> DataFrame:
    """:func:`cached_candidates` under the small plan, its physical plan built once per
    ``owner`` (the model whose spec gave ``settings`` and ``added``), Spark session and
    arguments (``query`` by its expression), and re-run on each call's ``points``
    (:class:`poimatch.stages.prepared.PreparedQuery`): the same query, planned once
    instead of per call.

    ``one_partition``: the plan for inputs of one partition (no shuffle), or not; by
    default the one-partition plan where ``points`` fit one partition
    (:func:`poimatch.stages.prepared.fits_one_partition`).

    ``sql_conf``: session settings the query is planned under (a query planned under
    other settings is another prepared query), e.g. ``COMPILED_SQL_CONF``: its operators
    compiled to Java code once, when the plan is first executed, instead of interpreted
    on every run."""
    build = partial(
        cached_candidates,
        settings=settings,
        link_only=link_only,
        plan=SMALL,
        query=query,
        broadcast_cells=broadcast_cells,
        added=added,
    )
    key = ("candidates", link_only, broadcast_cells, None if query is None else str(query))
    prepared = _prepared_query(
        owner, key, points, build, one_partition=one_partition, sql_conf=sql_conf
    )
    mark_stage("pair_features:start")
    pairs = prepared.run(points)
    mark_stage("pair_features:end")
    return pairs
