"""Grouping: matched pairs become groups; every input id gets exactly one group.

Connected components are computed in Spark with the alternating large-star /
small-star algorithm (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014), the same algorithm GraphFrames uses by default. GraphFrames'
JVM jar is not served by this project's Maven registry (see README, "Versions"), so
the algorithm is written here, on DataFrames, with a checkpoint every round.

Small graphs take a shortcut: when the matched edges number at most
``local_max_edges`` (``grouping.local_max_edges``, 5 million by default) they are
collected through Arrow and labelled with SciPy's connected components on the driver,
in seconds, instead of a dozen distributed rounds of a few shuffles each; the labels
(smallest member id) are the same either way. Larger graphs stay distributed.

Chaining guard: a component larger than ``max_group_size`` (real places never are)
is split by dropping its weakest edges, raising the score bar step by step, and
recomputed; a component still too large after that falls back to pairwise matches.
Under ``local_max_edges`` the whole guard runs on the driver over one collect of the
matched edges (each bar is a SciPy pass over arrays already there); above it, each bar
is a distributed round of components over the oversized components' edges alone (the
other components keep their labels). Either way only the bars that drop an edge are
tried: a bar at or below the lowest score left inside the oversized components would
recompute the same components.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _scipy_components

from poimatch import schema as S
from poimatch.cancellation import check_cancelled
from poimatch.stages.plan import driver_frame, held_frame

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "LOCAL_MAX_EDGES",
    "connected_components",
    "group_matches",
    "pairwise_matches",
    "stable_group_ids",
    "group_id_changes",
    "to_output",
]

_SRC, _DST = "src", "dst"
LOCAL_MAX_EDGES = 5_000_000
Materialize = Callable[[DataFrame], DataFrame]


def _checkpoint(df: DataFrame) -> DataFrame:
    return df.localCheckpoint(eager=True)


def _large_star(edges: DataFrame) -> DataFrame:
    # Each node u links every larger neighbour v to m(u) = min(N(u) ∪ {u}).
    both = edges.unionByName(edges.select(F.col(_DST).alias(_SRC), F.col(_SRC).alias(_DST)))
    mins = both.groupBy(_SRC).agg(F.least(F.min(_DST), F.col(_SRC)).alias("_m"))
    return (
        both.join(mins, on=_SRC, how="inner")
        .where(F.col(_DST) > F.col(_SRC))
        .select(F.col(_DST).alias(_SRC), F.col("_m").alias(_DST))
        .distinct()
    )


def _small_star(edges: DataFrame) -> DataFrame:
    # Each node u links itself and its smaller neighbours to m = min(smaller ∪ {u}).
    oriented = edges.select(
        F.greatest(_SRC, _DST).alias(_SRC), F.least(_SRC, _DST).alias(_DST)
    ).where(F.col(_SRC) != F.col(_DST))
    mins = oriented.groupBy(_SRC).agg(F.min(_DST).alias("_m"))
    linked = (
        oriented.join(mins, on=_SRC, how="inner")
        .where(F.col(_DST) != F.col("_m"))
        .select(F.col(_DST).alias(_SRC), F.col("_m").alias(_DST))
    )
    return linked.unionByName(mins.select(F.col(_SRC), F.col("_m").alias(_DST))).distinct()


def _fingerprint(edges: DataFrame) -> tuple[int, int]:
    """Edge count and the sum of the edges' 64-bit hashes (as decimals: no overflow)."""
    row = edges.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.xxhash64(_SRC, _DST).cast("decimal(38,0)")).alias("h"),
    ).first()
    if row is None or row["n"] == 0:
        return (0, 0)
    return (int(row["n"]), int(row["h"]))


def _same_edges(left: DataFrame, right: DataFrame) -> bool:
    return (
        left.join(right, on=[_SRC, _DST], how="left_anti").limit(1).count()
        + right.join(left, on=[_SRC, _DST], how="left_anti").limit(1).count()
    ) == 0


_LABELS_SCHEMA = T.StructType(
    [T.StructField(S.ID, T.StringType(), False), T.StructField(S.GROUP_ID, T.StringType())]
)
_EDGES = [S.ID_L, S.ID_R, S.SCORE]


