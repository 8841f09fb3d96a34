"""The session builder for local masters: its Python worker daemon (poimatch.worker_daemon)
and the driver's class archive (poimatch.runs.class_archive)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess  # nosec B404: jcmd, a fixed command
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import COMPILED, run_probe
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import worker_daemon
from poimatch.runs import class_archive
from poimatch.session import (
    CLASS_ARCHIVE,
    CODEGEN_CACHE_CONF,
    CODEGEN_CACHE_ENTRIES,
    LOCAL_MEMORY_CONF,
    QUIET_STATUS_CONF,
    WORKER_DAEMON,
    with_class_archive,
)
from poimatch.stages.plan import session_conf

REPO = Path(__file__).resolve().parents[1]

BUNDLED = (
    "/opt/spark/python/lib/pyspark.zip",
    "/opt/spark/python/lib/py4j-0.10.9.9-src.zip",
    "/opt/spark/jars/spark-core_2.13-4.1.1.jar",
)
OWN = ("/srv/app/lib", "/srv/app/deps.zip")


@pytest.mark.parametrize(
    ("entry", "bundled"),
    [(e, True) for e in BUNDLED] + [(e, False) for e in (*OWN, "/usr/lib/python311.zip")],
)
def test_bundled_entries_are_spark_s_zips_and_jars(entry: str, bundled: bool) -> None:
    assert worker_daemon.bundled_zip(entry) is bundled


def test_the_bundled_zips_leave_the_path_and_the_importer_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "path", [BUNDLED[0], OWN[0], BUNDLED[1], BUNDLED[2], *sys.path])
    cache = {**sys.path_importer_cache, **{e: object() for e in (*BUNDLED, OWN[0])}}
    monkeypatch.setattr(sys, "path_importer_cache", cache)
    assert worker_daemon.strip_bundled_zips() is True
    assert not [e for e in sys.path if e in BUNDLED]
    assert sys.path[0] == OWN[0]  # the rest keeps its order
    assert not [e for e in sys.path_importer_cache if e in BUNDLED]
    assert OWN[0] in sys.path_importer_cache
    assert worker_daemon.strip_bundled_zips() is False  # nothing left to take


def test_the_path_stays_when_pyspark_is_only_in_the_zips(monkeypatch: pytest.MonkeyPatch) -> None:
    before = [BUNDLED[0], OWN[0], *sys.path]
    monkeypatch.setattr(sys, "path", before[:])
    real = importlib.util.find_spec

    def only_in_zip(name: str, *args: Any) -> Any:
        return None if name == "pyspark" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", only_in_zip)
    assert worker_daemon.strip_bundled_zips() is False
    assert sys.path == before


_PRELOAD_PROBE = """
import json, sys
import poimatch.worker_daemon as w
before = set(sys.modules)
failed = w.preload()
new = [m for m in (*w.PRELOAD, "tabnanny") if m not in before and m in sys.modules]
print(json.dumps({"failed": failed, "new": new}))
"""


def test_the_worker_daemon_imports_the_workers_modules_before_forking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh interpreter (as Spark starts the daemon): preload() imports every module of
    PRELOAD, which a new worker then inherits; POIMATCH_WORKER_PRELOAD replaces the list,
    and a module that cannot be imported is named, not fatal."""
    monkeypatch.delenv("POIMATCH_WORKER_PRELOAD", raising=False)
    done = json.loads(run_probe(_PRELOAD_PROBE).stdout)
    assert done == {"failed": [], "new": list(worker_daemon.PRELOAD)}
    monkeypatch.setenv("POIMATCH_WORKER_PRELOAD", "tabnanny,no_such_module_here")
    probe = run_probe(_PRELOAD_PROBE)
    done = json.loads(probe.stdout)
    assert done["failed"] == ["no_such_module_here"]
    assert done["new"] == ["tabnanny"]  # the list replaced, not extended
    assert "not preloaded no_such_module_here" in probe.stderr


