"""A prepared query (planned once, re-run on new rows) gives what a fresh plan gives.

The service's warm requests re-run the blocking and pair-feature query planned for its
first request (:mod:`poimatch.stages.prepared`). Each run must read its own rows, not a
shuffle or broadcast left by an earlier run, and find the same pairs with the same
features as the query planned afresh: on inputs of other sizes, with exact copies, a
dense block and a single row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.apps.service import SERVICE_SQL_CONF
from poimatch.config import BlockingSettings
from poimatch.runs.workflows import FitOutcome, match_with_model
from poimatch.sample.generator import generate_pois
from poimatch.stages.candidates import (
    _prepared,
    cached_candidates,
    cached_points,
    prepared_candidates,
    prepared_points,
)
from poimatch.stages.plan import (
    COMPILED_SQL_CONF,
    SMALL,
    counted,
    driver_frame,
    held_select,
    held_union,
    mark_stage,
    row_count,
    selected_frame,
    session_conf,
)
from poimatch.stages.prepared import (
    PreparationError,
    PreparedQuery,
    jvm_helper,
    one_partition_scan,
    use_jvm_helper,
    use_reused_plans,
)


@pytest.fixture(scope="module", autouse=True)
def service_conf(spark: SparkSession) -> Iterator[None]:
    """The service's SQL settings (where prepared queries run), restored after."""
    with session_conf(spark, SERVICE_SQL_CONF):
        yield


def _pois(spark: SparkSession, rows: int, seed: int, *, copies: int = 0) -> DataFrame:
    """``rows`` generated places, unlabelled, plus ``copies`` exact copies under new ids,
    and (for ``rows`` >= 40) a dense block of ten of them moved within ~30 m."""
    frame = generate_pois(rows, seed=seed)
    extra = frame.head(copies).assign(**{S.ID: lambda f: f[S.ID] + "_copy"})
    frame = pd.concat([frame, extra], ignore_index=True)
    frame[S.LATITUDE] = frame[S.LATITUDE].astype(float)
    frame[S.LONGITUDE] = frame[S.LONGITUDE].astype(float)
    if rows >= 40:
        rng = np.random.default_rng(seed)
        frame.loc[:9, S.LATITUDE] = 48.85 + rng.uniform(0, 0.0003, 10)
        frame.loc[:9, S.LONGITUDE] = 2.35 + rng.uniform(0, 0.0003, 10)
    frame[S.POI] = None
    frame[S.SOURCE] = None
    columns = [f.name for f in S.poi_table_schema().fields]
    return spark.createDataFrame(frame[columns], schema=S.poi_table_schema())


class _Owner:
    """What a prepared query is kept for (a model, in the service)."""


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([S.ID_L, S.ID_R]).reset_index(drop=True)


