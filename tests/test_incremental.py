"""Incremental nightly match equals a full run on the same final table.

A table is matched incrementally (first run: no state, so everything is computed and
the state is written), then rows are added and changed through the ingest MERGE, and
matched incrementally again. A full run on the same final table must give exactly
the same matches table; groups that no new or changed row touches keep their ids.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pandas as pd
import pytest
from conftest import register_matcher
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.config import Settings, load_settings
from poimatch.io.ingest import CHANGE_FEED, ingest_file
from poimatch.io.tables import delta_version
from poimatch.runs import incremental
from poimatch.runs.batch import MatchReport, run_match
from poimatch.runs.incremental import state_key, state_paths
from poimatch.runs.workflows import FitOutcome
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages.namestats import NameStats
from poimatch.stages.spec import MatchingSpec

pytestmark = pytest.mark.slow


def _table(spark: SparkSession, path: str) -> pd.DataFrame:
    frame = spark.read.format("delta").load(path).toPandas()
    frame[S.MATCHES] = frame[S.MATCHES].map(lambda m: " ".join(sorted(m.split(" "))))
    return frame.sort_values(S.ID).reset_index(drop=True)


def _state(spark: SparkSession, path: str) -> pd.DataFrame:
    frame = spark.read.format("delta").load(path).toPandas()
    keys = [c for c in (S.ID, S.ID_L, S.ID_R) if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True)[sorted(frame.columns)]


#: the job group of the night's incremental run
_NIGHT = "incremental-night"


class _Lines(logging.Handler):
    """The log lines of a run, as its console shows them (the message alone)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _job_descriptions(spark: SparkSession, group: str) -> list[str | None]:
    """The descriptions (as the UI shows them) of the jobs of ``group`` Spark still
    holds, in the order they ran."""
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)  # type: ignore[union-attr]
    found = []
    for i in range(jobs.size()):
        job = jobs.apply(i)
        if job.jobGroup().isDefined() and job.jobGroup().get() == group:
            described = job.description().get() if job.description().isDefined() else None
            found.append((job.jobId(), described))
    return [d for _, d in sorted(found)]


@pytest.fixture(scope="module")
def runs(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("incremental")
    settings: Settings = load_settings(
        "ci",
        [
            f"storage.root={root / 'lake'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'artifacts'}",
            "model.name=poimatch-incremental-test",
            "model.n_estimators=60",
        ],
    )
    storage = settings.storage
    pois_path = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    matches_path = storage.table_path(storage.matches_table)
    first_csv = root / "first.csv"
    base = generate_pois(3000, seed=71)
    write_pois_csv(base, first_csv)
    ingest_file(spark, str(first_csv), pois_path=pois_path, quarantine_path=quarantine)
    model_uri, _, _ = register_matcher(small_matcher, settings)

    def match(incremental: bool) -> MatchReport:
        return run_match(
            spark,
            settings,
            input_path=None,
            output_csv=None,
            model_uri=model_uri,
            incremental=incremental,
        )

    first_version = delta_version(spark, pois_path)
    first_lines = match(True)
    before = _table(spark, matches_path)

    # 1% new rows (near existing places: copies with new ids) plus 20 renamed rows
    new = generate_pois(60, seed=72)
    new[S.ID] = [f"new_{i}" for i in range(len(new))]
    copies = base.sample(n=30, random_state=5).copy()
    copies[S.ID] = [f"copy_{i}" for i in range(len(copies))]
    renamed = base.sample(n=20, random_state=6).copy()
    renamed[S.NAME] = renamed[S.NAME].fillna("") + " Annex"
    second_csv = root / "second.csv"
    write_pois_csv(pd.concat([new, copies, renamed], ignore_index=True), second_csv)
    ingest_file(spark, str(second_csv), pois_path=pois_path, quarantine_path=quarantine)
    touched = set(new[S.ID]) | set(copies[S.ID]) | set(renamed[S.ID])

    version = delta_version(spark, pois_path)
    spark.sparkContext.setJobGroup(_NIGHT, _NIGHT)
    progress = _Lines()
    logger = logging.getLogger("poimatch")
    level = logger.level
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        inc_lines = match(True)
    finally:
        logger.removeHandler(progress)
        logger.setLevel(level)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]
    night_jobs = _job_descriptions(spark, _NIGHT)  # before later runs' jobs push them out
    incremental = _table(spark, matches_path)
    # the state this night's run left, and the state of a first run on the same table
    # version beside another matches table
    night_state = [_state(spark, path) for path in state_paths(matches_path)]
    scratch = str(root / "lake" / "scratch_matches")
    run_match(
        spark,
        settings,
        input_path=None,
        output_csv=None,
        model_uri=model_uri,
        incremental=True,
        table=scratch,
    )
    scratch_state = [_state(spark, path) for path in state_paths(scratch)]
    full_lines = match(False)
    full = _table(spark, matches_path)
    assert delta_version(spark, pois_path) == version  # both runs read the same table
    return {
        "first_lines": first_lines,
        "first_version": first_version,
        "version": version,
        "pois_path": pois_path,
        "inc_lines": inc_lines,
        "night_jobs": night_jobs,
        "night_log": progress.lines,
        "full_lines": full_lines,
        "before": before,
        "incremental": incremental,
        "full": full,
        "touched": touched,
        "matches_path": matches_path,
        "match": match,
        "night_state": night_state,
        "scratch_state": scratch_state,
        "base": base,
        "ingest": lambda csv: ingest_file(
            spark, str(csv), pois_path=pois_path, quarantine_path=quarantine
        ),
        "root": root,
    }


