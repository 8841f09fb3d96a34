"""The small plan (uploads) and the batch plan (tables) give the same output.

The small plan chains the stages into a handful of Spark jobs and plans the spatial
pass on the coarse grid alone; the batch plan checkpoints every stage and tries finer
grids in dense areas first. Both must find the same pairs, the same scores and the
same groups on one file, including a dense block where the finer grids take over.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.apps.service import SERVICE_SQL_CONF
from poimatch.config import load_settings
from poimatch.runs.workflows import FitOutcome, match_with_model, training_set
from poimatch.sample.generator import generate_pois
from poimatch.stages.plan import BATCH, SMALL, Plan, session_conf, small_plan_conf


def _with_dense_block(
    spark: SparkSession, frame: pd.DataFrame, dense: pd.DataFrame, seed: int
) -> DataFrame:
    """``frame`` plus ``dense`` (new ids ``dense_NNN``) moved within ~60 m of one point,
    so the batch plan's finer grids are used there."""
    rng = np.random.default_rng(seed)
    dense = dense.copy()
    dense[S.ID] = [f"dense_{i:03d}" for i in range(len(dense))]
    dense[S.LATITUDE] = (40.7 + rng.uniform(0, 0.0005, len(dense))).astype(str)
    dense[S.LONGITUDE] = (-74.0 + rng.uniform(0, 0.0005, len(dense))).astype(str)
    frame = pd.concat([frame, dense], ignore_index=True)
    frame[S.LATITUDE] = frame[S.LATITUDE].astype(float)
    frame[S.LONGITUDE] = frame[S.LONGITUDE].astype(float)
    frame[S.SOURCE] = None
    columns = [f.name for f in S.poi_table_schema().fields]
    return spark.createDataFrame(frame[columns], schema=S.poi_table_schema())


def _table(spark: SparkSession) -> DataFrame:
    """Unlabelled generated rows and a dense block of 120 of them."""
    frame = generate_pois(900, seed=404)
    frame[S.POI] = None
    return _with_dense_block(spark, frame, frame.sample(120, random_state=3), seed=5)


def _labelled_table(spark: SparkSession) -> DataFrame:
    """Labelled generated rows and a dense block: three copies each of 30 rows (each
    keeps its row's place)."""
    frame = generate_pois(400, seed=405)
    dense = frame.sample(30, random_state=4).loc[lambda f: f.index.repeat(3)]
    return _with_dense_block(spark, frame, dense, seed=6)


def _jobs(spark: SparkSession, group: str) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def _descriptions(spark: SparkSession, group: str) -> set[str]:
    """The job descriptions (as the UI shows them) of a job group's jobs."""
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)  # type: ignore[union-attr]
    out = set()
    for i in range(jobs.size()):
        job = jobs.apply(i)
        if job.jobGroup().isDefined() and job.jobGroup().get() == group:
            out.add(job.description().get() if job.description().isDefined() else None)
    return out


@pytest.fixture
def service_conf(spark: SparkSession) -> Iterator[None]:
    """The SQL settings of the service's session (where the small plan runs), restored."""
    with session_conf(spark, SERVICE_SQL_CONF):
        yield


@pytest.mark.usefixtures("service_conf")
def test_small_and_batch_plans_give_the_same_pairs_scores_and_groups(
    spark: SparkSession, small_matcher: FitOutcome
) -> None:
    table = _table(spark)
    outputs = {}
    jobs = {}
    for plan in (SMALL, BATCH):
        group = f"plan-{plan.name}"
        spark.sparkContext.setJobGroup(group, group)
        try:
            result = match_with_model(
                table, model=small_matcher.model, spec=small_matcher.spec, plan=plan
            )
            matches = result.matches.toPandas().sort_values(S.ID).reset_index(drop=True)
            scored = result.scored.toPandas().sort_values([S.ID_L, S.ID_R])
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        jobs[plan.name] = _jobs(spark, group)
        outputs[plan.name] = (matches, scored.reset_index(drop=True), result)
    small, batch = outputs["small"], outputs["batch"]
    assert small[2].plan == "small"
    assert batch[2].plan == "batch"
    # the same candidate pairs, scored alike
    pd.testing.assert_frame_equal(
        small[1][[S.ID_L, S.ID_R]], batch[1][[S.ID_L, S.ID_R]], check_dtype=False
    )
    np.testing.assert_allclose(small[1][S.SCORE], batch[1][S.SCORE], rtol=0, atol=1e-9)
    assert small[2].candidates == batch[2].candidates > 0
    # the same groups and match lists, and some real groups among them
    pd.testing.assert_frame_equal(small[0], batch[0], check_dtype=False)
    assert (small[0][S.MATCHES].str.contains(" ")).sum() > 50
    dense = small[0][small[0][S.ID].str.startswith("dense_")]
    assert len(dense) == 120
    # the point of the small plan: fewer Spark jobs (no checkpoints, no counts)
    assert jobs["small"] < jobs["batch"], jobs
    # every job the batch plan ran is named after its stage (the UI, the event log)
    stages = {"points", "pair_features", "scoring", "grouping"}
    named = {f"poimatch {stage} [plan-batch]" for stage in stages}
    assert _descriptions(spark, "plan-batch") <= named | {None}
    assert named <= _descriptions(spark, "plan-batch")