def test_prepared_points_and_pair_queries_equal_fresh_plans_on_other_rows(
    spark: SparkSession, small_matcher: FitOutcome
) -> None:
    spec = small_matcher.spec
    blocking = BlockingSettings.model_validate(spec.blocking)
    owner = _Owner()  # a prepared query of its own (not another test's)

    def points(pois: DataFrame) -> DataFrame:
        return cached_points(pois, stats=spec.stats(), plan=SMALL)

    inputs = [
        _pois(spark, 60, seed=71),  # prepared on these
        _pois(spark, 300, seed=72, copies=20),
        _pois(spark, 1, seed=73),
        _pois(spark, 60, seed=71),  # the first input again, after others
        _pois(spark, 45, seed=74, copies=5),
    ]
    counts = []
    for pois in inputs:
        pts = points(pois)
        # normalization and name statistics: the same rows and values
        again = prepared_points(pois, owner=owner, stats=spec.stats())
        assert sorted(again.collect(), key=lambda r: r[S.ID]) == sorted(
            pts.collect(), key=lambda r: r[S.ID]
        )
        fresh = cached_candidates(pts, settings=blocking, plan=SMALL, added=spec.added)
        reused = prepared_candidates(pts, owner=owner, settings=blocking, added=spec.added)
        want, got = _sorted(fresh.toPandas()), _sorted(reused.toPandas())
        assert list(got.columns) == list(want.columns)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
        # the service's: the same query compiled to Java code (planned under other
        # settings, so another prepared query), the session's settings left as they were
        before = {k: spark.conf.get(k, None) for k in COMPILED_SQL_CONF}
        compiled = prepared_candidates(
            pts, owner=owner, settings=blocking, added=spec.added, sql_conf=COMPILED_SQL_CONF
        )
        assert {k: spark.conf.get(k, None) for k in COMPILED_SQL_CONF} == before
        pd.testing.assert_frame_equal(
            _sorted(compiled.toPandas()), want, check_exact=False, rtol=1e-12
        )
        counts.append(len(got))
    # the inputs differ, so do their pairs (a run reading an earlier run's shuffle would not)
    assert counts[1] > counts[0] > counts[2] == 0
    assert counts[3] == counts[0]
    # the queries were executed once and their RDDs re-run on each input's rows
    assert sorted(key[0] for key in _prepared[owner]) == ["candidates", "candidates", "points"]
    assert all(q._reused[0] is not None for q in _prepared[owner].values())
    # the compiled pair query's operators are compiled stages; the other's are not
    stages = {
        key[4]: sum("WholeStageCodegen" in n.node.nodeName() for n in q.nodes)
        for key, q in _prepared[owner].items()
        if key[0] == "candidates"
    }
    assert stages[()] == 0
    assert stages[tuple(sorted(COMPILED_SQL_CONF.items()))] >= 5
    # copies were paired with their originals
    copies = got[got[S.ID_R].str.endswith("_copy") | got[S.ID_L].str.endswith("_copy")]
    assert len(copies) >= 5


def test_matching_with_a_reused_plan_gives_the_same_groups(
    spark: SparkSession, small_matcher: FitOutcome
) -> None:
    for seed, rows in ((81, 120), (82, 40), (81, 120)):
        pois = _pois(spark, rows, seed=seed, copies=8)
        out = {}
        for reuse in (False, True):
            result = match_with_model(
                pois,
                model=small_matcher.model,
                spec=small_matcher.spec,
                plan=SMALL,
                reuse_plan=reuse,
            )
            out[reuse] = result.matches.toPandas().sort_values(S.ID).reset_index(drop=True)
            scored = result.scored.toPandas()
            # the small plan holds its scored pairs and groups on the driver: grouping
            # and the output read them there, without a Spark job
            held = driver_frame(result.scored)
            assert held is not None
            pd.testing.assert_frame_equal(held, scored)
            assert driver_frame(result.matches) is not None
        pd.testing.assert_frame_equal(out[True], out[False])
        assert len(out[True]) == rows + 8
        assert (out[True][S.MATCHES].str.contains(" ")).sum() >= 16  # the copies and originals
        assert len(scored) > 0


def test_a_query_shaped_by_its_rows_is_refused(spark: SparkSession) -> None:
    rows = spark.createDataFrame([(1,), (2,)], "v int")
    with pytest.raises(PreparationError, match=r"ran \d+ Spark job"):
        PreparedQuery.prepare(rows, lambda df: df.where(F.col("v") < df.count()))
    prepared = PreparedQuery.prepare(rows, lambda df: df.where(F.col("v") > 1))
    assert prepared.run(spark.createDataFrame([(5,), (0,)], "v int")).collect() == [(5,)]
    with pytest.raises(ValueError, match="schema differs"):
        prepared.run(spark.createDataFrame([("5",)], "v string"))
    # a plan adaptive execution re-plans as it runs has nothing to copy: named, not obscure
    with (
        session_conf(spark, {"spark.sql.adaptive.enabled": "true"}),
        pytest.raises(PreparationError, match=r"spark\.sql\.adaptive\.enabled"),
    ):
        PreparedQuery.prepare(rows, lambda df: df.groupBy("v").count(), one_partition=False).run(
            rows
        )


