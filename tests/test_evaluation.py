"""Evaluation: IoU, pairwise metrics and candidate metrics on hand-made frames."""

from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.lifecycle.evaluation import (
    candidate_report,
    iou,
    label_pairs,
    matches_to_pairs,
    pair_metrics,
    truth_pairs,
)


def _truth(spark: SparkSession) -> DataFrame:
    # places: P1 = {a, b, c}, P2 = {d}, P3 = {e, f}
    rows = [("a", "P1"), ("b", "P1"), ("c", "P1"), ("d", "P2"), ("e", "P3"), ("f", "P3")]
    return spark.createDataFrame(rows, f"{S.ID} string, {S.POI} string")


def _sub(spark: SparkSession, rows: list[tuple[str, str]]) -> DataFrame:
    return spark.createDataFrame(rows, f"{S.ID} string, {S.MATCHES} string")


def test_perfect_submission_scores_one(spark: SparkSession) -> None:
    sub = _sub(
        spark,
        [("a", "a b c"), ("b", "b a c"), ("c", "c a b"), ("d", "d"), ("e", "e f"), ("f", "f e")],
    )
    assert iou(sub, _truth(spark)).iou == pytest.approx(1.0)


def test_iou_per_row_mean_by_hand(spark: SparkSession) -> None:
    # a: {a,b} vs {a,b,c} = 2/3; b: {b,a,d} vs {a,b,c} = 2/4; c: {c} vs {a,b,c} = 1/3
    # d: {d,a} vs {d} = 1/2 ; e: {e} vs {e,f} = 1/2 ; f missing -> 0
    sub = _sub(spark, [("a", "a b"), ("b", "b a d"), ("c", "c"), ("d", "d a"), ("e", "e")])
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("iou", "iou")
    try:
        report = iou(sub, _truth(spark))
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    expected = (2 / 3 + 2 / 4 + 1 / 3 + 1 / 2 + 1 / 2 + 0) / 6
    assert report.iou == pytest.approx(expected)
    assert (report.rows, report.missing_rows, report.extra_rows) == (6, 1, 0)
    # the mean and the missing and extra rows come from one Spark job
    assert len(tracker.getJobIdsForGroup("iou")) == 1
    # an id the truth does not hold is an extra row (each time it is listed)
    more = sub.unionAll(_sub(spark, [("x", "x a"), ("x", "x")]))
    again = iou(more, _truth(spark))
    assert (again.rows, again.missing_rows, again.extra_rows) == (6, 1, 2)
    assert again.iou == pytest.approx(report.iou)


def test_identity_submission(spark: SparkSession) -> None:
    sub = _sub(spark, [(i, i) for i in "abcdef"])
    expected = (1 / 3 * 3 + 1 + 1 / 2 * 2) / 6
    assert iou(sub, _truth(spark)).iou == pytest.approx(expected)


def test_pair_metrics(spark: SparkSession) -> None:
    truth = truth_pairs(_truth(spark))
    assert sorted(tuple(r) for r in truth.collect()) == [
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("e", "f"),
    ]
    sub = _sub(spark, [("a", "a b"), ("b", "b a"), ("d", "d e")])
    predicted = matches_to_pairs(sub)
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("pair-metrics", "pair-metrics")
    try:
        m = pair_metrics(predicted, truth)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert (m.precision, m.recall) == pytest.approx((0.5, 0.25))
    assert m.f1 == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert (m.true_pairs, m.predicted_pairs) == (4, 2)
    # the three counts come from one Spark job (one pass over one join)
    assert len(tracker.getJobIdsForGroup("pair-metrics")) == 1
    # nothing predicted: no precision, no recall; nothing true: recall 1
    none = pair_metrics(predicted.limit(0), truth)
    assert (none.precision, none.recall, none.predicted_pairs) == (0.0, 0.0, 0)
    assert pair_metrics(predicted, truth.limit(0)).recall == 1.0


def test_label_pairs(spark: SparkSession) -> None:
    pairs = spark.createDataFrame([("a", "b"), ("a", "d")], f"{S.ID_L} string, {S.ID_R} string")
    got = {(r[S.ID_L], r[S.ID_R]): r[S.LABEL] for r in label_pairs(pairs, _truth(spark)).collect()}
    assert got == {("a", "b"): 1, ("a", "d"): 0}


def test_candidate_report_ceiling_uses_transitivity(spark: SparkSession) -> None:
    # candidates hold a-b and b-c (not a-c) and e-d (a negative); e-f is missed
    cands = spark.createDataFrame(
        [("a", "b"), ("b", "c"), ("d", "e")], f"{S.ID_L} string, {S.ID_R} string"
    )
    r = candidate_report(cands, _truth(spark))
    assert (r.rows, r.candidates) == (6, 3)
    assert r.per_row == pytest.approx(1.0)
    assert r.pair_recall == pytest.approx(2 / 4)
    # a, b, c, d perfect; e and f each 1/2
    assert r.iou_ceiling == pytest.approx((4 + 0.5 + 0.5) / 6)
    # a pair listed twice among the candidates is found once: the recall stays a share
    twice = cands.unionAll(cands.where(f"{S.ID_L} = 'a' AND {S.ID_R} = 'b'"))
    again = candidate_report(twice, _truth(spark))
    assert again.candidates == 4
    assert again.pair_recall == pytest.approx(2 / 4)
    assert again.iou_ceiling == pytest.approx(r.iou_ceiling)
