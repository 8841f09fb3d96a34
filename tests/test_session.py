"""The session builder's Python worker daemon (poimatch.worker_daemon) for local masters."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import worker_daemon
from poimatch.session import WORKER_DAEMON

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


@pytest.mark.filterwarnings("ignore:Cannot infer the eval type")  # a plain Python UDF
def test_local_sessions_run_udfs_in_workers_without_the_bundled_zips(spark: SparkSession) -> None:
    """The suite's session (local master, built by build_session) uses the daemon: its
    workers' path holds none of Spark's zips or jars, no zip importer for them is cached,
    and pyspark comes from the installed package; the UDF still computes its value."""
    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == WORKER_DAEMON

    @F.udf(T.StringType())
    def worker_state(value: str) -> str:
        import sys as worker_sys

        import pyspark as worker_pyspark

        return json.dumps(
            {
                "value": value.upper(),
                "path": worker_sys.path,
                "cached": list(worker_sys.path_importer_cache),
                "pyspark": worker_pyspark.__file__,
            }
        )

    frame = spark.createDataFrame([("abc",)], "v string")
    state = json.loads(frame.select(worker_state("v").alias("s")).first()["s"])  # type: ignore[index]
    assert state["value"] == "ABC"
    assert state["path"], state
    assert not [e for e in state["path"] if worker_daemon.bundled_zip(e)], state["path"]
    assert not [e for e in state["cached"] if worker_daemon.bundled_zip(e)], state["cached"]
    assert ".zip" not in state["pyspark"], state["pyspark"]


def test_sessions_skip_pyspark_s_call_site_capture(spark: SparkSession) -> None:
    """build_session turns off PySpark's per-call DataFrame debugging (a stack walk and
    JVM round trips per DataFrame call); an error still names what is wrong."""
    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"
    from pyspark.errors.utils import is_debugging_enabled

    assert is_debugging_enabled() is False
    frame = spark.createDataFrame([("abc",)], "v string")
    with pytest.raises(Exception, match="no_such_column"):
        frame.select("no_such_column").collect()