def _components(codes_l: NDArray[np.int64], codes_r: NDArray[np.int64], n: int) -> NDArray[Any]:
    """Each of ``n`` nodes' component number, from edges given as node codes."""
    graph = coo_matrix((np.ones(len(codes_l), dtype=np.int8), (codes_l, codes_r)), shape=(n, n))
    _, component = _scipy_components(graph, directed=False)
    return np.asarray(component)


def _component_labels(component: NDArray[Any], names: pd.Series) -> pd.Series:
    """Each node's component label: the smallest name in its component."""
    # min over str equals Spark's min over strings (UTF-8 byte order = code point order)
    return names.groupby(component).transform("min")


def _node_codes(
    frame: pd.DataFrame,
) -> tuple[NDArray[np.int64], NDArray[np.int64], pd.Series]:
    """Edges ``id_l``, ``id_r`` as node codes (left ends, right ends) and the node names."""
    m = len(frame)
    codes, nodes = pd.factorize(pd.concat([frame[S.ID_L], frame[S.ID_R]], ignore_index=True))
    return codes[:m], codes[m:], pd.Series(np.asarray(nodes, dtype=object))


def _local_labels(edges: DataFrame) -> DataFrame:
    """``id``, ``group_id`` of every node with an edge, computed on the driver."""
    code_l, code_r, names = _node_codes(edges.select(S.ID_L, S.ID_R).toPandas())
    labels = _component_labels(_components(code_l, code_r, len(names)), names)
    out = pd.DataFrame({S.ID: names, S.GROUP_ID: labels})
    return edges.sparkSession.createDataFrame(out, schema=_LABELS_SCHEMA)


def connected_components(
    ids: DataFrame,
    edges: DataFrame,
    *,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    materialize: Materialize = _checkpoint,
) -> DataFrame:
    """Component label (the smallest id in the component) for every id.

    Args:
        ids: one column ``id``: every node, including those with no edge.
        edges: columns ``id_l``, ``id_r``.
        max_iterations: bound on large-star/small-star rounds (log-squared in the
            component size in practice; POI groups converge in a handful).
        local_max_edges: up to this many edges the components are computed on the
            driver (SciPy); 0 keeps every graph distributed.
        materialize: how the edges are computed once (a local checkpoint; the small
            plan of :class:`poimatch.stages.plan.Plan` holds them on the driver).

    Returns:
        ``id``, ``group_id``: one row per input id.

    Note:
        Iterative, so it runs one action per round to test convergence and
        checkpoints (locally) each round to cut the lineage.
    """
    current = edges.select(F.col(S.ID_L).alias(_SRC), F.col(S.ID_R).alias(_DST)).where(
        F.col(_SRC) != F.col(_DST)
    )
    current = materialize(current)
    if local_max_edges > 0 and current.count() <= local_max_edges:
        check_cancelled("grouping")
        local = _local_labels(current.select(F.col(_SRC).alias(S.ID_L), F.col(_DST).alias(S.ID_R)))
        return (
            ids.select(S.ID)
            .join(local, on=S.ID, how="left")
            .select(S.ID, F.coalesce(F.col(S.GROUP_ID), F.col(S.ID)).alias(S.GROUP_ID))
        )
    previous = _fingerprint(current)
    for _ in range(max_iterations):
        check_cancelled("grouping")
        nxt = _small_star(_large_star(current)).localCheckpoint(eager=True)
        # a cheap scan of the new edges decides most rounds; the exact set comparison
        # (two anti-joins) runs only when the fingerprint says nothing changed
        fingerprint = _fingerprint(nxt)
        done = fingerprint == previous and _same_edges(nxt, current)
        current, previous = nxt, fingerprint
        if done:
            break
    else:
        raise RuntimeError(f"connected components did not converge in {max_iterations} rounds")
    # After convergence every edge is (node, component minimum).
    labels = current.groupBy(_SRC).agg(F.min(_DST).alias(S.GROUP_ID))
    return (
        ids.select(S.ID)
        .join(labels.withColumnRenamed(_SRC, S.ID), on=S.ID, how="left")
        .select(S.ID, F.coalesce(F.col(S.GROUP_ID), F.col(S.ID)).alias(S.GROUP_ID))
    )


