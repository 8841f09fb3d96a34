"""Training helpers: the IoU threshold sweep and the place-wise fold split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.config import ModelSettings
from poimatch.training import FOLD, VALID, assign_folds, sweep_thresholds


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


def test_folds_keep_each_place_on_one_side(spark: SparkSession) -> None:
    rows = [(f"r{i}", f"P{i // 3}", 40.0 + (i // 3) * 0.3, -3.0 + (i % 3) * 0.2) for i in range(60)]
    pois = spark.createDataFrame(
        rows, f"{S.ID} string, {S.POI} string, {S.LATITUDE} double, {S.LONGITUDE} double"
    )
    folds = assign_folds(pois, settings=ModelSettings(validation_fraction=0.5)).toPandas()
    joined = folds.merge(pd.DataFrame(rows, columns=[S.ID, S.POI, "lat", "lon"]), on=S.ID)
    assert (joined.groupby(S.POI)[FOLD].nunique() == 1).all()
    assert 0 < (joined[FOLD] == VALID).mean() < 1
