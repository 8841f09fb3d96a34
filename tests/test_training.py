"""Training helpers: the IoU threshold sweep, region folds, calibration, constraints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.config import ModelSettings
from poimatch.lifecycle.training import (
    FOLD,
    Calibration,
    assign_region_folds,
    fit_calibration,
    monotone_constraints,
    sweep_thresholds,
)
from poimatch.stages.features import MONOTONE


def _rows() -> pd.DataFrame:
    return pd.DataFrame({S.ID: ["a", "b", "c"], S.POI: ["P1", "P1", "P2"]})


def _pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {S.ID_L: ["a", "b"], S.ID_R: ["b", "c"], S.SCORE: [0.9, 0.6], S.LABEL: [1, 0]}
    )


def test_sweep_computes_both_groupings_by_hand() -> None:
    choice = sweep_thresholds(_rows(), _pairs(), thresholds=np.array([0.5, 0.7, 0.95]))
    curve = choice.curve.set_index("threshold")
    # 0.5: one component {a,b,c}: 2/3, 2/3, 1/3
    assert curve.loc[0.5, "iou_components"] == pytest.approx(5 / 9)
    # 0.5 pairwise: a {a,b} = 1, b {a,b,c} = 2/3, c {c,b} = 1/2
    assert curve.loc[0.5, "iou_pairwise"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert curve.loc[0.7, "iou_components"] == pytest.approx(1.0)
    # 0.95: nothing matched: a 1/2, b 1/2, c 1
    assert curve.loc[0.95, "iou_components"] == pytest.approx(2 / 3)
    assert (choice.threshold, choice.mode, choice.iou) == (0.7, "components", pytest.approx(1.0))


def test_sweep_prefers_pairwise_when_it_scores_better() -> None:
    # a-b true and b-c false, both scored 0.9: components glue c in, pairwise does not
    pairs = _pairs().assign(**{S.SCORE: [0.9, 0.9]})
    choice = sweep_thresholds(_rows(), pairs, thresholds=np.array([0.5]))
    assert choice.mode == "pairwise"
    assert choice.iou == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert choice.curve.loc[0, "iou_components"] == pytest.approx(5 / 9)


def test_sweep_averages_the_folds_so_a_small_fold_counts_as_much() -> None:
    # fold 0: the a-b-c example (best 0.7); fold 1: one true pair x-y scored 0.6
    rows = pd.concat(
        [
            _rows().assign(**{FOLD: 0}),
            pd.DataFrame({S.ID: ["x", "y"], S.POI: ["Q", "Q"], FOLD: [1, 1]}),
        ]
    )
    pairs = pd.concat(
        [_pairs(), pd.DataFrame({S.ID_L: ["x"], S.ID_R: ["y"], S.SCORE: [0.6], S.LABEL: [1]})]
    )
    choice = sweep_thresholds(rows, pairs, thresholds=np.array([0.5, 0.7]))
    curve = choice.curve.set_index("threshold")
    # 0.5: fold 0 5/9 (components), fold 1 1.0; 0.7: fold 0 1.0, fold 1 0.5
    assert curve.loc[0.5, "iou_components"] == pytest.approx((5 / 9 + 1) / 2)
    assert curve.loc[0.7, "iou_components"] == pytest.approx((1 + 0.5) / 2)
    # pooled rows would pick 0.7 (4 of 5 rows perfect); the fold mean picks 0.5
    assert choice.threshold == 0.5


def _places(spark: SparkSession, centres: list[tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for c, (lat, lon) in enumerate(centres):
        for p in range(20):
            for r in range(2):
                rows.append((f"c{c}p{p}r{r}", f"C{c}P{p}", lat + p * 0.002, lon + r * 0.001))
    return pd.DataFrame(rows, columns=[S.ID, S.POI, S.LATITUDE, S.LONGITUDE])


def test_region_folds_keep_cities_and_places_whole(spark: SparkSession) -> None:
    pdf = _places(spark, [(40.0, -80.0), (55.9, -3.2), (1.3, 103.8), (43.7, -79.4)])
    pois = spark.createDataFrame(pdf)
    folds = assign_region_folds(pois, settings=ModelSettings(folds=3)).toPandas()
    joined = folds.merge(pdf, on=S.ID)
    assert (joined.groupby(S.POI)[FOLD].nunique() == 1).all()
    city = joined[S.ID].str[:2]
    assert (joined.groupby(city)[FOLD].nunique() == 1).all()  # a city is one region
    assert set(joined[FOLD]) == {0, 1, 2}  # four equal cities over three folds


def test_one_region_falls_back_to_cells_of_places(spark: SparkSession) -> None:
    pdf = _places(spark, [(40.0, -80.0)])
    pois = spark.createDataFrame(pdf)
    folds = assign_region_folds(pois, settings=ModelSettings(folds=2, split_cell_deg=0.005))
    joined = folds.toPandas().merge(pdf, on=S.ID)
    assert (joined.groupby(S.POI)[FOLD].nunique() == 1).all()
    assert set(joined[FOLD]) == {0, 1}


def test_calibration_is_monotone_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=2000)
    labels = (rng.uniform(size=2000) < scores**3).astype(float)  # over-confident raw scores
    cal = fit_calibration(scores, labels)
    grid = np.linspace(0, 1, 101)
    mapped = cal.apply(grid)
    assert (np.diff(mapped) >= 0).all()
    assert mapped[50] < 0.3  # a raw 0.5 is about 0.125 in truth
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_monotone_constraints_follow_the_feature_order() -> None:
    features = (S.F_DIST_M, S.F_NAME_LEN_MIN, S.F_PHONE_EQ)
    assert monotone_constraints(features) == "(-1,0,1)"
    assert MONOTONE[S.F_ADDR_LEV_NORM] == -1