def _split_bars(threshold: float, split_step: float) -> list[float]:
    """The chain guard's score bars: ``threshold + i * split_step`` up to 1.0 inclusive.

    Computed by index, not by adding ``split_step`` again and again: repeated float
    addition drifts (0.5 + 10 x 0.05 gives 1.0000000000000004) and would skip the
    last bar, sending a component that the bar 1.0 splits to the pairwise fallback.
    """
    steps = math.floor((1.0 - threshold) / split_step + 1e-9)
    return [min(threshold + i * split_step, 1.0) for i in range(1, steps + 1)]


def _next_bar(bars: list[float], tried: int, low: float | None) -> tuple[int, float | None]:
    """The chain guard's next bar that drops an edge: the first of ``bars[tried:]``
    above ``low``, the lowest score left inside the oversized components (``None``:
    they hold no edge). A bar at or below it drops nothing, so the components it would
    recompute are the ones already there: skipping it gives the same groups without a
    round of components. Returns how many bars are used up and the bar (``None``:
    none is left that drops an edge, the oversized components stay as they are).
    """
    for i in range(tried, len(bars)):
        if low is not None and bars[i] > low:
            return i + 1, bars[i]
    return len(bars), None


def group_matches(
    ids: DataFrame,
    scored: DataFrame,
    *,
    threshold: float,
    max_group_size: int,
    split_step: float = 0.05,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    materialize: Materialize = _checkpoint,
) -> DataFrame:
    """Groups from scored pairs: components of edges with ``score >= threshold``.

    Components larger than ``max_group_size`` are split by raising the bar for their
    edges to ``threshold + i * split_step`` (i = 1, 2, ..., up to 1.0) until they fit;
    rows of a component still too large at the bar 1.0 get pairwise matches (their
    direct neighbours at ``threshold``) instead, with the component as ``group_id``.

    Returns:
        ``id``, ``group_id``, ``matches`` for every id in ``ids``.
    """
    # the edges' columns as ``scored`` has them (the selection below keeps them as they
    # are): known without building that selection, which the driver's path never reads
    edge_schema = T.StructType([scored.schema[c] for c in _EDGES])
    bars = _split_bars(threshold, split_step)
    on_driver = partial(
        _group_on_driver,
        ids,
        threshold=threshold,
        max_group_size=max_group_size,
        bars=bars,
        materialize=materialize,
    )
    held = driver_frame(scored)
    if local_max_edges > 0 and held is not None:  # the small plan holds the scored pairs
        matched = held.loc[held[S.SCORE] >= threshold, _EDGES].reset_index(drop=True)
        if len(matched) <= local_max_edges:
            return on_driver(matched, schema=edge_schema, small=True)
    edges = scored.where(F.col(S.SCORE) >= threshold).select(*_EDGES)
    if local_max_edges > 0 and edges.count() <= local_max_edges:
        return on_driver(edges.toPandas(), schema=edge_schema, small=False)
    edges = edges.persist(StorageLevel.MEMORY_AND_DISK)
    groups = connected_components(
        ids,
        edges,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
        materialize=materialize,
    )
    kept = edges
    tried = 0
    while True:
        check_cancelled("grouping")
        sizes = groups.groupBy(S.GROUP_ID).agg(F.count(F.lit(1)).alias("_size"))
        big = sizes.where(F.col("_size") > max_group_size).select(S.GROUP_ID)
        if big.limit(1).count() == 0:
            break
        big_rows = groups.join(big, on=S.GROUP_ID, how="left_semi")
        big_l = big_rows.select(F.col(S.ID).alias(S.ID_L))
        inside = kept.join(big_l, on=S.ID_L, how="left_semi")
        low = inside.agg(F.min(S.SCORE)).first()
        tried, bar = _next_bar(bars, tried, None if low is None else low[0])
        if bar is None:
            return _pairwise_fallback(groups, kept, big, threshold)
        # inside oversized components keep only the stronger edges; elsewhere keep all
        stronger = materialize(inside.where(F.col(S.SCORE) >= bar))
        kept = materialize(kept.join(big_l, on=S.ID_L, how="left_anti").unionByName(stronger))
        # the other components keep their labels: only the oversized ones are redone
        redone = connected_components(
            big_rows.select(S.ID),
            stronger,
            max_iterations=max_iterations,
            local_max_edges=local_max_edges,
            materialize=materialize,
        )
        groups = materialize(
            groups.join(big, on=S.GROUP_ID, how="left_anti")
            .select(S.ID, S.GROUP_ID)
            .unionByName(redone)
        )
    edges.unpersist()
    return _with_matches(groups)


