"""Grouping: connected components, chaining guard, pairwise mode, output layout."""

from __future__ import annotations

import itertools
import random

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.stages.grouping import (
    LOCAL_MAX_EDGES,
    connected_components,
    group_id_changes,
    group_matches,
    pairwise_matches,
    stable_group_ids,
)
from poimatch.stages.plan import SMALL, driver_frame, held_select


@pytest.fixture(params=[0, LOCAL_MAX_EDGES], ids=["distributed", "driver"])
def limit(request: pytest.FixtureRequest) -> int:
    """Both ways to compute components: always distributed, and on the driver."""
    value: int = request.param
    return value


def _ids(spark: SparkSession, *ids: str) -> DataFrame:
    return spark.createDataFrame([(i,) for i in ids], [S.ID])


def _scored(spark: SparkSession, rows: list[tuple[str, str, float]]) -> DataFrame:
    return spark.createDataFrame(rows, f"{S.ID_L} string, {S.ID_R} string, {S.SCORE} double")


def test_components_label_every_id_with_its_smallest_member(
    spark: SparkSession, limit: int
) -> None:
    ids = _ids(spark, "a", "b", "c", "d", "e", "f", "g")
    # a-b-c chain (diameter 2), d-e, f alone, g alone; edge order deliberately unsorted
    edges = _scored(spark, [("b", "c", 1.0), ("a", "b", 1.0), ("d", "e", 1.0)])
    got = connected_components(ids, edges, local_max_edges=limit).orderBy(S.ID)
    expected = spark.createDataFrame(
        [("a", "a"), ("b", "a"), ("c", "a"), ("d", "d"), ("e", "d"), ("f", "f"), ("g", "g")],
        f"{S.ID} string, {S.GROUP_ID} string",
    )
    assert_df_equality(got, expected, ignore_nullable=True)


def test_components_on_a_long_path_converge(spark: SparkSession, limit: int) -> None:
    names = [f"n{i:02d}" for i in range(30)]
    edges = _scored(spark, [(names[i], names[i + 1], 1.0) for i in range(29)])
    got = connected_components(_ids(spark, *names), edges, local_max_edges=limit)
    assert {r[S.GROUP_ID] for r in got.collect()} == {"n00"}


def test_group_matches_builds_sorted_match_lists_with_self_first(spark: SparkSession) -> None:
    ids = _ids(spark, "a", "b", "c", "d")
    scored = _scored(spark, [("a", "c", 0.9), ("b", "c", 0.2), ("c", "d", 0.7)])
    got = group_matches(ids, scored, threshold=0.5, max_group_size=10).orderBy(S.ID)
    rows = {r[S.ID]: r[S.MATCHES] for r in got.collect()}
    assert rows == {"a": "a c d", "b": "b", "c": "c a d", "d": "d a c"}


def test_oversized_component_is_split_at_its_weakest_edges(spark: SparkSession, limit: int) -> None:
    # two strong triangles joined by one weak bridge: size 6 > max 3
    ids = _ids(spark, "a", "b", "c", "x", "y", "z")
    scored = _scored(
        spark,
        [
            ("a", "b", 0.95),
            ("b", "c", 0.95),
            ("a", "c", 0.95),
            ("x", "y", 0.95),
            ("y", "z", 0.95),
            ("x", "z", 0.95),
            ("c", "x", 0.55),
        ],
    )
    got = group_matches(
        ids, scored, threshold=0.5, max_group_size=3, split_step=0.1, local_max_edges=limit
    )
    groups = {r[S.ID]: r[S.GROUP_ID] for r in got.collect()}
    assert groups == {"a": "a", "b": "a", "c": "a", "x": "x", "y": "x", "z": "x"}


def test_unsplittable_component_falls_back_to_pairwise(spark: SparkSession, limit: int) -> None:
    # a star of four certain edges cannot be split by score: pairwise lists instead
    ids = _ids(spark, "h", "p", "q", "r", "s")
    scored = _scored(spark, [("h", x, 1.0) for x in "pqrs"])
    got = group_matches(
        ids, scored, threshold=0.5, max_group_size=3, split_step=0.5, local_max_edges=limit
    )
    rows = {r[S.ID]: (r[S.MATCHES], r[S.GROUP_ID]) for r in got.collect()}
    # the star is still one group (its component), only the match lists are pairwise
    assert rows == {
        "h": ("h p q r s", "h"),
        "p": ("p h", "h"),
        "q": ("q h", "h"),
        "r": ("r h", "h"),
        "s": ("s h", "h"),
    }


