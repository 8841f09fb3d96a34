"""End-to-end verbs the jobs call: train, match, evaluate (one function each).

These orchestrate the named stages of :mod:`poimatch.stages`, decide what is cached,
and run the actions; the jobs around them only parse arguments and do I/O.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial, reduce
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.spark_dataset import from_spark
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from poimatch import schema as S
from poimatch.config import BlockingSettings, Settings
from poimatch.io.contracts import data_docs_index
from poimatch.io.tables import is_table_name, read_delta
from poimatch.lifecycle.evaluation import candidate_report, iou, label_pairs
from poimatch.lifecycle.tracking import assign_alias, configure_tracking, load_matcher, log_matcher
from poimatch.lifecycle.training import (
    FOLD,
    assign_region_folds,
    fit_calibration,
    fit_classifier,
    sweep_thresholds,
)
from poimatch.stages.blocking import FINE_LEVELS, candidate_pairs
from poimatch.stages.candidates import (
    cached_candidates,
    cached_points,
    featured_pairs,
    prepared_candidates,
    prepared_points,
)
from poimatch.stages.comparisons import definitions
from poimatch.stages.grouping import LOCAL_MAX_EDGES
from poimatch.stages.namestats import NameStats, add_name_stats, count_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import (
    BATCH,
    COMPILED_SQL_CONF,
    Plan,
    held_select,
    row_count,
    small_plan_conf,
)
from poimatch.stages.scoring import (
    MatchModel,
    calibrate_scores,
    group_scored,
    score_and_group,
    score_pairs,
)
from poimatch.stages.spec import ALL_FEATURES, MatchingSpec, check_features

_log = logging.getLogger(__name__)

__all__ = [
    "FitOutcome",
    "MatchResult",
    "TrainResult",
    "TrainingSet",
    "fit_matcher",
    "training_set",
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

    #: the metrics a training command prints, in this order
    PRINTED: ClassVar[tuple[str, ...]] = (
        "candidates_per_row",
        "candidate_pair_recall",
        "iou_ceiling",
        "pair_precision",
        "pair_recall",
        "pair_f1",
        "auc",
        "threshold",
        "iou",
    )

    def lines(self) -> list[str]:
        """Printable figures: the metrics, the grouping and where the model went."""
        return [
            *(f"{key}={self.metrics[key]:.4f}" for key in self.PRINTED),
            f"grouping={self.spec.grouping_mode} alias={self.alias} run_id={self.run_id}",
            f"model_uri={self.model_uri}",
        ]


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
    plan: str = "batch"
    points: DataFrame | None = None  # the normalized points (materialized)
    rows: int = 0
    threshold: float | None = None  # the model's threshold: pairs at or above it are edges


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
    # imported here: only a training draws (0.5 s that every match job and the service
    # paid at import)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    """A fitted matcher with its spec and out-of-fold figures (before any logging)."""

    model: PipelineModel
    spec: MatchingSpec
    metrics: dict[str, float]
    valid_pairs: pd.DataFrame
    curve: pd.DataFrame


@dataclass(frozen=True)
class TrainingSet:
    """Labelled rows, their featured candidate pairs and the corpus's name statistics.

    ``pairs`` are the distinct candidate pairs of every training table blocked alone
    at every rate of ``model.sample_rates`` (a thinned table reaches farther for its
    neighbours, so the model sees sparse tables too), featured with name statistics
    counted over the other region folds (:func:`_cross_fitted_stats`; ``stats``, over
    every fold, is what the model keeps) and labelled. With ``label_scope`` ``cross_source``
    (labels made only for pairs across sources, like Geo-ER's OSM against
    Foursquare) the tables are blocked as a link: a pair of two rows of one source
    was never labelled, so it is never taught as a non-match.
    """

    rows: DataFrame
    pairs: DataFrame
    candidates: DataFrame  # id_l, id_r: the candidate pairs of the whole tables (rate 1)
    folds: DataFrame  # id, fold: the region folds (training.assign_region_folds)
    stats: NameStats
    label_scope: str
    tables: int


_TABLE = "_table"
_FULL = "_full_table"


def _sampled(points: DataFrame, rate: float, seed: int) -> DataFrame:
    """The rows of a ``rate`` share of the places (whole places, by a hash of the place)."""
    if rate >= 1.0:
        return points
    u = F.pmod(F.xxhash64(F.col(S.POI), F.lit(seed), F.lit(rate)), F.lit(1_000_000)) / 1e6
    return points.where(u < rate)


def _label_scope(rows: DataFrame, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if S.SOURCE not in rows.columns:
        return "all"
    sources = rows.where(F.col(S.SOURCE).isNotNull()).select(S.SOURCE).distinct().limit(2)
    return "cross_source" if len(sources.collect()) >= 2 else "all"


def training_set(
    tables: DataFrame | Sequence[DataFrame], *, settings: Settings, plan: Plan | None = None
) -> TrainingSet:
    """Build the :class:`TrainingSet` of one or more labelled tables (materialized).

    Args:
        tables: typed POIs with ``point_of_interest`` (rows without it are ignored);
            several tables are blocked apart (no pair across tables), ids must be
            unique over all of them.
        settings: the run's configuration (``blocking`` and ``model``).
        plan: how to block; by default chosen by the labelled rows' count
            (``matching.small_max_rows``, as for a match run). The small plan blocks
            on the coarse grid alone (``fine_levels=0``: the same pairs from a far
            smaller Spark plan; 3,000 rows: 44 s -> 13 s).
    """
    frames = [tables] if isinstance(tables, DataFrame) else list(tables)
    if not frames:
        raise ValueError("training needs at least one labelled table")
    tagged = []
    for i, frame in enumerate(frames):
        table = frame.where(F.col(S.POI).isNotNull()).withColumn(_TABLE, F.lit(i))
        if S.SOURCE not in table.columns:
            table = table.withColumn(S.SOURCE, F.lit(None).cast("string"))
        tagged.append(table)
    labelled = reduce(DataFrame.unionByName, tagged)
    dupes = labelled.groupBy(S.ID).count().where(F.col("count") > 1).limit(3).collect()
    if dupes:
        raise ValueError(f"training ids must be unique over all tables: {[r[S.ID] for r in dupes]}")
    model = settings.model
    scope = _label_scope(labelled, model.label_scope)
    normalized = labelled.transform(add_normalized_columns).localCheckpoint(eager=True)
    if plan is None:
        plan = Plan.for_rows(normalized.count(), settings.matching.small_max_rows)
    fine_levels = 0 if plan.small else FINE_LEVELS
    folds = assign_region_folds(labelled, settings=model).localCheckpoint(eager=True)
    stats = count_name_stats(normalized, max_names=model.name_stats_max)
    points = _cross_fitted_stats(normalized, folds, settings=settings)
    # labels across sources only: block as a link (never two rows of one source)
    passes = [
        candidate_pairs(
            _sampled(points.where(F.col(_TABLE) == i), rate, model.seed),
            settings=settings.blocking,
            link_only=scope == "cross_source",
            fine_levels=fine_levels,
        ).withColumn(_FULL, F.lit(rate >= 1.0))
        for i in range(len(frames))
        for rate in model.sample_rates
    ]
    _log.info(
        "training set: %d tables normalized, name statistics counted (%s plan)",
        len(frames),
        plan.name,
    )
    union = reduce(DataFrame.unionByName, passes)
    found = union.select(S.ID_L, S.ID_R, _FULL, F.explode(F.split(S.PASS, ",")).alias(S.PASS))
    pairs = (
        found.groupBy(S.ID_L, S.ID_R)
        .agg(
            F.concat_ws(",", F.array_sort(F.collect_set(S.PASS))).alias(S.PASS),
            F.max(_FULL).alias(_FULL),
        )
        .localCheckpoint(eager=True)
    )
    _log.info("training set: blocked at rates %s", model.sample_rates)
    featured = featured_pairs(pairs.drop(_FULL), points, added=settings.model.comparisons)
    return TrainingSet(
        rows=labelled.drop(_TABLE),
        pairs=label_pairs(featured, labelled).localCheckpoint(eager=True),
        candidates=pairs.where(F.col(_FULL)).select(S.ID_L, S.ID_R),
        folds=folds,
        stats=stats,
        label_scope=scope,
        tables=len(frames),
    )


def _cross_fitted_stats(
    normalized: DataFrame, folds: DataFrame, *, settings: Settings
) -> DataFrame:
    """Each training row with name statistics counted over the *other* region folds.

    At match time a row's statistics come from a corpus that does not hold it, its
    place or its neighbours; counted over the training rows themselves they would
    leak the label (two rows of one name are two places exactly when the name counts
    twice). So every fold reads the statistics of the others, as a new city reads
    the whole corpus's.
    """
    with_fold = normalized.join(folds, on=S.ID, how="inner")
    parts = []
    for fold in range(settings.model.folds):
        others = count_name_stats(
            with_fold.where(F.col(FOLD) != fold), max_names=settings.model.name_stats_max
        )
        parts.append(add_name_stats(with_fold.where(F.col(FOLD) == fold), others).drop(FOLD))
    return reduce(DataFrame.unionByName, parts).localCheckpoint(eager=True)


def _features(settings: Settings) -> tuple[str, ...]:
    added = settings.model.comparisons
    default = (*ALL_FEATURES, *(c.name for c in added))
    return check_features(settings.model.features or default, added)


def _with_folds(pairs: DataFrame, folds: DataFrame) -> DataFrame:
    """Pairs whose two rows lie in one fold, with that ``fold``."""
    fold_l = folds.select(F.col(S.ID).alias(S.ID_L), F.col(FOLD).alias("_fl"))
    fold_r = folds.select(F.col(S.ID).alias(S.ID_R), F.col(FOLD).alias(FOLD))
    return (
        pairs.join(fold_l, on=S.ID_L, how="inner")
        .join(fold_r, on=S.ID_R, how="inner")
        .where(F.col("_fl") == F.col(FOLD))
        .drop("_fl")
    )


def fit_matcher(data: TrainingSet, *, settings: Settings) -> FitOutcome:
    """Fit XGBoost, calibrate it and choose threshold and grouping mode out of fold.

    The places are split into ``model.folds`` region folds; a model fitted on the
    other folds scores each fold, so every pair gets a score from a model that never
    saw its region. Those out-of-fold scores fit the calibration and choose the
    threshold and grouping mode (mean IoU over the folds); the final model is fitted
    on every pair.

    Returns:
        :class:`FitOutcome`; ``metrics`` holds the out-of-fold IoU of the real grouping
        (mean over folds and per fold) and pairwise metrics at the chosen threshold.
    """
    model_settings = settings.model
    features = _features(settings)
    folds = data.folds
    split = _with_folds(data.pairs, folds).select(S.ID_L, S.ID_R, S.LABEL, FOLD, *features)
    split = split.localCheckpoint(eager=True)
    oof_parts = []
    for fold in range(model_settings.folds):
        held = split.where(F.col(FOLD) == fold)
        fold_model = fit_classifier(
            split.where(F.col(FOLD) != fold), features=features, settings=model_settings
        )
        oof_parts.append(
            score_pairs(fold_model, held).select(S.ID_L, S.ID_R, S.SCORE, S.LABEL, FOLD)
        )
    oof = reduce(DataFrame.unionByName, oof_parts).localCheckpoint(eager=True)
    _log.info("fit: %d fold models scored out of fold", model_settings.folds)
    n_oof = oof.count()
    sweep_source = oof
    if n_oof > model_settings.max_sweep_pairs:
        sweep_source = oof.sample(
            fraction=model_settings.max_sweep_pairs / n_oof, seed=model_settings.seed
        )
    pairs_pd = sweep_source.toPandas()
    rows_pd = data.rows.select(S.ID, S.POI).join(folds, on=S.ID, how="inner").toPandas()
    if rows_pd.empty or pairs_pd.empty:
        raise ValueError("no out-of-fold pairs: add data or lower model.folds")
    calibration = None
    raw = pairs_pd[S.SCORE].to_numpy(dtype=np.float64)
    if model_settings.calibration == "isotonic":
        calibration = fit_calibration(raw, pairs_pd[S.LABEL].to_numpy(dtype=np.float64))
        pairs_pd[S.SCORE] = calibration.apply(raw)
    choice = sweep_thresholds(rows_pd, pairs_pd)
    mode = settings.grouping.mode
    if mode != "auto":
        column = "iou_components" if mode == "components" else "iou_pairwise"
        best = choice.curve.loc[choice.curve[column].idxmax()]
        threshold, chosen_mode = float(best["threshold"]), mode
    else:
        threshold, chosen_mode = choice.threshold, choice.mode
    final = fit_classifier(data.pairs, features=features, settings=model_settings)
    _log.info("fit: final model fitted (threshold %.3f, %s)", threshold, chosen_mode)
    spec = MatchingSpec(
        threshold=threshold,
        grouping_mode=chosen_mode,
        max_group_size=settings.grouping.max_group_size,
        features=features,
        blocking=settings.blocking.model_dump(mode="json"),
        calibration=calibration,
        comparisons=definitions(features, model_settings.comparisons),
        training={
            "label_scope": data.label_scope,
            "sample_rates": list(model_settings.sample_rates),
            "folds": model_settings.folds,
            "tables": data.tables,
            "monotone": model_settings.monotone,
            "name_stats_places": data.stats.places,
        },
        name_stats=data.stats,
    )
    # The IoU the real grouping reaches on each fold's rows, from out-of-fold scores.
    calibrated = calibrate_scores(oof, calibration).localCheckpoint(eager=True)
    per_fold: dict[str, float] = {}
    for fold in range(model_settings.folds):
        fold_rows = data.rows.join(folds.where(F.col(FOLD) == fold), on=S.ID, how="left_semi")
        grouped = group_scored(
            fold_rows.select(S.ID),
            calibrated.where(F.col(FOLD) == fold),
            spec=spec,
            max_iterations=settings.grouping.max_iterations,
            local_max_edges=settings.grouping.local_max_edges,
        )
        per_fold[f"iou_fold{fold}"] = iou(grouped, fold_rows).iou
    metrics = {
        "oof_pairs": float(n_oof),
        "threshold": threshold,
        "iou": float(np.mean(list(per_fold.values()))),
        **per_fold,
        "iou_sweep_best": choice.iou,
        "label_scope_cross_source": float(data.label_scope == "cross_source"),
        **_pair_metrics_pd(pairs_pd, threshold),
    }
    return FitOutcome(final, spec, metrics, pairs_pd, choice.curve)


_DELTA_FINGERPRINT = re.compile(r"^delta:(?P<path>.+)@v(?P<version>\d+)$")


def delta_dataset(spark: SparkSession, name: str, fingerprint: str) -> Any | None:
    """An MLflow dataset (``mlflow.data.from_spark``: Delta source, path and version,
    schema, targets) for a ``delta:<path>@v<N>`` fingerprint of
    :func:`poimatch.io.tables.input_fingerprint`; ``None`` for a file (its fingerprint stays a
    run parameter)."""
    found = _DELTA_FINGERPRINT.match(fingerprint)
    if found is None:
        return None
    path, version = found["path"], found["version"]
    frame = read_delta(spark, path, version=int(version))
    targets = S.POI if S.POI in frame.columns else None
    if is_table_name(path):  # a catalog table: MLflow records its name and version
        return from_spark(frame, table_name=path, version=version, name=name, targets=targets)
    return from_spark(frame, path=path, version=version, name=name, targets=targets)


def _log_data_docs(settings: Settings) -> None:
    """Link the storage root's great_expectations Data Docs (the ingest and match
    contract results) from the active run: a ``poimatch.data_docs`` tag with the site's
    front page, and a copy of the site as the run's ``data_docs`` artifacts."""
    project = settings.storage.validations_path()
    if project is None:
        return
    index = data_docs_index(project)
    if not index.is_file():
        return
    mlflow.set_tag("poimatch.data_docs", index.resolve().as_uri())
    mlflow.log_artifacts(str(index.parent), artifact_path="data_docs")