def _chain_guard_arrays(
    frame: pd.DataFrame, *, max_group_size: int, bars: list[float]
) -> tuple[pd.DataFrame, NDArray[np.bool_], list[str]]:
    """The chain guard of :func:`group_matches` on the driver, over matched edges
    ``id_l``, ``id_r``, ``score``.

    Returns the labels (``id``, ``group_id``) of every node with a matched edge, which
    edges the guard kept, and the groups still larger than ``max_group_size`` after
    the last bar (empty when every group fits). The same steps as the distributed
    loop: components, then inside each oversized component only the edges at or
    above the next bar, until every group fits or the bars run out.
    """
    code_l, code_r, names = _node_codes(frame)
    score = frame[S.SCORE].to_numpy()
    # a NaN score is below every bar here (numpy's >=), so it counts as the lowest
    lowest = np.where(np.isnan(score), -np.inf, score)
    keep = np.ones(len(frame), dtype=bool)
    tried = 0
    while True:
        check_cancelled("grouping")
        component = _components(code_l[keep], code_r[keep], len(names))
        big_nodes = np.bincount(component)[component] > max_group_size
        bar = None
        if big_nodes.any():
            inside = keep & big_nodes[code_l]
            low = float(lowest[inside].min()) if inside.any() else None
            tried, bar = _next_bar(bars, tried, low)
        if bar is None:  # every group fits, or the bars ran out
            labels = _component_labels(component, names)
            out = pd.DataFrame({S.ID: names, S.GROUP_ID: labels})
            return out, keep, sorted(set(labels[big_nodes]))
        # an edge lies inside one component: inside an oversized one keep the stronger
        keep &= ~big_nodes[code_l] | (score >= bar)


def _group_on_driver(
    ids: DataFrame,
    frame: pd.DataFrame,
    *,
    schema: T.StructType,
    small: bool,
    threshold: float,
    max_group_size: int,
    bars: list[float],
    materialize: Materialize,
) -> DataFrame:
    """:func:`group_matches` for a graph that fits on the driver: the matched edges
    (``frame``, ``id_l``, ``id_r``, ``score`` of ``schema``) collected once, the chain
    guard in SciPy (:func:`_chain_guard_arrays`), and one relation of labels back,
    instead of a collect and a relation per bar. ``small`` (the small plan's pairs):
    the labels are held as the small plan holds its frames (:func:`poimatch.stages.plan.
    held_frame`: one partition, so their join with the small plan's ids needs no
    shuffle); a batch run's labels (up to ``local_max_edges`` edges) are a plain frame."""
    labels, keep, big = _chain_guard_arrays(frame, max_group_size=max_group_size, bars=bars)
    spark = ids.sparkSession
    held_ids = driver_frame(ids) if small else None
    if held_ids is not None and not big:  # every id on the driver too: no Spark job
        id_field = ids.schema[S.ID]
        schema = T.StructType(
            [
                id_field,
                T.StructField(S.GROUP_ID, T.StringType(), id_field.nullable),
                T.StructField(S.MATCHES, T.StringType(), False),
            ]
        )
        # the output: read on the driver (or written)
        return held_frame(spark, _driver_matches(held_ids[S.ID], labels), schema, joined=False)
    if small:
        local = held_frame(spark, labels, _LABELS_SCHEMA)
    else:
        local = spark.createDataFrame(labels, schema=_LABELS_SCHEMA)
    groups = (
        ids.select(S.ID)
        .join(local, on=S.ID, how="left")
        .select(S.ID, F.coalesce(F.col(S.GROUP_ID), F.col(S.ID)).alias(S.GROUP_ID))
    )
    if not big:
        return _with_matches(groups)
    kept = spark.createDataFrame(frame.loc[keep, _EDGES].reset_index(drop=True), schema=schema)
    big_groups = spark.createDataFrame([(g,) for g in big], f"{S.GROUP_ID} string")
    return _pairwise_fallback(materialize(groups), kept, big_groups, threshold)


