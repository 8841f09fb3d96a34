"""The pair scorer without Spark: booster + calibration, and the MLflow pyfunc around them.

One prediction step serves every path: the batch's pandas UDF, the small plan on the
driver and :class:`PairScorer`, the ``python_function`` model that
:func:`poimatch.lifecycle.tracking.log_matcher` registers (so ``mlflow.pyfunc.load_model`` of a
registered version, ``mlflow models serve`` or Databricks Model Serving score a pandas
frame of pair features to the batch's probabilities). This module imports no Spark and
no other poimatch module: the registered model carries it (``code_paths``) and it must
load where only MLflow, XGBoost, pandas and NumPy are installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.xgboost
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel
from xgboost import Booster

__all__ = [
    "BOOSTER",
    "NAME_STATS",
    "PROBABILITY",
    "SPEC",
    "Calibration",
    "PairScorer",
    "predict_scores",
]

# the pyfunc model's artifacts (keys of ``context.artifacts``)
BOOSTER = "booster"  # the booster, as an mlflow.xgboost model
SPEC = "spec"  # the matching spec (threshold, calibration, feature order, blocking, ...)
NAME_STATS = "name_stats"  # the frozen name statistics the features were computed with
PROBABILITY = "probability"
MATCH = "match"


@dataclass(frozen=True)
class Calibration:
    """A monotone map from raw booster probability to calibrated probability.

    Piecewise linear through ``(x[i], y[i])`` (isotonic regression's knots), constant
    beyond the ends; applied with :func:`numpy.interp`.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw ones."""
        out: np.ndarray = np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """Plain dict for the matching spec."""
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]))


def predict_scores(booster: Booster, frame: pd.DataFrame, calibration: Calibration | None) -> Any:
    """Match probabilities of a frame of feature columns (in the model's order):
    ``inplace_predict`` on float32 features, NaN for missing (as ``xgboost.spark`` does),
    then calibrated. The one prediction step of every path."""
    features = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    probability = np.asarray(booster.inplace_predict(features, missing=np.nan), dtype=np.float64)
    return calibration.apply(probability) if calibration is not None else probability


class PairScorer(PythonModel):
    """``python_function`` model: a pandas frame of pair features -> ``probability``
    (calibrated, as the batch scores) and ``match`` (probability at or above the model's
    threshold). Columns are taken by name in the spec's feature order; extra columns (ids,
    say) are ignored, a missing feature column is a ``KeyError`` naming it.

    The spec and the name statistics travel as artifacts (``context.artifacts``), so the
    served model says what it was trained with; computing the features of raw POI rows
    is the Spark pipeline's job (``poimatch match``), not this model's.
    """

    def load_context(self, context: Any) -> None:
        self.booster = mlflow.xgboost.load_model(Path(context.artifacts[BOOSTER]).as_uri())
        self.booster.set_param({"nthread": 1})
        self.spec: dict[str, Any] = json.loads(Path(context.artifacts[SPEC]).read_text("utf-8"))
        self.features: list[str] = list(self.spec["features"])
        calibration = self.spec.get("calibration")
        self.calibration = Calibration.from_dict(calibration) if calibration else None
        self.threshold = float(self.spec["threshold"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        missing = [f for f in self.features if f not in model_input.columns]
        if missing:
            raise KeyError(f"pair features missing from the input: {missing}")
        frame = model_input[self.features].astype(np.float64)
        probability = predict_scores(self.booster, frame, self.calibration)
        return pd.DataFrame(
            {PROBABILITY: probability, MATCH: probability >= self.threshold},
            index=model_input.index,
        )
