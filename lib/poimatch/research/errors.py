"""Error analysis: worst false matches, missed matches and true pairs never blocked, with
XGBoost per-pair feature contributions; and the model a notebook analyses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import (
    BlockingSettings,
    Settings,
)
from poimatch.lifecycle.evaluation import label_pairs, truth_pairs
from poimatch.lifecycle.tracking import CHALLENGER, CHAMPION, configure_tracking, load_matcher
from poimatch.research.data import load_sample
from poimatch.research.notebook import empty_note, require_research, save_figure
from poimatch.runs.workflows import train_model
from poimatch.stages.blocking import add_pair_sides
from poimatch.stages.candidates import cached_candidates, cached_points
from poimatch.stages.features import add_pair_features
from poimatch.stages.scoring import MatchModel, booster_parts, score_pairs

FALSE_MATCH = "false_match"
MISSED_MATCH = "missed_match"
NEVER_BLOCKED = "never_blocked"
ERROR_COLUMNS: tuple[str, ...] = (
    "kind",
    "rank",
    S.ID_L,
    S.ID_R,
    "name_l",
    "name_r",
    "poi_l",
    "poi_r",
    "same_place",
    S.SCORE,
    "raw_score",
    "predicted_match",
    "distance_m",
    "name_similarity",
    S.PASS,
    "margin",
    "drivers",
)
BIAS = "bias"

FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ErrorAnalysis:
    """Where a model goes wrong on labelled POIs, and which features drove it.

    Attributes:
        model_uri: the analysed model.
        threshold: its decision threshold (from its matching spec).
        summary: ``metric``, ``value`` (pairs, true pairs, misses, precision/recall…).
        errors: :data:`ERROR_COLUMNS`; ``kind`` is ``false_match`` (highest-scored pairs
            of different places at or above the threshold), ``missed_match`` (true pairs
            with the lowest scores) or ``never_blocked`` (true pairs blocking never
            proposed: no score, farthest first). ``drivers`` lists the features that
            pushed the score the wrong way, ``feature=value (contribution)``.
            ``score`` is the calibrated score the threshold applies to; ``raw_score`` the
            booster's probability, ``sigmoid(margin)``, which the contributions explain
            (the calibration is monotone: a higher raw score never scores lower).
        contributions: ``kind``, ``id_l``, ``id_r``, ``feature``, ``value``,
            ``contribution`` (log-odds; with the ``bias`` row they sum to ``margin``).
        score_histogram: ``low``, ``high``, ``same_place``, ``different_place`` counts of
            candidate pairs per score bin.
    """

    model_uri: str
    threshold: float
    summary: pd.DataFrame
    errors: pd.DataFrame
    contributions: pd.DataFrame
    score_histogram: pd.DataFrame


def feature_contributions(
    model: MatchModel, frame: pd.DataFrame, features: Sequence[str]
) -> FloatMatrix:
    """XGBoost per-pair contributions (SHAP values, log-odds) of the model's booster.

    Args:
        model: a loaded model or the fitted VectorAssembler + SparkXGBClassifier pipeline.
        frame: one row per pair with the feature columns (nulls as missing).
        features: the model's input columns, in its order (the spec's ``features``).

    Returns:
        ``len(frame) × (len(features) + 1)``; the last column is the bias. A row sums
        to the pair's margin: ``sigmoid(sum)`` is the booster's (uncalibrated) probability.
    """
    parts = booster_parts(model)
    if parts is None:
        raise ValueError("this model is not an assembler + XGBoost pipeline: no booster")
    booster: xgb.Booster = parts[1]
    values = frame[list(features)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    matrix = xgb.DMatrix(values, missing=np.nan, feature_names=booster.feature_names)
    out = booster.predict(matrix, pred_contribs=True)
    return np.asarray(out, dtype=np.float64).reshape(len(frame), len(features) + 1)


def _value(value: float) -> str:
    return "missing" if math.isnan(value) else f"{value:.3g}"


def _drivers(
    values: FloatMatrix, contribs: FloatMatrix, features: Sequence[str], sign: float, k: int
) -> list[str]:
    """Per row, the ``k`` features pushing the margin most in direction ``sign``."""
    out = []
    for vals, row in zip(values, contribs[:, : len(features)], strict=True):
        order = np.argsort(-sign * row)[:k]
        parts = [
            f"{features[j]}={_value(vals[j])} ({row[j]:+.2f})" for j in order if sign * row[j] > 0
        ]
        out.append("; ".join(parts))
    return out


def _sides(frame: DataFrame, labelled: DataFrame) -> DataFrame:
    """Add each side's raw name and place to pairs."""
    left = labelled.select(
        F.col(S.ID).alias(S.ID_L), F.col(S.NAME).alias("name_l"), F.col(S.POI).alias("poi_l")
    )
    right = labelled.select(
        F.col(S.ID).alias(S.ID_R), F.col(S.NAME).alias("name_r"), F.col(S.POI).alias("poi_r")
    )
    return frame.join(left, on=S.ID_L, how="inner").join(right, on=S.ID_R, how="inner")