def train_model(
    pois: DataFrame | Sequence[DataFrame],
    *,
    settings: Settings,
    data_versions: dict[str, str],
    run_name: str | None = None,
) -> TrainResult:
    """Train, choose the threshold, log everything to MLflow and register the model.

    Args:
        pois: typed POIs with ``point_of_interest``, or several such tables (each
            blocked alone, see :func:`training_set`).
        settings: the run's configuration (logged in full).
        data_versions: input name → Delta version (or file fingerprint), logged.
        run_name: optional MLflow run name.

    Returns:
        :class:`TrainResult` with the registered model URI and its alias.
    """
    started = time.perf_counter()
    experiment_id = configure_tracking(settings.tracking)
    frames = [pois] if isinstance(pois, DataFrame) else list(pois)
    if not frames:
        raise ValueError("training needs at least one labelled table")
    spark = frames[0].sparkSession
    labelled = sum(frame.where(F.col(S.POI).isNotNull()).count() for frame in frames)
    plan = Plan.for_rows(labelled, settings.matching.small_max_rows)
    # a small training set runs with the small plan's SQL settings, as a small match
    # run does (3,000 rows: the training set in 8 s instead of 44 s)
    with small_plan_conf(spark, enabled=plan.small):
        data = training_set(frames, settings=settings, plan=plan)
        cand = candidate_report(data.candidates, data.rows)
        fit = fit_matcher(data, settings=settings)
    metrics = {
        "candidates": float(cand.candidates),
        "candidates_per_row": cand.per_row,
        "candidate_pair_recall": cand.pair_recall,
        "iou_ceiling": cand.iou_ceiling,
        "rows": float(cand.rows),
        "training_pairs": float(data.pairs.count()),
        **fit.metrics,
    }
    features = fit.spec.features
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(settings.flat())
        mlflow.log_params({f"data.{k}": v for k, v in data_versions.items()})
        for name, fingerprint in data_versions.items():
            dataset = delta_dataset(spark, name, fingerprint)
            if dataset is not None:
                mlflow.log_input(dataset, context="training")
        mlflow.log_param("grouping.chosen_mode", fit.spec.grouping_mode)
        mlflow.log_param("model.chosen_label_scope", data.label_scope)
        mlflow.log_param("training.plan", plan.name)
        mlflow.set_tags({"poimatch.env": settings.env, "poimatch.stage": "train"})
        _log_data_docs(settings)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _plots(fit.model, features, fit.valid_pairs, fit.curve, folder)
            (folder / "matching_spec.json").write_text(json.dumps(fit.spec.to_dict(), indent=2))
            (folder / "candidate_report.json").write_text(json.dumps(asdict(cand), indent=2))
            mlflow.log_artifacts(tmp, artifact_path="evaluation")
        example = data.pairs.select(*features).limit(5).toPandas()
        model_uri, version = log_matcher(
            fit.model, registered_name=settings.model.name, spec=fit.spec, input_example=example
        )
        metrics["train_seconds"] = time.perf_counter() - started
        mlflow.log_metrics(metrics)
        alias = assign_alias(
            settings.model.name, version, research=settings.lifecycle.role == "research"
        )
        mlflow.set_tag("poimatch.registered_alias", alias)
        run_id = run.info.run_id
    return TrainResult(run_id, model_uri, alias, metrics, fit.spec)


