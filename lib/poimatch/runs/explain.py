"""Why two rows match (or not): each comparison's push on the pair's score.

:func:`explain_pair` computes the pair's features with the pipeline's own stages (the
model's frozen name statistics, so the values are the ones a match run scores) and asks
the model's booster for SHAP contributions (XGBoost ``pred_contribs``): one log-odds
contribution per feature plus a bias, summing exactly to the model's raw margin, whose
sigmoid is the uncalibrated probability; the calibrated score (what a match run compares
with the threshold) is reported beside it. A pair's features depend on its two rows
only (no table-wide context), so any two rows can be explained, found by blocking or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from xgboost import DMatrix

from poimatch import schema as S
from poimatch.scorer import predict_scores
from poimatch.stages.candidates import cached_points, featured_pairs
from poimatch.stages.plan import SMALL
from poimatch.stages.scoring import MatchModel, booster_parts
from poimatch.stages.spec import MatchingSpec

__all__ = ["Explanation", "explain_pair"]


@dataclass(frozen=True)
class Explanation:
    """One pair's features, their contributions (log-odds) and the resulting scores."""

    id_l: str
    id_r: str
    values: dict[str, float | None]
    contributions: dict[str, float]
    bias: float
    probability: float  # sigmoid(bias + sum of contributions): the booster's own output
    score: float  # calibrated, as a match run scores the pair
    threshold: float

    @property
    def margin(self) -> float:
        """The booster's raw log-odds: bias plus every contribution."""
        return self.bias + sum(self.contributions.values())

    def ranked(self) -> list[tuple[str, float]]:
        """Contributions, largest push (either way) first."""
        return sorted(self.contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))

    def lines(self, top: int = 15) -> list[str]:
        """A text waterfall: bias, then the ``top`` largest contributions, running total."""
        verdict = "match" if self.score >= self.threshold else "no match"
        out = [
            f"pair {self.id_l} {self.id_r}: score={self.score:.4f} ({verdict} at threshold "
            f"{self.threshold:.2f}) probability={self.probability:.4f} margin={self.margin:+.4f}",
            f"{'feature':<28} {'value':>12} {'contribution':>13} {'running':>9}",
            f"{'(bias)':<28} {'':>12} {self.bias:>+13.4f} {self.bias:>+9.4f}",
        ]
        running = self.bias
        shown = self.ranked()[:top]
        for name, contribution in shown:
            running += contribution
            value = self.values.get(name)
            text = "null" if value is None else f"{value:.4g}"
            out.append(f"{name:<28} {text:>12} {contribution:>+13.4f} {running:>+9.4f}")
        rest = self.ranked()[top:]
        if rest:
            running += sum(c for _, c in rest)
            out.append(
                f"{f'({len(rest)} more)':<28} {'':>12} "
                f"{sum(c for _, c in rest):>+13.4f} {running:>+9.4f}"
            )
        return out

    def plot(self, path: str | Path, top: int = 15) -> Path:
        """The waterfall as a PNG (matplotlib, no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = self.ranked()[:top]
        labels = ["(bias)", *[name for name, _ in shown]]
        steps = [self.bias, *[c for _, c in shown]]
        starts = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
        colours = ["#888888", *["#2a9d8f" if c >= 0 else "#e76f51" for _, c in shown]]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.5))
        ax.barh(range(len(labels)), steps, left=starts, color=colours)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.5)
        ax.margins(x=0.05)
        ax.set_xlabel("log-odds")
        ax.set_title(f"{self.id_l} vs {self.id_r}: score {self.score:.3f}")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def explain_pair(
    pois: DataFrame, id_a: str, id_b: str, *, model: MatchModel, spec: MatchingSpec
) -> Explanation:
    """Explain the model's score of the pair ``(id_a, id_b)`` of ``pois`` (typed POIs).

    Raises:
        ValueError: an id is not in ``pois`` (named), the two ids are equal, or the model
            is not poimatch's assembler + XGBoost pipeline.
    """
    if id_a == id_b:
        raise ValueError(f"explain needs two different ids (got {id_a!r} twice)")
    parts = booster_parts(model)
    if parts is None:
        raise ValueError("this model is not an assembler + XGBoost pipeline: nothing to explain")
    columns, booster = parts
    rows = pois.where(F.col(S.ID).isin(id_a, id_b))
    found = {r[S.ID] for r in rows.select(S.ID).collect()}
    missing = [i for i in (id_a, id_b) if i not in found]
    if missing:
        raise ValueError(f"id(s) not in the input: {', '.join(missing)}")
    points = cached_points(rows, stats=spec.stats(), plan=SMALL)
    id_l, id_r = sorted((id_a, id_b))
    spark = pois.sparkSession
    pair = spark.createDataFrame(
        [(id_l, id_r, "explain")],
        T.StructType(
            [
                T.StructField(S.ID_L, T.StringType()),
                T.StructField(S.ID_R, T.StringType()),
                T.StructField(S.PASS, T.StringType()),
            ]
        ),
    )
    featured = featured_pairs(pair, points, plan=SMALL, added=spec.added)
    frame = featured.select(*[F.col(c).cast(T.DoubleType()).alias(c) for c in columns]).toPandas()
    features = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    matrix = DMatrix(features, missing=np.nan)
    contribs = np.asarray(
        booster.predict(matrix, pred_contribs=True, validate_features=False), dtype=np.float64
    )[0]
    # the pipeline's own prediction step: uncalibrated, then as a match run scores it
    probability = float(predict_scores(booster, frame, None)[0])
    score = float(predict_scores(booster, frame, spec.calibration)[0])
    row = frame.iloc[0].to_numpy(dtype=np.float64, na_value=np.nan)
    values = {
        c: (None if math.isnan(float(v)) else float(v)) for c, v in zip(columns, row, strict=True)
    }
    return Explanation(
        id_l=id_l,
        id_r=id_r,
        values=values,
        contributions={c: float(v) for c, v in zip(columns, contribs[:-1], strict=True)},
        bias=float(contribs[-1]),
        probability=probability,
        score=score,
        threshold=spec.threshold,
    )