def _score_histogram(scored: DataFrame, bins: int = 20) -> pd.DataFrame:
    b = F.least(F.floor(F.col(S.SCORE) * bins), F.lit(bins - 1)).cast("int")
    counts = scored.select(b.alias("_bin"), S.LABEL).groupBy("_bin", S.LABEL).count().toPandas()
    table = counts.pivot_table(index="_bin", columns=S.LABEL, values="count", fill_value=0)
    table = table.reindex(index=range(bins), columns=[1, 0], fill_value=0)
    return pd.DataFrame(
        {
            "low": np.arange(bins) / bins,
            "high": (np.arange(bins) + 1) / bins,
            "same_place": table[1].to_numpy(dtype=np.int64),
            "different_place": table[0].to_numpy(dtype=np.int64),
        }
    )


def error_analysis(
    pois: DataFrame,
    *,
    settings: Settings,
    model_uri: str,
    top: int = 15,
    drivers: int = 3,
) -> ErrorAnalysis:
    """The model's worst false matches and missed matches on labelled POIs, explained.

    The POIs are blocked with the blocking the model was trained with, featured and
    scored exactly as the match job does (:mod:`poimatch.stages`); pairs are
    labelled from ``point_of_interest``. For the listed pairs the booster's
    per-pair feature contributions (``pred_contribs``) say which features drove the
    score: for a false match the ones that pushed it up, for a missed match the ones
    that pushed it down. Nothing is written.

    Args:
        pois: labelled POIs (rows without ``point_of_interest`` are ignored).
        settings: research settings (the tracking store to load the model from).
        model_uri: e.g. ``models:/poimatch-xgb-research@champion``.
        top: pairs listed per kind.
        drivers: features named per pair.
    """
    configure_tracking(settings.tracking)
    model, spec, _ = load_matcher(model_uri)
    blocking = BlockingSettings.model_validate(spec.blocking)
    features = spec.features
    labelled = pois.where(F.col(S.POI).isNotNull())
    points = cached_points(labelled, stats=spec.stats())
    featured = cached_candidates(points, settings=blocking)
    scored = (
        score_pairs(model, label_pairs(featured, labelled), spec.calibration)
        .select(S.ID_L, S.ID_R, S.PASS, S.LABEL, S.SCORE, *features)
        .localCheckpoint(eager=True)
    )
    t = spec.threshold
    predicted = F.col(S.SCORE) >= t
    counts = scored.agg(
        F.count(F.lit(1)).alias("pairs"),
        F.sum(F.col(S.LABEL)).alias("true_blocked"),
        F.sum(F.when(predicted, 1).otherwise(0)).alias("predicted"),
        F.sum(F.when(predicted & (F.col(S.LABEL) == 0), 1).otherwise(0)).alias("false"),
        F.sum(F.when(~predicted & (F.col(S.LABEL) == 1), 1).otherwise(0)).alias("missed"),
    ).first()
    truth = truth_pairs(labelled)
    n_true = truth.count()
    n_rows = labelled.count()
    never = truth.join(featured.select(S.ID_L, S.ID_R), on=[S.ID_L, S.ID_R], how="left_anti")
    n_never = never.count()

    def count(key: str) -> int:
        return int(counts[key] or 0) if counts is not None else 0

    n_pairs, n_pred, n_false = count("pairs"), count("predicted"), count("false")
    tp = n_pred - n_false
    summary = pd.DataFrame(
        {
            "metric": [
                "rows",
                "candidate_pairs",
                "candidates_per_row",
                "true_pairs",
                "true_pairs_blocked",
                "true_pairs_never_blocked",
                "threshold",
                "predicted_pairs",
                "false_matches",
                "missed_blocked_true_pairs",
                "pair_precision",
                "pair_recall",
            ],
            "value": [
                float(n_rows),
                float(n_pairs),
                2.0 * n_pairs / n_rows if n_rows else 0.0,
                float(n_true),
                float(count("true_blocked")),
                float(n_never),
                t,
                float(n_pred),
                float(n_false),
                float(count("missed")),
                tp / n_pred if n_pred else math.nan,
                tp / n_true if n_true else math.nan,
            ],
        }
    )

    order = [F.col(S.ID_L), F.col(S.ID_R)]
    false = scored.where(predicted & (F.col(S.LABEL) == 0)).orderBy(F.desc(S.SCORE), *order)
    missed = scored.where(F.col(S.LABEL) == 1).orderBy(F.asc(S.SCORE), *order)
    frames, long = [], []
    for kind, chosen, sign in ((FALSE_MATCH, false, 1.0), (MISSED_MATCH, missed, -1.0)):
        pdf = _sides(chosen.limit(top), labelled).toPandas()
        pdf = pdf.sort_values(
            [S.SCORE, S.ID_L, S.ID_R], ascending=[sign < 0, True, True]
        ).reset_index(drop=True)
        contribs = (
            feature_contributions(model, pdf, features)
            if len(pdf)
            else np.zeros((0, len(features) + 1))
        )
        values = pdf[list(features)].to_numpy(dtype=np.float64)
        pdf["kind"] = kind
        pdf["rank"] = np.arange(1, len(pdf) + 1)
        pdf["margin"] = contribs.sum(axis=1)
        pdf["raw_score"] = 1.0 / (1.0 + np.exp(-pdf["margin"].to_numpy(np.float64)))
        pdf["drivers"] = _drivers(values, contribs, features, sign, drivers)
        pdf["distance_m"] = pdf[S.F_DIST_M]
        pdf["name_similarity"] = pdf[S.F_NAME_TOKEN_SET]
        frames.append(pdf)
        for i in range(len(pdf)):
            long.append(
                pd.DataFrame(
                    {
                        "kind": kind,
                        S.ID_L: pdf.at[i, S.ID_L],
                        S.ID_R: pdf.at[i, S.ID_R],
                        "feature": [*features, BIAS],
                        "value": [*values[i], math.nan],
                        "contribution": contribs[i],
                    }
                )
            )

    never_top = (
        add_pair_sides(never, points)
        .transform(add_pair_features)
        .select(S.ID_L, S.ID_R, S.F_DIST_M, S.F_NAME_TOKEN_SET)
        .orderBy(F.desc(S.F_DIST_M), *order)
        .limit(top)
    )
    npdf = _sides(never_top, labelled).toPandas()
    npdf = npdf.sort_values([S.F_DIST_M, S.ID_L, S.ID_R], ascending=[False, True, True])
    npdf = npdf.reset_index(drop=True)
    npdf["kind"] = NEVER_BLOCKED
    npdf["rank"] = np.arange(1, len(npdf) + 1)
    npdf["distance_m"] = npdf[S.F_DIST_M]
    npdf["name_similarity"] = npdf[S.F_NAME_TOKEN_SET]
    npdf["drivers"] = "not a candidate: " + npdf[S.F_DIST_M].map(lambda d: f"{d:,.0f} m apart")
    frames.append(npdf)

    errors = pd.concat(frames, ignore_index=True)
    errors["same_place"] = errors["poi_l"] == errors["poi_r"]
    errors["predicted_match"] = errors[S.SCORE] >= t
    errors.loc[errors["kind"] == NEVER_BLOCKED, "predicted_match"] = False
    errors = errors.reindex(columns=list(ERROR_COLUMNS))
    contributions = (
        pd.concat(long, ignore_index=True)
        if long
        else pd.DataFrame(columns=["kind", S.ID_L, S.ID_R, "feature", "value", "contribution"])
    )
    histogram = _score_histogram(scored)
    scored.unpersist()
    return ErrorAnalysis(model_uri, t, summary, errors, contributions, histogram)


