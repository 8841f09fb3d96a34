"""The facade: a Matcher's verbs return typed results that agree with what they wrote,
with the in-memory verb the service uses, and with what the command prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import register_matcher
from pyspark.sql import SparkSession

from poimatch import Matcher
from poimatch import schema as S
from poimatch.apps import commands
from poimatch.config import load_settings
from poimatch.lifecycle.tracking import load_matcher
from poimatch.runs.workflows import FitOutcome
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages.candidates import _prepared
from poimatch.stages.plan import SMALL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("matcher")
    overrides = [
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
        "model.name=poimatch-matcher-test",
    ]
    settings = load_settings("ci", overrides)
    register_matcher(small_matcher, settings)  # version 1: @champion
    csv = root / "places.csv"
    rows = generate_pois(240, seed=93)
    rows.loc[rows.index[:2], S.LATITUDE] = 123.0  # two rows break a rule
    write_pois_csv(rows, csv)
    matcher = Matcher(settings, spark)
    out = root / "out.csv"
    report = matcher.match(str(csv), output_csv=str(out))
    return {
        "root": root,
        "overrides": overrides,
        "matcher": matcher,
        "csv": csv,
        "rows": rows,
        "out": out,
        "report": report,
    }


def _groups(matches: pd.Series) -> list[frozenset[str]]:
    return [frozenset(m.split()) for m in matches]


def test_the_match_report_agrees_with_the_file_it_wrote(lab: dict[str, Any]) -> None:
    report, out = lab["report"], lab["out"]
    written = pd.read_csv(out, dtype=str)
    assert sorted(written[S.ID]) == sorted(lab["rows"][S.ID])  # every id once
    assert report.rows == len(lab["rows"])
    assert dict(report.counts) == {"matched": 238, "rejected": 2}
    assert report.plan == "small"
    assert report.model_uri == "models:/poimatch-matcher-test@champion"
    assert report.written["output"] == str(out)
    assert Path(report.written["rejected_output"]).is_file()
    groups = set(_groups(written[S.MATCHES]))
    assert report.groups == len(groups)
    assert report.largest_group == max(len(g) for g in groups)
    assert report.largest_group > 1  # the generator's duplicates were found
    assert report.candidates > 0
    assert report.candidates_per_row == pytest.approx(2 * report.candidates / 238, abs=0.01)
    assert report.group_ids_changed is None  # no previous table
    lines = report.lines()
    assert lines[0].startswith(f"input=csv:{lab['csv']} rows=240 matched=238 rejected=2")
    assert f"output={out}" in lines
    assert lines[-1].startswith("match_seconds=")


def test_the_in_memory_verb_gives_the_same_groups(lab: dict[str, Any]) -> None:
    matcher: Matcher = lab["matcher"]
    loaded = matcher.load(str(lab["csv"]))
    assert (loaded.rows, loaded.accepted) == (240, 238)
    assert loaded.quarantine is not None  # a CSV's rejected rows go to the quarantine
    result = matcher.match_frame(loaded.pois, plan=SMALL)
    in_memory = result.matches.select(S.ID, S.MATCHES).toPandas()
    written = pd.read_csv(lab["out"], dtype=str)
    written = written[written[S.ID].isin(in_memory[S.ID])]
    assert len(written) == 238
    assert sorted(_groups(in_memory[S.MATCHES]), key=sorted) == sorted(
        _groups(written[S.MATCHES]), key=sorted
    )
    assert result.candidates == lab["report"].candidates


def test_a_second_small_match_reruns_the_queries_the_first_prepared(lab: dict[str, Any]) -> None:
    # a notebook or a test module matching small files repeatedly with one model pays
    # the planning of normalization, blocking and pair features once (the service's
    # prepared queries), and gets the same file
    matcher: Matcher = lab["matcher"]
    model, _, _ = load_matcher(lab["report"].model_uri)
    before = dict(_prepared.get(model, {}))
    assert {key[0] for key in before} >= {"points", "candidates"}
    again = lab["root"] / "again.csv"
    report = matcher.match(str(lab["csv"]), output_csv=str(again))
    assert report.plan == "small"
    after = _prepared.get(model, {})
    assert after.keys() == before.keys()
    assert all(after[key] is query for key, query in before.items())
    first, second = (pd.read_csv(p, dtype=str).sort_values(S.ID) for p in (lab["out"], again))
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True))


def test_evaluate_returns_the_figures_the_command_prints(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = lab["matcher"].evaluate(str(lab["out"]), str(lab["csv"]))
    assert 0.5 < evaluation.iou.iou <= 1.0
    assert evaluation.iou.rows == 240
    assert 0.0 < evaluation.pairs.precision <= 1.0
    sets = [arg for o in lab["overrides"] for arg in ("--set", o)]
    argv = ["--submission", str(lab["out"]), "--truth", str(lab["csv"])]
    commands.main(["evaluate", *argv, "--env", "ci", *sets])
    assert capsys.readouterr().out.splitlines() == evaluation.lines()


def test_a_rollback_builds_no_session(lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_session(*_: object, **__: object) -> None:
        raise AssertionError("a Spark session was built")

    monkeypatch.setattr("poimatch.session.build_session", no_session)
    matcher = Matcher.from_config("ci", lab["overrides"])
    # nothing was promoted, so there is no @previous: the registry's answer, not Spark's
    with pytest.raises(ValueError, match="no @previous to roll back to"):
        matcher.rollback()
    with pytest.raises(AssertionError, match="a Spark session was built"):
        _ = matcher.spark


def test_a_small_runs_figures_on_the_driver_are_sparks(spark: SparkSession) -> None:
    # a small run collects its output and the ids it must hold in one job and counts its
    # groups there; a large run counts them with Spark: the same figures, a missing
    # group id counted as one group as Spark's groupBy does
    from poimatch.runs.batch import _collect_output, _group_figures

    output = spark.createDataFrame(
        [
            ("a", "g1", "a b c", "matched"),
            ("b", "g1", "b a c", "matched"),
            ("c", "g1", "c a b", "matched"),
            ("d", "d", "d", "matched"),
            ("e", None, "e", "rejected"),
            ("f", None, "f", "rejected"),
        ],
        f"{S.ID} string, {S.GROUP_ID} string, {S.MATCHES} string, {S.STATUS} string",
    )
    # the input ids: one the output lacks, one given twice, one null
    input_ids = spark.createDataFrame(
        [(i, 1) for i in ["a", "b", "c", "d", "e", "f", "x", "a"]] + [(None, 2)],
        f"{S.ID} string, n int",
    )
    rows, ids = _collect_output(output, input_ids)
    assert list(rows.columns) == [S.ID, S.GROUP_ID, S.MATCHES]
    assert rows.sort_values(S.ID).to_dict("records") == [
        r.asDict() for r in output.select(S.ID, S.GROUP_ID, S.MATCHES).orderBy(S.ID).collect()
    ]
    assert list(ids.columns) == [S.ID]
    assert sorted(ids[S.ID].fillna("~")) == ["a", "a", "b", "c", "d", "e", "f", "x", "~"]
    assert _group_figures(rows) == _group_figures(output) == (3, 3)
    later = rows[rows[S.ID] >= "d"]
    assert _group_figures(later) == _group_figures(output.where("id >= 'd'")) == (2, 2)
    empty = output.where("false")
    assert _group_figures(_collect_output(empty, empty)[0]) == _group_figures(empty) == (0, 0)
