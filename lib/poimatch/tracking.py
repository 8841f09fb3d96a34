"""MLflow: tracking setup, model logging with its matching spec, registry aliases.

The default store is a local SQLite file plus a local artifact folder (see
``tracking`` in ``conf/base.yaml``); ``$MLFLOW_TRACKING_URI`` points it at a server.
Consumers load models by alias (``models:/<name>@champion``), never "latest".
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel

from poimatch.config import TrackingSettings, is_uri
from poimatch.isolation import check_alias
from poimatch.namestats import NameStats
from poimatch.pipeline import MatchingSpec

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "configure_tracking",
    "log_spark_model",
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


def log_spark_model(
    model: PipelineModel,
    *,
    registered_name: str,
    spec: MatchingSpec,
    input_example: pd.DataFrame,
) -> tuple[str, str]:
    """Log the fitted pipeline in the active run and register it.

    The spec's frozen name statistics go beside it as the run artifact
    ``matcher/name_stats.json``, named in the model's metadata.

    Returns:
        ``(model_uri, version)`` where ``model_uri`` is ``models:/<name>/<version>``.
    """
    output = pd.DataFrame({"probability": [0.5] * len(input_example)})
    signature = infer_signature(input_example, output)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_spark_model needs an active MLflow run")
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / _STATS_FILE
        spec.stats().save(stats_file)
        mlflow.log_artifact(str(stats_file), artifact_path=_STATS_PATH)
        stats_uri = f"runs:/{run.info.run_id}/{_STATS_PATH}/{_STATS_FILE}"
        info = mlflow.spark.log_model(
            model,
            artifact_path="model",
            signature=signature,
            registered_model_name=registered_name,
            metadata={_SPEC_KEY: spec.to_dict(), _STATS_KEY: stats_uri},
            dfs_tmpdir=tmp,
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


def load_matcher(model_uri: str) -> tuple[PipelineModel, MatchingSpec, dict[str, Any]]:
    """Load a registered model and the matching spec (with name statistics) it was
    trained with.

    Raises:
        ValueError: the model has no poimatch spec (not trained by poimatch) or no
            name statistics (trained by a poimatch before they were frozen).
    """
    info = mlflow.models.get_model_info(model_uri)
    meta = info.metadata or {}
    if _SPEC_KEY not in meta:
        raise ValueError(f"{model_uri}: no '{_SPEC_KEY}' in the model metadata")
    if _STATS_KEY not in meta:
        raise ValueError(
            f"{model_uri}: no name statistics (trained by an older poimatch); retrain it"
        )
    with tempfile.TemporaryDirectory() as tmp:
        model = mlflow.spark.load_model(model_uri, dfs_tmpdir=tmp)
        local = mlflow.artifacts.download_artifacts(artifact_uri=meta[_STATS_KEY], dst_path=tmp)
        stats = NameStats.load(Path(local))
    return model, MatchingSpec.from_dict(meta[_SPEC_KEY], name_stats=stats), meta
