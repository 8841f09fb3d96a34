"""Named stages and the one wrapper that runs them: blocking → features → scoring → grouping.

Each stage is a pure transform (no actions); the jobs decide what to cache and write.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark import SparkContext, StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import pandas_udf
from xgboost import Booster
from xgboost.spark import SparkXGBClassifierModel

from poimatch import schema as S
from poimatch.blocking import add_pair_sides
from poimatch.blocking import candidate_pairs as _candidate_pairs
from poimatch.cancellation import check_cancelled
from poimatch.columns import cached_column, named_columns
from poimatch.comparisons import BUILTIN_NAMES, Comparison, definitions
from poimatch.config import BlockingSettings
from poimatch.features import DEFAULT_FEATURES, FEATURE_COLUMNS, add_pair_features
from poimatch.grouping import LOCAL_MAX_EDGES, group_matches, pairwise_matches
from poimatch.namestats import NameStats, add_name_stats
from poimatch.normalize import add_normalized_columns
from poimatch.scorer import Calibration, predict_scores

__all__ = [
    "ALL_FEATURES",
    "BATCH",
    "Plan",
    "SMALL",
    "SMALL_SQL_CONF",
    "small_plan_conf",
    "session_conf",
    "KNOWN_FEATURES",
    "MatchingSpec",
    "check_features",
    "cached_candidates",
    "cached_points",
    "featured_pairs",
    "booster_parts",
    "predict_scores",
    "booster_score",
    "calibrate_scores",
    "score_and_group",
    "score_pairs",
    "group_scored",
    "record_stages",
]

ALL_FEATURES: tuple[str, ...] = DEFAULT_FEATURES
"""The features a model uses by default (``model.features`` unset)."""
KNOWN_FEATURES: tuple[str, ...] = FEATURE_COLUMNS
"""Every feature the pipeline computes (a model may use any subset)."""
_PROBABILITY = "probability"

_KEPT: frozenset[str] = frozenset((S.ID_L, S.ID_R, S.PASS, *FEATURE_COLUMNS))

_log = logging.getLogger(__name__)
# stack of (event, epoch seconds) mark lists, one per active record_stages() block
_recorders: list[list[tuple[str, float]]] = []
_started: dict[str, float] = {}


@contextmanager
def record_stages() -> Iterator[list[tuple[str, float]]]:
    """Collect ``(event, time.time())`` marks of the stages run inside the block.

    Events are ``<stage>:start`` / ``<stage>:end`` for the eager stages (``points``,
    ``pair_features``, ``grouping``) and ``scoring:call`` when
    the (lazy) scoring plan is built. Benchmarks use them for per-stage wall times;
    outside the block nothing is recorded (stage durations are logged at INFO).
    """
    marks: list[tuple[str, float]] = []
    _recorders.append(marks)
    try:
        yield marks
    finally:
        _recorders.remove(marks)


def _describe_jobs(stage: str | None) -> None:
    """Name the Spark jobs this thread starts from now on (the UI's and the event log's
    job description): ``poimatch <stage>``, with the job group when one is set (a
    service request's tag); ``None`` clears it."""
    sc = SparkContext._active_spark_context
    if sc is None:
        return
    if stage is None:
        sc.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
        return
    group = sc.getLocalProperty("spark.jobGroup.id")
    sc.setJobDescription(f"poimatch {stage}" + (f" [{group}]" if group else ""))


def _mark(event: str) -> None:
    # every mark is a stage boundary: abandoned work (see poimatch.cancellation) stops here
    check_cancelled(event)
    now = time.time()
    stage, _, edge = event.partition(":")
    if edge in ("start", "call"):
        _describe_jobs(stage)
    if edge == "start":
        _started[stage] = now
    elif edge == "end" and stage in _started:
        _log.info("stage %s: %.1f s", stage, now - _started.pop(stage))
    if edge == "end" and stage == "grouping":
        _describe_jobs(None)
    if _recorders:
        _recorders[-1].append((event, now))


def check_features(
    features: tuple[str, ...], added: tuple[Comparison, ...] = ()
) -> tuple[str, ...]:
    """``features`` if every name is a built-in feature or one of the ``added``
    comparisons; else ``ValueError`` naming the unknown ones and what is known."""
    definitions(features, added)
    return features


@dataclass(frozen=True)
class MatchingSpec:
    """What a trained model needs at match time; stored with the model in MLflow.

    ``name_stats`` (the frozen name statistics, :mod:`poimatch.namestats`) is too large
    for the model's metadata: it travels as an artifact of the training run and is
    attached when the model is loaded (:func:`poimatch.tracking.load_matcher`).
    """

    threshold: float
    grouping_mode: str
    max_group_size: int
    features: tuple[str, ...]
    blocking: dict[str, Any]
    calibration: Calibration | None = None
    training: dict[str, Any] = field(default_factory=dict)
    name_stats: NameStats | None = field(default=None, compare=False, repr=False)
    #: the full definition of each of ``features`` (kind, column, scorer, direction);
    #: a spec stored before comparisons were configurable gets the built-ins'
    comparisons: tuple[Comparison, ...] = ()

    def __post_init__(self) -> None:
        # only when every feature is a built-in one (a spec naming others must bring
        # their definitions; an empty one, e.g. a stand-in, gets none)
        builtin_only = all(f in BUILTIN_NAMES for f in self.features)
        if not self.comparisons and self.features and builtin_only:
            object.__setattr__(self, "comparisons", definitions(self.features))

    @property
    def added(self) -> tuple[Comparison, ...]:
        """The comparisons of this spec that are not built in (computed in addition)."""
        return tuple(c for c in self.comparisons if c.name not in BUILTIN_NAMES)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for MLflow model metadata (without the name statistics)."""
        return {
            "threshold": self.threshold,
            "grouping_mode": self.grouping_mode,
            "max_group_size": self.max_group_size,
            "features": list(self.features),
            "blocking": self.blocking,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "training": self.training,
            "comparisons": [c.model_dump(mode="json") for c in self.comparisons],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], name_stats: NameStats | None = None) -> MatchingSpec:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` naming a missing field."""
        calibration = data.get("calibration")
        return cls(
            threshold=float(data["threshold"]),
            grouping_mode=str(data["grouping_mode"]),
            max_group_size=int(data["max_group_size"]),
            features=tuple(data["features"]),
            blocking=dict(data["blocking"]),
            calibration=Calibration.from_dict(calibration) if calibration else None,
            training=dict(data.get("training") or {}),
            name_stats=name_stats,
            comparisons=tuple(Comparison.model_validate(c) for c in data.get("comparisons") or ()),
        )

    def stats(self) -> NameStats:
        """The frozen name statistics; ``ValueError`` when the spec was loaded without."""
        if self.name_stats is None:
            raise ValueError(
                "this matching spec has no name statistics: load the model with "
                "poimatch.tracking.load_matcher (a model trained before poimatch froze "
                "its name statistics must be retrained)"
            )
        return self.name_stats


def _checkpoint(df: DataFrame) -> DataFrame:
    return df.localCheckpoint(eager=True)


def _to_driver(df: DataFrame) -> DataFrame:
    """``df`` computed once and held as a driver-side local relation (one Spark job)."""
    frame = df.toPandas()
    return df.sparkSession.createDataFrame(frame, schema=df.schema)


@dataclass(frozen=True)
class Plan:
    """How the stages are executed: the same library functions, two ways of running them.

    ``batch`` (tables of any size): every stage's output is locally checkpointed
    (computed once, kept on the executors, its lineage cut), counts are taken, and
    each stage is its own Spark jobs. ``small`` (an upload of a few thousand rows):
    the stages are chained into a handful of Spark jobs, with no checkpoint and no
    count; the two results a later stage reads more than once (the normalized points
    and the scored pairs) are collected to the driver and read back as local relations,
    so each later plan starts from data already in the driver. A small plan on a large
    table would gather the table on the driver, so :meth:`for_rows` chooses by size.
    """

    name: str
    small: bool

    def materialize(self, df: DataFrame) -> DataFrame:
        """``df`` computed once: a local checkpoint (batch) or a driver-side relation (small)."""
        return _to_driver(df) if self.small else _checkpoint(df)

    @staticmethod
    def for_rows(rows: int, small_max_rows: int) -> Plan:
        """The small plan for at most ``small_max_rows`` input rows, else the batch plan."""
        return SMALL if 0 <= rows <= small_max_rows else BATCH


BATCH = Plan("batch", small=False)
SMALL = Plan("small", small=True)

#: SQL settings for the small plan, measured on uploads of 10 to 10,000 rows
#: (docs/service.md) and on match runs of 30 and 20,000 rows (README, *Speed*):
#: compiling generated code costs more than it saves on a few thousand rows, broadcast
#: joins cost a Spark job each (the explicit broadcast hints of the pipeline still
#: broadcast the small lookup tables), adaptive execution re-plans between stages, and
#: one shuffle partition is one task per stage. The service's session runs with them;
#: a match job sets them for a small run (:func:`small_plan_conf`).
SMALL_SQL_CONF: dict[str, str] = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.sql.autoBroadcastJoinThreshold": "-1",
    "spark.sql.shuffle.partitions": "1",
}


