"""One Spark session for the whole test run, tuned for tiny data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from poimatch.batch import load_pois
from poimatch.config import Settings, load_settings
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.pipeline import MatchingSpec
from poimatch.session import build_session
from poimatch.tracking import assign_alias, configure_tracking, log_spark_model
from poimatch.workflows import FitOutcome, fit_matcher, training_set

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "geoer_osm_fsq" / "geoer_osm_fsq.csv"


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """local[1], one shuffle partition, UI off: fast for hand-made frames."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    settings = load_settings(
        "ci",
        [
            "spark.master=local[1]",
            "spark.shuffle_partitions=1",
            "spark.driver_memory=4g",
            "spark.extra={spark.default.parallelism: '1', spark.sql.adaptive.enabled: 'false'}",
        ],
    )
    session = build_session(settings.spark)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_geoer() -> Path:
    """The real labelled OSM–Foursquare data set, when the shared folder is present."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_matcher(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> FitOutcome:
    """One small fitted matcher (3,000 generated rows, 60 trees) shared by the modules
    that need a model but do not test training itself; register it with
    :func:`register_matcher` in each module's own MLflow store."""
    root = tmp_path_factory.mktemp("small_matcher")
    settings = load_settings("ci", ["model.n_estimators=60"])
    csv = root / "train.csv"
    write_pois_csv(generate_pois(3000, seed=61), csv)
    pois, _ = load_pois(spark, str(csv), quarantine_path=str(root / "q"), require_labels=True)
    return fit_matcher(training_set(pois, settings=settings), settings=settings)


def register_matcher(
    fit: FitOutcome, settings: Settings, *, spec: MatchingSpec | None = None
) -> tuple[str, str, str]:
    """Log and register ``fit`` as ``settings.model.name``: (model_uri, version, alias)."""
    experiment_id = configure_tracking(settings.tracking)
    used = spec or fit.spec
    example = pd.DataFrame({f: [0.0] for f in used.features})
    with mlflow.start_run(experiment_id=experiment_id):
        uri, version = log_spark_model(
            fit.model, registered_name=settings.model.name, spec=used, input_example=example
        )
    alias = assign_alias(settings.model.name, version)
    return uri, version, alias
