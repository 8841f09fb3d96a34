"""The one SparkSession builder, for jobs, the REST service, notebooks and tests.

Library code never builds a session: it receives one. This module is the only place
that knows how: local mode by default with Delta configured and the project's jars
attached; under ``spark-submit`` (or in a notebook that already has a session) it
leaves the master and resources alone and only adds what the library needs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from poimatch.config import SparkSettings

__all__ = [
    "CDS_QUIET",
    "CLASS_ARCHIVE",
    "CODEGEN_CACHE_CONF",
    "CODEGEN_CACHE_ENTRIES",
    "LOCAL_MEMORY_CONF",
    "LOCAL_PYTHON_CONF",
    "QUIET_STATUS_CONF",
    "WORKER_DAEMON",
    "build_session",
    "find_jars",
    "launched_by_spark_submit",
    "MissingJarsError",
    "with_class_archive",
]

_DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
_DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
_REQUIRED_JAR_PREFIXES = ("delta-spark_", "delta-storage-")
#: the Python worker daemon of local masters (see :mod:`poimatch.worker_daemon`)
WORKER_DAEMON = "poimatch.worker_daemon"
#: Python-worker settings of local masters (kept where the submitter or ``spark.extra``
#: set them): the daemon above, and Unix domain sockets (Spark 4.1) between the JVM and
#: its Python workers instead of loopback TCP, on which each Python UDF task stalled
#: ~40 ms (the delayed acknowledgement of a small write; a one-row Python UDF query
#: 95 -> 59 ms here, a pandas UDF one 109 -> 81 ms)
LOCAL_PYTHON_CONF: dict[str, str] = {
    "spark.python.daemon.module": WORKER_DAEMON,
    "spark.python.unix.domain.socket.enabled": "true",
}


#: Tungsten's memory page for local masters. Spark sizes it from the execution memory
#: per core, up to 64 MB, and every sort, hash aggregate, broadcast hash relation and
#: Python UDF input queue takes at least one whole page, allocated as a zeroed ``long[]``
#: however few its rows. A local session mostly runs small frames: after the blocking
#: tests the suite's JVM held 14 such 64 MB pages live (896 MB: broadcast relations kept
#: by prepared queries, and sorters a finished task's thread still references). With 2 MB
#: pages four of the suite's query-heavy modules took 328 CPU-seconds instead of 391;
#: the Geo-ER table's batch match (49k rows) gave the same output in the same time.
LOCAL_MEMORY_CONF: dict[str, str] = {"spark.buffer.pageSize": "2m"}

#: what Spark's status store keeps of finished work when no UI shows it. Spark's
#: defaults (1,000 jobs, 1,000 stages, 1,000 SQL executions, each execution with its
#: plan's graph and metrics) are for browsing the UI; a long-lived session without one
#: (the service, a notebook's, the test suite's) kept growing that store and paid for
#: it in listener work and garbage collection: four of the suite's modules in one
#: session, 427 / 424 -> 393 / 391 CPU-seconds. The last 200 jobs and stages still
#: answer ``statusTracker()`` for a job group just run.
QUIET_STATUS_CONF: dict[str, str] = {
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.sql.ui.retainedExecutions": "20",
}


#: how many generated classes Spark keeps for reuse (a static setting: set when the
#: session is built; see :func:`build_session`)
CODEGEN_CACHE_CONF = "spark.sql.codegen.cache.maxEntries"
CODEGEN_CACHE_ENTRIES = "2000"

#: the driver's class archive in the jars folder (:mod:`poimatch.runs.class_archive`)
CLASS_ARCHIVE = "spark-classes.jsa"
_CDS_OPTIONS = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare")
#: the JVM's class-data-sharing messages off: it writes them to stdout, where jobs print
CDS_QUIET = "-Xlog:cds=off,cds+dynamic=off"


def with_class_archive(options: str, jars_dir: str | Path) -> str:
    """Driver JVM ``options`` with the class archive of ``jars_dir`` in front, when the
    folder holds one and ``options`` choose no class-data sharing of their own.

    ``-Xshare:auto``: a JVM the archive does not fit (another Java build, another class
    path) starts without it; its warnings about that are silenced (:data:`CDS_QUIET`).
    """
    archive = Path(jars_dir) / CLASS_ARCHIVE
    if not archive.is_file() or any(o in options for o in _CDS_OPTIONS):
        return options
    ours = f"-XX:SharedArchiveFile={archive.resolve()} -Xshare:auto {CDS_QUIET}"
    return f"{ours} {options}".strip()


class MissingJarsError(RuntimeError):
    """The project's JVM jars are not in the jars folder: run ``make setup``."""


