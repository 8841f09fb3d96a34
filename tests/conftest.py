"""One Spark session for the whole test run, tuned for tiny data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from poimatch.config import load_settings
from poimatch.session import build_session

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