def test_small_and_batch_plans_give_the_same_training_set(spark: SparkSession) -> None:
    table = _labelled_table(spark)
    settings = load_settings("ci", ["model.sample_rates=[1.0]"])
    got = {}
    for plan in (SMALL, BATCH):
        with small_plan_conf(spark):  # interpreted, not compiled: the plans' cost here
            data = training_set(table, settings=settings, plan=plan)
            got[plan.name] = data.pairs.toPandas().sort_values([S.ID_L, S.ID_R], ignore_index=True)
    small, batch = got["small"], got["batch"]
    pd.testing.assert_frame_equal(small, batch, check_dtype=False, check_like=True)
    # the dense block's pairs are there, positives and negatives, with their features
    dense = small[small[S.ID_L].str.startswith("dense_") & small[S.ID_R].str.startswith("dense_")]
    assert len(dense) > 100
    assert 0 < dense[S.LABEL].sum() < len(dense)
    assert small[S.LABEL].sum() > 100


@pytest.mark.parametrize(
    ("rows", "limit", "expected"),
    [(10, 20_000, SMALL), (20_000, 20_000, SMALL), (20_001, 20_000, BATCH), (5, 0, BATCH)],
)
def test_plan_is_chosen_by_input_size(rows: int, limit: int, expected: Plan) -> None:
    assert Plan.for_rows(rows, limit) == expected


def test_cached_columns_are_built_once_per_argument(spark: SparkSession) -> None:
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    from poimatch.columns import cached_column

    built: list[tuple[object, ...]] = []

    @cached_column
    def plus(col: Column, step: float) -> Column:
        built.append((str(col), step))
        return col + F.lit(step)

    first = plus(F.col("a"), 1.0)
    assert plus(F.col("a"), 1.0) is first  # same text, same value: no new JVM calls
    other = plus(F.col("b"), 1.0)
    assert other is not first
    assert plus(F.col("a"), 2.0) is not first
    assert built == [("Column<'a'>", 1.0), ("Column<'b'>", 1.0), ("Column<'a'>", 2.0)]
    # a cached expression is valid in any later plan
    frame = spark.createDataFrame([(1.0, 5.0)], "a double, b double")
    row = frame.select(first.alias("x"), other.alias("y")).first()
    assert row is not None
    assert (row["x"], row["y"]) == (2.0, 6.0)


def test_a_selection_passed_once_gives_what_a_fresh_one_gives(spark: SparkSession) -> None:
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    from poimatch.columns import cached_column, named_columns, select_built, select_named

    @cached_column
    def doubled(names: tuple[str, ...]) -> list[Column]:
        return [(F.col(n) * 2).alias(f"{n}2") for n in names]

    frame = spark.createDataFrame([(1, 5, "x"), (2, 6, "y")], "a int, b int, c string")
    other = spark.createDataFrame([(7, 8, "z")], "a int, b int, c string")
    for df in (frame, other, frame):  # the same sequence, other frames
        got = select_built(df, doubled, ("a", "b"))
        assert got.collect() == df.select(*doubled(("a", "b"))).collect()
        assert got.columns == ["a2", "b2"]
        assert select_named(df, ["c", "a"]).collect() == df.select("c", "a").collect()
    assert select_built(other, doubled, ("b",)).collect() == [(16,)]
    assert select_named(frame, ["b"]).schema == frame.select(*named_columns(["b"])).schema


def test_a_local_frame_equals_what_create_data_frame_makes(spark: SparkSession) -> None:
    from pyspark.sql import types as T

    from poimatch.stages.plan import local_frame

    schema = T.StructType(
        [
            T.StructField("id", T.StringType(), False),
            T.StructField("name", T.StringType()),
            T.StructField("score", T.DoubleType()),
            T.StructField("row", T.LongType(), False),
            T.StructField("ok", T.BooleanType()),
            T.StructField("freq", T.MapType(T.StringType(), T.DoubleType())),
            T.StructField("tokens", T.ArrayType(T.StringType())),
        ]
    )
    pdf = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "name": ["Café", None, "東京"],
            "score": [0.25, np.nan, None],
            "row": [0, 1, 2],
            "ok": [True, None, False],
            "freq": [{"cafe": 1.5}, None, {}],
            "tokens": [["x", "y"], [], None],
        }
    )
    for frame in (pdf, pdf.iloc[:0], pdf.iloc[2:]):
        got = local_frame(spark, frame, schema)
        want = spark.createDataFrame(frame, schema=schema)
        assert got.schema == want.schema == schema
        assert got.collect() == want.collect()
    assert [r["name"] for r in local_frame(spark, pdf, schema).collect()] == ["Café", None, "東京"]
