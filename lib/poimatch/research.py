"""Research helpers: everything the notebooks in ``notebooks/`` do, as library functions.

The notebooks (Databricks source format, also runnable as plain scripts) hold no logic:
they read their parameters with :func:`params`, start a research session with
:func:`start` and call the functions below, which reuse the pipeline's own stages
(blocking, features, scoring, training, evaluation, tracking) rather than copies of them.

* :func:`start` loads a **research** environment only (``conf/research.yaml``: its own
  storage root, MLflow experiment and registered model) and arms
  :mod:`poimatch.isolation`, so nothing started from a notebook can write a production
  table or move the production ``champion`` alias.
* :func:`params` reads Databricks widgets when ``dbutils`` exists, else environment
  variables ``POIMATCH_NB_<NAME>`` (locally and in CI), else the defaults.
* Data: :func:`load_sample` reads a CSV or Delta path, or generates a small labelled
  sample with :mod:`poimatch.generator` when no path is given.
* Data profile: :func:`profile` (Spark aggregations, small pandas results) and
  :func:`plot_profile`.
* Experiments: :func:`run_variants` trains a baseline and variants (settings overrides)
  with :func:`poimatch.workflows.train_model`; :func:`compare_runs` reads them back with
  ``mlflow.search_runs``; :func:`plot_comparison`.
* Error analysis: :func:`error_analysis` (worst false matches, missed matches, true pairs
  never blocked, with XGBoost per-pair feature contributions) and :func:`plot_errors`.

Every plot is a matplotlib figure saved as a PNG under an output folder and shown with
Databricks' ``display`` when it exists; :func:`show` prints a table where it does not.

Example:
    >>> from poimatch import research  # doctest: +SKIP
    >>> p = research.params({"data": "", "rows": 3000, "output": research.DEFAULT_OUTPUT})
    >>> settings, spark = research.start("research", overrides=p.get("set", ""))
    >>> sample = research.load_sample(spark, settings, data=p["data"], rows=p["rows"])
    >>> research.plot_profile(research.profile(sample.pois), research.output_folder(p["output"]))
"""

from __future__ import annotations

import builtins
import math
import os
import re
import sys
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
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.batch import load_pois
from poimatch.blocking import add_pair_sides
from poimatch.config import (
    _PATH_KEYS,
    BlockingSettings,
    ConfigError,
    Settings,
    _apply_override,
    _format_errors,
    load_settings,
    project_root,
    resolve_path,
)
from poimatch.evaluation import label_pairs, truth_pairs
from poimatch.features import add_pair_features, haversine_m
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.io import input_fingerprint
from poimatch.isolation import IsolationError, check_write, enforce
from poimatch.pipeline import cached_candidates, cached_points, score_pairs
from poimatch.session import build_session
from poimatch.tracking import CHALLENGER, CHAMPION, configure_tracking, load_matcher
from poimatch.workflows import train_model

__all__ = [
    "COMPARISON_METRICS",
    "DEFAULT_OUTPUT",
    "ERROR_COLUMNS",
    "FALSE_MATCH",
    "MISSED_MATCH",
    "NEVER_BLOCKED",
    "PARAM_PREFIX",
    "RESEARCH_ENV",
    "ErrorAnalysis",
    "Experiment",
    "Profile",
    "Sample",
    "VariantRun",
    "compare_runs",
    "ensure_model",
    "error_analysis",
    "feature_contributions",
    "load_sample",
    "notebook_global",
    "output_folder",
    "override_list",
    "params",
    "plot_comparison",
    "plot_errors",
    "plot_profile",
    "profile",
    "run_variants",
    "save_figure",
    "save_table",
    "show",
    "start",
    "with_overrides",
]

RESEARCH_ENV = "research"
DEFAULT_OUTPUT = "data/research/notebooks"
PARAM_PREFIX = "POIMATCH_NB_"

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

ParamValue = str | int | float | bool
FloatMatrix = npt.NDArray[np.float64]

_MISSING_COUNTRY = "(missing)"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_SAFE_TAG = re.compile(r"^[A-Za-z0-9_.:-]+$")
_DPI = 110


# --------------------------------------------------------------------- notebook plumbing


