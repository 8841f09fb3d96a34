"""Stages: featured pairs → scores (the model's booster, calibrated) → groups."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import pandas_udf
from xgboost import Booster
from xgboost.spark import SparkXGBClassifierModel

from poimatch import schema as S
from poimatch.columns import cached_column, select_built
from poimatch.scorer import Calibration, predict_scores
from poimatch.stages.grouping import LOCAL_MAX_EDGES, group_matches, pairwise_matches
from poimatch.stages.plan import BATCH, Plan, held_frame, mark_stage
from poimatch.stages.spec import MatchingSpec

__all__ = [
    "BoosterModel",
    "MatchModel",
    "booster_parts",
    "booster_score",
    "calibrate_scores",
    "group_scored",
    "score_and_group",
    "score_pairs",
]

_PROBABILITY = "probability"


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


@dataclass(frozen=True, eq=False)
class BoosterModel:
    """A registered matcher's scorer without Spark: the XGBoost booster (the model's
    ``mlflow.xgboost`` artifact) and its feature columns, in the order it reads them.

    What every match path needs of a model (:func:`booster_parts`), loaded in a tenth of
    a second with no Spark job, where the fitted Spark pipeline it was trained as took
    seconds and four Spark jobs to load. Compared by identity (it keys per-model caches).
    """

    features: tuple[str, ...]
    booster: Booster


#: a model matching can score with: the fitted Spark pipeline (a training's result) or
#: the booster a registered version carries (what ``tracking.load_matcher`` gives)
MatchModel: TypeAlias = PipelineModel | BoosterModel


def booster_parts(model: MatchModel) -> tuple[list[str], Booster] | None:
    """The feature columns and the booster of a :class:`BoosterModel` or of an
    assembler + XGBoost pipeline; ``None`` for any other pipeline."""
    if isinstance(model, BoosterModel):
        return list(model.features), model.booster
    stages = model.stages
    if (
        len(stages) != 2
        or not isinstance(stages[0], VectorAssembler)
        or not isinstance(stages[1], SparkXGBClassifierModel)
        or stages[0].getHandleInvalid() != "keep"
    ):
        return None
    return list(stages[0].getInputCols()), stages[1].get_booster()


# the driver's copy of each loaded model's booster (the small plan predicts on the driver)
_driver_boosters: weakref.WeakKeyDictionary[MatchModel, Booster] = weakref.WeakKeyDictionary()


@cached_column
def _score_inputs(columns: tuple[str, ...]) -> list[Column]:
    """The pair ids and ``columns`` as doubles: what the driver-side booster reads."""
    return [
        F.col(S.ID_L),
        F.col(S.ID_R),
        *[F.col(c).cast(T.DoubleType()).alias(c) for c in columns],
    ]


def _score_on_driver(
    model: MatchModel, pairs: DataFrame, calibration: Calibration | None
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
    columns, model_booster = parts
    booster = _driver_boosters.get(model)
    if booster is None:  # a copy: one thread, whatever the model's own booster was set to
        booster = _load_booster(bytes(model_booster.save_raw("ubj")))
        _driver_boosters[model] = booster
    frame = select_built(pairs, _score_inputs, tuple(columns)).toPandas()
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
    # grouping reads it on the driver
    return held_frame(pairs.sparkSession, out, schema, joined=False)


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


def booster_score(model: MatchModel, calibration: Calibration | None = None) -> Column | None:
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
    names, booster = parts
    columns = [F.col(c).cast(T.DoubleType()) for c in names]
    raw = bytes(booster.save_raw("ubj"))
    udf = _booster_udf(raw, calibration)
    result: Column = udf(F.struct(*columns))
    return result


def score_pairs(
    model: MatchModel, pairs: DataFrame, calibration: Calibration | None = None
) -> DataFrame:
    """Add ``score`` (match probability, calibrated when given) to featured pairs.

    An assembler + XGBoost pipeline is scored from the feature columns directly
    (:func:`booster_score`); any other pipeline model through ``model.transform``.
    """
    mark_stage("scoring:call")
    fast = booster_score(model, calibration)
    if fast is not None:
        return pairs.withColumn(S.SCORE, fast)
    # a BoosterModel always has its parts
    assert isinstance(model, PipelineModel)  # nosec B101
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
    model: MatchModel,
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
    mark_stage("grouping:start")
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
    mark_stage("grouping:end")
    return grouped
