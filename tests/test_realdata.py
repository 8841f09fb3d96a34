"""Candidate stage on the real OSM–Foursquare data (one city, to stay fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.tables import read_poi_input
from poimatch.lifecycle.evaluation import candidate_report
from poimatch.stages.blocking import candidate_pairs
from poimatch.stages.normalize import add_normalized_columns

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("compiled")]


def test_pittsburgh_candidates_keep_the_ceiling(spark: SparkSession, shared_geoer: Path) -> None:
    pois = read_poi_input(spark, str(shared_geoer)).where(F.col(S.ID).contains("_pit_"))
    points = pois.transform(add_normalized_columns).localCheckpoint(eager=True)
    # materialized once: the report and the passes below read it several times
    pairs = candidate_pairs(points, settings=BlockingSettings()).localCheckpoint(eager=True)
    report = candidate_report(pairs, pois)
    assert report.rows == 5211
    assert report.per_row <= 30
    assert report.iou_ceiling >= 0.98
    # the spatial pass alone must not be the whole story: key passes add pairs
    passes = {r[S.PASS] for r in pairs.select(S.PASS).distinct().collect()}
    assert "name" in passes
