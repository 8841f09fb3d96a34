"""Safe re-runs (issue 5, item 6): the nightly match job can be run again, or killed.

A module fixture ingests a generated CSV into the Delta POI table of a temporary storage
root and registers the suite's shared small model in a temporary MLflow store. Then the
nightly match job (no ``--input``: it reads the POI table) runs three times on the
same POI table version:

* a normal run (the job's ``main`` in the test's own session: a JVM start fewer), version
  0 of the ``matches`` table;
* a run through ``./spark-submit.sh``, as the nightly schedule runs it, killed with
  SIGKILL (its whole process group) after it has started writing data files into the
  ``matches`` folder but before the Delta commit: every table is still readable at its
  previous version with its previous content, and the killed write's files are left as
  orphans nobody references;
* a normal run again (``main`` in this process): it commits version 1 with the same rows
  as the first run, and the table's history shows exactly the two writes (a re-run is
  idempotent, even after a kill).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess  # nosec B404: runs the project's own wrapper, no shell
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import TEST_JVM_OPTIONS, register_matcher
from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.apps.commands.match import main as match_main
from poimatch.config import Settings, load_settings
from poimatch.io.ingest import ingest_file
from poimatch.io.tables import delta_version
from poimatch.runs.workflows import FitOutcome
from poimatch.sample.generator import generate_pois, write_pois_csv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "poimatch-rerun-test"
ROWS = 2000
JOB_TIMEOUT_S = 900  # generous: one match run took 1.5-5 min on a heavily shared 2-core box
KILL_ATTEMPTS = 3
POLL_S = 0.002
# The killed run writes many small files (25 rows each, about 80 for 2000 rows) so that
# its write lasts long enough for the watcher to see data files before the commit. (More
# shuffle partitions do not widen it: with spark.shuffle_partitions=16 and adaptive
# coalescing off the job still wrote 2 files, the partitioning of its input.)
WIDE_WRITE = ("spark.extra={spark.sql.files.maxRecordsPerFile: '25'}",)

Row = tuple[str, str, frozenset[str]]


@dataclass(frozen=True)
class Lake:
    """The temporary storage root, MLflow store and the job's command line."""

    root: Path
    settings: Settings
    overrides: tuple[str, ...]

    def table(self, name: str) -> Path:
        return Path(self.settings.storage.table_path(name))

    @property
    def matches(self) -> Path:
        return self.table(self.settings.storage.matches_table)

    @property
    def pois(self) -> Path:
        return self.table(self.settings.storage.pois_table)

    @property
    def quarantine(self) -> Path:
        return self.table(self.settings.storage.quarantine_table)

    def match_command(self, *extra_sets: str) -> list[str]:
        sets = [a for s in (*self.overrides, *extra_sets) for a in ("--set", s)]
        return [
            str(REPO / "spark-submit.sh"),
            "--driver-memory",
            "2g",
            "--conf",
            f"spark.local.dir={self.root / 'spark-local'}",
            "--driver-java-options",
            TEST_JVM_OPTIONS,
            "jobs/match.py",
            "--env",
            "ci",
            *sets,
        ]


def _job_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLFLOW_") and not k.startswith("PYSPARK_GATEWAY_")
    }
    env["GX_ANALYTICS_ENABLED"] = "false"
    return env


def _run_match_here(lake: Lake, log_name: str) -> None:
    """The same nightly match, run by the job's own ``main`` in this process (its
    session): what an idempotent re-run needs, without a second JVM start."""
    started = time.monotonic()
    argv = ["--env", "ci", *[a for s in lake.overrides for a in ("--set", s)]]
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        match_main(argv)
    print(f"{log_name}: {time.monotonic() - started:.1f} s (in this process)")


def _matches_rows(spark: SparkSession, path: Path, version: int | None = None) -> set[Row]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    rows = reader.load(str(path)).select(S.ID, S.GROUP_ID, S.MATCHES).collect()
    out = {(r[S.ID], r[S.GROUP_ID], frozenset(r[S.MATCHES].split(" "))) for r in rows}
    assert len(out) == len(rows), f"{path}: duplicate rows"
    return out