@contextmanager
def session_conf(spark: SparkSession, conf: Mapping[str, str]) -> Iterator[None]:
    """``conf`` set on ``spark`` for the block, then the session's own values back (unset
    where it had none)."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


@contextmanager
def small_plan_conf(spark: SparkSession, *, enabled: bool = True) -> Iterator[None]:
    """:data:`SMALL_SQL_CONF` on ``spark`` for the block (``enabled``), then the
    session's own values back. The settings are the session's, not the thread's: use it
    where one run owns the session (a job), not around one request of a shared one."""
    with session_conf(spark, SMALL_SQL_CONF if enabled else {}):
        yield


def cached_points(pois: DataFrame, *, stats: NameStats, plan: Plan = BATCH) -> DataFrame:
    """Typed POIs → normalized points with the model's name statistics, materialized.

    Normalization runs a Python UDF; without materializing it would run again for
    every consumer of the points (each blocking pass, each pair side). A local
    checkpoint rather than a cache keeps later plans small: the plans that read
    these points are joined many times over, and Spark prints a cached plan's whole
    tree into the cache's name. The small plan materializes once, after both steps.
    """
    _mark("points:start")
    normalized = pois.transform(add_normalized_columns)
    if not plan.small:
        normalized = plan.materialize(normalized)
    points = plan.materialize(add_name_stats(normalized, stats))
    _mark("points:end")
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
    :func:`poimatch.blocking.candidate_pairs` (and :mod:`poimatch.against`).
    """
    _mark("pair_features:start")
    pairs = _candidate_pairs(
        points,
        settings=settings,
        materialize=None if plan.small else plan.materialize,
        link_only=link_only,
        query=query,
        broadcast_cells=broadcast_cells,
        **({"fine_levels": 0} if plan.small else {}),
    )
    featured = featured_pairs(pairs, points, plan=plan, added=added)
    _mark("pair_features:end")
    return featured


