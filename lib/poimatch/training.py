"""Training: labelled pairs, a place-wise validation split, distributed XGBoost, threshold.

* Labels come from ``point_of_interest``: a pair is positive when both rows share it.
* Validation split by place and area: every place is assigned to a fold by the
  area cell of its first row, so rows of one place never sit on both sides and a
  validation row keeps its real neighbourhood. Pairs across folds are dropped.
* The classifier is ``xgboost.spark.SparkXGBClassifier`` behind a VectorAssembler
  (nulls kept as missing values) with ``num_workers`` from the configuration.
* The threshold and the grouping mode (connected components or pairwise) are chosen
  on validation to maximize IoU, not fixed at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _cc
from xgboost.spark import SparkXGBClassifier

from poimatch import schema as S
from poimatch.config import ModelSettings

__all__ = [
    "FOLD",
    "TRAIN",
    "VALID",
    "ThresholdChoice",
    "assign_folds",
    "fit_classifier",
    "sweep_thresholds",
]

FOLD = "fold"
TRAIN, VALID = "train", "valid"
_FEATURES_VEC = "features"


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen decision threshold and grouping mode, with the curve behind it."""

    threshold: float
    mode: str
    iou: float
    curve: pd.DataFrame  # columns: threshold, iou_components, iou_pairwise


def assign_folds(pois: DataFrame, *, settings: ModelSettings) -> DataFrame:
    """``id``, ``fold``: whole places to train or valid, by the area cell of their first row."""
    first = Window.partitionBy(S.POI).orderBy(S.ID)
    anchor = pois.select(
        S.ID,
        S.POI,
        F.first(S.LATITUDE).over(first).alias("_alat"),
        F.first(S.LONGITUDE).over(first).alias("_alon"),
    )
    cell = F.concat_ws(
        ":",
        F.floor(F.col("_alat") / settings.split_cell_deg),
        F.floor(F.col("_alon") / settings.split_cell_deg),
        F.lit(settings.seed),
    )
    bucket = F.pmod(F.xxhash64(cell), F.lit(10_000)) / 10_000.0
    fold = F.when(bucket < settings.validation_fraction, F.lit(VALID)).otherwise(F.lit(TRAIN))
    return anchor.select(S.ID, fold.alias(FOLD))


def fit_classifier(
    train_pairs: DataFrame, *, features: tuple[str, ...], settings: ModelSettings
) -> PipelineModel:
    """Fit VectorAssembler + SparkXGBClassifier on labelled pairs (``label`` column)."""
    assembler = VectorAssembler(
        inputCols=list(features), outputCol=_FEATURES_VEC, handleInvalid="keep"
    )
    counts = {r[S.LABEL]: r["count"] for r in train_pairs.groupBy(S.LABEL).count().collect()}
    positives, negatives = counts.get(1, 0), counts.get(0, 0)
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"training pairs need both classes: {positives} positive, {negatives} negative"
        )
    # a barrier stage needs all its workers at once: never ask for more than the slots
    slots = max(1, train_pairs.sparkSession.sparkContext.defaultParallelism)
    xgb = SparkXGBClassifier(
        features_col=_FEATURES_VEC,
        label_col=S.LABEL,
        num_workers=min(settings.num_workers, slots),
        max_depth=settings.max_depth,
        n_estimators=settings.n_estimators,
        learning_rate=settings.learning_rate,
        subsample=settings.subsample,
        colsample_bytree=settings.colsample_bytree,
        tree_method="hist",
        eval_metric="logloss",
        random_state=settings.seed,
        missing=float("nan"),
        verbose=False,
    )
    return Pipeline(stages=[assembler, xgb]).fit(train_pairs)


def _iou_components(n: int, src: np.ndarray, dst: np.ndarray, poi_codes: np.ndarray) -> float:
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, comp = _cc(graph, directed=False)
    frame = pd.DataFrame({"c": comp, "t": poi_codes})
    c_size = frame.groupby("c")["t"].transform("size").to_numpy()
    t_size = frame.groupby("t")["c"].transform("size").to_numpy()
    inter = frame.groupby(["c", "t"])["c"].transform("size").to_numpy()
    return float(np.mean(inter / (c_size + t_size - inter)))


def _iou_pairwise(
    n: int, src: np.ndarray, dst: np.ndarray, label: np.ndarray, t_size: np.ndarray
) -> float:
    deg = np.bincount(np.concatenate([src, dst]), minlength=n)
    tp = np.bincount(np.concatenate([src[label == 1], dst[label == 1]]), minlength=n)
    inter = 1 + tp
    return float(np.mean(inter / (1 + deg + t_size - inter)))


def sweep_thresholds(
    rows: pd.DataFrame, pairs: pd.DataFrame, *, thresholds: np.ndarray | None = None
) -> ThresholdChoice:
    """Choose the threshold and grouping mode that maximize validation IoU.

    Args:
        rows: validation rows, columns ``id`` and ``point_of_interest``.
        pairs: scored validation pairs, columns ``id_l``, ``id_r``, ``score``, ``label``.
        thresholds: candidates (default 0.05 … 0.95 by 0.025).

    Returns:
        :class:`ThresholdChoice`; ties prefer connected components.
    """
    grid = thresholds if thresholds is not None else np.round(np.arange(0.05, 0.951, 0.025), 3)
    index = pd.Index(rows[S.ID].to_numpy())
    poi_codes = pd.factorize(rows[S.POI])[0]
    t_size = np.bincount(poi_codes)[poi_codes]
    src_all = index.get_indexer(pd.Index(pairs[S.ID_L]))
    dst_all = index.get_indexer(pd.Index(pairs[S.ID_R]))
    keep = (src_all >= 0) & (dst_all >= 0)
    src_all, dst_all = src_all[keep], dst_all[keep]
    score = pairs[S.SCORE].to_numpy()[keep]
    label = pairs[S.LABEL].to_numpy()[keep]
    n = len(index)
    records = []
    for t in grid:
        sel = score >= t
        records.append(
            {
                "threshold": float(t),
                "iou_components": _iou_components(n, src_all[sel], dst_all[sel], poi_codes),
                "iou_pairwise": _iou_pairwise(n, src_all[sel], dst_all[sel], label[sel], t_size),
            }
        )
    curve = pd.DataFrame.from_records(records)
    best_c = curve.loc[curve["iou_components"].idxmax()]
    best_p = curve.loc[curve["iou_pairwise"].idxmax()]
    if best_c["iou_components"] >= best_p["iou_pairwise"]:
        return ThresholdChoice(
            float(best_c["threshold"]), "components", float(best_c["iou_components"]), curve
        )
    return ThresholdChoice(
        float(best_p["threshold"]), "pairwise", float(best_p["iou_pairwise"]), curve
    )
