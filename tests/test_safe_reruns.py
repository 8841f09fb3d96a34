"""Safe re-runs (issue 5, item 6): the nightly match job can be run again, or killed.

A module fixture ingests a generated CSV into the Delta POI table of a temporary storage
root and trains a small model into a temporary MLflow store (in-process, with the
session's Spark). Then the match job runs through ``./spark-submit.sh`` as the nightly
schedule runs it (no ``--input``: it reads the POI table):

* twice on the same POI table version: the ``matches`` table holds the same rows after
  each run and its history shows the two writes;
* once more, killed with SIGKILL (its whole process group) after it has started writing
  data files into the ``matches`` folder but before the Delta commit: every table is still
  readable at its previous version with its previous content, the killed write's files are
  left as orphans nobody references, and a normal run afterwards commits a new version.
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
from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.batch import load_pois
from poimatch.config import Settings, load_settings
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.ingest import ingest_file
from poimatch.io import delta_version
from poimatch.workflows import train_model

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


def _run_match(lake: Lake, log_name: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(
        lake.match_command(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
        cwd=REPO,
        env=_job_env(),
    )
    (lake.root / f"{log_name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    assert done.returncode == 0, f"{log_name} failed:\n{(done.stdout + done.stderr)[-3000:]}"
    print(f"{log_name}: {time.monotonic() - started:.1f} s")
    return done


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
def lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("safe_reruns")
    overrides = (
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'art'}",
        f"model.name={MODEL_NAME}",
    )
    settings = load_settings("ci", [*overrides, "model.n_estimators=40", "model.num_workers=1"])
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
        pois, _ = load_pois(spark, pois_path, quarantine_path=quarantine, require_labels=True)
        train_model(pois, settings=settings, data_versions={"pois": f"delta:{pois_path}"})
    return Lake(root, settings, overrides)


@dataclass(frozen=True)
class TwoRuns:
    first: set[Row]
    second: set[Row]
    pois_versions: tuple[int, int]


@pytest.fixture(scope="module")
def two_runs(lake: Lake, spark: SparkSession) -> TwoRuns:
    """The nightly match job run twice on the same POI table version."""
    pois_before = delta_version(spark, str(lake.pois))
    _run_match(lake, "match_run1")
    first = _matches_rows(spark, lake.matches)
    _run_match(lake, "match_run2")
    second = _matches_rows(spark, lake.matches)
    return TwoRuns(first, second, (pois_before, delta_version(spark, str(lake.pois))))


def test_match_rerun_is_idempotent(two_runs: TwoRuns, lake: Lake, spark: SparkSession) -> None:
    assert two_runs.pois_versions[0] == two_runs.pois_versions[1], "POI table changed"
    assert len(two_runs.first) == ROWS
    assert {r[0] for r in two_runs.first} == {
        r[S.ID] for r in spark.read.format("delta").load(str(lake.pois)).collect()
    }
    assert two_runs.second == two_runs.first
    # the matches table history: exactly the two runs, both full overwrites
    history = (
        DeltaTable.forPath(spark, str(lake.matches))
        .history()
        .select("version", "operation", "operationParameters")
        .orderBy("version")
        .collect()
    )
    assert [h["version"] for h in history] == [0, 1]
    assert all(h["operation"] == "WRITE" for h in history)
    assert all(h["operationParameters"]["mode"] == "Overwrite" for h in history)
    # time travel agrees: version 0 is run 1, version 1 is run 2
    assert _matches_rows(spark, lake.matches, version=0) == two_runs.first
    assert _matches_rows(spark, lake.matches, version=1) == two_runs.second


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


def test_killed_write_leaves_tables_readable(
    two_runs: TwoRuns, lake: Lake, spark: SparkSession
) -> None:
    tables = [lake.matches, lake.pois]
    if DeltaTable.isDeltaTable(spark, str(lake.quarantine)):
        tables.append(lake.quarantine)
    notes: list[str] = []
    outcome = None
    for attempt in range(1, KILL_ATTEMPTS + 1):
        versions = {t: delta_version(spark, str(t)) for t in tables}
        contents = {t: _table_rows(spark, t) for t in tables}
        outcome = _kill_during_write(lake, attempt)
        notes.append(f"attempt {attempt}: {outcome.note}")
        if outcome.landed:
            break
    print("kill attempts:", "; ".join(notes))
    assert outcome is not None
    if not outcome.landed:
        pytest.fail(f"no attempt was killed mid-write: {'; '.join(notes)}")

    # every table is readable at the version it had before the killed run, same content
    for t in tables:
        assert DeltaTable.isDeltaTable(spark, str(t)), t
        assert delta_version(spark, str(t)) == versions[t], f"{t}: version moved"
        assert not _commit_file(t, versions[t] + 1).exists(), t
        assert _table_rows(spark, t) == contents[t], f"{t}: content changed"
    assert _matches_rows(spark, lake.matches) == two_runs.second

    # the kill landed mid-write: its data files are on disk and no version references them
    orphans = outcome.new_files - _ever_added(lake.matches)
    assert orphans, "no orphan data files: the kill did not land mid-write"
    assert orphans <= _data_files(lake.matches)

    # a normal run afterwards succeeds, commits the next version, same result as before
    previous = versions[lake.matches]
    _run_match(lake, "match_after_kill")
    assert delta_version(spark, str(lake.matches)) == previous + 1
    assert _matches_rows(spark, lake.matches) == two_runs.first
    assert not orphans & _ever_added(lake.matches)