def _driver_matches(ids: pd.Series, labels: pd.DataFrame) -> pd.DataFrame:
    """:func:`_with_matches` of ``ids`` and their components' ``labels`` (``id``,
    ``group_id`` of each id with a matched edge) on the driver: the same rows (a row
    per id; an id without a label is its own group; ``matches`` the id, then the
    group's other members sorted, as Spark sorts strings: by code point)."""
    group = ids.map(labels.set_index(S.ID)[S.GROUP_ID]).where(lambda g: g.notna(), ids)
    names, groups = ids.to_numpy(dtype=object), group.to_numpy(dtype=object)
    # most rows are alone in their group (no matched edge): their list is the id itself;
    # only the rows sharing a group are listed one by one
    shared = (group.map(group.value_counts()) > 1).to_numpy()
    matches = names.copy()
    if shared.any():
        members: dict[str, list[str]] = {}
        for i, g in zip(names[shared], groups[shared], strict=True):
            members.setdefault(g, []).append(i)
        for listed in members.values():
            listed.sort()
        matches[shared] = [
            " ".join([i, *[m for m in members[g] if m != i]])
            for i, g in zip(names[shared], groups[shared], strict=True)
        ]
    return pd.DataFrame({S.ID: names, S.GROUP_ID: groups, S.MATCHES: matches})


def _with_matches(groups: DataFrame) -> DataFrame:
    members = groups.groupBy(S.GROUP_ID).agg(F.array_sort(F.collect_list(S.ID)).alias("_members"))
    out = groups.join(members, on=S.GROUP_ID, how="inner")
    others = F.filter(F.col("_members"), lambda m: m != F.col(S.ID))
    return out.select(
        S.ID,
        S.GROUP_ID,
        F.concat_ws(" ", F.concat(F.array(F.col(S.ID)), others)).alias(S.MATCHES),
    )


def pairwise_matches(
    ids: DataFrame,
    scored: DataFrame,
    *,
    threshold: float,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    materialize: Materialize = _checkpoint,
) -> DataFrame:
    """Each id with itself plus its direct neighbours scoring ``>= threshold``.

    Returns ``id``, ``group_id``, ``matches``. ``group_id`` is a real group: the
    connected component of the matched edges (its smallest id), so every id in a
    row's ``matches`` shares the row's ``group_id`` (a row's own match list is not
    transitive, its group is). Components run eagerly, as in :func:`group_matches`.
    """
    edges = scored.where(F.col(S.SCORE) >= threshold).select(S.ID_L, S.ID_R)
    groups = materialize(
        connected_components(
            ids,
            edges,
            max_iterations=max_iterations,
            local_max_edges=local_max_edges,
            materialize=materialize,
        )
    )
    return _neighbour_lists(groups, edges)


def _neighbour_lists(groups: DataFrame, edges: DataFrame) -> DataFrame:
    """``id``, ``group_id`` (from ``groups``), ``matches``: the id, then its neighbours."""
    directed = edges.select(F.col(S.ID_L).alias(S.ID), F.col(S.ID_R).alias("_o")).unionByName(
        edges.select(F.col(S.ID_R).alias(S.ID), F.col(S.ID_L).alias("_o"))
    )
    nbrs = directed.groupBy(S.ID).agg(F.array_sort(F.collect_set("_o")).alias("_n"))
    out = groups.select(S.ID, S.GROUP_ID).join(nbrs, on=S.ID, how="left")
    members = F.concat(F.array(F.col(S.ID)), F.coalesce(F.col("_n"), F.array()))
    return out.select(S.ID, S.GROUP_ID, F.concat_ws(" ", members).alias(S.MATCHES))


def _pairwise_fallback(
    groups: DataFrame, edges: DataFrame, big: DataFrame, threshold: float
) -> DataFrame:
    fine = _with_matches(groups.join(big, on=S.GROUP_ID, how="left_anti"))
    # rows of a component too large to split: their direct neighbours at the threshold,
    # the component itself (all of whose edges are in `edges`) as their group
    big_groups = groups.join(big, on=S.GROUP_ID, how="left_semi")
    big_ids = big_groups.select(F.col(S.ID).alias(S.ID_L))
    inside_edges = (
        edges.where(F.col(S.SCORE) >= threshold)
        .join(big_ids, on=S.ID_L, how="left_semi")
        .select(S.ID_L, S.ID_R)
    )
    return fine.unionByName(_neighbour_lists(big_groups, inside_edges))


