"""MLflow: tracking setup, model logging with its matching spec, registry aliases.

The default store is a local SQLite file plus a local artifact folder (see
``tracking`` in ``conf/base.yaml``); ``$MLFLOW_TRACKING_URI`` points it at a server.
Consumers load models by alias (``models:/<name>@champion``), never "latest".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.spark
import mlflow.xgboost
import numpy as np
import pandas as pd
import xgboost
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pyspark import SparkContext

from poimatch import scorer
from poimatch.config import TrackingSettings, is_uri
from poimatch.isolation import check_alias
from poimatch.stages.namestats import NameStats
from poimatch.stages.scoring import BoosterModel, MatchModel, booster_parts
from poimatch.stages.spec import MatchingSpec

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "configure_tracking",
    "log_matcher",
    "assign_alias",
    "load_matcher",
    "default_model_uri",
]

# The operator's choice, read once at import: mlflow.set_tracking_uri() itself exports
# MLFLOW_TRACKING_URI, so reading the variable later would return the last store this
# process used, not the one the settings name.
_ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_ENV_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")

CHAMPION = "champion"
CHALLENGER = "challenger"
_SPEC_KEY = "poimatch_spec"
_STATS_KEY = "poimatch_name_stats"
_STATS_PATH = "matcher"
_STATS_FILE = "name_stats.json"
# where the spec's name statistics are, in a model's metadata: its own artifact
_STATS_ARTIFACT = f"artifacts/{_STATS_FILE}"


def configure_tracking(settings: TrackingSettings) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    uri = _ENV_TRACKING_URI or settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(_ENV_REGISTRY_URI or settings.registry_uri or uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is None:
        artifact = settings.artifact_root
        location = artifact if is_uri(artifact) else Path(artifact).as_uri()
        return mlflow.create_experiment(settings.experiment, artifact_location=location)
    return experiment.experiment_id


def default_model_uri(name: str) -> str:
    """The production model: ``models:/<name>@champion``."""
    return f"models:/{name}@{CHAMPION}"


def log_matcher(
    model: MatchModel,
    *,
    registered_name: str,
    spec: MatchingSpec,
    input_example: pd.DataFrame,
) -> tuple[str, str]:
    """Log the fitted matcher in the active run as one MLflow model and register it.

    The model is a ``python_function`` model (:class:`poimatch.scorer.PairScorer`) whose
    artifacts are the booster (an ``mlflow.xgboost`` model: what the batch jobs and the
    service load, :func:`load_matcher`), the matching spec and the frozen name
    statistics. No Spark pipeline is saved: matching scores with the booster alone, and
    the pipeline cost a Spark save at training and a Spark load (four jobs) at every
    load. ``mlflow.pyfunc.load_model``
    of the registered version scores a pandas frame of pair features to the batch's
    probabilities, with nothing but MLflow, XGBoost and pandas; it carries its code
    (``code_paths``), so ``mlflow models serve`` and Model Serving can run it. The
    signature is the model's own: ``input_example``'s features and what the model
    predicts for them. The spec also goes in the model's metadata (readable without
    downloading it) and the name statistics also as the run artifact
    ``matcher/name_stats.json``.

    Returns:
        ``(model_uri, version)`` where ``model_uri`` is ``models:/<name>/<version>``.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_matcher needs an active MLflow run")
    parts = booster_parts(model)
    if parts is None:
        raise ValueError("log_matcher needs a BoosterModel or an assembler + XGBoost pipeline")
    columns, booster = parts
    if tuple(columns) != tuple(spec.features):
        raise ValueError(f"the pipeline's features {columns} are not the spec's {spec.features}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stats_file = folder / _STATS_FILE
        spec.stats().save(stats_file)
        mlflow.log_artifact(str(stats_file), artifact_path=_STATS_PATH)
        spec_file = folder / "spec.json"
        spec_file.write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
        booster_dir = folder / scorer.BOOSTER
        # requirements named, not inferred: MLflow infers them by loading the model in a
        # fresh Python process (for the Spark flavor, with a JVM of its own): 10-20 s each
        mlflow.xgboost.save_model(
            booster,
            str(booster_dir),
            model_format="ubj",
            pip_requirements=[f"xgboost=={xgboost.__version__}"],
        )
        artifacts = {
            scorer.BOOSTER: str(booster_dir),
            scorer.SPEC: str(spec_file),
            scorer.NAME_STATS: str(stats_file),
        }
        python_model = scorer.PairScorer()
        # the signature from what the model really predicts for the example
        python_model.load_context(SimpleNamespace(artifacts=artifacts))
        example = input_example[list(spec.features)].astype("float64")
        output = python_model.predict(None, example)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(scorer.__file__).with_name("scorer_model.py")),
            artifacts=artifacts,
            code_paths=[str(Path(scorer.__file__).parent)],  # the package: poimatch.scorer
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"xgboost=={xgboost.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=registered_name,
            metadata={_SPEC_KEY: spec.to_dict(), _STATS_KEY: _STATS_ARTIFACT},
        )
    version = str(info.registered_model_version)
    return f"models:/{registered_name}/{version}", version