def test_first_incremental_run_computes_everything(runs: dict[str, Any]) -> None:
    inc = runs["first_lines"].incremental
    assert inc is not None
    assert not inc.used_state
    assert (inc.rows, inc.changed_rows) == (3000, 3000)
    assert "incremental state=none (full run)" in runs["first_lines"].lines()


def test_second_run_reuses_the_state_and_redoes_only_what_changed(runs: dict[str, Any]) -> None:
    report = runs["inc_lines"]
    inc = report.incremental
    assert inc is not None
    assert inc.used_state
    assert "incremental state=reused" in report.lines()
    # 3,090 rows: the small plan (the coarse grid alone, the same pairs as a full run)
    assert report.plan == inc.plan == "small"
    assert inc.rows == 3090
    assert inc.changed_rows == 110  # 60 new + 30 copies + 20 renamed
    # what changed came from the POI table's change data feed (the ingest records it)
    # since the version the first run's state names: the second ingest's versions
    assert (
        inc.changes_from
        == f"change data feed, versions {runs['first_version'] + 1}-{runs['version']}"
    )
    assert f"incremental changes={inc.changes_from}" in report.lines()
    assert 0 < inc.new_pairs < 0.2 * inc.candidates
    assert report.candidates == inc.candidates


def test_every_job_of_a_night_is_named_after_its_step(runs: dict[str, Any]) -> None:
    """The UI and the event log name each Spark job of an incremental match job after
    its step (``poimatch incremental blocking``), or after the stage inside it, or
    Delta's own; none is anonymous. The steps come in the run's order."""
    jobs: list[str | None] = runs["night_jobs"]
    suffix = f" [{_NIGHT}]"
    steps = ["rows", "reach", "blocking", "scoring", "grouping", "state"]
    inner = ["points", "pair_features", "scoring", "grouping"]
    job_steps = ["input", "match", "output", "write", "figures"]
    allowed = {f"poimatch incremental {s}{suffix}" for s in steps}
    allowed |= {f"poimatch {s}{suffix}" for s in inner + job_steps}
    anonymous = [d for d in jobs if d is None]
    assert not anonymous, f"{len(anonymous)} of {len(jobs)} jobs have no description: {jobs}"
    assert len(jobs) < 200  # all of them held
    unknown = {d for d in jobs if d not in allowed and not str(d).startswith("Delta: ")}
    assert not unknown, unknown
    # the job's steps and the incremental run's, in order (the job's "match" step holds
    # the run, its jobs come before and after the run's steps)
    ours = [str(d).removesuffix(suffix) for d in jobs if d in allowed]
    order = ["poimatch input"]
    order += [f"poimatch incremental {s}" for s in steps] + [f"poimatch {s}" for s in job_steps[2:]]
    seen = [name for i, name in enumerate(ours) if i == 0 or ours[i - 1] != name]
    ranks = [order.index(name) for name in seen if name in order]
    assert ranks == sorted(ranks), seen
    every = {f"poimatch incremental {s}" for s in steps} | {
        f"poimatch {s}" for s in ["input", "output", "write", "figures"]
    }
    assert every <= set(ours), every - set(ours)