def to_output(grouped: DataFrame) -> DataFrame:
    """The output layout: ``id``, ``matches``."""
    return grouped.select(S.ID, S.MATCHES)


_PREV, _KEPT, _FREE, _N = "_prev_group", "_kept", "_free", "_n"


def stable_group_ids(current: DataFrame, previous: DataFrame, *, run_tag: str) -> DataFrame:
    """``current`` with each group's id carried over from the previous run where it can be.

    The rule: a new group keeps the id of a previous group when each is the other's
    largest overlap (the previous group that contributes most of the new group's
    members, and the new group that holds most of that previous group's members; ties
    by the smaller id). So a group that gains or loses a few rows, or loses the row
    its id came from, keeps its id; a merge keeps the id of the part with most rows;
    after a split the largest part keeps it. Any other group takes its smallest member
    id that no kept id uses, and when every member id is taken (a row split off from
    the group its id named), ``<smallest id>~<run_tag>``. Ids stay unique: kept ids are
    distinct, free ids are members of one group each and never a kept id.

    Args:
        current: ``id``, ``group_id`` (the smallest member id), any other columns.
        previous: ``id``, ``group_id`` of the previous run's output.
        run_tag: distinguishes this run's made-up ids (the table version it writes).
    """
    cur = current.select(S.ID, S.GROUP_ID)
    prev = previous.select(S.ID, F.col(S.GROUP_ID).alias(_PREV))
    overlap = (
        cur.join(prev, on=S.ID, how="inner")
        .groupBy(S.GROUP_ID, _PREV)
        .agg(F.count(F.lit(1)).alias(_N))
    )
    best_prev = Window.partitionBy(S.GROUP_ID).orderBy(F.col(_N).desc(), F.col(_PREV))
    best_new = Window.partitionBy(_PREV).orderBy(F.col(_N).desc(), F.col(S.GROUP_ID))
    kept = (
        overlap.withColumn("_a", F.row_number().over(best_prev))
        .withColumn("_b", F.row_number().over(best_new))
        .where((F.col("_a") == 1) & (F.col("_b") == 1))
        .select(S.GROUP_ID, F.col(_PREV).alias(_KEPT))
    )
    taken = kept.select(F.col(_KEPT).alias(S.ID))
    free = (
        cur.join(kept, on=S.GROUP_ID, how="left_anti")
        .join(taken, on=S.ID, how="left_anti")
        .groupBy(S.GROUP_ID)
        .agg(F.min(S.ID).alias(_FREE))
    )
    made_up = F.concat(F.col(S.GROUP_ID), F.lit(f"~{run_tag}"))
    labels = (
        cur.select(S.GROUP_ID)
        .distinct()
        .join(kept, on=S.GROUP_ID, how="left")
        .join(free, on=S.GROUP_ID, how="left")
        .select(S.GROUP_ID, F.coalesce(F.col(_KEPT), F.col(_FREE), made_up).alias("_stable"))
    )
    stable = F.col("_stable").alias(S.GROUP_ID)
    columns = [stable if c == S.GROUP_ID else c for c in current.columns]
    return current.join(labels, on=S.GROUP_ID, how="left").select(*columns)


def group_id_changes(current: DataFrame, previous: DataFrame) -> tuple[int, int]:
    """``(rows in both runs, rows among them whose group_id differs)`` (one Spark job)."""
    prev = previous.select(S.ID, F.col(S.GROUP_ID).alias(_PREV))
    row = (
        current.select(S.ID, S.GROUP_ID)
        .join(prev, on=S.ID, how="inner")
        .agg(
            F.count(F.lit(1)).alias("both"),
            F.sum(F.when(F.col(S.GROUP_ID) != F.col(_PREV), 1).otherwise(0)).alias("changed"),
        )
        .first()
    )
    if row is None:
        return 0, 0
    return int(row["both"] or 0), int(row["changed"] or 0)
