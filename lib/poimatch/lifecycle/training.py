"""Training: region folds, monotone distributed XGBoost, calibration, threshold.

* Labels come from ``point_of_interest``: a pair is positive when both rows share it.
* Folds by region: places are grouped into regions (occupied cells of
  ``region_cell_deg`` that touch one another: a city and its outskirts) and the
  regions into ``folds`` folds of about equal size, so every out-of-fold score is
  the score of a place in a region the model never saw. Rows of one place never sit
  in two folds; pairs across folds are left out of the fold models.
* The classifier is ``xgboost.spark.SparkXGBClassifier`` behind a VectorAssembler
  (nulls kept as missing values) with ``num_workers`` from the configuration and
  monotone constraints on the similarity features (:data:`poimatch.stages.features.MONOTONE`).
* Out-of-fold scores are calibrated (isotonic regression: monotone, so it keeps the
  constraints) and the threshold and grouping mode (connected components or
  pairwise) are chosen on them to maximize the mean IoU over the folds, so one
  threshold serves every region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _cc
from sklearn.isotonic import IsotonicRegression
from xgboost.spark import SparkXGBClassifier

from poimatch import schema as S
from poimatch.config import ModelSettings
from poimatch.scorer import Calibration
from poimatch.stages.comparisons import Comparison
from poimatch.stages.features import MONOTONE

__all__ = [
    "FOLD",
    "Calibration",
    "ThresholdChoice",
    "assign_region_folds",
    "fit_calibration",
    "fit_classifier",
    "monotone_constraints",
    "sweep_thresholds",
]

FOLD = "fold"
_FEATURES_VEC = "features"
_CY, _CX = "_ry", "_rx"


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen decision threshold and grouping mode, with the curve behind it."""

    threshold: float
    mode: str
    iou: float
    curve: pd.DataFrame  # columns: threshold, iou_components, iou_pairwise


def _anchors(pois: DataFrame) -> DataFrame:
    """``id``, ``_alat``, ``_alon``: every row at its place's first row (by id)."""
    first = Window.partitionBy(S.POI).orderBy(S.ID)
    return pois.select(
        S.ID,
        S.POI,
        F.first(S.LATITUDE).over(first).alias("_alat"),
        F.first(S.LONGITUDE).over(first).alias("_alon"),
    )


def _regions(cells: pd.DataFrame) -> np.ndarray:
    """Region label of each occupied cell: cells touching (8-neighbourhood) share one."""
    pairs = zip(cells[_CY], cells[_CX], strict=True)
    index = {(int(y), int(x)): i for i, (y, x) in enumerate(pairs)}
    src, dst = [], []
    for (y, x), i in index.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                j = index.get((y + dy, x + dx))
                if j is not None and j != i:
                    src.append(i)
                    dst.append(j)
    n = len(index)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    return np.asarray(_cc(graph, directed=False)[1])


def _balance(sizes: pd.Series, folds: int) -> dict[int, int]:
    """Regions (index) to folds, largest first into the lightest fold."""
    load = [0] * folds
    out: dict[int, int] = {}
    ordered = sizes.sort_values(ascending=False, kind="stable")
    for region, size in zip(ordered.index.to_numpy(), ordered.to_numpy(), strict=True):
        fold = int(np.argmin(load))
        out[int(region)] = fold
        load[fold] += int(size)
    return out