def test_a_night_prints_a_progress_line_per_step_with_its_counts(runs: dict[str, Any]) -> None:
    """Each step of a match job, and of its incremental run, ends with a line (INFO):
    its seconds and what it did."""
    report = runs["inc_lines"]
    inc = report.incremental
    assert inc is not None
    lines = [line for line in runs["night_log"] if line.startswith(("step ", "incremental "))]
    steps = [line.split(":")[0] for line in lines]
    incremental_steps = ["rows", "reach", "blocking", "scoring", "grouping", "state"]
    assert steps == [
        "step input",
        *[f"incremental {s}" for s in incremental_steps],
        "step match",
        "step output",
        "step write",
        "step figures",
    ]
    seconds = r"\d+\.\d s"
    expected = [
        f"step input: {seconds}, 3,090 rows, 3,090 to match",
        f"incremental rows: {seconds}, 110 new or changed of 3,090 rows "
        r"\(by change data feed, versions \d+-\d+\)",
        f"incremental reach: {seconds}, {inc.affected_rows:,} rows' candidate lists to redo",
        f"incremental blocking: {seconds}, the candidate lists of {inc.affected_rows:,} rows",
        f"incremental scoring: {seconds}, {inc.new_pairs:,} new or changed pairs scored",
        f"incremental grouping: {seconds}, 3,090 rows grouped over {inc.candidates:,} "
        "candidate pairs",
        f"incremental state: {seconds}, points state version \\d+",
        f"step match: {seconds}, {report.candidates:,} candidate pairs, plan small",
        f"step output: {seconds}, the output contract is met",
        f"step write: {seconds}, wrote .*/matches, .*/matches_rejected, .*/pois_lookup",
        f"step figures: {seconds}",
    ]
    for pattern in expected:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, lines)
    assert 110 < inc.affected_rows < 3090


def test_incremental_equals_a_full_run(runs: dict[str, Any]) -> None:
    incremental, full = runs["incremental"], runs["full"]
    assert len(full) == 3090
    pd.testing.assert_frame_equal(incremental, full)
    # the copies really matched their originals, so the comparison is not trivial
    copies = full[full[S.ID].str.startswith("copy_")]
    assert (copies[S.MATCHES].str.count(" ") >= 1).mean() > 0.8


def test_unrelated_groups_keep_their_ids(runs: dict[str, Any]) -> None:
    before, after, touched = runs["before"], runs["full"], runs["touched"]
    merged = before.merge(after, on=S.ID, suffixes=("_before", "_after")).set_index(S.ID)
    same_members = merged[f"{S.MATCHES}_before"] == merged[f"{S.MATCHES}_after"]
    # a group with the same members keeps its id (the smallest member id)
    kept = merged[same_members]
    assert (kept[f"{S.GROUP_ID}_before"] == kept[f"{S.GROUP_ID}_after"]).all()
    # groups no new or changed row joins or leaves almost never change: features are
    # the pair's own (frozen name statistics), so only when a new row takes a place
    # in an old row's k nearest candidates
    members = pd.concat([merged[f"{S.MATCHES}_before"], merged[f"{S.MATCHES}_after"]], axis=1)
    untouched = members.apply(
        lambda r: not (set(r.iloc[0].split(" ")) | set(r.iloc[1].split(" "))) & touched, axis=1
    )
    assert untouched.sum() > 0.9 * len(before)
    assert same_members[untouched].mean() >= 0.95
    # and touched groups did change: copies joined their originals' groups
    assert (~same_members[~untouched]).sum() > 0


