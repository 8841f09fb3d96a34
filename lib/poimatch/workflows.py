"""End-to-end verbs the jobs call: train, match, evaluate (one function each).

These orchestrate the named stages of :mod:`poimatch.pipeline`, decide what is cached,
and run the actions; the jobs around them only parse arguments and do I/O.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from poimatch import schema as S
from poimatch.config import BlockingSettings, Settings
from poimatch.evaluation import (
    candidate_report,
    iou,
    label_pairs,
)
from poimatch.grouping import LOCAL_MAX_EDGES
from poimatch.pipeline import (
    ALL_FEATURES,
    MatchingSpec,
    cached_candidates,
    cached_points,
    group_scored,
    score_and_group,
    score_pairs,
)
from poimatch.tracking import (
    assign_alias,
    configure_tracking,
    load_matcher,
    log_spark_model,
)
from poimatch.training import FOLD, TRAIN, VALID, assign_folds, fit_classifier, sweep_thresholds

__all__ = [
    "FitOutcome",
    "MatchResult",
    "TrainResult",
    "fit_matcher",
    "labelled_candidates",
    "match_pois",
    "match_with_model",
    "train_model",
]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run."""

    run_id: str
    model_uri: str
    alias: str
    metrics: dict[str, float]
    spec: MatchingSpec


@dataclass(frozen=True)
class MatchResult:
    """Output of a match run (``id``, ``group_id``, ``matches``) and its figures.

    ``scored`` holds every candidate pair with its score (materialized), for
    evaluation: the candidate ceiling and pairwise metrics of the promotion gate.
    """

    matches: DataFrame
    scored: DataFrame
    candidates: int
    per_row: float
    seconds: float


