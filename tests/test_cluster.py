"""A real Spark cluster: the match job on a standalone master + worker gives local's output.

A Spark standalone master and one worker (1 core) are started on loopback from the
installed pyspark. The suite's shared small model (``small_matcher``, fitted once per run)
is registered in a store of this test; the match job then runs through ./spark-submit.sh
with ``--master spark://...`` (where spark-submit.sh ships the package as a wheel and
the Delta jars, and the executors run the venv's Python), and the same command's code
(:func:`poimatch.runs.batch.run_match`) runs in local mode on the suite's own session, on the
same test CSV with that model. The two outputs must be the same row for row. (The local
run was a second ./spark-submit.sh process, a JVM of its own; the wrapper's local mode is
run by tests/test_chain.py, tests/test_safe_reruns.py and tests/test_jobs.py.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess  # nosec B404: runs the project's wrapper and Spark's launcher, no shell
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark
import pytest
from conftest import TEST_JVM_OPTIONS, register_matcher
from pyspark.sql import SparkSession

from poimatch.config import load_settings
from poimatch.runs.batch import run_match
from poimatch.runs.workflows import FitOutcome
from poimatch.sample.generator import generate_pois, write_pois_csv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
LOOPBACK = "127.0.0.1"
JOB_TIMEOUT_S = 1200  # per job (a loaded 2-core box)
MODEL_NAME = "poimatch-cluster-test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _spark_env(root: Path) -> dict[str, str]:
    """Environment for Spark's daemons and the jobs: loopback, temp dirs, no tracking URI."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    local_dirs = root / "local"
    local_dirs.mkdir(parents=True, exist_ok=True)
    env |= {
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_LOCAL_HOSTNAME": LOOPBACK,
        "SPARK_LOCAL_DIRS": str(local_dirs),
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_PID_DIR": str(root),
        "GX_ANALYTICS_ENABLED": "false",
        # the master's and the worker's JVMs: C1 alone and the serial GC, as every JVM of
        # the suite (short-lived, tiny data: far less CPU)
        "SPARK_DAEMON_JAVA_OPTS": TEST_JVM_OPTIONS,
    }
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