def test_state_tables_sit_beside_the_matches_table(
    spark: SparkSession, runs: dict[str, Any]
) -> None:
    points, pairs = state_paths(runs["matches_path"])
    ids = {r[0] for r in spark.read.format("delta").load(points).select(S.ID).collect()}
    assert ids == set(runs["full"][S.ID])
    candidates = runs["full_lines"].candidates
    assert candidates > 0
    assert spark.read.format("delta").load(pairs).count() == candidates


def test_a_nights_state_equals_a_first_runs_state(runs: dict[str, Any]) -> None:
    # the rows and pairs a night kept from the state before, with those it redid, are
    # the state a first run writes on the same table version
    for night, scratch in zip(runs["night_state"], runs["scratch_state"], strict=True):
        assert len(night) > 3000
        pd.testing.assert_frame_equal(night, scratch)


def _spec(**changes: Any) -> MatchingSpec:
    values: dict[str, Any] = {
        "threshold": 0.5,
        "grouping_mode": "components",
        "max_group_size": 25,
        "features": ("f_dist_m",),
        "blocking": {"cell_m": 300.0},
        "name_stats": NameStats(places=3, names={"cafe": 2}, tokens={"cafe": 2}),
    }
    return MatchingSpec(**(values | changes))


@pytest.mark.parametrize("source", incremental.STATE_SOURCES)
def test_state_key_follows_the_code_that_shapes_the_state(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    before = state_key(_spec())
    assert state_key(_spec()) == before  # stable
    original = incremental._source_bytes

    def edited(name: str) -> bytes:
        return original(name) + (b"\n# one more line\n" if name == source else b"")

    monkeypatch.setattr(incremental, "_source_bytes", edited)
    assert state_key(_spec()) != before


def test_state_key_follows_libraries_spec_and_name_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    before = state_key(_spec())
    assert state_key(_spec(threshold=0.6)) != before
    assert state_key(_spec(name_stats=NameStats(places=3, names={"cafe": 3}))) != before
    original = incremental._library_version
    monkeypatch.setattr(
        incremental,
        "_library_version",
        lambda name: "9.9.9" if name == "rapidfuzz" else original(name),
    )
    assert state_key(_spec()) != before


def test_changed_normalization_code_forces_a_full_run(
    spark: SparkSession, runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the state of the last incremental run is there, but stages/normalize.py "changed"
    original = incremental._source_bytes
    monkeypatch.setattr(
        incremental,
        "_source_bytes",
        lambda name: original(name) + (b"\n# changed\n" if name == "stages/normalize.py" else b""),
    )
    inc = runs["match"](True).incremental
    assert inc is not None
    assert not inc.used_state
    assert inc.state_ignored == "produced by other code, libraries or model"
    assert (inc.rows, inc.changed_rows) == (3090, 3090)
    pd.testing.assert_frame_equal(_table(spark, runs["matches_path"]), runs["full"])


def test_a_run_stopped_between_its_two_state_writes_leaves_no_usable_state(
    spark: SparkSession, runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    match = runs["match"]
    # (after the test above, whose run left state of another key: this run writes it anew)
    clean = match(True).incremental
    assert clean is not None
    assert not clean.used_state
    # new rows: copies of existing places, so that they have pairs to keep
    copies = runs["base"].sample(n=25, random_state=9).copy()
    copies[S.ID] = [f"late_{i}" for i in range(len(copies))]
    csv = runs["root"] / "late.csv"
    write_pois_csv(copies, csv)
    runs["ingest"](csv)
    # the nightly run stops after writing the points state, before the pairs state
    _, pairs_path = state_paths(runs["matches_path"])
    original = incremental.write_delta  # type: ignore[attr-defined]

    def stop_at_pairs(frame: Any, path: str, **kwargs: Any) -> None:
        if path == pairs_path:
            raise RuntimeError("stopped between the two state writes")
        original(frame, path, **kwargs)

    monkeypatch.setattr(incremental, "write_delta", stop_at_pairs)
    with pytest.raises(RuntimeError, match="stopped between"):
        match(True)
    monkeypatch.undo()
    # the points state knows the copies, the pairs state does not hold their pairs:
    # reused, the copies would be "unchanged" rows without candidates. Ignored, the run
    # is a full one (every row computed: a first run, which equals a full run above)
    inc = match(True).incremental
    assert inc is not None
    assert not inc.used_state
    assert (inc.state_ignored or "").startswith("torn (the pairs state names points state")
    assert inc.changed_rows == inc.rows == 3115
    after = _table(spark, runs["matches_path"])
    late = after[after[S.ID].str.startswith("late_")]
    assert len(late) == 25
    assert (late[S.MATCHES].str.count(" ") >= 1).mean() > 0.8


def test_which_state_is_reused() -> None:
    frame: Any = object()  # (the rule reads only whether a table was found)
    points = incremental._StateTable(frame, version=4)

    def pairs(note: str | None) -> incremental._StateTable:
        return incremental._StateTable(frame, version=3, note=note)

    assert incremental._unusable(points, pairs("poimatch.state_points_version=4")) is None
    torn = incremental._unusable(points, pairs("poimatch.state_points_version=3"))
    assert torn == (
        "torn (the pairs state names points state version 3, the points state is at version 4)"
    )
    # state written before the pairs named their points version: not reused
    assert incremental._unusable(points, pairs(None)) == (
        "its pairs state names no points state version (written before they did)"
    )
    assert incremental._unusable(points, incremental._StateTable(None)) == (
        "torn (one of the two state tables is missing)"
    )
    none = incremental._StateTable(None)
    assert incremental._unusable(none, none) is None
    other = incremental._StateTable(None, version=2, other_key=True)
    assert incremental._unusable(points, other) == "produced by other code, libraries or model"


def test_without_the_change_feed_a_night_compares_row_hashes_and_equals_a_full_run(
    spark: SparkSession, runs: dict[str, Any]
) -> None:
    """The POI table's owner turned the change data feed off: the next night cannot
    read what changed there, says why, finds it by row hashes, and its output is still
    a full run's. (After the test above: the state is that of its last run.)"""
    pois_path = runs["pois_path"]
    spark.sql(f"ALTER TABLE delta.`{pois_path}` SET TBLPROPERTIES ('{CHANGE_FEED}' = 'false')")
    renamed = runs["base"].sample(n=15, random_state=11).copy()
    renamed[S.NAME] = renamed[S.NAME].fillna("") + " Nord"
    csv = runs["root"] / "renamed.csv"
    write_pois_csv(renamed, csv)
    runs["ingest"](csv)
    report = runs["match"](True)
    inc = report.incremental
    assert inc is not None
    assert inc.used_state
    assert (inc.changes_from or "").startswith("row hashes (the change data feed of versions ")
    assert "DELTA_MISSING_CHANGE_DATA" in (inc.changes_from or "")
    assert inc.changed_rows == 15
    night = _table(spark, runs["matches_path"])
    runs["match"](False)
    pd.testing.assert_frame_equal(night, _table(spark, runs["matches_path"]))


def test_the_feed_is_read_only_after_the_version_the_state_names(spark: SparkSession) -> None:
    source = incremental.ChangeSource("/lake/pois", 7)
    assert source.note() == "poimatch.state_source=7:/lake/pois"
    cases = {
        None: "the state names no table version",
        "poimatch.state_source=3:/lake/other": "computed from /lake/other version 3",
        "poimatch.state_source=9:/lake/pois": "computed from /lake/pois version 9",
    }
    for note, why in cases.items():
        ids, how = incremental._fed_changes(spark, source, note)
        assert ids is None
        assert how.startswith("row hashes (")
        assert why in how
    ids, how = incremental._fed_changes(spark, source, source.note())
    assert ids is not None
    assert ids.count() == 0
    assert how == "change data feed, no version since 7"
    ids, how = incremental._fed_changes(spark, None, source.note())
    assert ids is None
    assert how == "row hashes (no change data feed asked for: matching.change_feed)"