def _load_booster(raw: bytes) -> Booster:
    booster = Booster()
    booster.load_model(bytearray(raw))
    booster.set_param({"nthread": 1})
    return booster


def _booster_udf(raw: bytes, calibration: Calibration | None) -> Any:
    """A pandas UDF: struct of feature doubles -> match probability, from a raw booster.

    Each Python worker loads the booster once per partition and predicts whole Arrow
    batches (:func:`predict_scores`), single-threaded (Spark already runs one task per core).
    """

    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        booster = _load_booster(raw)
        for frame in batches:
            yield pd.Series(predict_scores(booster, frame, calibration))

    return pandas_udf(predict, T.DoubleType())  # type: ignore[call-overload]


def booster_parts(model: PipelineModel) -> tuple[list[str], SparkXGBClassifierModel] | None:
    """The feature columns and the XGBoost stage of an assembler + XGBoost pipeline."""
    stages = model.stages
    if (
        len(stages) != 2
        or not isinstance(stages[0], VectorAssembler)
        or not isinstance(stages[1], SparkXGBClassifierModel)
        or stages[0].getHandleInvalid() != "keep"
    ):
        return None
    return list(stages[0].getInputCols()), stages[1]


# the driver's copy of each loaded model's booster (the small plan predicts on the driver)
_driver_boosters: weakref.WeakKeyDictionary[PipelineModel, Booster] = weakref.WeakKeyDictionary()


@cached_column
def _score_inputs(columns: tuple[str, ...]) -> list[Column]:
    """The pair ids and ``columns`` as doubles: what the driver-side booster reads."""
    return [
        F.col(S.ID_L),
        F.col(S.ID_R),
        *[F.col(c).cast(T.DoubleType()).alias(c) for c in columns],
    ]


def _score_on_driver(
    model: PipelineModel, pairs: DataFrame, calibration: Calibration | None
) -> DataFrame | None:
    """Small plan: ``id_l``, ``id_r``, ``score`` of featured pairs, predicted on the driver.

    The pairs' features are computed in one Spark job and collected (the small plan holds
    its scored pairs on the driver anyway); the same :func:`predict_scores` as the batch's UDF
    scores them with the model's booster, loaded once per model, so a request ships no
    1 MB booster to a Python worker. ``None`` when the model is not that pipeline.
    """
    parts = booster_parts(model)
    if parts is None:
        return None
    columns, xgb = parts
    booster = _driver_boosters.get(model)
    if booster is None:
        booster = _load_booster(bytes(xgb.get_booster().save_raw("ubj")))
        _driver_boosters[model] = booster
    frame = pairs.select(*_score_inputs(tuple(columns))).toPandas()
    out = pd.DataFrame(
        {
            S.ID_L: frame[S.ID_L],
            S.ID_R: frame[S.ID_R],
            S.SCORE: predict_scores(booster, frame[columns], calibration) if len(frame) else [],
        }
    )
    schema = T.StructType(
        [
            T.StructField(S.ID_L, T.StringType()),
            T.StructField(S.ID_R, T.StringType()),
            T.StructField(S.SCORE, T.DoubleType()),
        ]
    )
    return pairs.sparkSession.createDataFrame(out, schema=schema)