@dataclass
class Cluster:
    """A standalone master and worker started by the fixture (processes killed on teardown)."""

    root: Path
    env: dict[str, str]
    master_url: str
    web_url: str
    work_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The master's status JSON (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:  # nosec B310
            data: dict[str, Any] = json.load(response)
        return data

    def completed_apps(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The finished applications, once there is one (the master learns it async)."""
        deadline = time.monotonic() + timeout_s
        while not (apps := self.state()["completedapps"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        return list(apps)

    def wait_until_ready(self, timeout_s: float = 180.0) -> None:
        """Block until one worker has registered with the master and is ALIVE."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = _tail(self.root / f"{name}.log")
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{log}")
            try:
                workers = self.state().get("workers", [])
            except OSError:
                workers = []
            if any(w.get("state") == "ALIVE" for w in workers):
                return
            time.sleep(1.0)
        pytest.fail(
            f"no worker registered within {timeout_s:.0f}s:\n"
            f"{_tail(self.root / 'master.log')}\n{_tail(self.root / 'worker.log')}"
        )


def _start(name: str, args: list[str], cluster: Cluster) -> None:
    log = (cluster.root / f"{name}.log").open("wb")
    cluster.procs[name] = subprocess.Popen(  # nosec B603: fixed argument list
        [str(SPARK_HOME / "bin" / "spark-class"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cluster.env,
        cwd=cluster.root,
        start_new_session=True,  # its own process group: the worker's executors are in it
    )
    log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started and its process group (a worker's executors, a job's
    Python driver): TERM, then KILL."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)  # the group we created (start_new_session), by its id
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Master + one 1-core worker on loopback; started here, readiness awaited by the test.

    The test waits for the worker only when it needs the cluster, so the daemons' JVMs
    start while the model trains.
    """
    root = tmp_path_factory.mktemp("spark-standalone")
    port, web_port, worker_web_port = _free_port(), _free_port(), _free_port()
    work_dir = root / "work"
    work_dir.mkdir()
    cluster = Cluster(
        root=root,
        env=_spark_env(root),
        master_url=f"spark://{LOOPBACK}:{port}",
        web_url=f"http://{LOOPBACK}:{web_port}",
        work_dir=work_dir,
    )
    try:
        _start(
            "master",
            [
                "org.apache.spark.deploy.master.Master",
                *("--host", LOOPBACK, "--port", str(port), "--webui-port", str(web_port)),
            ],
            cluster,
        )
        _start(
            "worker",
            [
                "org.apache.spark.deploy.worker.Worker",
                cluster.master_url,
                *("--host", LOOPBACK, "--webui-port", str(worker_web_port)),
                *("--cores", "1", "--memory", "2g", "--work-dir", str(work_dir)),
            ],
            cluster,
        )
        yield cluster
    finally:
        for name in ("worker", "master"):
            if name in cluster.procs:
                _stop(cluster.procs[name])


@dataclass
class Job:
    """A ./spark-submit.sh run in its own process group, its output in files."""

    what: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


def _launch(
    logs: Path, env: dict[str, str], submit_opts: list[str], job: str, *job_args: str
) -> Job:
    """Start ``./spark-submit.sh [submit_opts] job job_args --env ci`` (not waiting)."""
    args = [
        str(REPO / "spark-submit.sh"),
        *submit_opts,
        *("--conf", "spark.ui.enabled=false"),
        *("--conf", f"spark.driver.host={LOOPBACK}"),
        *("--conf", f"spark.driver.bindAddress={LOOPBACK}"),
        job,
        *job_args,
        *("--env", "ci"),
    ]
    name = f"{Path(job).stem}-{len(list(logs.glob('*.out')))}"
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(  # nosec B603: the project's wrapper, fixed argument list
            args, stdout=stdout, stderr=stderr, cwd=REPO, env=env, start_new_session=True
        )
    return Job(" ".join([job, *submit_opts]), proc, out, err)


def _finish(job: Job) -> str:
    """Wait for a launched job; its stdout, or a failure with the ends of its output."""
    try:
        job.proc.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(job.proc)
        pytest.fail(f"{job.what}: no result in {JOB_TIMEOUT_S}s:\n{_tail(job.stderr, 5000)}")
    stdout = job.stdout.read_text(encoding="utf-8", errors="replace")
    assert job.proc.returncode == 0, (
        f"{job.what} failed ({job.proc.returncode}):\n"
        f"stdout:\n{stdout[-3000:]}\nstderr:\n{_tail(job.stderr, 5000)}"
    )
    return stdout


def _value(stdout: str, key: str) -> str:
    values = [line.split("=", 1)[1] for line in stdout.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"expected one {key}= line in:\n{stdout}"
    return values[0]


def _read_output(path: Path) -> list[tuple[str, frozenset[str]]]:
    """The output CSV in file order: (id, set of matched ids); checks the id comes first."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        members = row["matches"].split(" ")
        assert members[0] == row["id"], f"{path}: {row}"
        out.append((row["id"], frozenset(members)))
    return out


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs the test launches; any still running at the end (a failure) is stopped."""
    launched: list[Job] = []
    yield launched
    for job in launched:
        _stop(job.proc)


def test_match_on_standalone_cluster_equals_local(
    spark: SparkSession,
    cluster: Cluster,
    jobs: list[Job],
    small_matcher: FitOutcome,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("cluster-match")
    logs = work / "logs"
    logs.mkdir()
    test_csv = work / "test.csv"
    write_pois_csv(generate_pois(1500, seed=32), test_csv)
    store = [
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"tracking.artifact_root={work / 'artifacts'}",
        f"model.name={MODEL_NAME}",
    ]
    tracking = [a for o in store for a in ("--set", o)]

    # 1. Register the shared small model (the daemons' JVMs start meanwhile); training
    # through spark-submit is `make run`'s and tests/test_chain.py's business.
    model_uri, _, _ = register_matcher(small_matcher, load_settings("ci", store))
    assert model_uri.startswith(f"models:/{MODEL_NAME}/"), model_uri
    trained_at = time.monotonic()

    # 2. Match the same CSV with that model on the cluster (spark-submit) and, while it
    # runs, in local mode on this process's session.
    cluster.wait_until_ready()
    assert cluster.state()["completedapps"] == []
    outputs = {"local": work / "local.csv", "cluster": work / "cluster.csv"}
    # the batch plan (what runs at scale), not the small plan 1,500 rows get
    batch_plan = "matching.small_max_rows=0"
    jobs.append(
        _launch(
            logs,
            cluster.env,
            [
                *("--master", cluster.master_url),
                *("--driver-memory", "1g", "--executor-memory", "2g"),
                *("--total-executor-cores", "1", "--conf", "spark.executor.cores=1"),
                *("--driver-java-options", TEST_JVM_OPTIONS),
                *("--conf", f"spark.executor.extraJavaOptions={TEST_JVM_OPTIONS}"),
            ],
            "jobs/match.py",
            *("--input", str(test_csv), "--output", str(outputs["cluster"])),
            *("--model", model_uri),
            *("--set", f"storage.root={work / 'lake-cluster'}"),
            *("--set", batch_plan),
            *tracking,
        )
    )
    local_settings = load_settings(
        "ci", [*store, f"storage.root={work / 'lake-local'}", batch_plan]
    )
    lines = run_match(
        spark,
        local_settings,
        input_path=str(test_csv),
        output_csv=str(outputs["local"]),
        model_uri=model_uri,
    )
    assert lines.model_uri == model_uri
    assert _value("\n".join(lines.lines()), "model") == model_uri
    assert _value(_finish(jobs[0]), "model") == model_uri
    matched_at = time.monotonic()

    # 3a. The cluster run really ran on the cluster: the master lists exactly one finished
    # application (the local run never registered), and its executor on our worker
    # fetched the wheel spark-submit.sh shipped and the Delta jars.
    apps = cluster.completed_apps()
    assert len(apps) == 1, apps
    assert apps[0]["state"] == "FINISHED", apps
    assert apps[0]["name"] == "match.py", apps
    assert cluster.state()["activeapps"] == []
    executor_dirs = list((cluster.work_dir / apps[0]["id"]).iterdir())
    assert executor_dirs, f"no executor ran for {apps[0]['id']}"
    shipped = {p.name for d in executor_dirs for p in d.iterdir()}
    assert any(n.startswith("poimatch-") and n.endswith(".whl") for n in shipped), shipped
    assert any(n.startswith("delta-spark_") for n in shipped), shipped
    executor_log = "".join(_tail(d / "stderr", 10**9) for d in executor_dirs)
    assert "Finished task" in executor_log, executor_log[-3000:]

    # 3b. Same output, row for row: the ids in the same order, each with the same set.
    local, on_cluster = _read_output(outputs["local"]), _read_output(outputs["cluster"])
    assert len(local) == 1500
    # A model that matched nothing would make the comparison trivial.
    assert sum(len(m) > 1 for _, m in local) > 300
    assert [i for i, _ in local] == [i for i, _ in on_cluster], "ids or their order differ"
    differ = [(i, a, b) for (i, a), (_, b) in zip(local, on_cluster, strict=True) if a != b]
    assert not differ, (
        f"{len(differ)} rows differ between the local and the cluster run, e.g. "
        + "; ".join(f"{i}: local {sorted(a)} cluster {sorted(b)}" for i, a, b in differ[:5])
    )
    print(
        f"register {trained_at - started:.0f}s, cluster ready + both matches "
        f"{matched_at - trained_at:.0f}s, total {time.monotonic() - started:.0f}s"
    )
