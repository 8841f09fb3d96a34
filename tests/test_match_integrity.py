"""The match job's promises: nothing lost, nothing overwritten.

A production lake (POI table, quarantine, matches) is built in a temporary storage root
and matched once. Then ad-hoc files are matched: every usable input id is in the output
exactly once (rows that break a rule alone, with their reason), every row that was not
matched is in the rejected-rows report, and no production table moves a version.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pytest
from conftest import register_matcher
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import Settings, load_settings
from poimatch.io.contracts import data_docs_index
from poimatch.io.ingest import ingest_file
from poimatch.io.tables import (
    InputError,
    delta_version,
    is_delta_table,
    is_table_name,
    read_delta,
    write_delta,
)
from poimatch.lifecycle.tracking import load_matcher
from poimatch.runs import batch
from poimatch.runs.batch import (
    ABOVE_THRESHOLD,
    MatchReport,
    load_pois,
    rejected_table_path,
    run_match,
)
from poimatch.runs.workflows import FitOutcome
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.scorer import predict_scores
from poimatch.stages.plan import SMALL_SQL_CONF
from poimatch.stages.scoring import booster_parts

pytestmark = pytest.mark.slow

HEADER = ",".join(S.INPUT_COLUMNS)


def _lake_versions(spark: SparkSession, root: Path) -> dict[str, int]:
    """Every Delta table under ``root`` and its current version."""
    tables = {p.parent for p in root.rglob("_delta_log")}
    return {str(t): delta_version(spark, str(t)) for t in sorted(tables)}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lake(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("integrity")
    settings: Settings = load_settings(
        "ci",
        [
            f"storage.root={root / 'lake'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'artifacts'}",
            "model.name=poimatch-integrity-test",
        ],
    )
    storage = settings.storage
    pois_csv = root / "pois.csv"
    rows = generate_pois(300, seed=81)
    write_pois_csv(rows, pois_csv)
    with pois_csv.open("a", encoding="utf-8") as handle:
        handle.write("bad1,Bad Row,north,2.0,,,,,,,,,\n")  # one row for the quarantine
    pois_path = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    ingest = ingest_file(
        spark,
        str(pois_csv),
        pois_path=pois_path,
        quarantine_path=quarantine,
        validations=storage.validations_path(),
    )
    model_uri, _, _ = register_matcher(small_matcher, settings)
    before = _lake_versions(spark, root / "lake")
    lines = run_match(spark, settings, input_path=None, output_csv=None, model_uri=model_uri)
    return {
        "root": root,
        "settings": settings,
        "model_uri": model_uri,
        "ids": set(rows[S.ID]),
        "before_production_run": before,
        "production_lines": lines,
        "ingest": ingest,
        "results_after_production_run": _stored_results(storage.validations_path()),
    }


def _stored_results(project: str | None) -> dict[str, dict[str, Any]]:
    """Every validation result stored in the GX project ``project``, by file."""
    assert project is not None
    folder = Path(project) / "gx" / "uncommitted" / "validations"
    return {str(p): json.loads(p.read_text()) for p in folder.rglob("*.json")}


def _docs(lines: list[str]) -> list[str]:
    return [line.removeprefix("data_docs=") for line in lines if line.startswith("data_docs=")]


def _pages(report: MatchReport) -> list[str]:
    pages = list(report.data_docs)
    assert _docs(report.lines()) == pages  # and the command prints each
    return pages


def _page(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(unquote(url[len("file://") :]))


def test_matching_the_poi_table_updates_matches_and_nothing_else(
    spark: SparkSession, lake: dict[str, Any]
) -> None:
    storage = lake["settings"].storage
    matches = storage.table_path(storage.matches_table)
    before = lake["before_production_run"]
    after = _lake_versions(spark, lake["root"] / "lake")
    # the inputs did not move; matches, its report and the lookup table are new
    for table, version in before.items():
        assert after[table] == version, table
    lookup = storage.table_path(storage.lookup_table)
    assert set(after) - set(before) == {matches, rejected_table_path(matches), lookup}
    written = lake["production_lines"].written
    assert written["matches_table"] == matches
    assert written["lookup_table"] == lookup
    assert f"lookup_table={lookup}" in lake["production_lines"].lines()
    # the lookup table holds every matched row with its group, laid out by cell
    known = spark.read.format("delta").load(lookup)
    assert known.columns[:2] == ["lookup_cell", "fine_cell"]
    groups = {r[S.ID]: r[S.GROUP_ID] for r in known.collect()}
    written = {r[S.ID]: r[S.GROUP_ID] for r in spark.read.format("delta").load(matches).collect()}
    assert groups == written
    frame = spark.read.format("delta").load(matches)
    assert frame.columns == [S.ID, S.GROUP_ID, S.MATCHES, S.STATUS, S.REASON]
    rows = frame.collect()
    assert {r[S.ID] for r in rows} == lake["ids"]
    assert {r[S.STATUS] for r in rows} == {"matched"}
    assert spark.read.format("delta").load(rejected_table_path(matches)).count() == 0


def test_ingest_and_nightly_run_keep_their_contract_results_and_data_docs(
    lake: dict[str, Any],
) -> None:
    storage = lake["settings"].storage
    project = storage.validations_path()
    assert project == f"{storage.root}/_validations"
    index = data_docs_index(project)
    assert index.is_file()
    # the run prints the Data Docs page of each stored result, and each page exists
    pages = _pages(lake["production_lines"])
    ingest_pages = _docs(lake["ingest"].lines())
    assert len(pages) == 2  # the output suite and its coverage suite
    assert len(ingest_pages) == 1  # the whole file's report
    for url in pages + ingest_pages:
        assert _page(url).is_file(), url
    linked = index.read_text(encoding="utf-8")
    for url in pages + ingest_pages:
        assert _page(url).name in linked  # the front page links every result
    results = lake["results_after_production_run"]
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for result in results.values():
        by_suite.setdefault(result["suite_name"], []).append(result)
    # ingest: the whole file (one row breaks a rule: the report fails) and the accepted rows
    inputs = sorted(by_suite["poimatch.input"], key=lambda r: r["meta"]["run_id"]["run_name"])
    assert [r["success"] for r in inputs] == [True, False]
    assert [r["meta"]["run_id"]["run_name"] for r in inputs] == [
        "ingest pois.csv: accepted rows",
        "ingest pois.csv: every row",
    ]
    (output,) = by_suite["poimatch.output"]
    assert output["success"] is True
    (counted,) = [
        r
        for r in output["results"]
        if r["expectation_config"]["type"] == "expect_table_row_count_to_equal"
    ]
    # the suite parameter holds this run's number of input ids
    assert counted["result"]["observed_value"] == len(lake["ids"])
    assert len(by_suite["poimatch.output.coverage"]) == 1
    assert set(by_suite) == {"poimatch.input", "poimatch.output", "poimatch.output.coverage"}


AWKWARD = [
    "a1,Cafe Flore,48.8541,2.3326,172 Bd Saint-Germain,Paris,,75006,FR,,,Cafes",
    "a2,Café de Flore,48.85412,2.33262,172 Boulevard Saint-Germain,Paris,,75006,FR,,,Cafes",
    "a3,Les Deux Magots,48.8540,2.3331,6 Place Saint-Germain,Paris,,75006,FR,,,Cafes",
    "a1,Cafe Flore again,48.8541,2.3326,,Paris,,,FR,,,",  # a later copy of a1: dropped
    "b1,No Coordinates,,,1 Rue X,Paris,,,FR,,0144,",  # alone, with its reason
    "b2,Null Island,0,0,,,,,,,,",
    "b3,Far North,95,2.0,,,,,,,,",
    "b 4,Spaced Id,48.85,2.33,,,,,,,,",  # cannot be an output id: dropped
    ",No Id,48.85,2.33,,,,,,,,",
    "b5,Dup Bad,abc,2.0,,,,,,,,",  # first copy of b5 breaks a rule: b5 alone
    "b5,Dup Good,48.85,2.33,,,,,,,,",  # later copy: dropped, even though it is valid
]


@pytest.fixture(scope="module")
def adhoc(spark: SparkSession, lake: dict[str, Any]) -> dict[str, Any]:
    root = lake["root"]
    source = root / "adhoc.csv"
    source.write_text("\n".join([HEADER, *AWKWARD]) + "\n", encoding="utf-8")
    production = _lake_versions(spark, root / "lake")
    out = root / "out" / "adhoc.csv"
    table = root / "mine" / "matches"
    lines = run_match(
        spark,
        lake["settings"],
        input_path=str(source),
        output_csv=str(out),
        model_uri=lake["model_uri"],
        table=str(table),
    )
    return {"production": production, "lines": lines, "out": out, "table": table}


def test_adhoc_run_leaves_every_production_table_unchanged(
    spark: SparkSession, lake: dict[str, Any], adhoc: dict[str, Any]
) -> None:
    after = _lake_versions(spark, lake["root"] / "lake")
    assert after == adhoc["production"]  # same tables (none new), same versions
    names = {Path(t).name for t in after}
    assert names == {"pois", "pois_quarantine", "matches", "matches_rejected", "pois_lookup"}
    assert adhoc["lines"].written["matches_table"] == str(adhoc["table"])
    # nor are its contract results kept: an ad-hoc run writes only what it names
    project = lake["settings"].storage.validations_path()
    assert _stored_results(project).keys() == lake["results_after_production_run"].keys()
    assert _pages(adhoc["lines"]) == []


def test_adhoc_output_has_every_usable_id_once(adhoc: dict[str, Any]) -> None:
    out = _read_csv(adhoc["out"])
    ids = [r[S.ID] for r in out]
    assert sorted(ids) == ["a1", "a2", "a3", "b1", "b2", "b3", "b5"]
    by_id = {r[S.ID]: r[S.MATCHES].split(" ") for r in out}
    for ident, matches in by_id.items():
        assert matches[0] == ident
    # rows breaking a rule are there alone; valid rows are matched (Flore with Flore)
    for alone in ("b1", "b2", "b3", "b5"):
        assert by_id[alone] == [alone]
    assert "a2" in by_id["a1"]


def test_adhoc_report_names_every_row_not_matched(adhoc: dict[str, Any]) -> None:
    rejected = str(adhoc["out"].with_name("adhoc.rejected.csv"))
    assert adhoc["lines"].written["rejected_output"] == rejected
    assert f"rejected_output={rejected}" in adhoc["lines"].lines()
    report = _read_csv(adhoc["out"].with_name("adhoc.rejected.csv"))
    got = [(r[S.ID], r[S.STATUS], r[S.REASON], r[S.NAME]) for r in report]
    assert got == [
        ("a1", "dropped", "duplicate_id", "Cafe Flore again"),
        ("b1", "rejected", "non_numeric_latitude,non_numeric_longitude", "No Coordinates"),
        ("b2", "rejected", "zero_coordinates", "Null Island"),
        ("b3", "rejected", "latitude_out_of_range", "Far North"),
        ("b 4", "dropped", "whitespace_in_id", "Spaced Id"),
        ("", "dropped", "missing_id", "No Id"),
        ("b5", "rejected", "duplicate_id,non_numeric_latitude", "Dup Bad"),
        ("b5", "dropped", "duplicate_id", "Dup Good"),
    ]
    # values are kept as read
    assert report[2][S.LATITUDE] == "0"
    report = adhoc["lines"]
    assert report.source.startswith("csv:")
    assert report.rows == 11
    assert dict(report.counts) == {"matched": 3, "rejected": 4, "dropped": 4}
    assert any("matched=3 rejected=4 dropped=4" in line for line in report.lines())


def test_adhoc_delta_table_holds_status_and_reason(
    spark: SparkSession, adhoc: dict[str, Any]
) -> None:
    rows = spark.read.format("delta").load(str(adhoc["table"])).collect()
    got = {r[S.ID]: (r[S.STATUS], r[S.REASON], r[S.GROUP_ID]) for r in rows}
    assert got["a1"][:2] == ("matched", "duplicate_id")  # its later copy was dropped
    assert got["a2"][:2] == ("matched", None)
    assert got["a2"][2] == got["a1"][2]  # one group
    assert got["b2"] == ("rejected", "zero_coordinates", "b2")
    assert len(rows) == 7
    # the Delta report beside the table says what the CSV report says
    report = spark.read.format("delta").load(rejected_table_path(str(adhoc["table"])))
    in_delta = sorted((r[S.ID] or "", r[S.STATUS], r[S.REASON]) for r in report.collect())
    csv_report = _read_csv(adhoc["out"].with_name("adhoc.rejected.csv"))
    assert in_delta == sorted((r[S.ID], r[S.STATUS], r[S.REASON]) for r in csv_report)


def test_adhoc_run_must_name_its_output(spark: SparkSession, lake: dict[str, Any]) -> None:
    before = _lake_versions(spark, lake["root"] / "lake")
    adhoc_run = partial(
        run_match,
        spark,
        lake["settings"],
        input_path=str(lake["root"] / "pois.csv"),
        output_csv=None,
        model_uri=lake["model_uri"],
    )
    with pytest.raises(ValueError, match="writes only what you name"):
        adhoc_run()
    storage = lake["settings"].storage
    with pytest.raises(ValueError, match="input table"):
        adhoc_run(table=storage.table_path(storage.pois_table))
    assert _lake_versions(spark, lake["root"] / "lake") == before
    assert is_delta_table(spark, storage.table_path(storage.quarantine_table))


def test_a_rerun_keeps_group_ids_when_the_row_an_id_came_from_is_deleted(
    spark: SparkSession, lake: dict[str, Any]
) -> None:
    """Last in the module: it changes the production lake."""
    storage = lake["settings"].storage
    matches = storage.table_path(storage.matches_table)
    before = {r[S.ID]: r[S.GROUP_ID] for r in spark.read.format("delta").load(matches).collect()}
    sizes: dict[str, int] = {}
    for group in before.values():
        sizes[group] = sizes.get(group, 0) + 1
    anchor = min(g for g, n in sizes.items() if n >= 3)  # a group of 3+, labelled by its row
    assert before[anchor] == anchor
    DeltaTable.forPath(spark, storage.table_path(storage.pois_table)).delete(F.col(S.ID) == anchor)
    lines = run_match(
        spark, lake["settings"], input_path=None, output_csv=None, model_uri=lake["model_uri"]
    )
    after = {r[S.ID]: r[S.GROUP_ID] for r in spark.read.format("delta").load(matches).collect()}
    assert set(after) == set(before) - {anchor}
    rest = [i for i, g in before.items() if g == anchor and i != anchor]
    assert {after[i] for i in rest} == {anchor}  # the smallest remaining id would be new
    # no two groups share an id: the rows of one id hold one match list
    lists: dict[str, set[str]] = {}
    for row in spark.read.format("delta").load(matches).collect():
        lists.setdefault(row[S.GROUP_ID], set()).add(" ".join(sorted(row[S.MATCHES].split())))
    assert all(len(v) == 1 for v in lists.values())
    assert lines.group_ids_changed is not None
    changed = [line for line in lines.lines() if line.startswith("group_ids_changed=")]
    assert len(changed) == 1, lines
    moved = sum(after[i] != before[i] for i in after)
    assert changed[0].startswith(f"group_ids_changed={moved} of {len(after)} rows in both runs")
    assert moved <= 2  # the same rows and model: only a chain through the deleted row moves


def test_a_named_pairs_table_holds_every_scored_candidate(
    spark: SparkSession, lake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, settings = lake["root"], lake["settings"]
    source = root / "pairs_in.csv"
    write_pois_csv(generate_pois(200, seed=83), source)
    out, pairs_path = root / "pairs_out.csv", root / "mine" / "pairs"
    production = _lake_versions(spark, root / "lake")
    engines = _spy_output_checks(monkeypatch)
    # the output contract by GX's Spark jobs (as for an output above the bound); the
    # small run below checks it on the driver: the same file
    on_spark = settings.model_copy(
        update={"matching": settings.matching.model_copy(update={"driver_check_max_rows": 0})}
    )
    lines = run_match(
        spark,
        on_spark,
        input_path=str(source),
        output_csv=str(out),
        model_uri=lake["model_uri"],
        pairs_table=str(pairs_path),
    )
    assert lines.written["pairs_table"] == str(pairs_path)
    assert lines.plan == "batch"  # the features are kept by the batch plan
    assert _lake_versions(spark, root / "lake") == production  # nothing else written
    # without a pairs table 200 rows run the small plan: the same output file
    small_out = root / "pairs_out_small.csv"
    small_lines = run_match(
        spark,
        settings,
        input_path=str(source),
        output_csv=str(small_out),
        model_uri=lake["model_uri"],
    )
    assert small_lines.plan == "small"
    assert small_out.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    assert engines == ["spark", "pandas"]
    _, spec, _ = load_matcher(lake["model_uri"])
    pairs = spark.read.format("delta").load(str(pairs_path))
    assert pairs.columns == [
        S.ID_L,
        S.ID_R,
        S.PASS,
        S.SCORE,
        ABOVE_THRESHOLD,
        *spec.features,
    ]
    frame = pairs.toPandas()
    assert lines.candidates == len(frame)
    assert (frame[S.ID_L] < frame[S.ID_R]).all()
    assert not frame.duplicated([S.ID_L, S.ID_R]).any()
    assert frame[S.PASS].str.len().gt(0).all()
    assert (frame[ABOVE_THRESHOLD] == (frame[S.SCORE] >= spec.threshold)).all()
    assert 0 < frame[ABOVE_THRESHOLD].sum() < len(frame)
    # every edge above the threshold joins its two rows in the output (components)
    matches = {r["id"]: set(r["matches"].split(" ")) for r in _read_csv(out)}
    above = frame[frame[ABOVE_THRESHOLD]]
    assert all(b in matches[a] for a, b in zip(above[S.ID_L], above[S.ID_R], strict=True))
    # the features are the ones the model scored: re-scoring them gives the same score
    booster = booster_parts(load_matcher(lake["model_uri"])[0])
    assert booster is not None
    columns, raw = booster
    rescored = predict_scores(raw, frame[columns], spec.calibration)
    assert rescored == pytest.approx(frame[S.SCORE].to_numpy(), abs=1e-6)


@pytest.mark.parametrize(
    ("pairs_table", "extra", "message"),
    [
        ("pois", {}, "that is an input or the matches table"),
        ("mine/t", {"table": "mine/t"}, "that is an input or the matches table"),
        ("mine/p", {"incremental": True, "table": "mine/t"}, "needs a full run"),
    ],
)
def test_a_pairs_table_must_be_its_own(
    spark: SparkSession, lake: dict[str, Any], pairs_table: str, extra: dict[str, Any], message: str
) -> None:
    root, settings = lake["root"], lake["settings"]
    storage = settings.storage
    named = (
        storage.table_path(storage.pois_table) if pairs_table == "pois" else str(root / pairs_table)
    )
    kwargs = {k: (str(root / v) if isinstance(v, str) else v) for k, v in extra.items()}
    production = _lake_versions(spark, root / "lake")
    with pytest.raises(ValueError, match=message):
        run_match(
            spark,
            settings,
            input_path=storage.table_path(storage.pois_table),
            output_csv=str(root / "never.csv"),
            model_uri=lake["model_uri"],
            pairs_table=named,
            **kwargs,
        )
    assert _lake_versions(spark, root / "lake") == production
    assert not (root / "never.csv").exists()


def test_a_delta_input_is_read_at_the_version_its_commit_names(
    spark: SparkSession, lake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # an ingest commits to the input table just after the run pinned its version: the
    # run still reads that version, which its output's commit metadata names
    root = lake["root"] / "pinned"
    source, target = str(root / "in"), str(root / "out")
    rows = generate_pois(60, seed=84)
    later = generate_pois(5, seed=85)
    later[S.ID] = [f"late{i}" for i in range(len(later))]
    first = load_pois(spark, _csv(rows, root / "first.csv"), quarantine_path=str(root / "q"))
    write_delta(first.pois, source)
    late = load_pois(spark, _csv(later, root / "late.csv"), quarantine_path=str(root / "q"))
    real = batch.input_fingerprint

    def commit_after_pinning(*args: Any, **kwargs: Any) -> str:
        fingerprint = real(*args, **kwargs)
        late.pois.write.format("delta").mode("append").save(source)
        return fingerprint

    monkeypatch.setattr(batch, "input_fingerprint", commit_after_pinning)
    lines = run_match(
        spark,
        lake["settings"],
        input_path=source,
        output_csv=None,
        model_uri=lake["model_uri"],
        table=target,
    )
    assert DeltaTable.forPath(spark, source).history(1).first()["version"] == 1  # it landed
    assert lines.source == f"delta:{source}"
    assert lines.counts == {"matched": 60}
    written = spark.read.format("delta").load(target)
    assert {r[S.ID] for r in written.select(S.ID).collect()} == set(rows[S.ID])
    metadata = DeltaTable.forPath(spark, target).history(1).first()["userMetadata"]
    assert metadata.startswith(f"input=delta:{source}@v0 "), metadata


def test_an_incremental_run_needs_delta_tables(spark: SparkSession, lake: dict[str, Any]) -> None:
    # state sits beside a Delta output and is keyed on a Delta input's rows: a CSV input,
    # or no output table, is refused before anything is read or written
    root = lake["root"]
    production = _lake_versions(spark, root / "lake")
    csv = _csv(generate_pois(20, seed=86), root / "incremental_in.csv")
    for kwargs in ({"input_path": csv, "table": str(root / "inc_out")}, {"input_path": csv}):
        with pytest.raises(ValueError, match="--incremental needs a Delta table as input"):
            run_match(
                spark,
                lake["settings"],
                output_csv=str(root / "inc.csv"),
                model_uri=lake["model_uri"],
                incremental=True,
                **kwargs,
            )
    assert not (root / "inc_out").exists()
    assert not (root / "inc.csv").exists()
    assert _lake_versions(spark, root / "lake") == production


def _csv(rows: Any, path: Path) -> str:
    write_pois_csv(rows, path)
    return str(path)


def _spy_output_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The engine of each output contract check a run makes from now on (``pandas``:
    collected and checked on the driver; ``spark``: GX's Spark jobs)."""
    engines: list[str] = []
    real = batch.contracts.validate_output

    def spy(matches: Any, **kwargs: Any) -> Any:
        engines.append("pandas" if isinstance(matches, pd.DataFrame) else "spark")
        return real(matches, **kwargs)

    monkeypatch.setattr(batch.contracts, "validate_output", spy)
    return engines