def test_split_bars_reach_one_exactly() -> None:
    from poimatch.stages.grouping import _split_bars

    # adding 0.05 ten times to 0.5 gives 1.0000000000000004: the bar 1.0 was skipped
    bar = 0.5
    for _ in range(10):
        bar += 0.05
    assert bar > 1.0
    bars = _split_bars(0.5, 0.05)
    assert len(bars) == 10
    assert bars[-1] == 1.0
    assert bars[0] == pytest.approx(0.55)
    assert _split_bars(0.7, 0.1) == [pytest.approx(0.8), pytest.approx(0.9), 1.0]
    assert _split_bars(1.0, 0.05) == []


def test_next_bar_is_the_first_that_drops_an_edge() -> None:
    from poimatch.stages.grouping import _next_bar

    bars = [0.6, 0.7, 0.8, 0.9, 1.0]
    # a bar equal to the lowest score keeps every edge (score >= bar): skipped
    assert _next_bar(bars, 0, 0.7) == (3, 0.8)
    assert _next_bar(bars, 0, 0.55) == (1, 0.6)
    assert _next_bar(bars, 3, 0.1) == (4, 0.9)  # bars already used are not tried again
    assert _next_bar(bars, 0, 1.0) == (5, None)  # no bar drops an edge: pairwise
    assert _next_bar(bars, 0, None) == (5, None)  # no edge inside
    assert _next_bar(bars, 5, 0.1) == (5, None)  # the bars ran out


def _root(parent: dict[str, str], node: str) -> str:
    while parent[node] != node:
        node = parent[node]
    return node


def _every_bar_guard(
    edges: list[tuple[str, str, float]], max_group_size: int, bars: list[float]
) -> tuple[dict[str, str], set[int], set[str]]:
    """The chain guard as it was: every bar in turn, a union-find per round, no skipping."""
    names = sorted({n for a, b, _ in edges for n in (a, b)})
    keep = set(range(len(edges)))
    remaining = iter(bars)
    while True:
        parent = {n: n for n in names}
        for i in keep:
            a, b = _root(parent, edges[i][0]), _root(parent, edges[i][1])
            parent[max(a, b)] = min(a, b)
        label = {n: _root(parent, n) for n in names}  # the smallest member, by construction
        size = {g: list(label.values()).count(g) for g in set(label.values())}
        big = {g for g, n in size.items() if n > max_group_size}
        bar = next(remaining, None) if big else None
        if bar is None:
            return label, keep, big
        keep = {i for i in keep if label[edges[i][0]] not in big or edges[i][2] >= bar}


def test_skipped_bars_give_the_groups_of_trying_every_bar() -> None:
    # random chains with scores on, between and above the bars: skipping the bars that
    # drop nothing leaves the labels, the kept edges and the oversized groups unchanged
    import pandas as pd

    from poimatch.stages.grouping import _chain_guard_arrays, _split_bars

    rng = random.Random(3)
    bars = _split_bars(0.5, 0.05)
    tried = 0
    for _ in range(60):
        nodes = [f"n{i:02d}" for i in range(rng.randrange(3, 30))]
        scores = [*bars, 0.5, 1.0, 0.97, 0.74]
        edges = [
            (a, b, rng.choice(scores) if rng.random() < 0.5 else rng.uniform(0.5, 1.0))
            for a, b in (rng.sample(nodes, 2) for _ in range(rng.randrange(2, 40)))
        ]
        size = rng.randrange(2, 8)
        frame = pd.DataFrame(edges, columns=[S.ID_L, S.ID_R, S.SCORE])
        labels, keep, big = _chain_guard_arrays(frame, max_group_size=size, bars=bars)
        label, kept, oversized = _every_bar_guard(edges, size, bars)
        assert dict(zip(labels[S.ID], labels[S.GROUP_ID], strict=True)) == label
        assert set(keep.nonzero()[0].tolist()) == kept
        assert big == sorted(oversized)
        tried += len(kept) < len(edges)
    assert tried > 20  # most graphs were split by some bar


def test_last_bar_of_the_chain_guard_is_tried(spark: SparkSession, limit: int) -> None:
    # two certain pairs joined by a 0.96 bridge: only the bar 1.0 (the tenth step of
    # 0.05 from 0.5) splits them; skipping it would give pairwise lists instead
    ids = _ids(spark, "a", "b", "c", "d")
    scored = _scored(spark, [("a", "b", 1.0), ("c", "d", 1.0), ("b", "c", 0.96)])
    got = group_matches(ids, scored, threshold=0.5, max_group_size=2, local_max_edges=limit)
    rows = {r[S.ID]: (r[S.MATCHES], r[S.GROUP_ID]) for r in got.collect()}
    assert rows == {"a": ("a b", "a"), "b": ("b a", "a"), "c": ("c d", "c"), "d": ("d c", "c")}