def launched_by_spark_submit() -> bool:
    """True when this Python driver was started by spark-submit / pyspark.

    spark-submit starts the JVM first and hands Python the gateway through these
    variables; the master and resources it was given must then win.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


def find_jars(jars_dir: str | Path) -> list[str]:
    """The jar files in ``jars_dir``, checked to hold Delta (sorted, absolute)."""
    folder = Path(jars_dir)
    jars = sorted(str(p.resolve()) for p in folder.glob("*.jar")) if folder.is_dir() else []
    names = [Path(j).name for j in jars]
    missing = [p for p in _REQUIRED_JAR_PREFIXES if not any(n.startswith(p) for n in names)]
    if missing:
        raise MissingJarsError(
            f"no {', '.join(m + '*.jar' for m in missing)} in {folder}: "
            "run `make setup` (it resolves the jars through Maven once)"
        )
    return jars


def _defaults(*, local: bool, ui: bool) -> dict[str, str]:
    """The settings a session gets unless ``spark.extra`` (or the submitter) sets them:
    a local master's Python workers and memory pages, and without a UI a small status
    store."""
    chosen = (LOCAL_PYTHON_CONF | LOCAL_MEMORY_CONF) if local else {}
    return chosen | ({} if ui else QUIET_STATUS_CONF)


def build_session(settings: SparkSettings) -> SparkSession:
    """Build (or adopt) the SparkSession with Delta Lake configured.

    Args:
        settings: the ``spark`` section of the configuration.

    Returns:
        The session. An already active session (notebook, Databricks) is returned
        as-is after checking that Delta is available; under spark-submit the master,
        driver memory and jars given to spark-submit are kept.

    Example:
        >>> spark = build_session(load_settings("ci").spark)  # doctest: +SKIP
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    wanted: dict[str, str] = {
        "spark.app.name": settings.app_name,
        "spark.sql.extensions": _DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": _DELTA_CATALOG,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.ui.showConsoleProgress": "false",
        # PySpark 4 records the Python call site of every DataFrame and Column call for
        # error contexts: a stack walk, a failed `import IPython` and 4-5 JVM round trips
        # per call. A small match builds ~380 of them: 6,984 -> 3,204 round trips per
        # request, 3.7 -> 3.1 s under cProfile. Errors still name the column or
        # expression; `--set "spark.extra={spark.python.sql.dataFrameDebugging.enabled:
        # 'true'}"` brings the call sites back.
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        # Spark keeps 100 generated classes by default. A prepared query compiled once
        # (the service's against query) needs more than that: with 100, every request
        # compiled them again (1,000 uploads against a 1M-row table 7.5 s a request, 4.3 s
        # with the classes kept; 10 uploads 2.7 s and 0.98 s)
        CODEGEN_CACHE_CONF: CODEGEN_CACHE_ENTRIES,
        **settings.extra,
    }
    builder = SparkSession.builder
    if launched_by_spark_submit():
        # The submitter chose master, resources and jars: keep every key it set.
        SparkContext._ensure_initialized()
        submitted = SparkConf()
        wanted = (
            _defaults(
                local=submitted.get("spark.master", "").startswith("local"),
                ui=submitted.get("spark.ui.enabled", "true") == "true",
            )
            | wanted
        )
        wanted = {k: v for k, v in wanted.items() if not submitted.contains(k)}
    else:
        # Plain `python jobs/x.py`, pytest or the service: we own the JVM, so we size it.
        builder = builder.master(settings.master)
        local = settings.master.startswith("local")
        wanted = _defaults(local=local, ui=settings.ui_enabled) | wanted
        wanted |= {
            "spark.driver.memory": settings.driver_memory,
            "spark.jars": ",".join(find_jars(settings.jars_dir)),
            "spark.ui.enabled": str(settings.ui_enabled).lower(),
        }
        # Python workers run the driver's interpreter, so they see the same packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if local:
            # the driver's classes come parsed and verified from the archive `make setup`
            # builds: a JVM start costs ~2 s less CPU (poimatch.runs.class_archive)
            options = with_class_archive(
                wanted.get("spark.driver.extraJavaOptions", ""), settings.jars_dir
            )
            if options:
                wanted["spark.driver.extraJavaOptions"] = options
    for key, value in wanted.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    return spark