def match_pois(
    pois: DataFrame,
    *,
    model_uri: str,
    settings: Settings,
    keep_pair_features: bool = False,
    plan: Plan = BATCH,
) -> MatchResult:
    """Block, score with a registered model, and group: every id gets one row.

    ``keep_pair_features``: the result's ``scored`` pairs also hold ``block_pass`` and the
    model's features (for a scored-pairs table; batch plan). ``plan``: how the stages run
    (:meth:`poimatch.stages.plan.Plan.for_rows` chooses by size); the output is the same.

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
        link_only=settings.matching.link_only,
        broadcast_max_rows=settings.matching.broadcast_max_rows,
        keep_pair_features=keep_pair_features,
        plan=plan,
        # the small plan's queries prepared once per loaded version (the service's): a
        # process matching small tables repeatedly with one version plans them once
        reuse_plan=plan.small,
    )


def match_with_model(
    pois: DataFrame,
    *,
    model: MatchModel,
    spec: MatchingSpec,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    link_only: bool = False,
    plan: Plan = BATCH,
    broadcast_max_rows: int = 5_000_000,
    keep_pair_features: bool = False,
    reuse_plan: bool = False,
    normalized: bool = False,
    compiled_pairs: bool = False,
) -> MatchResult:
    """:func:`match_pois` with a model already loaded (the REST service keeps one warm).

    The blocking settings come from the model's spec, so a model always sees the
    candidates it was trained on. ``link_only``: pairs across sources only (see
    :func:`poimatch.stages.blocking.candidate_pairs`). ``plan``: how the stages run
    (:class:`poimatch.stages.plan.Plan`); the output is the same either way.
    ``broadcast_max_rows``: above this many rows, blocking gathers nothing table-sized
    on the driver (``matching.broadcast_max_rows``). ``keep_pair_features`` (batch plan):
    ``scored`` also holds ``block_pass`` and the model's features. ``reuse_plan`` (small
    plan): the normalization and the blocking and pair-feature queries are planned once
    per model and session and re-run on each call's rows (:func:`poimatch.stages.
    candidates.prepared_points`, ``prepared_candidates``; the service's warm requests),
    the output the same. ``normalized``: ``pois`` are the points already (small plan,
    held on the driver: what :func:`poimatch.stages.candidates.prepared_points` gives
    with this model's name statistics; the service computes them with its upload rules).
    ``compiled_pairs`` (with ``reuse_plan``): the pair query's operators compiled to Java
    code, once, when its plan is first executed (``COMPILED_SQL_CONF``), instead of
    interpreted on every call: what a service re-running the query on every request wants,
    and a one-off small run does not (the compiling costs more than it saves once).
    """
    started = time.perf_counter()
    blocking = BlockingSettings.model_validate(spec.blocking)
    reuse = reuse_plan and plan.small
    if normalized:
        if not plan.small:
            raise ValueError("normalized points are the small plan's: the batch plan makes its own")
        points = pois
    elif reuse:
        points = prepared_points(pois, owner=model, stats=spec.stats())
    else:
        points = cached_points(pois, stats=spec.stats(), plan=plan)
    # batch: counted from the checkpoint; small: a local relation
    n_rows = row_count(points)
    _log.info("match: %d rows normalized (%s plan)", n_rows, plan.name)
    candidates = (
        partial(
            prepared_candidates,
            owner=model,
            sql_conf=COMPILED_SQL_CONF if compiled_pairs else None,
        )
        if reuse
        else partial(cached_candidates, plan=plan)
    )
    pairs = candidates(
        points,
        settings=blocking,
        link_only=link_only,
        broadcast_cells=n_rows <= broadcast_max_rows,
        added=spec.added,
    )
    # small: the normalized points' ids, held on the driver (grouping reads them there)
    ids = held_select(points, [S.ID])
    scored, grouped = score_and_group(
        ids,
        pairs,
        model=model,
        spec=spec,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
        plan=plan,
        keep=(S.PASS, *spec.features) if keep_pair_features else (),
    )
    # batch: counted from the checkpoint; small: the scored pairs are a local relation
    n_pairs = row_count(scored)
    _log.info(
        "match: %d candidate pairs scored and grouped in %.1f s",
        n_pairs,
        time.perf_counter() - started,
    )
    return MatchResult(
        matches=grouped,
        scored=scored,
        candidates=n_pairs,
        per_row=2.0 * n_pairs / max(n_rows, 1),
        seconds=time.perf_counter() - started,
        plan=plan.name,
        points=points,
        rows=n_rows,
        threshold=spec.threshold,
    )
