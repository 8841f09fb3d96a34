"""``poimatch blocking-report``: pairs per pass and per row, checked by hand and against
the candidate pairs themselves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.apps import commands
from poimatch.config import BlockingSettings
from poimatch.io.ingest import poi_layout
from poimatch.runs.batch import load_match_input
from poimatch.runs.blocking_report import BlockingReport, PassCount, RowSpread, blocking_report
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages.blocking import candidate_pairs
from poimatch.stages.normalize import add_normalized_columns

SETTINGS = BlockingSettings(cell_m=300, k_nearest=5, key_passes=("name", "phone"))


def _pois(spark: SparkSession, rows: list[dict[str, object]]) -> DataFrame:
    frame = pd.DataFrame([dict.fromkeys((*S.INPUT_COLUMNS, S.POI)) | r for r in rows])
    return poi_layout(spark.createDataFrame(frame.astype(object).where(frame.notna(), None)))


def test_a_hand_made_table(spark: SparkSession) -> None:
    rows: list[dict[str, object]] = [
        # a and b: the same museum at one spot (spatial and name pass)
        {"id": "a", "name": "Louvre Museum", "latitude": 48.8606, "longitude": 2.3376},
        {"id": "b", "name": "Louvre Museum", "latitude": 48.8606, "longitude": 2.3376},
        # d and e: one name 20 km apart (the name pass alone); same phone too
        {"id": "d", "name": "Chez Marcel", "latitude": 48.9, "longitude": 2.3},
        {"id": "e", "name": "Chez Marcel", "latitude": 49.08, "longitude": 2.3},
        # c and f: the same place far apart under other names: no pass finds them
        {"id": "c", "name": "Lonely Place", "latitude": 45.0, "longitude": 5.0},
        {"id": "f", "name": "Other Name", "latitude": 43.0, "longitude": 1.0},
    ]
    for row, poi in zip(rows, ["P1", "P1", "P2", "P2", "P3", "P3"], strict=True):
        row[S.POI] = poi
    rows[2]["phone"] = rows[3]["phone"] = "+33 1 42 00 00 00"
    report = blocking_report(_pois(spark, rows), SETTINGS)
    assert report.rows == 6
    assert report.pairs == 2
    assert report.passes == (
        PassCount("spatial", pairs=1, only=0, cumulative=1),
        PassCount("name", pairs=2, only=0, cumulative=2),
        PassCount("phone", pairs=1, only=0, cumulative=2),
    )
    assert (report.per_row.without, report.per_row.median, report.per_row.most) == (2, 1, 1)
    assert (report.true_pairs, report.true_pairs_kept) == (3, 2)
    assert report.recall_ceiling == pytest.approx(2 / 3)
    lines = report.lines()
    assert lines[:3] == ["rows=6", "pairs=2", "pairs_per_row=0.67"]
    assert "pass phone   pairs=1 only_this_pass=0 cumulative=2" in lines
    assert lines[-1] == "true_pairs=3 kept_by_blocking=2 recall_ceiling=0.6667"


def _read(spark: SparkSession, frame: pd.DataFrame, path: Path) -> DataFrame:
    write_pois_csv(frame, path)
    return load_match_input(spark, str(path)).pois


def test_counts_agree_with_the_candidate_pairs(spark: SparkSession, tmp_path: Path) -> None:
    generated = generate_pois(400, seed=5)
    pois = _read(spark, generated, tmp_path / "in.csv")
    settings = BlockingSettings(k_nearest=4, key_passes=("name", "phone", "url"))
    report = blocking_report(pois, settings)
    # the same blocking, counted in pandas
    points = pois.transform(add_normalized_columns)
    pairs = candidate_pairs(points, settings=settings).toPandas()
    passes = pairs[S.PASS].str.split(",")
    assert report.pairs == len(pairs) > 200
    seen: set[str] = set()
    for got in report.passes:
        has = passes.map(lambda p, name=got.name: name in p)
        seen.add(got.name)
        assert got.pairs == int(has.sum()), got
        assert got.only == int((has & (passes.str.len() == 1)).sum()), got
        assert got.cumulative == int(passes.map(lambda p: bool(seen & set(p))).sum()), got
    assert report.passes[-1].cumulative == report.pairs
    per_id = pd.concat([pairs[S.ID_L], pairs[S.ID_R]]).value_counts()
    assert report.per_row.most == int(per_id.max())
    assert report.per_row.without == 400 - len(per_id)
    poi = generated.set_index(S.ID)[S.POI]
    same = (pairs[S.ID_L].map(poi) == pairs[S.ID_R].map(poi)).sum()
    sizes = poi.value_counts()
    assert report.true_pairs == int((sizes * (sizes - 1) // 2).sum())
    assert report.true_pairs_kept == int(same)
    assert 0.5 < (report.recall_ceiling or 0) <= 1


def test_without_labels_there_is_no_recall_line(spark: SparkSession, tmp_path: Path) -> None:
    pois = _read(spark, generate_pois(60, seed=6).drop(columns=[S.POI]), tmp_path / "in.csv")
    report = blocking_report(pois, SETTINGS)
    assert report.true_pairs is None
    assert report.recall_ceiling is None
    assert not any(line.startswith("true_pairs") for line in report.lines())


def test_the_command_reads_a_csv_and_writes_nothing(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "in.csv"
    write_pois_csv(generate_pois(120, seed=7), csv)
    before = sorted(tmp_path.rglob("*"))
    commands.main(
        [
            "blocking-report",
            *("--input", str(csv)),
            *("--env", "ci", "--set", "blocking.k_nearest=3"),
            *("--set", f"storage.root={tmp_path / 'lake'}"),
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"input=csv:{csv} rows=120 matched=120 ")
    assert out[1].startswith('blocking=configuration {"cell_m":300.0,"k_nearest":3,')
    assert "rows=120" in out
    assert any(line.startswith("pass spatial ") for line in out)
    assert any(line.startswith("true_pairs=") for line in out)
    assert sorted(tmp_path.rglob("*")) == before


def test_report_lines_are_typed_results() -> None:
    report = BlockingReport(
        rows=10,
        pairs=5,
        passes=(PassCount("spatial", 5, 5, 5),),
        per_row=RowSpread(without=0, median=1, p90=2, p99=2, most=2),
    )
    assert report.pairs_per_row == 1.0
    assert report.recall_ceiling is None
