"""The data profile: missing values, countries, rows per place, duplicate distances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.research.notebook import empty_note, save_figure
from poimatch.stages.features import haversine_m

_MISSING_COUNTRY = "(missing)"


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
        empty_note(ax, "no place has two rows")
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
        empty_note(ax, "no labelled rows")
    else:
        ax.bar(per["rows_per_place"], per["places"])
        ax.set_yscale("log")
        ax.set_xlabel("rows per place")
        ax.set_ylabel("places (log scale)")
    ax.set_title("Rows per place")
    paths["rows_per_place"] = save_figure(fig, folder, "rows_per_place")
    return paths
