"""The matching spec: what a trained model needs at match time (threshold, grouping,
features and their definitions, blocking, calibration, frozen name statistics).

Stored with the model in MLflow (:mod:`poimatch.lifecycle.tracking`); read by the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from poimatch.scorer import Calibration
from poimatch.stages.comparisons import BUILTIN_NAMES, Comparison, definitions
from poimatch.stages.features import DEFAULT_FEATURES, FEATURE_COLUMNS
from poimatch.stages.namestats import NameStats

__all__ = [
    "ALL_FEATURES",
    "KNOWN_FEATURES",
    "MatchingSpec",
    "check_features",
]

ALL_FEATURES: tuple[str, ...] = DEFAULT_FEATURES
"""The features a model uses by default (``model.features`` unset)."""
KNOWN_FEATURES: tuple[str, ...] = FEATURE_COLUMNS
"""Every feature the pipeline computes (a model may use any subset)."""


def check_features(
    features: tuple[str, ...], added: tuple[Comparison, ...] = ()
) -> tuple[str, ...]:
    """``features`` if every name is a built-in feature or one of the ``added``
    comparisons; else ``ValueError`` naming the unknown ones and what is known."""
    definitions(features, added)
    return features


@dataclass(frozen=True)
class MatchingSpec:
    """What a trained model needs at match time; stored with the model in MLflow.

    ``name_stats`` (the frozen name statistics, :mod:`poimatch.stages.namestats`) is too large
    for the model's metadata: it travels as an artifact of the training run and is
    attached when the model is loaded (:func:`poimatch.lifecycle.tracking.load_matcher`).
    """

    threshold: float
    grouping_mode: str
    max_group_size: int
    features: tuple[str, ...]
    blocking: dict[str, Any]
    calibration: Calibration | None = None
    training: dict[str, Any] = field(default_factory=dict)
    name_stats: NameStats | None = field(default=None, compare=False, repr=False)
    #: the full definition of each of ``features`` (kind, column, scorer, direction);
    #: a spec stored before comparisons were configurable gets the built-ins'
    comparisons: tuple[Comparison, ...] = ()

    def __post_init__(self) -> None:
        # only when every feature is a built-in one (a spec naming others must bring
        # their definitions; an empty one, e.g. a stand-in, gets none)
        builtin_only = all(f in BUILTIN_NAMES for f in self.features)
        if not self.comparisons and self.features and builtin_only:
            object.__setattr__(self, "comparisons", definitions(self.features))

    @property
    def added(self) -> tuple[Comparison, ...]:
        """The comparisons of this spec that are not built in (computed in addition)."""
        return tuple(c for c in self.comparisons if c.name not in BUILTIN_NAMES)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for MLflow model metadata (without the name statistics)."""
        return {
            "threshold": self.threshold,
            "grouping_mode": self.grouping_mode,
            "max_group_size": self.max_group_size,
            "features": list(self.features),
            "blocking": self.blocking,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "training": self.training,
            "comparisons": [c.model_dump(mode="json") for c in self.comparisons],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], name_stats: NameStats | None = None) -> MatchingSpec:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` naming a missing field."""
        calibration = data.get("calibration")
        return cls(
            threshold=float(data["threshold"]),
            grouping_mode=str(data["grouping_mode"]),
            max_group_size=int(data["max_group_size"]),
            features=tuple(data["features"]),
            blocking=dict(data["blocking"]),
            calibration=Calibration.from_dict(calibration) if calibration else None,
            training=dict(data.get("training") or {}),
            name_stats=name_stats,
            comparisons=tuple(Comparison.model_validate(c) for c in data.get("comparisons") or ()),
        )

    def stats(self) -> NameStats:
        """The frozen name statistics; ``ValueError`` when the spec was loaded without."""
        if self.name_stats is None:
            raise ValueError(
                "this matching spec has no name statistics: load the model with "
                "poimatch.lifecycle.tracking.load_matcher (a model trained before poimatch froze "
                "its name statistics must be retrained)"
            )
        return self.name_stats