def plot_errors(analysis: ErrorAnalysis, folder: Path, *, features: int = 12) -> dict[str, Path]:
    """Two PNGs: ``error_scores`` (score histogram by truth) and ``error_drivers``.

    ``error_drivers`` shows, for the listed false matches and missed matches, the mean
    contribution of the features that mattered most (log-odds; right pushes to match).
    """
    paths: dict[str, Path] = {}
    hist = analysis.score_histogram
    fig, ax = plt.subplots(figsize=(7, 4))
    width = float(hist["high"].iloc[0] - hist["low"].iloc[0]) if len(hist) else 0.05
    ax.bar(
        hist["low"],
        hist["different_place"],
        width=width,
        align="edge",
        alpha=0.6,
        label="different place",
    )
    ax.bar(
        hist["low"], hist["same_place"], width=width, align="edge", alpha=0.6, label="same place"
    )
    ax.axvline(
        analysis.threshold,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"threshold {analysis.threshold:.3f}",
    )
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("candidate pairs (log scale)")
    ax.set_title("Scores of candidate pairs")
    ax.legend()
    paths["error_scores"] = save_figure(fig, folder, "error_scores")

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * features + 1.8))
    contribs = analysis.contributions
    for ax, kind, title in (
        (axes[0], FALSE_MATCH, "Worst false matches: mean contribution"),
        (axes[1], MISSED_MATCH, "Missed matches: mean contribution"),
    ):
        part = contribs[(contribs["kind"] == kind) & (contribs["feature"] != BIAS)]
        if part.empty:
            empty_note(ax, "none")
        else:
            mean = part.groupby("feature")["contribution"].mean()
            keep = mean.abs().sort_values(ascending=False).head(features).index
            chosen = mean.loc[keep].sort_values()
            colors = ["tab:red" if v > 0 else "tab:blue" for v in chosen]
            ax.barh(list(chosen.index), chosen.to_numpy(dtype=np.float64), color=colors)
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_xlabel("contribution to the match log-odds")
        ax.set_title(title)
    paths["error_drivers"] = save_figure(fig, folder, "error_drivers")
    return paths


def ensure_model(
    spark: SparkSession,
    settings: Settings,
    model: str = "",
    *,
    rows: int = 3000,
    seed: int = 7,
) -> str:
    """The model URI to analyse: ``model`` if given, else the newest research model.

    Research versions are registered as ``challenger`` (a research run never names a
    champion), so the newest one is ``models:/<research model>@challenger``. Without
    any research version yet (a fresh store), a baseline is trained on a generated
    sample (``rows``, ``seed``) and registered under the research model name, so the
    notebook runs anywhere.
    """
    if model:
        return model
    require_research(settings)
    configure_tracking(settings.tracking)
    name = settings.model.name
    client = MlflowClient()
    for alias in (CHALLENGER, CHAMPION):
        try:
            client.get_model_version_by_alias(name, alias)
        except mlflow.exceptions.MlflowException:
            continue
        return f"models:/{name}@{alias}"
    sample = load_sample(spark, settings, rows=rows, seed=seed)
    result = train_model(
        sample.pois,
        settings=settings,
        data_versions={"train_input": sample.fingerprint},
        run_name="error-analysis-baseline",
    )
    return result.model_uri