def _tree(plan: Any) -> str:
    """A physical plan's tree without the ids each exchange's copy is given."""
    return re.sub(r"plan_id=\d+", "plan_id=_", str(plan.treeString()))


def _shuffles(df: DataFrame) -> int:
    plan = df._jdf.queryExecution().executedPlan()
    return int(plan.toString().count("Exchange hashpartitioning"))


def test_a_one_partition_scan_runs_joins_windows_and_aggregates_without_shuffles(
    spark: SparkSession,
) -> None:
    # what the small plan holds on the driver and reads back (stages.plan._to_driver)
    left = spark.createDataFrame(
        pd.DataFrame({"k": [1, 1, 2, 3, 3, 3], "v": [5.0, 1.0, 2.0, 7.0, 7.0, 0.5]})
    )
    right = spark.createDataFrame(pd.DataFrame({"k": [1, 2, 2, 4], "w": ["a", "b", "c", "d"]}))

    def query(a: DataFrame, b: DataFrame) -> DataFrame:
        ranked = a.withColumn(
            "r", F.row_number().over(Window.partitionBy("k").orderBy(F.desc("v"), "v"))
        )
        joined = ranked.join(b, on="k", how="left")
        return joined.groupBy("k").agg(F.count(F.lit(1)).alias("n"), F.max("v").alias("top"))

    plain = query(left, right)
    single = query(one_partition_scan(left), one_partition_scan(right))
    assert sorted(single.collect()) == sorted(plain.collect())
    assert sorted(single.collect())[0] == (1, 2, 5.0)  # k=1: two left rows, one right
    # the planner shuffles the plain scans (unknown partitioning, unknown size) ...
    assert _shuffles(plain) >= 2
    # ... and not the scans declared as one partition of a small size
    assert _shuffles(single) == 0
    assert single.rdd.getNumPartitions() == 1


def _stages_of(spark: SparkSession, group: str) -> list[str]:
    tracker = spark.sparkContext.statusTracker()
    return [
        stage.name
        for job in tracker.getJobIdsForGroup(group)
        if (info := tracker.getJobInfo(job)) is not None
        for stage_id in info.stageIds
        if (stage := tracker.getStageInfo(stage_id)) is not None
    ]


def _udf_union_query(
    spark: SparkSession,
) -> tuple[Callable[[DataFrame], DataFrame], Callable[[list[int]], DataFrame]]:
    """A query with a Python UDF, a union, an aggregate and a join (``build``), and its
    input of keys ``ks`` with values ``10 k + 1`` (``rows``)."""

    @F.udf("long")
    def twice(v: int) -> int:
        return 2 * v

    def build(rows: DataFrame) -> DataFrame:
        both = rows.select("k", twice("v").alias("v")).unionByName(rows.select("k", "v"))
        sums = both.groupBy("k").agg(F.sum("v").alias("s"))
        return sums.join(rows.select("k", F.col("v").alias("w")), on="k", how="inner")

    def rows(ks: list[int]) -> DataFrame:
        return spark.createDataFrame(
            pd.DataFrame({"k": ks, "v": [10 * k + 1 for k in ks]}), "k long, v long"
        )

    return build, rows


