"""What blocking would produce on a table, before a run: pairs per pass and per row.

Splink users check their blocking rules with ``cumulative_comparisons_to_be_scored``
before they train or predict; this is the same question for poimatch's passes (the
spatial k-nearest pass, then the exact-key passes). A report counts:

* per pass, the pairs it finds, the pairs only it finds, and the distinct pairs of it
  and the passes before it (cumulative, in the configured order);
* per row, how many candidates it has (rows with none are never matched to anything);
* on labelled input (``point_of_interest``), how many of the true pairs blocking keeps:
  the recall ceiling no model can beat.

It runs the production blocking (:func:`poimatch.stages.blocking.candidate_pairs`) on the
normalized rows and reads nothing but its input: no model is scored and nothing is
written. A few aggregations after blocking, each one Spark job over the materialized
pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.stages.blocking import candidate_pairs
from poimatch.stages.normalize import add_normalized_columns

__all__ = ["BlockingReport", "PassCount", "RowSpread", "blocking_report"]

_PASSES = "_passes"
_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class PassCount:
    """One pass: pairs it finds, pairs no other pass finds, distinct pairs up to it."""

    name: str
    pairs: int
    only: int
    cumulative: int


@dataclass(frozen=True)
class RowSpread:
    """Candidates per row: rows with none, the median, 90th and 99th percentile, most."""

    without: int
    median: int
    p90: int
    p99: int
    most: int


@dataclass(frozen=True)
class BlockingReport:
    """Pairs per pass and per row of one blocking configuration on one table."""

    rows: int
    pairs: int
    passes: tuple[PassCount, ...]
    per_row: RowSpread
    true_pairs: int | None = None  # labelled input only
    true_pairs_kept: int | None = None

    @property
    def pairs_per_row(self) -> float:
        return 2.0 * self.pairs / max(self.rows, 1)

    @property
    def recall_ceiling(self) -> float | None:
        """Share of the true pairs that blocking keeps (None without labels)."""
        if self.true_pairs is None or self.true_pairs_kept is None:
            return None
        return self.true_pairs_kept / self.true_pairs if self.true_pairs else 1.0

    def lines(self) -> list[str]:
        """The report as ``key=value`` lines (what ``poimatch blocking-report`` prints)."""
        out = [
            f"rows={self.rows}",
            f"pairs={self.pairs}",
            f"pairs_per_row={self.pairs_per_row:.2f}",
        ]
        width = max(len(p.name) for p in self.passes)
        for p in self.passes:
            out.append(
                f"pass {p.name.ljust(width)} pairs={p.pairs} only_this_pass={p.only} "
                f"cumulative={p.cumulative}"
            )
        spread = self.per_row
        out.append(
            f"candidates_per_row median={spread.median} p90={spread.p90} p99={spread.p99} "
            f"max={spread.most} rows_without_candidates={spread.without}"
        )
        ceiling = self.recall_ceiling
        if ceiling is not None:
            out.append(
                f"true_pairs={self.true_pairs} kept_by_blocking={self.true_pairs_kept} "
                f"recall_ceiling={ceiling:.4f}"
            )
        return out


def _has(name: str) -> Column:
    return F.array_contains(F.col(_PASSES), name)


def _pass_counts(pairs: DataFrame, names: tuple[str, ...]) -> tuple[int, tuple[PassCount, ...]]:
    """Total pairs and each pass's counts, in one aggregation."""
    aggs = [F.count(F.lit(1)).alias("total")]
    for i, name in enumerate(names):
        earlier = [_has(n) for n in names[: i + 1]]
        up_to = earlier[0]
        for cond in earlier[1:]:
            up_to = up_to | cond
        aggs += [
            F.sum(F.when(_has(name), 1).otherwise(0)).alias(f"p{i}"),
            F.sum(F.when(_has(name) & (F.size(_PASSES) == 1), 1).otherwise(0)).alias(f"o{i}"),
            F.sum(F.when(up_to, 1).otherwise(0)).alias(f"c{i}"),
        ]
    row = pairs.select(F.split(F.col(S.PASS), ",").alias(_PASSES)).agg(*aggs).first()
    if row is None:  # an aggregation without grouping always has one row
        raise RuntimeError("the pass counts returned no row")
    counts = tuple(
        PassCount(name, int(row[f"p{i}"] or 0), int(row[f"o{i}"] or 0), int(row[f"c{i}"] or 0))
        for i, name in enumerate(names)
    )
    return int(row["total"]), counts


def _row_spread(points: DataFrame, pairs: DataFrame) -> tuple[int, RowSpread]:
    """Rows, and candidates per row (rows in no pair count 0), in one aggregation."""
    ends = pairs.select(F.col(S.ID_L).alias(S.ID)).unionByName(
        pairs.select(F.col(S.ID_R).alias(S.ID))
    )
    per_id = ends.groupBy(S.ID).agg(F.count(F.lit(1)).alias("_n"))
    counted = points.select(S.ID).join(per_id, on=S.ID, how="left").fillna(0, subset=["_n"])
    row = counted.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col("_n") == 0, 1).otherwise(0)).alias("without"),
        F.percentile_approx("_n", list(_QUANTILES), 10_000).alias("q"),
        F.max("_n").alias("most"),
    ).first()
    if row is None:
        raise RuntimeError("the per-row counts returned no row")
    q = [int(v) for v in (row["q"] or [0] * len(_QUANTILES))]
    spread = RowSpread(int(row["without"] or 0), q[0], q[1], q[2], int(row["most"] or 0))
    return int(row["rows"]), spread


def _true_pairs(points: DataFrame, pairs: DataFrame) -> tuple[int, int] | None:
    """Pairs of rows sharing a ``point_of_interest``, and how many of them are candidates
    (None when no row is labelled)."""
    labelled = points.where(F.col(S.POI).isNotNull())
    sizes = labelled.groupBy(S.POI).count()
    total_row = sizes.agg(
        F.sum(F.col("count")).alias("rows"),
        F.sum(F.col("count") * (F.col("count") - 1) / 2).alias("t"),
    ).first()
    if total_row is None or not total_row["rows"]:
        return None
    labels = labelled.select(S.ID, S.POI)
    kept = (
        pairs.select(S.ID_L, S.ID_R)
        .join(labels.withColumnsRenamed({S.ID: S.ID_L, S.POI: "_pl"}), on=S.ID_L)
        .join(labels.withColumnsRenamed({S.ID: S.ID_R, S.POI: "_pr"}), on=S.ID_R)
        .where(F.col("_pl") == F.col("_pr"))
        .count()
    )
    return int(total_row["t"] or 0), int(kept)


def blocking_report(pois: DataFrame, settings: BlockingSettings) -> BlockingReport:
    """Block ``pois`` (the input layout, typed) as a match run would and count the result.

    The normalized rows and the candidate pairs are each materialized once (a local
    checkpoint), so normalization and blocking run once for all the counts.

    Example:
        >>> report = blocking_report(pois, BlockingSettings(k_nearest=5))  # doctest: +SKIP
        >>> print("\\n".join(report.lines()))  # doctest: +SKIP
    """
    points = pois.transform(add_normalized_columns).localCheckpoint()
    pairs = candidate_pairs(points, settings=settings).localCheckpoint()
    names = ("spatial", *settings.key_passes)
    total, passes = _pass_counts(pairs, names)
    rows, spread = _row_spread(points, pairs)
    truth = _true_pairs(points, pairs) if S.POI in points.columns else None
    true_total, kept = truth if truth is not None else (None, None)
    return BlockingReport(rows, total, passes, spread, true_total, kept)