@pytest.mark.filterwarnings("ignore:Cannot infer the eval type")  # a plain Python UDF
def test_local_sessions_run_udfs_in_workers_without_the_bundled_zips(spark: SparkSession) -> None:
    """The suite's session (local master, built by build_session) uses the daemon: its
    workers' path holds none of Spark's zips or jars, no zip importer for them is cached,
    and pyspark comes from the installed package; the UDF still computes its value. The
    JVM talks to them over a Unix domain socket (LOCAL_PYTHON_CONF), not loopback TCP."""
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.python.daemon.module") == WORKER_DAEMON
    assert conf.get("spark.python.unix.domain.socket.enabled") == "true"

    @F.udf(T.StringType())
    def worker_state(value: str) -> str:
        import os as worker_os
        import sys as worker_sys

        import pyspark as worker_pyspark

        return json.dumps(
            {
                "value": value.upper(),
                "path": worker_sys.path,
                "cached": list(worker_sys.path_importer_cache),
                "pyspark": worker_pyspark.__file__,
                "unix": worker_os.environ.get("PYTHON_UNIX_DOMAIN_ENABLED"),
            }
        )

    frame = spark.createDataFrame([("abc",)], "v string")
    state = json.loads(frame.select(worker_state("v").alias("s")).first()["s"])  # type: ignore[index]
    assert state["value"] == "ABC"
    assert state["path"], state
    assert not [e for e in state["path"] if worker_daemon.bundled_zip(e)], state["path"]
    assert not [e for e in state["cached"] if worker_daemon.bundled_zip(e)], state["cached"]
    assert ".zip" not in state["pyspark"], state["pyspark"]
    assert str(state["unix"]).lower() == "true", state


def test_local_sessions_give_each_sort_and_hash_table_a_small_memory_page(
    spark: SparkSession,
) -> None:
    """A local session's memory manager hands out LOCAL_MEMORY_CONF's 2 MB pages: Spark
    would size them from the execution memory per core (64 MB for the suite's 4 GB, one
    core), and each sort, aggregate or broadcast relation of a few rows takes one."""
    chosen = LOCAL_MEMORY_CONF["spark.buffer.pageSize"]
    assert spark.sparkContext.getConf().get("spark.buffer.pageSize") == chosen == "2m"
    manager = spark.sparkContext._jsc.sc().env().memoryManager()  # type: ignore[union-attr]
    assert manager.pageSizeBytes() == 2 * 1024 * 1024
    rows = spark.range(50).selectExpr("id % 7 AS k", "id AS v")
    counted = rows.groupBy("k").count().orderBy("k").collect()  # an aggregate and a sort
    assert [(r["k"], r["count"]) for r in counted] == [(k, 8 if k == 0 else 7) for k in range(7)]


def test_a_session_without_ui_keeps_only_the_recent_sql_executions(spark: SparkSession) -> None:
    """build_session gives a session without a UI (the suite's) QUIET_STATUS_CONF: its
    status store keeps the last SQL executions, not Spark's 1,000 (each with its plan's
    graph), however many queries the session has run."""
    conf = spark.sparkContext.getConf()
    for key, value in QUIET_STATUS_CONF.items():
        assert conf.get(key) == value, key
    kept = int(QUIET_STATUS_CONF["spark.sql.ui.retainedExecutions"])
    for i in range(3 * kept):
        spark.range(1).selectExpr(f"id + {i} AS v").collect()
    store = spark._jsparkSession.sharedState().statusStore()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while store.executionsCount() > 2 * kept:  # Spark trims it asynchronously
        assert time.monotonic() < deadline, f"{store.executionsCount()} executions kept"
        time.sleep(0.1)


def test_compiled_classes_are_kept_past_spark_s_hundred(spark: SparkSession) -> None:
    """build_session keeps CODEGEN_CACHE_ENTRIES generated classes, not Spark's 100: a
    query compiled once is found again after 60 other queries of two classes each. (The
    service's prepared against query, of over 100 classes, was compiled at every request.)"""
    assert spark.sparkContext.getConf().get(CODEGEN_CACHE_CONF) == CODEGEN_CACHE_ENTRIES
    metrics = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics  # type: ignore[union-attr]
    compiled = metrics.METRIC_COMPILATION_TIME()

    def run(i: int) -> None:
        assert spark.range(3).selectExpr(f"id * 7 + {i} AS v").collect()[0]["v"] == i

    with session_conf(spark, COMPILED):
        run(-1)
        before = compiled.getCount()
        for i in range(60):
            run(i)
        assert compiled.getCount() - before > 100  # more classes than Spark's default keeps
        again = compiled.getCount()
        run(-1)
        assert compiled.getCount() == again  # the first query's classes were kept


def test_sessions_skip_pyspark_s_call_site_capture(spark: SparkSession) -> None:
    """build_session turns off PySpark's per-call DataFrame debugging (a stack walk and
    JVM round trips per DataFrame call); an error still names what is wrong."""
    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"
    from pyspark.errors.utils import is_debugging_enabled

    assert is_debugging_enabled() is False
    frame = spark.createDataFrame([("abc",)], "v string")
    with pytest.raises(Exception, match="no_such_column"):
        frame.select("no_such_column").collect()