def notebook_global(name: str) -> Any | None:
    """A name the notebook host defines (``dbutils``, ``display``), or ``None``.

    Databricks puts ``dbutils`` and ``display`` into the notebook's namespace (the
    IPython user namespace / ``__main__``); Jupyter puts ``display`` into builtins.
    A plain ``python notebooks/x.py`` run has neither.
    """
    main = sys.modules.get("__main__")
    value = getattr(main, name, None) if main is not None else None
    if value is not None:
        return value
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        value = shell.user_ns.get(name)
        if value is not None:
            return value
    return getattr(builtins, name, None)


def _coerce(name: str, raw: str, default: ParamValue) -> ParamValue:
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"parameter {name}: expected {kind}, got {raw!r}") from None
    return raw


def params(defaults: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """The notebook's parameters: widgets on Databricks, ``POIMATCH_NB_<NAME>`` locally.

    Args:
        defaults: parameter name → default; the default's type (str, int, float, bool)
            is the parameter's type, and values are converted to it.

    Returns:
        name → value. On Databricks a text widget is created per parameter (with the
        default) and its current value read; elsewhere the environment variable
        ``POIMATCH_NB_<NAME upper-cased>`` wins over the default when set.

    Raises:
        ValueError: a value cannot be converted (the parameter is named).

    Example:
        >>> import os
        >>> os.environ["POIMATCH_NB_ROWS"] = "1500"
        >>> params({"rows": 3000, "data": ""})
        {'rows': 1500, 'data': ''}
    """
    dbutils = notebook_global("dbutils")
    out: dict[str, ParamValue] = {}
    for name, default in defaults.items():
        raw: str | None
        if dbutils is not None:
            dbutils.widgets.text(name, str(default))
            raw = str(dbutils.widgets.get(name))
        else:
            raw = os.environ.get(PARAM_PREFIX + name.upper())
        out[name] = default if raw is None else _coerce(name, raw, default)
    return out


def override_list(overrides: str | Sequence[str]) -> list[str]:
    """``"a.b=1; c.d=x"`` (``;`` or new lines) or a sequence → ``["a.b=1", "c.d=x"]``.

    Example:
        >>> override_list("model.n_estimators=60; blocking.k_nearest=5\\n")
        ['model.n_estimators=60', 'blocking.k_nearest=5']
    """
    items = re.split(r"[;\n]", overrides) if isinstance(overrides, str) else list(overrides)
    return [item.strip() for item in items if item.strip()]


def _require_research(settings: Settings) -> None:
    if settings.lifecycle.role != RESEARCH_ENV:
        raise IsolationError(
            f"notebooks run in a research environment; {settings.env!r} has role "
            f"{settings.lifecycle.role!r} (use env 'research', conf/research.yaml)"
        )


def start(
    env: str = RESEARCH_ENV, overrides: str | Sequence[str] = ()
) -> tuple[Settings, SparkSession]:
    """Load research settings, arm the production guard and build (or adopt) the session.

    Args:
        env: the configuration overlay; it must have ``lifecycle.role: research``.
        overrides: ``section.key=value`` strings (or one ``;``-separated string).

    Returns:
        ``(settings, spark)``; an active session (Databricks, a notebook kernel) is
        adopted as it is by :func:`poimatch.session.build_session`.

    Raises:
        IsolationError: the settings are not research settings.
        ConfigError: bad configuration (the key is named).
    """
    settings = load_settings(env, override_list(overrides))
    _require_research(settings)
    enforce(settings)
    return settings, build_session(settings.spark)


def with_overrides(settings: Settings, overrides: str | Sequence[str]) -> Settings:
    """``settings`` with more ``section.key=value`` overrides, validated again.

    Relative local paths are resolved against the project root, as in
    :func:`poimatch.config.load_settings`; research settings stay research settings.

    Raises:
        ConfigError: an unknown key, a bad value, or research settings that would
            reach production.
    """
    data = settings.model_dump(mode="json")
    for override in override_list(overrides):
        _apply_override(data, override)
    root = project_root()
    for section, key in _PATH_KEYS:
        value = data.get(section, {}).get(key)
        if isinstance(value, str):
            data[section][key] = resolve_path(value, root)
    try:
        derived = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    if settings.lifecycle.role == RESEARCH_ENV:
        _require_research(derived)
    return derived


def output_folder(path: str = DEFAULT_OUTPUT) -> Path:
    """The folder for a notebook's PNGs and CSVs (relative to the project root), created."""
    folder = Path(resolve_path(path or DEFAULT_OUTPUT, project_root()))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def show(obj: Any, *, title: str | None = None, max_rows: int = 40) -> None:
    """Show a table, figure or value: ``display`` where the host has it, else print.

    Tables (pandas or Spark) and figures go to the host's ``display`` (Databricks,
    Jupyter); without one, tables are printed (a Spark frame's first ``max_rows``
    rows) and figures skipped (the plot functions save them as PNGs). Anything else
    (a dict of parameters, a list of lines) is printed.
    """
    display = notebook_global("display")
    if title:
        print(f"\n== {title}")
    displayable = isinstance(obj, DataFrame | pd.DataFrame | Figure)
    if display is not None and displayable:
        display(obj)
        return
    if isinstance(obj, DataFrame):
        obj = obj.limit(max_rows).toPandas()
    if isinstance(obj, pd.DataFrame):
        with pd.option_context("display.width", 250, "display.max_colwidth", 100):
            print(obj.to_string(max_rows=max_rows, index=False))
    elif not isinstance(obj, Figure):
        print(obj)


def save_figure(fig: Figure, folder: Path, name: str) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png``, display it where possible, close it."""
    fig.tight_layout()
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=_DPI)
    display = notebook_global("display")
    if display is not None:
        display(fig)
    plt.close(fig)
    return path


def save_table(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    """Write ``frame`` as ``<folder>/<name>.csv`` (no index) and return the path."""
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """POIs for a notebook: the typed frame, where it came from and its fingerprint."""

    pois: DataFrame
    source: str
    fingerprint: str
    lines: tuple[str, ...]


def load_sample(
    spark: SparkSession,
    settings: Settings,
    *,
    data: str = "",
    rows: int = 3000,
    seed: int = 42,
    labelled: bool = True,
) -> Sample:
    """POIs from ``data`` (CSV or Delta path), or a generated labelled sample.

    A CSV is validated like the ingest (:func:`poimatch.batch.load_pois`): bad rows go
    to the research quarantine table. Without ``data``, ``rows`` POIs are generated
    with ``seed`` and written next to ``generator.output`` (a research path).

    Args:
        labelled: require ``point_of_interest`` (training, error analysis).
    """
    storage = settings.storage
    if data:
        source = data
    else:
        out = Path(settings.generator.output)
        source = str(out.with_name(f"{out.stem}_seed{seed}_rows{rows}{out.suffix or '.csv'}"))
        check_write(source)
        write_pois_csv(generate_pois(rows, seed=seed), source)
    pois, lines = load_pois(
        spark,
        source,
        quarantine_path=storage.table_path(storage.quarantine_table),
        require_labels=labelled,
    )
    return Sample(pois, source, input_fingerprint(spark, source), tuple(lines))


# ------------------------------------------------------------------------------ profile


@dataclass(frozen=True)
class Profile:
    """A data profile: small pandas frames computed by Spark aggregations.

    Attributes:
        overview: ``metric``, ``value`` (rows, places, duplicate distance quantiles…).
        missing: ``column``, ``missing``, ``share`` (null or blank), input order.
        countries: ``country``, ``rows``, ``places``; most rows first.
        rows_per_place: ``rows_per_place``, ``places``, ``share`` of places.
        distances: histogram of the distance between rows of the same place:
            ``low_m``, ``high_m``, ``pairs`` (log-spaced bins; under 1 m counts as 1 m).
    """

    overview: pd.DataFrame
    missing: pd.DataFrame
    countries: pd.DataFrame
    rows_per_place: pd.DataFrame
    distances: pd.DataFrame


def _blank(df: DataFrame, column: str) -> Any:
    col = F.col(column)
    if isinstance(df.schema[column].dataType, T.StringType):
        return col.isNull() | (F.trim(col) == "")
    return col.isNull()


def _missing(pois: DataFrame, rows: int) -> pd.DataFrame:
    columns = [c for c in (*S.INPUT_COLUMNS, S.POI) if c in pois.columns]
    agg = pois.agg(
        *[F.sum(F.when(_blank(pois, c), 1).otherwise(0)).alias(c) for c in columns]
    ).first()
    counts = [int(agg[c] or 0) if agg is not None else 0 for c in columns]
    return pd.DataFrame(
        {
            "column": columns,
            "missing": counts,
            "share": [n / rows if rows else 0.0 for n in counts],
        }
    )


def _countries(pois: DataFrame) -> pd.DataFrame:
    country = F.when(F.trim(F.col(S.COUNTRY)) != "", F.trim(F.col(S.COUNTRY)))
    frame = (
        pois.select(F.coalesce(country, F.lit(_MISSING_COUNTRY)).alias("country"), S.POI)
        .groupBy("country")
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(S.POI).alias("places"))
        .toPandas()
    )
    frame = frame.astype({"rows": "int64", "places": "int64"})
    return frame.sort_values(["rows", "country"], ascending=[False, True]).reset_index(drop=True)


def _rows_per_place(labelled: DataFrame) -> pd.DataFrame:
    frame = (
        labelled.groupBy(S.POI)
        .agg(F.count(F.lit(1)).alias("rows_per_place"))
        .groupBy("rows_per_place")
        .agg(F.count(F.lit(1)).alias("places"))
        .toPandas()
        .astype("int64")
        .sort_values("rows_per_place")
        .reset_index(drop=True)
    )
    total = int(frame["places"].sum())
    frame["share"] = frame["places"] / total if total else 0.0
    return frame


def _duplicate_distances(labelled: DataFrame) -> DataFrame:
    """``distance_m`` for every pair of rows of the same place (each pair once)."""
    side = labelled.select(S.ID, S.POI, S.LATITUDE, S.LONGITUDE)
    left = side.select(
        F.col(S.ID).alias(S.ID_L),
        S.POI,
        F.col(S.LATITUDE).alias("_lat_l"),
        F.col(S.LONGITUDE).alias("_lon_l"),
    )
    right = side.select(
        F.col(S.ID).alias(S.ID_R),
        S.POI,
        F.col(S.LATITUDE).alias("_lat_r"),
        F.col(S.LONGITUDE).alias("_lon_r"),
    )
    return (
        left.join(right, on=S.POI, how="inner")
        .where(F.col(S.ID_L) < F.col(S.ID_R))
        .select(
            haversine_m(F.col("_lat_l"), F.col("_lon_l"), F.col("_lat_r"), F.col("_lon_r")).alias(
                "distance_m"
            )
        )
    )


def _distance_histogram(distances: DataFrame, bins_per_decade: int) -> pd.DataFrame:
    log = F.log10(F.greatest(F.col("distance_m"), F.lit(1.0)))
    frame = (
        distances.select(F.floor(log * bins_per_decade).cast("int").alias("_bin"))
        .groupBy("_bin")
        .agg(F.count(F.lit(1)).alias("pairs"))
        .toPandas()
        .sort_values("_bin")
    )
    bins = frame["_bin"].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "low_m": np.power(10.0, bins / bins_per_decade),
            "high_m": np.power(10.0, (bins + 1) / bins_per_decade),
            "pairs": frame["pairs"].to_numpy(dtype=np.int64),
        }
    )


def profile(pois: DataFrame, *, bins_per_decade: int = 5) -> Profile:
    """Profile POIs: missing values, countries, rows per place, duplicate distances.

    Every figure is a Spark aggregation, so it scales with the data; only the small
    results come back as pandas frames. Rows without ``point_of_interest`` count for
    the missing values and countries but not for the place figures.

    Args:
        pois: typed POIs (``poimatch.schema`` layout).
        bins_per_decade: resolution of the log-scale distance histogram.
    """
    rows = pois.count()
    labelled = pois.where(F.col(S.POI).isNotNull() & (F.trim(F.col(S.POI)) != ""))
    labelled_rows = labelled.count()
    per_place = _rows_per_place(labelled)
    distances = _duplicate_distances(labelled)
    stats = distances.agg(
        F.count(F.lit(1)).alias("pairs"),
        F.percentile_approx("distance_m", [0.5, 0.9, 0.99], 10_000).alias("q"),
        F.max("distance_m").alias("max"),
        F.avg(F.when(F.col("distance_m") > 100.0, 1.0).otherwise(0.0)).alias("over_100m"),
        F.avg(F.when(F.col("distance_m") > 1000.0, 1.0).otherwise(0.0)).alias("over_1km"),
    ).first()
    pairs = int(stats["pairs"]) if stats is not None else 0
    quantiles = list(stats["q"]) if stats is not None and pairs else [math.nan] * 3
    places = int(per_place["places"].sum())

    def stat(key: str) -> float:
        value = stats[key] if stats is not None and pairs else None
        return float(value) if value is not None else math.nan

    overview = pd.DataFrame(
        {
            "metric": [
                "rows",
                "labelled_rows",
                "places",
                "rows_per_place_mean",
                "duplicate_pairs",
                "duplicate_distance_median_m",
                "duplicate_distance_p90_m",
                "duplicate_distance_p99_m",
                "duplicate_distance_max_m",
                "duplicate_share_over_100m",
                "duplicate_share_over_1km",
            ],
            "value": [
                float(rows),
                float(labelled_rows),
                float(places),
                labelled_rows / places if places else math.nan,
                float(pairs),
                *[float(q) for q in quantiles],
                stat("max"),
                stat("over_100m"),
                stat("over_1km"),
            ],
        }
    )
    return Profile(
        overview=overview,
        missing=_missing(pois, rows),
        countries=_countries(pois),
        rows_per_place=per_place,
        distances=_distance_histogram(distances, bins_per_decade),
    )


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_profile(prof: Profile, folder: Path, *, top_countries: int = 20) -> dict[str, Path]:
    """Four PNGs: missing values, places per country, duplicate distances, rows per place.

    Returns:
        figure name → PNG path (``missing_values``, ``places_per_country``,
        ``duplicate_distances``, ``rows_per_place``).
    """
    paths: dict[str, Path] = {}

    missing = prof.missing.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(missing) + 1.2))
    ax.barh(missing["column"], 100.0 * missing["share"])
    for y, (share, count) in enumerate(zip(missing["share"], missing["missing"], strict=True)):
        ax.text(100.0 * share + 0.5, y, f"{count:,}", va="center", fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_xlabel("missing or blank (% of rows)")
    ax.set_title("Missing values per column")
    paths["missing_values"] = save_figure(fig, folder, "missing_values")

    top = prof.countries.head(top_countries).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(top) + 1.2))
    pos = np.arange(len(top))
    ax.barh(pos - 0.2, top["places"], height=0.4, label="places")
    ax.barh(pos + 0.2, top["rows"], height=0.4, label="rows", alpha=0.6)
    ax.set_yticks(pos, list(top["country"]))
    ax.set_xlabel("count")
    ax.set_title(f"Places per country (top {len(top)} of {len(prof.countries)})")
    ax.legend(loc="lower right")
    paths["places_per_country"] = save_figure(fig, folder, "places_per_country")

    fig, ax = plt.subplots(figsize=(7, 4))
    dist = prof.distances
    if dist.empty:
        _empty_note(ax, "no place has two rows")
    else:
        ax.bar(dist["low_m"], dist["pairs"], width=dist["high_m"] - dist["low_m"], align="edge")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for metres in (100.0, 1000.0):
            ax.axvline(metres, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("distance between rows of the same place (m, log scale)")
        ax.set_ylabel("pairs (log scale)")
    ax.set_title("Duplicate distances")
    paths["duplicate_distances"] = save_figure(fig, folder, "duplicate_distances")

    fig, ax = plt.subplots(figsize=(7, 4))
    per = prof.rows_per_place
    if per.empty:
        _empty_note(ax, "no labelled rows")
    else:
        ax.bar(per["rows_per_place"], per["places"])
        ax.set_yscale("log")
        ax.set_xlabel("rows per place")
        ax.set_ylabel("places (log scale)")
    ax.set_title("Rows per place")
    paths["rows_per_place"] = save_figure(fig, folder, "rows_per_place")
    return paths


# --------------------------------------------------------------------------- experiment


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

    Every variant goes through :func:`poimatch.workflows.train_model` (same folds,
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
    _require_research(settings)
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
        _empty_note(left, "no runs")
        _empty_note(right, "no runs")
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


# ----------------------------------------------------------------------- error analysis


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
    model: PipelineModel, frame: pd.DataFrame, features: Sequence[str]
) -> FloatMatrix:
    """XGBoost per-pair contributions (SHAP values, log-odds) of the pipeline's booster.

    Args:
        model: the fitted VectorAssembler + SparkXGBClassifier pipeline.
        frame: one row per pair with the feature columns (nulls as missing).
        features: the model's input columns, in its order (the spec's ``features``).

    Returns:
        ``len(frame) × (len(features) + 1)``; the last column is the bias. A row sums
        to the pair's margin: ``sigmoid(sum)`` is the booster's (uncalibrated) probability.
    """
    stage: Any = model.stages[-1]
    booster: xgb.Booster = stage.get_booster()
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
    scored exactly as the match job does (:mod:`poimatch.pipeline`); pairs are
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
            _empty_note(ax, "none")
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
    _require_research(settings)
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