def test_pairwise_matches_only_direct_neighbours(spark: SparkSession, limit: int) -> None:
    ids = _ids(spark, "a", "b", "c", "d")
    scored = _scored(spark, [("a", "b", 0.9), ("b", "c", 0.8), ("a", "c", 0.1)])
    got = pairwise_matches(ids, scored, threshold=0.5, local_max_edges=limit).orderBy(S.ID)
    # match lists are direct neighbours only (a and c are not matched), but group_id
    # is a real group: a, b and c are one connected component, so c's group is a
    # (it used to be the smallest id of c's own list, b: no group at all)
    expected = spark.createDataFrame(
        [("a", "a", "a b"), ("b", "a", "b a c"), ("c", "a", "c b"), ("d", "d", "d")],
        f"{S.ID} string, {S.GROUP_ID} string, {S.MATCHES} string",
    )
    assert_df_equality(got, expected, ignore_nullable=True)


def test_driver_and_distributed_components_agree_on_a_random_graph(spark: SparkSession) -> None:
    rng = random.Random(5)
    # ids of uneven length and case, so "smallest" really is a string comparison
    names = [rng.choice(["P", "p", "Q"]) + str(rng.randrange(10**6)) for _ in range(400)]
    names = sorted(set(names))
    edges = _scored(
        spark, [(rng.choice(names), rng.choice(names), 1.0) for _ in range(330)] + [("a", "a", 1.0)]
    )
    ids = _ids(spark, *names, "a", "zz-alone")
    local = connected_components(ids, edges, local_max_edges=LOCAL_MAX_EDGES).orderBy(S.ID)
    spread = connected_components(ids, edges, local_max_edges=0).orderBy(S.ID)
    assert_df_equality(local, spread, ignore_nullable=True)
    groups = {r[S.GROUP_ID] for r in local.collect()}
    assert 50 < len(groups) < len(names)
    # above the limit the distributed path is taken (same answer, no driver collect)
    assert_df_equality(
        connected_components(ids, edges, local_max_edges=10).orderBy(S.ID),
        local,
        ignore_nullable=True,
    )


def test_driver_and_distributed_chain_guards_agree_on_a_random_graph(
    spark: SparkSession,
) -> None:
    # clusters chained by weaker bridges: some split at a bar, one dense star never does
    rng = random.Random(11)
    rows: list[tuple[str, str, float]] = []
    for c in range(12):
        members = [f"c{c}-{i}" for i in range(rng.randrange(2, 7))]
        rows += [(a, b, rng.uniform(0.7, 1.0)) for a, b in itertools.pairwise(members)]
        if c:  # a bridge to the previous cluster, sometimes strong enough to survive
            rows.append((f"c{c - 1}-0", members[-1], rng.uniform(0.5, 0.9)))
    rows += [("hub", f"spoke{i}", 1.0) for i in range(6)]
    names = sorted({n for a, b, _ in rows for n in (a, b)} | {"alone"})
    ids, scored = _ids(spark, *names), _scored(spark, rows)
    kwargs = {"threshold": 0.5, "max_group_size": 5, "split_step": 0.1}
    driver = group_matches(ids, scored, local_max_edges=LOCAL_MAX_EDGES, **kwargs)
    spread = group_matches(ids, scored, local_max_edges=0, **kwargs)
    assert_df_equality(driver.orderBy(S.ID), spread.orderBy(S.ID), ignore_nullable=True)
    got = {r[S.ID]: (r[S.GROUP_ID], r[S.MATCHES]) for r in driver.collect()}
    sizes: dict[str, int] = {}
    for group, _ in got.values():
        sizes[group] = sizes.get(group, 0) + 1
    # the chain was cut into several groups, the hub kept its seven rows pairwise
    assert len([g for g, n in sizes.items() if n > 1]) >= 4
    assert sizes["hub"] == 7
    assert got["spoke0"] == ("hub", "spoke0 hub")
    assert max(n for g, n in sizes.items() if g != "hub") <= 5
    assert got["alone"] == ("alone", "alone")