def assign_alias(name: str, version: str, *, research: bool = False) -> str:
    """``champion`` for the first version of a model, ``challenger`` for later ones.

    Research models are always ``challenger``: a research run never names a champion.
    Promotion of a challenger to champion is the promotion gate's job, not this one.
    """
    check_alias(name, CHALLENGER)
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(name, CHAMPION)
        alias = CHALLENGER
    except mlflow.exceptions.MlflowException:
        alias = CHALLENGER if research else CHAMPION
    client.set_registered_model_alias(name, alias, version)
    return alias


#: registered versions loaded in this process, with the Spark context a Spark pipeline
#: was loaded in (see :func:`load_matcher`)
_LOADED: dict[tuple[str, ...], tuple[Any, MatchModel, MatchingSpec, dict[str, Any]]] = {}
_LOADED_MAX = 4


def _version_key(model_uri: str) -> tuple[str, ...] | None:
    """``(registry, name, version, run id, source)`` of the registered version
    ``model_uri`` names, looked up now (an alias that moved is followed; a deleted version
    raises, as loading it would); ``None`` for any other kind of URI."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            return None
        found = client.get_model_version(name, version)
    return (
        mlflow.get_registry_uri(),
        str(found.name),
        str(found.version),
        str(found.run_id or ""),
        str(found.source or ""),
    )


def load_matcher(model_uri: str) -> tuple[MatchModel, MatchingSpec, dict[str, Any]]:
    """Load a registered model's scorer and the matching spec (with name statistics) it
    was trained with.

    Reads the models :func:`log_matcher` writes (a ``python_function`` model): the
    booster artifact, as a :class:`~poimatch.stages.scoring.BoosterModel`, with no Spark
    job and without downloading anything else the model holds (a Spark pipeline, in
    models logged before 2026-12-07). Models logged before the pyfunc wrapper (an
    ``mlflow.spark`` model with the name statistics as a run artifact named in its
    metadata) load as their Spark pipeline.

    A registered version (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, resolved
    against the registry on every call) is loaded once per process (a Spark pipeline once
    per Spark context, the JVM it lives in): a version's artifacts never change. The last
    :data:`_LOADED_MAX` versions are kept.

    Raises:
        ValueError: the model has no poimatch spec (not trained by poimatch) or no
            name statistics (trained by a poimatch before they were frozen).
    """
    key = _version_key(model_uri)
    context = SparkContext._active_spark_context  # the JVM a Spark pipeline lives in
    known = _LOADED.get(key) if key is not None else None
    if known is not None and (known[0] is context or isinstance(known[1], BoosterModel)):
        _, model, spec, meta = known
        return model, spec, dict(meta)
    # the version resolved once: an alias moving between two downloads changes nothing
    model, spec, meta = _load_matcher(f"models:/{key[1]}/{key[2]}" if key else model_uri)
    if key is not None and (context is not None or isinstance(model, BoosterModel)):
        _LOADED.pop(key, None)
        _LOADED[key] = (context, model, spec, meta)
        while len(_LOADED) > _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
    return model, spec, dict(meta)


def _load_matcher(model_uri: str) -> tuple[MatchModel, MatchingSpec, dict[str, Any]]:
    info = mlflow.models.get_model_info(model_uri)
    meta = info.metadata or {}
    if _SPEC_KEY not in meta:
        raise ValueError(f"{model_uri}: no '{_SPEC_KEY}' in the model metadata")
    if _STATS_KEY not in meta:
        raise ValueError(
            f"{model_uri}: no name statistics (trained by an older poimatch); retrain it"
        )
    model: MatchModel
    with tempfile.TemporaryDirectory() as tmp:
        if "spark" in info.flavors:  # a model logged before the pyfunc wrapper
            model = mlflow.spark.load_model(model_uri, dfs_tmpdir=str(Path(tmp) / "dfs"))
            local = mlflow.artifacts.download_artifacts(artifact_uri=meta[_STATS_KEY], dst_path=tmp)
        else:
            # the two artifacts matching reads, not the whole model
            booster_dir = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri}/artifacts/{scorer.BOOSTER}", dst_path=tmp
            )
            booster = mlflow.xgboost.load_model(Path(booster_dir).as_uri())
            model = BoosterModel(tuple(meta[_SPEC_KEY]["features"]), booster)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri}/{_STATS_ARTIFACT}", dst_path=tmp
            )
        stats = NameStats.load(Path(local))
    return model, MatchingSpec.from_dict(meta[_SPEC_KEY], name_stats=stats), meta
