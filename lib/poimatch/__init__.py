"""poimatch: Spark-scale batch matching of points of interest.

The public facade is :class:`~poimatch.matcher.Matcher`: one object over a configuration
and a Spark session whose methods are the product's verbs (ingest, train, match, match
against the POI table, evaluate, explain, blocking report, promote, rollback), each
returning a typed result. The package follows the data path:

- ``stages``: normalize, name statistics, blocking, comparisons and features,
  candidates, scoring, grouping, the matching spec, and how they run (``plan``); each
  importable without a running Spark;
- ``runs``: the stages in order for one kind of run (``workflows`` train / match,
  ``batch`` with its reads and writes, ``incremental``, ``against``, ``explain``,
  ``blocking_report``, ``promotion``);
- ``lifecycle``: training, tracking (MLflow), evaluation;
- ``io``: tables, ingest, contracts (great_expectations), the lookup table, triage;
- ``apps``: the console script's commands, the CLI helpers and the REST service;
- ``research``: the notebooks' helpers; ``sample``: the labelled data generator, outside
  the production import path;
- at the top: ``schema``, ``config``, ``session``, ``isolation`` (the production guard)
  and ``scorer`` (the registered model's code).

Names are imported on first use so that ``import poimatch`` stays light.

Example:
    >>> from poimatch import Matcher  # doctest: +SKIP
    >>> matcher = Matcher.from_config("local")
    >>> report = matcher.match("pois.csv", output_csv="/tmp/out.csv")
    >>> report.candidates, report.groups
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Matcher",
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
    "Matcher": "poimatch.matcher",
    "build_session": "poimatch.session",
    "generate_pois": "poimatch.sample.generator",
    "ingest_file": "poimatch.io.ingest",
    "iou": "poimatch.lifecycle.evaluation",
    "load_pois": "poimatch.runs.batch",
    "load_settings": "poimatch.config",
    "match_pois": "poimatch.runs.workflows",
    "train_model": "poimatch.runs.workflows",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'poimatch' has no attribute {name!r}")