def assign_region_folds(pois: DataFrame, *, settings: ModelSettings) -> DataFrame:
    """``id``, ``fold`` (0 .. folds-1): whole regions to folds, about equal in places.

    A region is a set of touching occupied cells of ``region_cell_deg`` (at a place's
    first row). With fewer regions than folds (one city), the folds are cells of
    ``split_cell_deg`` hashed instead: still whole places, still areas, not rows.
    Runs one small action (the occupied cells go to the driver).
    """
    anchor = _anchors(pois)
    deg = settings.region_cell_deg
    cell_y = F.floor(F.col("_alat") / deg).cast(T.LongType())
    cell_x = F.floor(F.col("_alon") / deg).cast(T.LongType())
    celled = anchor.withColumn(_CY, cell_y).withColumn(_CX, cell_x)
    cells = (
        celled.groupBy(_CY, _CX)
        .agg(F.countDistinct(S.POI).alias("_places"))
        .orderBy(_CY, _CX)
        .toPandas()
    )
    region = _regions(cells) if len(cells) else np.zeros(0, dtype=np.int64)
    n_regions = int(region.max()) + 1 if len(region) else 0
    if n_regions >= settings.folds:
        cells["_region"] = region
        to_fold = _balance(cells.groupby("_region")["_places"].sum(), settings.folds)
        cells[FOLD] = cells["_region"].map(to_fold).astype("int32")
        mapping = pois.sparkSession.createDataFrame(
            cells[[_CY, _CX, FOLD]],
            schema=f"{_CY} long, {_CX} long, {FOLD} int",
        )
        return celled.join(F.broadcast(mapping), on=[_CY, _CX], how="inner").select(S.ID, FOLD)
    fine = F.concat_ws(
        ":",
        F.floor(F.col("_alat") / settings.split_cell_deg),
        F.floor(F.col("_alon") / settings.split_cell_deg),
        F.lit(settings.seed),
    )
    fold = F.pmod(F.xxhash64(fine), F.lit(settings.folds)).cast(T.IntegerType())
    return anchor.select(S.ID, fold.alias(FOLD))


def monotone_constraints(features: tuple[str, ...], added: tuple[Comparison, ...] = ()) -> str:
    """XGBoost's ``monotone_constraints`` string for ``features``: each built-in's
    direction (``MONOTONE``), each added comparison's own."""
    directions = {**MONOTONE, **{c.name: c.monotone for c in added}}
    return "(" + ",".join(str(directions.get(f, 0)) for f in features) + ")"


def fit_classifier(
    train_pairs: DataFrame,
    *,
    features: tuple[str, ...],
    settings: ModelSettings,
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
    extra: dict[str, Any] = {}
    if settings.monotone:
        extra["monotone_constraints"] = monotone_constraints(features, settings.comparisons)
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
        **extra,
    )
    return Pipeline(stages=[assembler, xgb]).fit(train_pairs)


def fit_calibration(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """Isotonic regression of labels on out-of-fold scores, as a :class:`Calibration`."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(scores, labels)
    return Calibration(
        tuple(float(v) for v in iso.X_thresholds_), tuple(float(v) for v in iso.y_thresholds_)
    )


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


def _curve(rows: pd.DataFrame, pairs: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
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
    return pd.DataFrame.from_records(records)


def sweep_thresholds(
    rows: pd.DataFrame, pairs: pd.DataFrame, *, thresholds: np.ndarray | None = None
) -> ThresholdChoice:
    """Choose the threshold and grouping mode that maximize IoU (mean over folds).

    Args:
        rows: rows, columns ``id`` and ``point_of_interest`` and optionally ``fold``:
            then the IoU curve is computed per fold and the folds' curves averaged, so
            the threshold is the one that serves every fold (region) best on average.
        pairs: scored pairs, columns ``id_l``, ``id_r``, ``score``, ``label``.
        thresholds: candidates (default 0.05 … 0.95 by 0.025).

    Returns:
        :class:`ThresholdChoice`; ties prefer connected components, then the lower
        threshold.
    """
    grid = thresholds if thresholds is not None else np.round(np.arange(0.05, 0.951, 0.025), 3)
    if FOLD in rows.columns:
        curves = [_curve(part, pairs, grid) for _, part in rows.groupby(FOLD, sort=True)]
        curve = pd.concat(curves).groupby("threshold", as_index=False).mean()
    else:
        curve = _curve(rows, pairs, grid)
    best_c = curve.loc[curve["iou_components"].idxmax()]
    best_p = curve.loc[curve["iou_pairwise"].idxmax()]
    if best_c["iou_components"] >= best_p["iou_pairwise"]:
        return ThresholdChoice(
            float(best_c["threshold"]), "components", float(best_c["iou_components"]), curve
        )
    return ThresholdChoice(
        float(best_p["threshold"]), "pairwise", float(best_p["iou_pairwise"]), curve
    )