def test_a_prepared_one_partition_query_runs_as_one_stage(spark: SparkSession) -> None:
    # a union and a Python UDF forget their input's one partition, so the planner
    # shuffles (into one partition) before the aggregate and the join above them
    build, rows = _udf_union_query(spark)
    first = rows([1, 2, 2, 3])
    assert _shuffles(build(one_partition_scan(first))) >= 1  # as planned
    query = PreparedQuery.prepare(first, build, one_partition=True)
    tree = query.nodes[-1].node.toString()
    assert "Exchange" not in tree  # each shuffle into one partition became a coalesce
    assert "Coalesce 1" in tree
    sc = spark.sparkContext
    for i, ks in enumerate(([1, 2, 2, 3], [5, 5, 5], [7])):
        group = f"prepared-one-stage-{i}"
        sc.setJobGroup(group, "a prepared query")
        try:
            got = sorted(query.run(rows(ks)).collect())
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        assert got == sorted(build(rows(ks)).collect())
        assert len(_stages_of(spark, group)) == 1
    assert got == [(7, 3 * 71, 71)]  # 2 x 71 + 71, one row


def test_a_one_partition_plan_is_executed_once_and_rerun_on_each_runs_rows(
    spark: SparkSession,
) -> None:
    build, rows = _udf_union_query(spark)
    query = PreparedQuery.prepare(rows([1, 2]), build, one_partition=True)
    inputs: tuple[list[int], ...] = ([1, 2, 2, 3], [5, 5, 5], [7], [], [1, 2, 2, 3])
    roots = set()
    for ks in inputs:
        got = sorted(query.run(rows(ks)).collect())
        assert got == sorted(build(rows(ks)).collect())
        (reused,) = query._reused
        assert reused is not None  # narrow from input to output: its RDDs are reused
        roots.add(reused.root().id())
        use_reused_plans(False)  # copied and executed per run, as before
        try:
            assert sorted(query.run(rows(ks)).collect()) == got
        finally:
            use_reused_plans(True)
    assert len(roots) == 1  # one execution of the plan served every run
    assert got == [(1, 33, 11), (2, 126, 21), (2, 126, 21), (3, 93, 31)]
    # an input read through a shuffle cannot be bound (its map stage would not run):
    # that run copies the plan, and gives the same rows
    shuffled = rows([5, 5, 5]).repartition(3)
    assert sorted(query.run(shuffled).collect()) == [(5, 459, 51)] * 3
    # a run's output read after the next run fails, and never reads the other run's rows
    first, second = query.run(rows([1])), query.run(rows([7]))
    assert second.collect() == [(7, 213, 71)]
    with pytest.raises(Exception, match="ran on other rows before this run's output was read"):
        first.collect()
    # a plan that broadcasts its input would read the first run's broadcast: not reused
    joined = PreparedQuery.prepare(
        rows([1, 2]), lambda df: df.join(F.broadcast(df.select("k")), "k"), one_partition=True
    )
    for ks in ([1, 2, 2], [4]):
        assert sorted(joined.run(rows(ks)).collect()) == sorted(
            (k, 10 * k + 1) for k in ks for j in ks if j == k
        )
    assert joined._reused == [None]


def test_stage_marks_name_the_call_site_of_what_they_create(spark: SparkSession) -> None:
    def created_at() -> str:  # where Spark says the RDD of a query was created
        rdd = spark.range(5).where(F.col("id") > 1)._jdf.queryExecution().toRdd()
        return str(rdd.getCreationSite())

    mark_stage("pair_features:start")
    assert created_at() == "poimatch pair_features"  # named: no walk of the JVM's stack
    mark_stage("pair_features:end")
    mark_stage("grouping:start")
    assert created_at() == "poimatch grouping"
    mark_stage("grouping:end")  # the last mark: Spark finds call sites again
    assert "poimatch" not in created_at()
    assert spark.sparkContext.getLocalProperty("callSite.short") is None