def test_a_small_run_uses_the_small_plans_settings_and_gives_them_back(
    spark: SparkSession, lake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str | None]] = []
    real = batch._match_rows

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append({key: spark.conf.get(key, None) for key in SMALL_SQL_CONF})
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_match_rows", spy)
    engines = _spy_output_checks(monkeypatch)
    session = {key: spark.conf.get(key, None) for key in SMALL_SQL_CONF}
    assert session != SMALL_SQL_CONF  # the suite's session is not already set up so
    out = lake["root"] / "small-conf"
    lines = run_match(
        spark,
        lake["settings"],
        input_path=str(lake["root"] / "pois.csv"),
        output_csv=str(out / "out.csv"),
        model_uri=lake["model_uri"],
    )
    assert lines.plan == "small"
    # the batch plan (a pairs table is asked for) runs with the session's settings
    lines = run_match(
        spark,
        lake["settings"],
        input_path=str(lake["root"] / "pois.csv"),
        output_csv=str(out / "batch.csv"),
        model_uri=lake["model_uri"],
        pairs_table=str(out / "pairs"),
    )
    assert lines.plan == "batch"
    assert seen == [SMALL_SQL_CONF, session]
    # both outputs (under matching.driver_check_max_rows) were checked on the driver
    assert engines == ["pandas", "pandas"]
    assert {key: spark.conf.get(key, None) for key in SMALL_SQL_CONF} == session
    # and both give the same output
    assert _read_csv(out / "out.csv") == _read_csv(out / "batch.csv")