def test_the_small_plan_builds_match_lists_on_the_driver_as_spark_does(
    spark: SparkSession,
) -> None:
    # ids Spark sorts by their UTF-8 bytes (so by code point), a row of an id twice,
    # ids without an edge, an empty graph
    rng = random.Random(5)
    names = ["Z", "a", "ä", "é", "z", "中", "😀", "a b", "Ab", "b", "c", "d", "e", "f"]
    rows = [(a, b, rng.uniform(0.3, 1.0)) for a, b in itertools.combinations(names[:10], 2)]
    rows = [r for r in rows if rng.random() < 0.25]
    for edges in (rows, []):
        ids, scored = _ids(spark, *names, "c"), _scored(spark, edges)
        kwargs = {"threshold": 0.6, "max_group_size": 50}
        held = group_matches(
            held_select(SMALL.materialize(ids), [S.ID]),
            SMALL.materialize(scored),
            local_max_edges=LOCAL_MAX_EDGES,
            **kwargs,
        )
        assert driver_frame(held) is not None  # no Spark job builds the lists
        spread = group_matches(ids, scored, local_max_edges=0, **kwargs)
        assert held.schema == spread.schema
        assert_df_equality(held, spread, ignore_row_order=True)
    got = {r[S.ID]: r[S.MATCHES] for r in held.collect()}
    assert got["中"] == "中"


def _groups(spark: SparkSession, groups: dict[str, list[str]]) -> DataFrame:
    """``id``, ``group_id``, ``matches`` of groups labelled by their smallest member."""
    rows = [(i, min(m), " ".join(sorted(m))) for m in groups.values() for i in m]
    return spark.createDataFrame(rows, f"{S.ID} string, {S.GROUP_ID} string, {S.MATCHES} string")


def _labels(df: DataFrame) -> dict[str, str]:
    return {r[S.ID]: r[S.GROUP_ID] for r in df.collect()}


def test_group_ids_carry_over_from_the_previous_run(spark: SparkSession) -> None:
    previous = _groups(
        spark,
        {
            "grown": ["a1", "a2", "a3"],  # gains a row with a smaller id
            "lost_anchor": ["b1", "b2", "b3"],  # loses b1, the row its id came from
            "merged_big": ["c1", "c2", "c3"],
            "merged_small": ["c0", "c4"],
            "split": ["d1", "d2", "d3", "d4"],  # d1 leaves alone, the rest stay together
            "gone": ["e1"],
            "same": ["f1", "f2"],
        },
    )
    current = _groups(
        spark,
        {
            "grown": ["a0", "a1", "a2", "a3"],
            "lost_anchor": ["b2", "b3"],
            "merged": ["c0", "c1", "c2", "c3", "c4"],
            "split_rest": ["d2", "d3", "d4"],
            "split_off": ["d1"],
            "new": ["g2", "g1"],
            "same": ["f1", "f2"],
        },
    )
    stable = stable_group_ids(current, previous, run_tag="v7")
    labels = _labels(stable)
    assert stable.columns == current.columns
    assert labels == {
        **dict.fromkeys(["a0", "a1", "a2", "a3"], "a1"),  # min id would say a0
        **dict.fromkeys(["b2", "b3"], "b1"),  # min id would say b2
        **dict.fromkeys(["c0", "c1", "c2", "c3", "c4"], "c1"),  # the larger part's id
        **dict.fromkeys(["d2", "d3", "d4"], "d1"),  # the larger part of the split
        "d1": "d1~v7",  # its only member id is taken: a made-up one
        **dict.fromkeys(["g1", "g2"], "g1"),  # a new group: its smallest id
        **dict.fromkeys(["f1", "f2"], "f1"),
    }
    # one id per group, never shared by two groups
    members = {r[S.MATCHES]: r[S.GROUP_ID] for r in stable.collect()}
    assert len(set(members.values())) == len(members)
    # rows in both runs: a0, g1, g2 are new; e1 is gone; d1, c0, c4 changed group
    assert group_id_changes(stable, previous) == (16, 3)
    assert group_id_changes(current, previous) == (16, 11)  # smallest member ids


def test_group_ids_stay_unique_when_a_kept_id_names_a_row_of_another_group(
    spark: SparkSession,
) -> None:
    # x1's old group moves on without it as x2's group; x2 was its own group's anchor
    previous = _groups(spark, {"x": ["x1", "x3", "x4"], "y": ["x2"]})
    current = _groups(spark, {"x": ["x3", "x4"], "y": ["x1", "x2"]})
    labels = _labels(stable_group_ids(current, previous, run_tag="v2"))
    assert labels == {"x3": "x1", "x4": "x1", "x1": "x2", "x2": "x2"}