def _calibrate_udf(calibration: Calibration) -> Any:
    def apply(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for raw in batches:
            yield pd.Series(calibration.apply(raw.to_numpy(dtype=np.float64)))

    return pandas_udf(apply, T.DoubleType())  # type: ignore[call-overload]


def calibrate_scores(scored: DataFrame, calibration: Calibration | None) -> DataFrame:
    """``score`` of already scored pairs mapped through ``calibration`` (if any)."""
    if calibration is None:
        return scored
    return scored.withColumn(S.SCORE, _calibrate_udf(calibration)(F.col(S.SCORE)))


def booster_score(model: PipelineModel, calibration: Calibration | None = None) -> Column | None:
    """The score expression of an assembler + XGBoost pipeline, on the raw feature columns.

    ``model.transform`` packs the features into an ML vector, and xgboost.spark unpacks
    it again into arrays and returns probability vectors that are unpacked once more:
    per row, four conversions between JVM and Python objects. Predicting straight from
    the feature columns gives the same probabilities (the same float32 inputs, NaN for
    null) in a fraction of the time. ``None`` when the model is not that pipeline.
    """
    parts = booster_parts(model)
    if parts is None:
        return None
    names, xgb = parts
    columns = [F.col(c).cast(T.DoubleType()) for c in names]
    raw = bytes(xgb.get_booster().save_raw("ubj"))
    udf = _booster_udf(raw, calibration)
    result: Column = udf(F.struct(*columns))
    return result


def score_pairs(
    model: PipelineModel, pairs: DataFrame, calibration: Calibration | None = None
) -> DataFrame:
    """Add ``score`` (match probability, calibrated when given) to featured pairs.

    An assembler + XGBoost pipeline is scored from the feature columns directly
    (:func:`booster_score`); any other pipeline model through ``model.transform``.
    """
    _mark("scoring:call")
    fast = booster_score(model, calibration)
    if fast is not None:
        return pairs.withColumn(S.SCORE, fast)
    scored = model.transform(pairs)
    raw = vector_to_array(F.col(_PROBABILITY)).getItem(1).cast(T.DoubleType())
    score = _calibrate_udf(calibration)(raw) if calibration is not None else raw
    return scored.withColumn(S.SCORE, score).drop(
        _PROBABILITY, "rawPrediction", S.PREDICTION, "features"
    )


def score_and_group(
    ids: DataFrame,
    pairs: DataFrame,
    *,
    model: PipelineModel,
    spec: MatchingSpec,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    plan: Plan = BATCH,
    keep: Sequence[str] = (),
) -> tuple[DataFrame, DataFrame]:
    """Featured pairs -> ``(scored, grouped)``, both materialized.

    ``scored`` (``id_l``, ``id_r``, ``score``, and the pairs' columns named in ``keep``,
    e.g. ``block_pass`` and the features for a scored-pairs table: batch plan only) is
    materialized by ``plan`` (locally checkpointed, or held on the driver); ``grouped``
    (``id``, ``group_id``, ``matches`` for every id of ``ids``) is persisted and counted
    (batch) or held on the driver (small), so writing and checking it later does not
    recompute the components.
    """
    if keep and plan.small:
        raise ValueError("the small plan keeps ids and scores only: keep needs the batch plan")
    scored = _score_on_driver(model, pairs, spec.calibration) if plan.small else None
    if scored is None:
        scored = plan.materialize(
            score_pairs(model, pairs, spec.calibration).select(S.ID_L, S.ID_R, S.SCORE, *keep)
        )
    grouped = group_scored(
        ids,
        scored,
        spec=spec,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
        plan=plan,
    )
    if plan.small:
        return scored, plan.materialize(grouped)
    grouped = grouped.persist(StorageLevel.MEMORY_AND_DISK)
    grouped.count()
    return scored, grouped


def group_scored(
    ids: DataFrame,
    scored: DataFrame,
    *,
    spec: MatchingSpec,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    plan: Plan = BATCH,
) -> DataFrame:
    """Scored pairs → ``id``, ``group_id``, ``matches`` for every id, per the spec.

    Connected components run eagerly here (one action per round); the returned
    frame's last step (the match lists) is lazy.
    """
    _mark("grouping:start")
    if spec.grouping_mode == "pairwise":
        grouped = pairwise_matches(
            ids,
            scored,
            threshold=spec.threshold,
            max_iterations=max_iterations,
            local_max_edges=local_max_edges,
            materialize=plan.materialize,
        )
    else:
        grouped = group_matches(
            ids,
            scored,
            threshold=spec.threshold,
            max_group_size=spec.max_group_size,
            max_iterations=max_iterations,
            local_max_edges=local_max_edges,
            materialize=plan.materialize,
        )
    _mark("grouping:end")
    return grouped