def _pair_metrics_pd(pairs: pd.DataFrame, threshold: float) -> dict[str, float]:
    y, s = pairs[S.LABEL].to_numpy(), pairs[S.SCORE].to_numpy()
    pred = s >= threshold
    tp = float(np.sum(pred & (y == 1)))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float((y == 1).sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = len(np.unique(y)) == 2
    return {
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f1": f1,
        "auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
    }


def _plots(
    model: Any, features: tuple[str, ...], pairs: pd.DataFrame, curve: pd.DataFrame, folder: Path
) -> None:
    booster = model.stages[-1].get_booster()
    gain = booster.get_score(importance_type="gain")
    names = {f"f{i}": name for i, name in enumerate(features)}
    imp = pd.Series({names.get(k, k): v for k, v in gain.items()}).sort_values()
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(imp))))
    imp.plot.barh(ax=ax)
    ax.set_title("Feature importance (gain)")
    fig.tight_layout()
    fig.savefig(folder / "feature_importance.png", dpi=110)
    plt.close(fig)
    if pairs[S.LABEL].nunique() == 2:
        p, r, _ = precision_recall_curve(pairs[S.LABEL], pairs[S.SCORE])
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(r, p)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Validation pairs: precision-recall")
        fig.tight_layout()
        fig.savefig(folder / "precision_recall.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["threshold"], curve["iou_components"], label="connected components")
    ax.plot(curve["threshold"], curve["iou_pairwise"], label="pairwise")
    ax.set_xlabel("threshold")
    ax.set_ylabel("validation IoU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "iou_vs_threshold.png", dpi=110)
    plt.close(fig)
    curve.to_csv(folder / "iou_vs_threshold.csv", index=False)


@dataclass(frozen=True)
class FitOutcome:
    """A fitted matcher with its spec and validation figures (before any logging)."""

    model: PipelineModel
    spec: MatchingSpec
    metrics: dict[str, float]
    valid_pairs: pd.DataFrame
    curve: pd.DataFrame


def labelled_candidates(labelled: DataFrame, *, settings: Settings) -> DataFrame:
    """Featured candidate pairs of labelled POIs with their ``label``, cached.

    The points behind them are materialized too (normalization is a Python UDF).
    """
    points = cached_points(labelled)
    featured = cached_candidates(points, settings=settings.blocking)
    return label_pairs(featured, labelled).localCheckpoint(eager=True)


def fit_matcher(labelled: DataFrame, pairs: DataFrame, *, settings: Settings) -> FitOutcome:
    """Split places into train/valid, fit XGBoost, choose threshold and grouping mode.

    Args:
        labelled: the labelled POIs behind ``pairs``.
        pairs: featured, labelled candidate pairs (cache them: they are read often).
        settings: the run's configuration.

    Returns:
        :class:`FitOutcome`; ``metrics`` holds the validation IoU of the real Spark
        grouping and the pairwise metrics at the chosen threshold.
    """
    folds = assign_folds(labelled, settings=settings.model)
    fold_l = folds.select(F.col(S.ID).alias(S.ID_L), F.col(FOLD).alias("_fl"))
    fold_r = folds.select(F.col(S.ID).alias(S.ID_R), F.col(FOLD).alias("_fr"))
    split = pairs.join(fold_l, on=S.ID_L, how="inner").join(fold_r, on=S.ID_R, how="inner")
    same_fold = F.col("_fl") == F.col("_fr")
    train_pairs = split.where(same_fold & (F.col("_fl") == TRAIN))
    valid_pairs = split.where(same_fold & (F.col("_fl") == VALID))
    features = ALL_FEATURES
    model = fit_classifier(train_pairs, features=features, settings=settings.model)

    valid_scored = score_pairs(model, valid_pairs).select(S.ID_L, S.ID_R, S.SCORE, S.LABEL)
    valid_scored = valid_scored.localCheckpoint(eager=True)
    valid_rows = labelled.join(folds.where(F.col(FOLD) == VALID), on=S.ID, how="left_semi")
    n_valid_pairs = valid_scored.count()
    sweep_pairs = valid_scored
    if n_valid_pairs > settings.model.max_sweep_pairs:
        sweep_pairs = sweep_pairs.sample(
            fraction=settings.model.max_sweep_pairs / n_valid_pairs, seed=settings.model.seed
        )
    pairs_pd = sweep_pairs.toPandas()
    rows_pd = valid_rows.select(S.ID, S.POI).toPandas()
    if rows_pd.empty or pairs_pd.empty:
        raise ValueError("validation fold is empty: lower model.split_cell_deg or add data")
    mode = settings.grouping.mode
    choice = sweep_thresholds(rows_pd, pairs_pd)
    if mode != "auto":
        column = "iou_components" if mode == "components" else "iou_pairwise"
        best = choice.curve.loc[choice.curve[column].idxmax()]
        threshold, chosen_mode = float(best["threshold"]), mode
    else:
        threshold, chosen_mode = choice.threshold, choice.mode
    spec = MatchingSpec(
        threshold=threshold,
        grouping_mode=chosen_mode,
        max_group_size=settings.grouping.max_group_size,
        features=features,
        blocking=settings.blocking.model_dump(mode="json"),
    )
    # The IoU the real Spark grouping reaches on the validation rows.
    grouped = group_scored(
        valid_rows.select(S.ID),
        valid_scored,
        spec=spec,
        max_iterations=settings.grouping.max_iterations,
        local_max_edges=settings.grouping.local_max_edges,
    )
    final = iou(grouped, valid_rows)
    metrics = {
        "valid_rows": float(final.rows),
        "valid_pairs": float(n_valid_pairs),
        "threshold": threshold,
        "iou": final.iou,
        "iou_sweep_best": choice.iou,
        **_pair_metrics_pd(pairs_pd, threshold),
    }
    return FitOutcome(model, spec, metrics, pairs_pd, choice.curve)


def train_model(
    pois: DataFrame,
    *,
    settings: Settings,
    data_versions: dict[str, str],
    run_name: str | None = None,
) -> TrainResult:
    """Train, choose the threshold, log everything to MLflow and register the model.

    Args:
        pois: typed POIs with ``point_of_interest``.
        settings: the run's configuration (logged in full).
        data_versions: input name → Delta version (or file fingerprint), logged.
        run_name: optional MLflow run name.

    Returns:
        :class:`TrainResult` with the registered model URI and its alias.
    """
    started = time.perf_counter()
    experiment_id = configure_tracking(settings.tracking)
    labelled = pois.where(F.col(S.POI).isNotNull())
    pairs = labelled_candidates(labelled, settings=settings)
    cand = candidate_report(pairs.select(S.ID_L, S.ID_R), labelled)
    fit = fit_matcher(labelled, pairs, settings=settings)
    metrics = {
        "candidates": float(cand.candidates),
        "candidates_per_row": cand.per_row,
        "candidate_pair_recall": cand.pair_recall,
        "iou_ceiling": cand.iou_ceiling,
        "rows": float(cand.rows),
        **fit.metrics,
    }
    features = fit.spec.features
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(settings.flat())
        mlflow.log_params({f"data.{k}": v for k, v in data_versions.items()})
        mlflow.log_param("grouping.chosen_mode", fit.spec.grouping_mode)
        mlflow.set_tags({"poimatch.env": settings.env, "poimatch.stage": "train"})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _plots(fit.model, features, fit.valid_pairs, fit.curve, folder)
            (folder / "matching_spec.json").write_text(json.dumps(fit.spec.to_dict(), indent=2))
            (folder / "candidate_report.json").write_text(json.dumps(asdict(cand), indent=2))
            mlflow.log_artifacts(tmp, artifact_path="evaluation")
        example = pairs.select(*features).limit(5).toPandas()
        model_uri, version = log_spark_model(
            fit.model, registered_name=settings.model.name, spec=fit.spec, input_example=example
        )
        metrics["train_seconds"] = time.perf_counter() - started
        mlflow.log_metrics(metrics)
        alias = assign_alias(
            settings.model.name, version, research=settings.lifecycle.role == "research"
        )
        mlflow.set_tag("poimatch.registered_alias", alias)
        run_id = run.info.run_id
    pairs.unpersist()
    return TrainResult(run_id, model_uri, alias, metrics, fit.spec)


def match_pois(pois: DataFrame, *, model_uri: str, settings: Settings) -> MatchResult:
    """Block, score with a registered model, and group: every id gets one row.

    Returns:
        :class:`MatchResult`; its ``matches`` frame is cached, ready to validate
        and write.
    """
    configure_tracking(settings.tracking)
    model, spec, _ = load_matcher(model_uri)
    return match_with_model(
        pois,
        model=model,
        spec=spec,
        max_iterations=settings.grouping.max_iterations,
        local_max_edges=settings.grouping.local_max_edges,
    )


def match_with_model(
    pois: DataFrame,
    *,
    model: PipelineModel,
    spec: MatchingSpec,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
) -> MatchResult:
    """:func:`match_pois` with a model already loaded (the REST service keeps one warm).

    The blocking settings come from the model's spec, so a model always sees the
    candidates it was trained on.
    """
    started = time.perf_counter()
    blocking = BlockingSettings.model_validate(spec.blocking)
    points = cached_points(pois)
    pairs = cached_candidates(points, settings=blocking)
    n_pairs = pairs.count()
    n_rows = points.count()
    scored, grouped = score_and_group(
        points.select(S.ID),
        pairs,
        model=model,
        spec=spec,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
    )
    return MatchResult(
        matches=grouped,
        scored=scored,
        candidates=n_pairs,
        per_row=2.0 * n_pairs / max(n_rows, 1),
        seconds=time.perf_counter() - started,
    )