def test_the_small_plan_holds_its_frames_and_counts_them_without_a_job(
    spark: SparkSession,
) -> None:
    rows = spark.createDataFrame(pd.DataFrame({"id": ["a", "b", "c"], "x": [1.5, None, 3.0]}))
    held = SMALL.materialize(rows.where(F.col("id") != "b"))
    frame = driver_frame(held)
    assert frame is not None
    pd.testing.assert_frame_equal(frame, held.toPandas())
    sc = spark.sparkContext
    sc.setJobGroup("held-count", "counting a held frame")
    try:
        assert row_count(held) == 2
        got = selected_frame(held, ["x"])
        ids = held_select(held, ["id"])  # a selection of a held frame is held too
        assert selected_frame(ids, ["id"])["id"].tolist() == ["a", "c"]
        assert SMALL.materialize(ids) is ids  # held already: not collected again
        known = counted(rows.where(F.col("x").isNotNull()), 2)
        assert row_count(known) == 2
        both = held_union(held, ids, ["id"])  # two held frames' columns, one after the other
        assert selected_frame(both, ["id"])["id"].tolist() == ["a", "c", "a", "c"]
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert sc.statusTracker().getJobIdsForGroup("held-count") == []
    # a frame no query joins is held as a plain scan (not declared one partition)
    loose = SMALL.materialize(rows, joined=False)
    assert _shuffles(loose.groupBy("id").count()) == 1
    assert _shuffles(held.groupBy("id").count()) == 0
    assert selected_frame(loose, ["id"])["id"].tolist() == ["a", "b", "c"]
    assert got["x"].tolist() == [1.5, 3.0]
    got.loc[:, "x"] = 0.0  # a copy: the held frame is not changed
    assert driver_frame(held)["x"].tolist() == [1.5, 3.0]  # type: ignore[index]
    # a frame the plan does not hold is counted and collected by Spark
    derived = held.where(F.col("x") > 2)
    assert driver_frame(derived) is None
    assert row_count(derived) == 1
    assert driver_frame(held_union(held, derived, ["id"])) is None  # one side is not held
    assert selected_frame(derived, ["id"])["id"].tolist() == ["c"]


def test_the_jvm_helper_copies_plans_as_the_python_loop_does(
    spark: SparkSession, small_matcher: FitOutcome
) -> None:
    # the suite's driver has the project's jars, so the helper (scripts/build_jvm.sh)
    helper = jvm_helper(spark)
    assert helper is not None
    spec = small_matcher.spec
    blocking = BlockingSettings.model_validate(spec.blocking)
    owner = _Owner()

    def points(rows: int, seed: int) -> DataFrame:
        pois = _pois(spark, rows, seed=seed, copies=min(rows, 10))
        return cached_points(pois, stats=spec.stats(), plan=SMALL)

    def pairs(pts: DataFrame) -> pd.DataFrame:
        query = prepared_candidates(pts, owner=owner, settings=blocking, added=spec.added)
        return _sorted(query.toPandas())

    pairs(points(60, seed=75))  # prepared on these
    counts = []
    for rows, seed in ((200, 76), (1, 77)):
        pts = points(rows, seed)
        got = {}
        for wanted in (True, False):
            use_jvm_helper(wanted)
            try:
                got[wanted] = pairs(pts)
            finally:
                use_jvm_helper(True)
        pd.testing.assert_frame_equal(got[True], got[False])
        fresh = cached_candidates(pts, settings=blocking, plan=SMALL, added=spec.added)
        pd.testing.assert_frame_equal(got[True], _sorted(fresh.toPandas()), rtol=1e-12)
        counts.append(len(got[True]))
    assert counts[0] > 10  # 200 rows and 10 copies
    assert counts[1] == 1  # one row and its copy
    # the two copies are the same operators, over the new rows' scans
    (query,) = [q for key, q in _prepared[owner].items() if key[0] == "candidates"]
    rdd = one_partition_scan(pts)._jdf.queryExecution().toRdd()
    by_jvm = helper.withInput(query.nodes[-1].node, query.stand_in, rdd)
    by_python = query._copy(rdd)
    # (each copy of an exchange gets a new plan_id)
    assert _tree(by_jvm) == _tree(by_python)
    assert "ExistingRDD" in _tree(by_jvm)
    scans = [n for n in query.nodes if n.kind == "scan"]
    assert scans
    assert all(n.node.rdd().id() == query.stand_in for n in scans)
