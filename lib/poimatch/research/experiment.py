"""Experiments: a baseline and variants trained with the production code, compared
from MLflow."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame

from poimatch.config import (
    Settings,
)
from poimatch.isolation import enforce
from poimatch.lifecycle.tracking import configure_tracking
from poimatch.research.notebook import (
    empty_note,
    override_list,
    require_research,
    save_figure,
    with_overrides,
)
from poimatch.runs.workflows import train_model

# MLflow tags that tie the runs of one comparison together.
TAG_COMPARISON = "poimatch.comparison"
TAG_VARIANT = "poimatch.variant"
TAG_OVERRIDES = "poimatch.overrides"

COMPARISON_METRICS: tuple[str, ...] = (
    "iou",
    "pair_precision",
    "pair_recall",
    "pair_f1",
    "candidates_per_row",
    "candidate_pair_recall",
    "iou_ceiling",
    "threshold",
    "train_seconds",
)

_SAFE_TAG = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class VariantRun:
    """One trained variant of an experiment: its overrides and its MLflow run."""

    variant: str
    overrides: tuple[str, ...]
    run_id: str
    model_uri: str
    alias: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Experiment:
    """The runs of one comparison, tagged ``poimatch.comparison=<comparison>`` in MLflow."""

    comparison: str
    experiment: str
    runs: tuple[VariantRun, ...]

    def table(self) -> pd.DataFrame:
        """One row per run: variant, overrides, run, registered model, alias, IoU."""
        return pd.DataFrame(
            {
                "variant": [r.variant for r in self.runs],
                "overrides": ["; ".join(r.overrides) for r in self.runs],
                "run_id": [r.run_id for r in self.runs],
                "model_uri": [r.model_uri for r in self.runs],
                "alias": [r.alias for r in self.runs],
                "iou": [r.metrics.get("iou", math.nan) for r in self.runs],
            }
        )


def _check_tag(value: str, what: str) -> str:
    if not _SAFE_TAG.match(value):
        raise ValueError(f"{what} {value!r}: use letters, digits and . _ : - only")
    return value


def run_variants(
    pois: DataFrame,
    *,
    settings: Settings,
    variants: Mapping[str, str | Sequence[str]],
    data_versions: Mapping[str, str],
    comparison: str = "",
) -> Experiment:
    """Train each variant (settings + its overrides) on the same POIs, tracked in MLflow.

    Every variant goes through :func:`poimatch.runs.workflows.train_model` (same folds,
    same logging, registered under the research model name) and its run is tagged
    with the comparison id, the variant name and its overrides, for
    :func:`compare_runs`.

    Args:
        pois: labelled POIs (cache them: every variant reads them).
        settings: research settings, the baseline.
        variants: variant name → overrides; the baseline is a variant with none.
        data_versions: logged with every run (input name → fingerprint).
        comparison: id shared by the runs; a fresh one by default.

    Raises:
        ConfigError: a variant's overrides are invalid or leave research.
    """
    require_research(settings)
    comparison = _check_tag(comparison or f"cmp-{uuid.uuid4().hex[:12]}", "comparison")
    for name in variants:
        _check_tag(name, "variant")
    derived = {name: with_overrides(settings, over) for name, over in variants.items()}
    runs = []
    for name, variant_settings in derived.items():
        enforce(variant_settings)
        overrides = tuple(override_list(variants[name]))
        result = train_model(
            pois,
            settings=variant_settings,
            data_versions=dict(data_versions),
            run_name=f"{name}-{comparison}",
        )
        client = MlflowClient()
        client.set_tag(result.run_id, TAG_COMPARISON, comparison)
        client.set_tag(result.run_id, TAG_VARIANT, name)
        client.set_tag(result.run_id, TAG_OVERRIDES, "; ".join(overrides) or "(none)")
        runs.append(
            VariantRun(
                name, overrides, result.run_id, result.model_uri, result.alias, result.metrics
            )
        )
    return Experiment(comparison, settings.tracking.experiment, tuple(runs))


def compare_runs(
    settings: Settings, *, comparison: str | None = None, max_runs: int = 50
) -> pd.DataFrame:
    """The research experiment's runs side by side, from ``mlflow.search_runs``.

    Args:
        settings: research settings (tracking store and experiment).
        comparison: only the runs of this :class:`Experiment`; all runs by default.
        max_runs: newest runs kept.

    Returns:
        One row per run, oldest first: ``variant``, ``run_id``, ``start_time``,
        ``overrides``, each of :data:`COMPARISON_METRICS`, then one column per
        parameter whose value differs between the runs (``blocking.k_nearest``…).
    """
    configure_tracking(settings.tracking)
    where = ""
    if comparison:
        where = f"tags.`{TAG_COMPARISON}` = '{_check_tag(comparison, 'comparison')}'"
    found = mlflow.search_runs(
        experiment_names=[settings.tracking.experiment],
        filter_string=where,
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
        output_format="pandas",
    )
    if not isinstance(found, pd.DataFrame):
        raise TypeError("mlflow.search_runs did not return a pandas frame")
    columns = ["variant", "run_id", "start_time", "overrides", *COMPARISON_METRICS]
    if found.empty:
        return pd.DataFrame(columns=columns)
    found = found.sort_values("start_time").reset_index(drop=True)

    def column(name: str, fill: Any) -> pd.Series:
        if name in found.columns:
            return found[name]
        return pd.Series([fill] * len(found), index=found.index)

    out = pd.DataFrame(
        {
            "variant": column(f"tags.{TAG_VARIANT}", None).fillna(
                column("tags.mlflow.runName", "")
            ),
            "run_id": found["run_id"],
            "start_time": found["start_time"],
            "overrides": column(f"tags.{TAG_OVERRIDES}", ""),
        }
    )
    for metric in COMPARISON_METRICS:
        out[metric] = pd.to_numeric(column(f"metrics.{metric}", math.nan), errors="coerce")
    params = [c for c in found.columns if c.startswith("params.")]
    if len(found) > 1:
        for name in params:
            if found[name].astype(str).nunique() > 1 and not name.startswith("params.data."):
                out[name.removeprefix("params.")] = found[name]
    return out


def plot_comparison(
    frame: pd.DataFrame, folder: Path, *, name: str = "experiment_comparison"
) -> Path:
    """Bars per run: IoU, pair precision/recall and the candidate stage; candidates per row."""
    rates = ["iou", "pair_precision", "pair_recall", "candidate_pair_recall", "iou_ceiling"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    labels = [f"{v} ({r[:8]})" for v, r in zip(frame["variant"], frame["run_id"], strict=True)]
    if frame.empty:
        empty_note(left, "no runs")
        empty_note(right, "no runs")
    else:
        width = 0.8 / len(frame)
        x = np.arange(len(rates))
        for i, (_, row) in enumerate(frame.iterrows()):
            values = [float(row[m]) for m in rates]
            bars = left.bar(x + i * width, values, width=width, label=labels[i])
            left.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        left.set_xticks(x + 0.4 - width / 2, rates, rotation=15)
        finite = frame[rates].to_numpy(dtype=np.float64)
        low = float(np.nanmin(finite)) if np.isfinite(finite).any() else 0.0
        left.set_ylim(max(0.0, low - 0.1), 1.08)
        left.legend(fontsize=8, loc="lower left")
        left.set_title("Quality (validation fold)")
        right.bar(
            labels,
            frame["candidates_per_row"].to_numpy(dtype=np.float64),
            color=[f"C{i}" for i in range(len(frame))],
        )
        right.set_title("Candidates per row")
        right.tick_params(axis="x", rotation=30, labelsize=7)
    return save_figure(fig, folder, name)
