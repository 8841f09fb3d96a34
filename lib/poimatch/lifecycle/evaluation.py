"""Evaluation in Spark: IoU of match sets, pairwise metrics, candidate-stage metrics.

IoU is the mean over truth rows of |P ∩ T| / |P ∪ T|, where T is the set of ids that
share the row's ``point_of_interest`` (itself included) and P the row's predicted
``matches``. A truth row missing from the submission scores 0. Everything is joins
and aggregations, so it scales with the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from poimatch import schema as S

__all__ = [
    "IouReport",
    "PairMetrics",
    "CandidateReport",
    "truth_pairs",
    "iou",
    "pair_metrics",
    "candidate_report",
    "label_pairs",
    "matches_to_pairs",
]

_O = "_other"


@dataclass(frozen=True)
class IouReport:
    """Mean IoU and how many truth rows the submission missed or added."""

    iou: float
    rows: int
    missing_rows: int
    extra_rows: int


@dataclass(frozen=True)
class PairMetrics:
    """Pairwise precision / recall / F1 of predicted vs true matching pairs."""

    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int


@dataclass(frozen=True)
class CandidateReport:
    """What the candidate stage keeps: counts, pair recall and the IoU ceiling."""

    rows: int
    candidates: int
    per_row: float
    pair_recall: float
    iou_ceiling: float


def truth_pairs(pois: DataFrame) -> DataFrame:
    """Canonical true matching pairs ``(id_l, id_r)`` from ``point_of_interest``."""
    a = pois.select(F.col(S.ID).alias(S.ID_L), F.col(S.POI))
    b = pois.select(F.col(S.ID).alias(S.ID_R), F.col(S.POI))
    return (
        a.join(b, on=S.POI, how="inner")
        .where(F.col(S.ID_L) < F.col(S.ID_R))
        .select(S.ID_L, S.ID_R)
        .distinct()
    )


def label_pairs(pairs: DataFrame, pois: DataFrame) -> DataFrame:
    """Add ``label`` (1 when both sides share ``point_of_interest``) to pairs."""
    poi_l = pois.select(F.col(S.ID).alias(S.ID_L), F.col(S.POI).alias("_poi_l"))
    poi_r = pois.select(F.col(S.ID).alias(S.ID_R), F.col(S.POI).alias("_poi_r"))
    return (
        pairs.join(poi_l, on=S.ID_L, how="left")
        .join(poi_r, on=S.ID_R, how="left")
        .withColumn(S.LABEL, (F.col("_poi_l") == F.col("_poi_r")).cast("int"))
        .drop("_poi_l", "_poi_r")
    )


def _set_pairs_from_truth(pois: DataFrame) -> DataFrame:
    """(id, other) for every ordered pair of the same place, self included."""
    a = pois.select(S.ID, S.POI)
    b = pois.select(F.col(S.ID).alias(_O), S.POI)
    return a.join(b, on=S.POI, how="inner").select(S.ID, _O)


def _set_pairs_from_matches(matches: DataFrame) -> DataFrame:
    """(id, other) for every id in the row's ``matches``; the row itself always counts."""
    listed = matches.select(S.ID, F.explode(F.split(F.trim(F.col(S.MATCHES)), r"\s+")).alias(_O))
    own = matches.select(S.ID, F.col(S.ID).alias(_O))
    return listed.where(F.col(_O) != "").unionByName(own).distinct()


def _iou_from_sets(pred: DataFrame, true: DataFrame, truth_ids: DataFrame) -> DataFrame:
    p_size = pred.groupBy(S.ID).agg(F.count(F.lit(1)).alias("_p"))
    t_size = true.groupBy(S.ID).agg(F.count(F.lit(1)).alias("_t"))
    inter = (
        pred.join(true, on=[S.ID, _O], how="inner").groupBy(S.ID).agg(F.count(F.lit(1)).alias("_i"))
    )
    per_row = (
        truth_ids.join(t_size, on=S.ID, how="left")
        .join(p_size, on=S.ID, how="left")
        .join(inter, on=S.ID, how="left")
        .fillna(0, subset=["_p", "_i"])
    )
    return per_row.withColumn(
        "_iou",
        F.when(F.col("_p") == 0, F.lit(0.0)).otherwise(
            F.col("_i") / (F.col("_p") + F.col("_t") - F.col("_i"))
        ),
    )