def _table_rows(spark: SparkSession, path: Path) -> list[tuple[object, ...]]:
    return sorted(
        (tuple(r) for r in spark.read.format("delta").load(str(path)).collect()), key=repr
    )


def _data_files(table: Path) -> set[str]:
    return {p.name for p in table.glob("*.parquet")} if table.is_dir() else set()


def _new_files(table: Path, before: set[str], since: float) -> set[str]:
    """Data files not there before, written since ``since`` (seconds since the epoch)."""
    new = set()
    for name in _data_files(table) - before:
        try:
            if (table / name).stat().st_mtime >= since - 1:
                new.add(name)
        except FileNotFoundError:  # removed between the listing and the stat
            continue
    return new


def _ever_added(table: Path) -> set[str]:
    """Data files added by any committed version of the table (from its JSON commits)."""
    names = set()
    for commit in (table / "_delta_log").glob("*.json"):
        for line in commit.read_text(encoding="utf-8").splitlines():
            action = json.loads(line)
            if "add" in action:
                names.add(Path(unquote(action["add"]["path"])).name)
    return names


def _commit_file(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


@pytest.fixture(scope="module")
def lake(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> Lake:
    root = tmp_path_factory.mktemp("safe_reruns")
    overrides = (
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'art'}",
        f"model.name={MODEL_NAME}",
    )
    settings = load_settings("ci", list(overrides))
    csv = root / "pois.csv"
    write_pois_csv(generate_pois(ROWS, seed=31), csv)
    storage = settings.storage
    pois_path = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    with pytest.MonkeyPatch.context() as mp:
        # the MLflow store must be the temporary one, whatever the caller's environment says
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        ingest_file(spark, str(csv), pois_path=pois_path, quarantine_path=quarantine)
        _, _, alias = register_matcher(small_matcher, settings)
    assert alias == "champion"  # the nightly job matches with the champion
    return Lake(root, settings, overrides)


@dataclass(frozen=True)
class KillOutcome:
    landed: bool  # killed after data files appeared and before the commit
    new_files: frozenset[str]
    note: str


def _kill_during_write(lake: Lake, attempt: int) -> KillOutcome:
    """Start the match job; SIGKILL its process group once it writes before committing."""
    table = lake.matches
    version = max(int(p.stem) for p in (table / "_delta_log").glob("*.json"))
    commit = _commit_file(table, version + 1)
    before = _data_files(table)
    log = lake.root / f"match_killed_{attempt}.log"
    started = time.time()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(  # nosec B603: fixed argument list, no shell
            lake.match_command(*WIDE_WRITE),
            cwd=REPO,
            env=_job_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while time.time() - started < JOB_TIMEOUT_S:
                new = _new_files(table, before, started)
                if new and not commit.exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    if commit.exists():
                        return KillOutcome(False, frozenset(new), "commit landed before the kill")
                    files = frozenset(_data_files(table) - before)
                    return KillOutcome(
                        True,
                        files,
                        f"killed mid-write after {time.time() - started:.1f} s, "
                        f"{len(new)} new data file(s) seen, {len(files)} left",
                    )
                if commit.exists() or proc.poll() is not None:
                    proc.wait(timeout=JOB_TIMEOUT_S)
                    return KillOutcome(
                        False,
                        frozenset(new),
                        f"job finished (rc={proc.returncode}) before a write was seen",
                    )
                time.sleep(POLL_S)
            return KillOutcome(False, frozenset(), "timed out waiting for the write")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


@dataclass(frozen=True)
class Runs:
    """What the three runs left: rows after each normal run, the kill's outcome, and the
    tables' versions and contents just before the killed run."""

    first: set[Row]
    second: set[Row]
    pois_versions: tuple[int, int]
    kill: KillOutcome
    kill_notes: tuple[str, ...]
    before_kill: dict[Path, tuple[int, list[tuple[object, ...]]]]
    after_kill: dict[Path, tuple[bool, int, bool, list[tuple[object, ...]]]]
    rows_after_kill: set[Row]
    matches_version: int  # after the last run


@pytest.fixture(scope="module")
def runs(lake: Lake, spark: SparkSession) -> Runs:
    """A normal run, a run killed mid-write (up to KILL_ATTEMPTS tries), a normal run."""
    pois_before = delta_version(spark, str(lake.pois))
    _run_match_here(lake, "match_run1")
    first = _matches_rows(spark, lake.matches)

    tables = [lake.matches, lake.pois]
    if DeltaTable.isDeltaTable(spark, str(lake.quarantine)):
        tables.append(lake.quarantine)
    notes: list[str] = []
    outcome = KillOutcome(False, frozenset(), "not tried")
    before: dict[Path, tuple[int, list[tuple[object, ...]]]] = {}
    for attempt in range(1, KILL_ATTEMPTS + 1):
        before = {t: (delta_version(spark, str(t)), _table_rows(spark, t)) for t in tables}
        outcome = _kill_during_write(lake, attempt)
        notes.append(f"attempt {attempt}: {outcome.note}")
        if outcome.landed:
            break
    print("kill attempts:", "; ".join(notes))
    # the state the killed run left, read before the next run changes it
    after = {
        t: (
            DeltaTable.isDeltaTable(spark, str(t)),
            delta_version(spark, str(t)),
            _commit_file(t, before[t][0] + 1).exists(),
            _table_rows(spark, t),
        )
        for t in tables
    }
    rows_after_kill = _matches_rows(spark, lake.matches)

    _run_match_here(lake, "match_run2")
    second = _matches_rows(spark, lake.matches)
    return Runs(
        first=first,
        second=second,
        pois_versions=(pois_before, delta_version(spark, str(lake.pois))),
        kill=outcome,
        kill_notes=tuple(notes),
        before_kill=before,
        after_kill=after,
        rows_after_kill=rows_after_kill,
        matches_version=delta_version(spark, str(lake.matches)),
    )


def test_match_rerun_is_idempotent(runs: Runs, lake: Lake, spark: SparkSession) -> None:
    assert runs.pois_versions[0] == runs.pois_versions[1], "POI table changed"
    assert len(runs.first) == ROWS
    assert {r[0] for r in runs.first} == {
        r[S.ID] for r in spark.read.format("delta").load(str(lake.pois)).collect()
    }
    assert runs.second == runs.first
    # the matches table history: one version per run that finished (the two normal runs,
    # and a kill attempt only if its commit beat the kill), all full overwrites
    history = (
        DeltaTable.forPath(spark, str(lake.matches))
        .history()
        .select("version", "operation", "operationParameters")
        .orderBy("version")
        .collect()
    )
    landed_attempts = sum(
        "commit landed" in n or "job finished (rc=0)" in n for n in runs.kill_notes
    )
    assert [h["version"] for h in history] == list(range(2 + landed_attempts))
    assert all(h["operation"] == "WRITE" for h in history)
    assert all(h["operationParameters"]["mode"] == "Overwrite" for h in history)
    # time travel agrees: version 0 is run 1, the last version is run 2
    assert _matches_rows(spark, lake.matches, version=0) == runs.first
    assert _matches_rows(spark, lake.matches, version=runs.matches_version) == runs.second


def test_killed_write_leaves_tables_readable(runs: Runs, lake: Lake) -> None:
    if not runs.kill.landed:
        pytest.fail(f"no attempt was killed mid-write: {'; '.join(runs.kill_notes)}")

    # every table is readable at the version it had before the killed run, same content
    for t, (version, content) in runs.before_kill.items():
        is_delta, version_after, next_commit, content_after = runs.after_kill[t]
        assert is_delta, t
        assert version_after == version, f"{t}: version moved"
        assert not next_commit, t
        assert content_after == content, f"{t}: content changed"
    assert runs.rows_after_kill == runs.first

    # the kill landed mid-write: its data files are on disk and no version references them
    orphans = runs.kill.new_files - _ever_added(lake.matches)
    assert orphans, "no orphan data files: the kill did not land mid-write"
    assert orphans <= _data_files(lake.matches)

    # the normal run afterwards committed the next version without taking them in
    assert runs.matches_version == runs.before_kill[lake.matches][0] + 1
    assert not orphans & _ever_added(lake.matches)
