"""Ingest: accepted vs quarantined rows, idempotent re-run, update by MERGE, file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.io.ingest import CHANGE_FEED, MALFORMED_ROW, ingest_file
from poimatch.io.tables import InputError, read_changes

HEADER = ",".join((*S.INPUT_COLUMNS, S.POI))


def _write(path: Path, lines: list[str], *, bom: bool = False) -> str:
    text = "\n".join(lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


def _row(id_: str, name: str, lat: str, lon: str, poi: str = "P1") -> str:
    return f"{id_},{name},{lat},{lon},1 Rue X,Paris,,75001,FR,,,Cafés,{poi}"


GOOD = [
    _row("a1", "Café de Flore", "48.8541", "2.3326"),
    _row("a2", "Les Deux Magots", "48.8540", "2.3331", "P2"),
    _row("a3", "Shakespeare & Co", " 48.8526 ", "2.3471", "P3"),
]
BAD = [
    _row("", "No Id", "48.1", "2.1"),
    _row("b2", "", "48.1", "2.1"),
    _row("b3", "Bad Lat", "abc", "2.1"),
    _row("b4", "Far North", "91", "2.1"),
    _row("b5", "Far East", "48.1", "181"),
    _row("dup", "First", "48.1", "2.1"),
    _row("dup", "Second", "48.2", "2.2"),
    _row("b 6", "Spaced Id", "48.1", "2.1"),
    _row("b7", "Null Island", "0", "0"),
]


def _paths(tmp_path: Path) -> dict[str, str]:
    return {
        "pois_path": str(tmp_path / "lake" / "pois"),
        "quarantine_path": str(tmp_path / "lake" / "quarantine"),
    }


def test_bad_rows_are_quarantined_with_reasons(spark: SparkSession, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.csv", [HEADER, *GOOD, *BAD], bom=True)
    paths = _paths(tmp_path)
    report = ingest_file(spark, src, **paths)
    assert (report.rows, report.accepted, report.quarantined) == (12, 3, 9)
    assert report.reasons == {
        "missing_id": 1,
        "whitespace_in_id": 1,
        "zero_coordinates": 1,
        "missing_name": 1,
        "non_numeric_latitude": 1,
        "latitude_out_of_range": 1,
        "longitude_out_of_range": 1,
        "duplicate_id": 2,
    }
    pois = spark.read.format("delta").load(paths["pois_path"])
    assert sorted(r[S.ID] for r in pois.collect()) == ["a1", "a2", "a3"]
    trimmed = pois.where(F.col(S.ID) == "a3").first()
    assert trimmed is not None
    assert trimmed[S.LATITUDE] == pytest.approx(48.8526)
    q = spark.read.format("delta").load(paths["quarantine_path"])
    got = sorted((r[S.NAME] or "", r[S.REASON]) for r in q.collect())
    assert got == [
        ("", "missing_name"),
        ("Bad Lat", "non_numeric_latitude"),
        ("Far East", "longitude_out_of_range"),
        ("Far North", "latitude_out_of_range"),
        ("First", "duplicate_id"),
        ("No Id", "missing_id"),
        ("Null Island", "zero_coordinates"),
        ("Second", "duplicate_id"),
        ("Spaced Id", "whitespace_in_id"),
    ]
    # the raw text of a bad value is kept, not nulled
    bad_lat = q.where(F.col(S.NAME) == "Bad Lat").first()
    assert bad_lat is not None
    assert bad_lat[S.LATITUDE] == "abc"


def test_rerun_changes_nothing_and_changed_rows_update(spark: SparkSession, tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    first = _write(tmp_path / "day1.csv", [HEADER, *GOOD, BAD[2]])
    r1 = ingest_file(spark, first, **paths)
    assert (r1.inserted, r1.updated) == (3, 0)
    r2 = ingest_file(spark, first, **paths)
    assert (r2.inserted, r2.updated, r2.unchanged) == (0, 0, 3)
    q = spark.read.format("delta").load(paths["quarantine_path"])
    assert q.count() == 1  # the bad row is not quarantined twice
    changed = [GOOD[0].replace("Café de Flore", "Cafe de Flore"), *GOOD[1:]]
    day2 = _write(tmp_path / "day2.csv", [HEADER, *changed, _row("a4", "New", "48.9", "2.4")])
    r3 = ingest_file(spark, day2, **paths)
    assert (r3.inserted, r3.updated, r3.unchanged) == (1, 1, 2)
    pois = spark.read.format("delta").load(paths["pois_path"])
    names = {r[S.ID]: r[S.NAME] for r in pois.collect()}
    assert names == {
        "a1": "Cafe de Flore",
        "a2": "Les Deux Magots",
        "a3": "Shakespeare & Co",
        "a4": "New",
    }
    history = DeltaTable.forPath(spark, paths["pois_path"]).history()
    ops = [r["operation"] for r in history.orderBy("version").collect()]
    assert ops.count("MERGE") == 3
    assert r3.pois_version > r1.pois_version
    # the table records Delta's change data feed: after the first day it names the
    # changed row and the new one, nothing for the re-run that changed nothing
    fed = read_changes(
        spark, paths["pois_path"], start=r1.pois_version + 1, end=r3.pois_version
    ).collect()
    assert sorted((r[S.ID], r["_change_type"]) for r in fed) == [
        ("a1", "update_postimage"),
        ("a1", "update_preimage"),
        ("a4", "insert"),
    ]


def _properties(table: DeltaTable) -> dict[str, str]:
    detail = table.detail().first()
    assert detail is not None
    return dict(detail["properties"])


def test_a_poi_table_from_before_the_change_feed_gets_it_and_an_owners_choice_stays(
    spark: SparkSession, tmp_path: Path
) -> None:
    paths = _paths(tmp_path)
    old = spark.createDataFrame([], S.poi_table_schema())
    old.write.format("delta").save(paths["pois_path"])  # no table properties
    report = ingest_file(spark, _write(tmp_path / "a.csv", [HEADER, *GOOD]), **paths)
    table = DeltaTable.forPath(spark, paths["pois_path"])
    assert _properties(table) == {CHANGE_FEED: "true"}
    fed = read_changes(
        spark, paths["pois_path"], start=report.pois_version, end=report.pois_version
    )
    assert sorted(r[S.ID] for r in fed.collect()) == ["a1", "a2", "a3"]
    # an owner who turned it off keeps it off
    spark.sql(
        f"ALTER TABLE delta.`{paths['pois_path']}` SET TBLPROPERTIES ('{CHANGE_FEED}' = 'false')"
    )
    ingest_file(
        spark, _write(tmp_path / "b.csv", [HEADER, _row("a5", "Other", "48.9", "2.4")]), **paths
    )
    assert _properties(table) == {CHANGE_FEED: "false"}


def test_file_without_poi_column_is_accepted(spark: SparkSession, tmp_path: Path) -> None:
    header = ",".join(S.INPUT_COLUMNS)
    lines = [header, *[g.rsplit(",", 1)[0] for g in GOOD]]
    report = ingest_file(spark, _write(tmp_path / "nopoi.csv", lines), **_paths(tmp_path))
    assert (report.accepted, report.quarantined) == (3, 0)


def test_malformed_csv_row_is_quarantined(spark: SparkSession, tmp_path: Path) -> None:
    lines = [HEADER, *GOOD, 'x9,"unterminated,48.1,2.1,,,,,,,,,P9,extra,extra']
    report = ingest_file(spark, _write(tmp_path / "m.csv", lines), **_paths(tmp_path))
    assert report.accepted == 3
    assert MALFORMED_ROW in report.reasons


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"id,name,latitude\nx,y,1\n", r"missing required column\(s\) \['longitude'\]"),
        (
            (HEADER + "\n").encode() + "z1,Caf\xe9,48.1,2.1,,,,,FR,,,,P\n".encode("latin-1"),
            "not valid UTF-8",
        ),
    ],
)
def test_unusable_files_fail_with_named_problem(
    spark: SparkSession, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        ingest_file(spark, str(path), **_paths(tmp_path))
    assert not (tmp_path / "lake" / "pois").exists()


def test_missing_file_is_named(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        ingest_file(spark, str(tmp_path / "nope.csv"), **_paths(tmp_path))