def iou(matches: DataFrame, truth: DataFrame) -> IouReport:
    """Mean IoU of ``matches`` (``id``, ``matches``) against ``truth`` POIs.

    Example:
        >>> iou(submission_df, truth_df).iou  # doctest: +SKIP
        0.93
    """
    truth_ids = truth.select(S.ID).distinct()
    per_row = _iou_from_sets(
        _set_pairs_from_matches(matches), _set_pairs_from_truth(truth), truth_ids
    )
    scores = per_row.agg(
        F.avg("_iou").alias("iou"),
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col("_p") == 0, 1).otherwise(0)).alias("missing"),
    )
    extra = (
        matches.select(S.ID)
        .join(truth_ids, on=S.ID, how="left_anti")
        .agg(F.count(F.lit(1)).alias("extra"))
    )
    row = _one_row(scores, extra)
    if row["rows"] == 0:
        raise ValueError("truth has no rows")
    return IouReport(
        float(row["iou"]), int(row["rows"]), int(row["missing"] or 0), int(row["extra"])
    )


def _one_row(*aggregates: DataFrame) -> dict[str, Any]:
    """Global aggregates (one row each, distinct column names) read in one Spark job:
    their union, tagged by part, collected (a cross join would broadcast a side first, a
    job of its own). Returns every aggregate's columns."""
    tagged = [a.withColumn("_part", F.lit(i)) for i, a in enumerate(aggregates)]
    union = tagged[0]
    for other in tagged[1:]:
        union = union.unionByName(other, allowMissingColumns=True)
    rows = {int(r["_part"]): r for r in union.collect()}
    return {c: rows[i][c] for i, a in enumerate(aggregates) for c in a.columns}


def pair_metrics(predicted_pairs: DataFrame, true_pairs: DataFrame) -> PairMetrics:
    """Precision/recall/F1 of canonical predicted pairs against canonical true pairs."""
    keys = [S.ID_L, S.ID_R]
    pred = predicted_pairs.select(*keys).distinct().withColumn("_pred", F.lit(True))
    true = true_pairs.select(*keys).distinct().withColumn("_true", F.lit(True))
    # the three counts from one pass over one join (one Spark job, not three)
    row = _one_row(
        pred.join(true, on=keys, how="full_outer").agg(
            F.count("_pred").alias("n_pred"),
            F.count("_true").alias("n_true"),
            F.count(F.when(F.col("_pred") & F.col("_true"), 1)).alias("tp"),
        )
    )
    n_pred, n_true, tp = int(row["n_pred"]), int(row["n_true"]), int(row["tp"])
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairMetrics(precision, recall, f1, n_true, n_pred)


def matches_to_pairs(matches: DataFrame) -> DataFrame:
    """Canonical pairs implied by an output: the row with each of its listed matches."""
    pairs = _set_pairs_from_matches(matches).where(F.col(S.ID) != F.col(_O))
    return pairs.select(
        F.least(S.ID, _O).alias(S.ID_L), F.greatest(S.ID, _O).alias(S.ID_R)
    ).distinct()


def candidate_report(
    candidates: DataFrame, truth: DataFrame, *, max_iterations: int = 40
) -> CandidateReport:
    """Candidate count, candidates per row, pair recall and the IoU ceiling.

    The ceiling is the IoU a perfect classifier reaches on these candidates: keep
    exactly the true candidate pairs and group them with connected components, as
    the match job does.
    """
    from poimatch.stages.grouping import connected_components

    keys = [S.ID_L, S.ID_R]
    true = truth_pairs(truth)
    # the four counts in one Spark job; the true pairs and those among the candidates
    # (each once, however often it is a candidate) from one pass over one join
    flagged = candidates.select(*keys).distinct().withColumn("_found", F.lit(True))
    counted = _one_row(
        truth.select(S.ID).distinct().agg(F.count(F.lit(1)).alias("n_rows")),
        candidates.agg(F.count(F.lit(1)).alias("n_cand")),
        true.join(flagged, on=keys, how="left").agg(
            F.count(F.lit(1)).alias("n_true"), F.count("_found").alias("n_found")
        ),
    )
    n_rows, n_cand = int(counted["n_rows"]), int(counted["n_cand"])
    n_true, n_found = int(counted["n_true"]), int(counted["n_found"])
    found = candidates.select(*keys).join(true, on=keys, how="inner")
    groups = connected_components(truth.select(S.ID), found, max_iterations=max_iterations)
    members = groups.groupBy(S.GROUP_ID).agg(F.collect_list(S.ID).alias("_m"))
    matches = groups.join(members, on=S.GROUP_ID, how="inner").select(
        S.ID, F.concat_ws(" ", F.col("_m")).alias(S.MATCHES)
    )
    ceiling = iou(matches, truth).iou
    return CandidateReport(
        rows=n_rows,
        candidates=n_cand,
        per_row=2.0 * n_cand / n_rows if n_rows else 0.0,
        pair_recall=n_found / n_true if n_true else 1.0,
        iou_ceiling=ceiling,
    )