def test_table_arguments_accept_catalog_names(
    spark: SparkSession, lake: dict[str, Any], tmp_path: Path
) -> None:
    assert is_table_name("main.poi.matches")
    assert is_table_name("spark_catalog.`my schema`.matches")
    for path in ("out.csv", "a.b.csv", "main.poi", "/tmp/main.poi.matches", "data/lake/matches"):
        assert not is_table_name(path), path
    schema = f"spark_catalog.pm_names_{tmp_path.name.replace('-', '_')}"
    spark.sql(f"CREATE SCHEMA {schema} LOCATION '{tmp_path / 'schema'}'")
    try:
        source, target = f"{schema}.pois", f"{schema}.matches"
        storage = lake["settings"].storage
        pois = spark.read.format("delta").load(storage.table_path(storage.pois_table))
        write_delta(pois.drop(S.POI), source)
        ids = {r[S.ID] for r in pois.select(S.ID).collect()}
        assert is_delta_table(spark, source)
        assert not is_delta_table(spark, f"{schema}.nothing_here")
        runs = [
            run_match(
                spark,
                lake["settings"],
                input_path=source,
                output_csv=None,
                model_uri=lake["model_uri"],
                table=target,
            )
            for _ in range(2)
        ]
        assert runs[0].written["matches_table"] == target
        assert runs[0].written["rejected_table"] == f"{target}_rejected"
        assert (runs[0].source, runs[0].counts["matched"]) == (f"delta:{source}", len(ids))
        assert f"input=delta:{source} rows={len(ids)} matched={len(ids)}" in runs[0].lines()[0]
        written = spark.table(target)
        assert {r[S.ID] for r in written.collect()} == ids
        assert spark.table(f"{target}_rejected").count() == 0
        # the second run read the first one's groups through the catalog, at its version
        assert delta_version(spark, target) == 1
        assert runs[0].group_ids_changed is None
        changes = runs[1].group_ids_changed
        assert changes is not None
        assert (changes.changed, changes.both, changes.previous_version) == (0, len(ids), 0)
        unchanged = f"group_ids_changed=0 of {len(ids)} rows"
        assert any(
            line.startswith(unchanged) and "previous version 0" in line for line in runs[1].lines()
        ), runs[1]
        assert read_delta(spark, target, version=0).count() == len(ids)
        with pytest.raises(InputError, match="no such Delta table in the catalog"):
            run_match(
                spark,
                lake["settings"],
                input_path=f"{schema}.nothing_here",
                output_csv=str(tmp_path / "out.csv"),
                model_uri=lake["model_uri"],
            )
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
