"""poimatch: Spark-scale batch matching of points of interest.

The public facade; stages live in their modules (``blocking``, ``features``,
``training``, ``grouping``, ``evaluation``), the verbs in ``workflows`` and ``batch``.
Names are imported on first use so that ``import poimatch`` stays light.

Example:
    >>> from poimatch import build_session, load_settings, match_pois  # doctest: +SKIP
    >>> settings = load_settings("local")
    >>> spark = build_session(settings.spark)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "build_session",
    "generate_pois",
    "ingest_file",
    "iou",
    "load_pois",
    "load_settings",
    "match_pois",
    "train_model",
]

_WHERE = {
    "build_session": "poimatch.session",
    "generate_pois": "poimatch.generator",
    "ingest_file": "poimatch.ingest",
    "iou": "poimatch.evaluation",
    "load_pois": "poimatch.batch",
    "load_settings": "poimatch.config",
    "match_pois": "poimatch.workflows",
    "train_model": "poimatch.workflows",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'poimatch' has no attribute {name!r}")