def test_the_class_archive_goes_first_only_when_there_is_one_and_none_is_chosen(
    tmp_path: Path,
) -> None:
    given = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    assert with_class_archive(given, tmp_path) == given  # no archive in the folder
    archive = tmp_path / CLASS_ARCHIVE
    archive.write_bytes(b"x")
    options = with_class_archive(given, tmp_path)
    assert options.startswith(f"-XX:SharedArchiveFile={archive.resolve()} -Xshare:auto ")
    assert options.endswith(given)  # the caller's options come last: theirs win
    assert "-Xlog:cds=off,cds+dynamic=off" in options  # a misfit's warnings stay off stdout
    assert with_class_archive("", tmp_path).startswith("-XX:SharedArchiveFile=")
    for own in ("-Xshare:off", "-XX:SharedArchiveFile=/x.jsa", "-XX:ArchiveClassesAtExit=/y"):
        assert with_class_archive(own, tmp_path) == own


def test_a_failed_archive_build_names_the_jvm_s_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failed(*_: Any, **__: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "Error occurred during initialization of VM")

    monkeypatch.setattr(class_archive.subprocess, "run", failed)
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1.*initialization of VM"):
        class_archive.build_archive(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_suite_s_driver_maps_spark_s_classes_from_the_archive(spark: SparkSession) -> None:
    """The archive `make setup` built is the one the suite's driver JVM (built by
    build_session) has mapped: the JVM's own report (``jcmd VM.info``) puts the mapped
    class-data size above the archive's (the JDK's base archive comes on top)."""
    archive = REPO / ".jars" / CLASS_ARCHIVE
    assert archive.is_file(), f"no {archive}: run `make setup`"
    jcmd = shutil.which("jcmd")
    assert jcmd is not None, "jcmd (the JDK's) is needed to ask the JVM"
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()  # type: ignore[union-attr]
    info = subprocess.run(  # nosec B603: the JDK's jcmd on the suite's own JVM
        [jcmd, str(pid), "VM.info"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    mapped = re.search(r"CDS archive\(s\) mapped at: .*?, size (\d+)", info)
    assert mapped is not None, info[:2000]
    assert int(mapped.group(1)) > archive.stat().st_size


def _wrapper_args(tmp_path: Path, *given: str, archive: bool = True) -> list[str]:
    """What ./spark-submit.sh hands spark-submit for ``given`` (a copy of the wrapper over
    a spark-submit that prints its arguments, one a line)."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".jars").mkdir()
    shutil.copy(REPO / "spark-submit.sh", root)
    fake = root / ".venv" / "bin" / "spark-submit"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    (root / ".jars" / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    if archive:
        (root / ".jars" / CLASS_ARCHIVE).write_bytes(b"")
    done = subprocess.run(  # nosec B603: the wrapper's copy, fixed arguments
        [str(root / "spark-submit.sh"), *given, "job.py", "--env", "ci"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_spark_submit_sh_puts_the_class_archive_in_front_of_a_local_driver_s_options(
    tmp_path: Path,
) -> None:
    def cds(case: str) -> str:
        archive = tmp_path / case / "checkout" / ".jars" / CLASS_ARCHIVE
        return f"-XX:SharedArchiveFile={archive} -Xshare:auto -Xlog:cds=off,cds+dynamic=off"

    def option(args: list[str]) -> str:
        assert args.count("--driver-java-options") == 1, args
        return args[args.index("--driver-java-options") + 1]

    assert option(_wrapper_args(tmp_path / "a")) == cds("a")
    given = _wrapper_args(tmp_path / "b", "--driver-java-options", "-Xmx1g")
    assert option(given) == f"{cds('b')} -Xmx1g"
    given = _wrapper_args(tmp_path / "c", "--driver-java-options=-Xmx1g")
    assert f"--driver-java-options={cds('c')} -Xmx1g" in given
    # the caller's own class-data sharing, a cluster's driver, no archive: left alone
    assert option(_wrapper_args(tmp_path / "d", "--driver-java-options", "-Xshare:off")) == (
        "-Xshare:off"
    )
    args = _wrapper_args(tmp_path / "e", "--master", "spark://h:7077", "--py-files", "p.zip")
    assert "--driver-java-options" not in args
    args = _wrapper_args(tmp_path / "f", archive=False)
    assert "--driver-java-options" not in args
    assert args[-3:] == ["job.py", "--env", "ci"]
