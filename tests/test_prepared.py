"""A prepared query (planned once, re-run on new rows) gives what a fresh plan gives.

The service's warm requests re-run the blocking and pair-feature query planned for its
first request (:mod:`poimatch.stages.prepared`). Each run must read its own rows, not a
shuffle or broadcast left by an earlier run, and find the same pairs with the same
features as the query planned afresh: on inputs of other sizes, with exact copies, a
dense block and a single row.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
from poimatch.stages.plan import SMALL, driver_frame, row_count, selected_frame, session_conf
from poimatch.stages.prepared import (
    PreparationError,
    PreparedQuery,
    jvm_helper,
    one_partition_scan,
    use_jvm_helper,
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
        counts.append(len(got))
    # the inputs differ, so do their pairs (a run reading an earlier run's shuffle would not)
    assert counts[1] > counts[0] > counts[2] == 0
    assert counts[3] == counts[0]
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
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert sc.statusTracker().getJobIdsForGroup("held-count") == []
    assert got["x"].tolist() == [1.5, 3.0]
    got.loc[:, "x"] = 0.0  # a copy: the held frame is not changed
    assert driver_frame(held)["x"].tolist() == [1.5, 3.0]  # type: ignore[index]
    # a frame the plan does not hold is counted and collected by Spark
    derived = held.where(F.col("x") > 2)
    assert driver_frame(derived) is None
    assert row_count(derived) == 1
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
