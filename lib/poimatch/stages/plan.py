"""How the stages run: the batch and small plans, their SQL settings, and the stage
marks (Spark job descriptions, per-stage timings, cancellation checks).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.serializers import ArrowStreamPandasSerializer
from pyspark.sql.pandas.types import _deduplicate_field_names, to_arrow_type
from pyspark.sql.types import StructType

from poimatch.cancellation import check_cancelled
from poimatch.columns import select_named
from poimatch.stages.prepared import fits_one_partition, one_partition_scan

__all__ = [
    "BATCH",
    "COMPILED_SQL_CONF",
    "SMALL",
    "SMALL_SQL_CONF",
    "Plan",
    "Steps",
    "counted",
    "driver_frame",
    "held_copy",
    "held_frame",
    "local_frame",
    "held_select",
    "held_union",
    "job_name",
    "mark_stage",
    "name_jobs",
    "row_count",
    "selected_frame",
    "set_call_site",
    "record_stages",
    "session_conf",
    "small_plan_conf",
]

_log = logging.getLogger(__name__)
# stack of (event, epoch seconds) mark lists, one per active record_stages() block
_recorders: list[list[tuple[str, float]]] = []
_started: dict[str, float] = {}
# the step a job names its Spark jobs after between the stages (name_jobs), per thread
_step = threading.local()


@contextmanager
def record_stages() -> Iterator[list[tuple[str, float]]]:
    """Collect ``(event, time.time())`` marks of the stages run inside the block.

    Events are ``<stage>:start`` / ``<stage>:end`` for the eager stages (``points``,
    ``pair_features``, ``grouping``) and ``scoring:call`` when
    the (lazy) scoring plan is built. Benchmarks use them for per-stage wall times;
    outside the block nothing is recorded (stage durations are logged at INFO).
    """
    marks: list[tuple[str, float]] = []
    _recorders.append(marks)
    try:
        yield marks
    finally:
        _recorders.remove(marks)


def _describe_jobs(stage: str | None) -> None:
    """Name the Spark jobs this thread starts from now on (the UI's and the event log's
    job description): ``poimatch <stage>``, with the job group when one is set (a
    service request's tag); ``None`` clears it."""
    sc = SparkContext._active_spark_context
    if sc is None:
        return
    if stage is None:
        for key in ("spark.job.description", *_CALL_SITE):
            sc.setLocalProperty(key, None)  # type: ignore[arg-type]
        return
    group = sc.getLocalProperty("spark.jobGroup.id")
    sc.setJobDescription(f"poimatch {stage}" + (f" [{group}]" if group else ""))
    set_call_site(sc, f"poimatch {stage}")


#: the thread's call site, as Spark names it (``SparkContext.getCallSite``)
_CALL_SITE = ("callSite.short", "callSite.long")


def set_call_site(sc: SparkContext, name: str | None) -> None:
    """Name the call site of the RDDs and stages this thread creates from now on
    (``None``: Spark finds it again). Spark otherwise finds it for every RDD it creates
    by walking the JVM thread's stack and matching each frame's class against its own
    packages: for a small match's pair query (~170 operators, an RDD or more each) about
    half of the 0.1 s the driver spent creating them. PySpark's ``collect`` and
    ``toPandas`` set the short form around their own job and clear it after; each stage
    mark sets it again."""
    for key in _CALL_SITE:
        sc.setLocalProperty(key, name)  # type: ignore[arg-type]


def mark_stage(event: str) -> None:
    # every mark is a stage boundary: abandoned work (see poimatch.cancellation) stops here
    check_cancelled(event)
    now = time.time()
    stage, _, edge = event.partition(":")
    if edge in ("start", "call"):
        _describe_jobs(stage)
    if edge == "start":
        _started[stage] = now
    elif edge == "end" and stage in _started:
        _log.info("stage %s: %.1f s", stage, now - _started.pop(stage))
    if edge == "end" and stage == "grouping":
        _describe_jobs(job_name())
    if _recorders:
        _recorders[-1].append((event, now))


def job_name() -> str | None:
    """The step this thread names its Spark jobs after (:func:`name_jobs`), if any."""
    return getattr(_step, "name", None)


def name_jobs(step: str | None) -> None:
    """Name the Spark jobs this thread starts from now on ``poimatch <step>`` (the UI's
    and the event log's job description), until the next call; ``None``: unnamed again.

    For a job's own steps around the stages (its input, an incremental run's steps, the
    output contract, the writes). A stage inside (``points``, ``pair_features``,
    ``scoring``, ``grouping``) names its jobs after itself; after ``grouping`` the
    step's name comes back."""
    _step.name = step
    _describe_jobs(step)


class Steps:
    """A run's steps, one after the other: each one's Spark jobs named ``poimatch
    <jobs_prefix><step>`` (:func:`name_jobs`), its wall seconds kept (:attr:`seconds`),
    and a progress line as it ends (INFO, ``<log_prefix><step>: <seconds> s, <what it
    did>``), so a long run is not silent. When the last step ends, the jobs are named
    as before the first began."""

    def __init__(self, *, log_prefix: str, jobs_prefix: str = "") -> None:
        self.log_prefix, self.jobs_prefix = log_prefix, jobs_prefix
        self.seconds: dict[str, float] = {}
        self._step: str | None = None
        self._since = time.perf_counter()
        self._outer = job_name()

    def next(self, step: str | None, done: str = "") -> None:
        """End the step running (``done``: what it did) and start ``step`` (``None``:
        the last one has ended)."""
        now = time.perf_counter()
        if self._step is not None:
            elapsed = now - self._since
            self.seconds[self._step] = round(elapsed, 1)
            _log.info(
                "%s%s: %.1f s%s", self.log_prefix, self._step, elapsed, f", {done}" if done else ""
            )
        self._step, self._since = step, now
        name_jobs(self._outer if step is None else f"{self.jobs_prefix}{step}")


def _checkpoint(df: DataFrame) -> DataFrame:
    return df.localCheckpoint(eager=True)


#: the pandas frame each small-plan frame was made from (while the frame lives)
_held: weakref.WeakKeyDictionary[DataFrame, pd.DataFrame] = weakref.WeakKeyDictionary()


def _to_driver(df: DataFrame, *, joined: bool = True) -> DataFrame:
    """``df`` computed once (one Spark job) and held on the driver (:func:`held_frame`);
    a frame held already is returned as it is."""
    if driver_frame(df) is not None:
        return df
    return held_frame(df.sparkSession, df.toPandas(), df.schema, joined=joined)


def held_frame(
    spark: SparkSession, frame: pd.DataFrame, schema: StructType, *, joined: bool = True
) -> DataFrame:
    """``frame`` (computed on the driver, of ``schema``) as the small plan holds what it
    materializes, the pandas frame kept (:func:`driver_frame`): a scan, of one partition
    when small enough (:func:`poimatch.stages.prepared.one_partition_scan`: later joins
    and aggregates of held frames need no shuffle). ``joined=False`` for a frame that no
    query joins or aggregates (it is read on the driver, or by a prepared query, which
    reads its input as one partition anyway): a plain scan, without the ~15 ms of
    declaring it one partition."""
    out = local_frame(spark, frame, schema)
    if joined and fits_one_partition(len(frame)):
        out = one_partition_scan(out)
    _held[out] = frame
    return out


@dataclass(frozen=True)
class _ArrowSettings:
    """A session's settings for pandas-to-Arrow conversion, and the two JVM methods that
    make a frame of Arrow batches, looked up once (:func:`local_frame`)."""

    timezone: str
    safe: bool
    batch_rows: int
    large_types: bool
    read_file: Any  # PythonSQLUtils.readArrowStreamFromFile
    to_frame: Any  # PythonSQLUtils.toDataFrame
    set_active: Any  # SparkSession.setActiveSession


_arrow_settings: weakref.WeakKeyDictionary[SparkSession, _ArrowSettings] = (
    weakref.WeakKeyDictionary()
)


def _arrow_settings_of(spark: SparkSession) -> _ArrowSettings:
    known = _arrow_settings.get(spark)
    if known is None:
        conf = spark._jsparkSession.sessionState().conf()
        utils = spark._jvm.org.apache.spark.sql.api.python.PythonSQLUtils  # type: ignore[union-attr]
        known = _arrow_settings[spark] = _ArrowSettings(
            timezone=conf.sessionLocalTimeZone(),
            safe=bool(conf.arrowSafeTypeConversion()),
            batch_rows=int(conf.arrowMaxRecordsPerBatch()),
            large_types=bool(conf.arrowUseLargeVarTypes()),
            read_file=utils.readArrowStreamFromFile,
            to_frame=utils.toDataFrame,
            set_active=spark._jvm.org.apache.spark.sql.classic.SparkSession.setActiveSession,  # type: ignore[union-attr]
        )
    return known


def local_frame(spark: SparkSession, frame: pd.DataFrame, schema: StructType) -> DataFrame:
    """``spark.createDataFrame(frame, schema=schema)`` in ~3 py4j round trips, not ~25.

    PySpark's Arrow path reads six session settings over py4j for every frame (each
    two or three round trips) and looks its JVM methods up again; the small plan makes
    three or four frames per request. This is that path (the same pyspark serializer,
    types and JVM methods) with the settings and methods taken once per session: the
    time zone, safe conversion, batch size and large variable types (none of which the
    service changes after start). An empty frame goes through ``createDataFrame``."""
    if len(frame) == 0 or spark._jvm is None:
        return spark.createDataFrame(frame, schema=schema)
    settings = _arrow_settings_of(spark)
    types = [_deduplicate_field_names(f.dataType) for f in schema.fields]
    arrow_types = [to_arrow_type(t, prefers_large_types=settings.large_types) for t in types]
    step = settings.batch_rows if settings.batch_rows > 0 else len(frame)
    batches = [
        [
            (column, arrow_type, spark_type)
            for (_, column), arrow_type, spark_type in zip(
                frame.iloc[start : start + step].items(), arrow_types, types, strict=True
            )
        ]
        for start in range(0, len(frame), step)
    ]
    serializer = ArrowStreamPandasSerializer(  # type: ignore[no-untyped-call]
        settings.timezone, settings.safe, False
    )
    jvm = spark._jvm

    def server() -> Any:  # only with encryption on (a socket instead of a file)
        return jvm.ArrowIteratorServer()

    jss = spark._jsparkSession
    # as createDataFrame does: the JVM thread's active session, which each plan node
    # made on it records (a new thread, e.g. the service's Spark thread, has none)
    settings.set_active(jss)
    rows = spark.sparkContext._serialize_to_jvm(batches, serializer, settings.read_file, server)
    out = DataFrame(settings.to_frame(rows, schema.json(), jss), spark)
    out._schema = schema
    return out


def held_copy(df: DataFrame, frame: pd.DataFrame) -> DataFrame:
    """``df``, with ``frame`` as its driver copy (:func:`driver_frame`): for a frame built
    from rows the driver holds already, whose caller knows they are the rows and columns
    ``df.toPandas()`` gives (e.g. the ids of a local relation made from them)."""
    if list(frame.columns) != df.columns:
        raise ValueError(f"the driver copy's columns {list(frame.columns)} are not {df.columns}")
    _held[df] = frame
    return df


def held_select(df: DataFrame, columns: list[str]) -> DataFrame:
    """``df.select(*columns)``; when the small plan holds ``df``, the selection is held
    too (its driver copy: those columns of ``df``'s), so reading it on the driver
    (:func:`driver_frame`, :func:`selected_frame`) runs no Spark job."""
    out = select_named(df, columns)
    frame = driver_frame(df)
    if frame is not None:
        _held[out] = frame[columns]
    return out


def held_union(first: DataFrame, second: DataFrame, columns: list[str]) -> DataFrame:
    """``columns`` of ``first`` then of ``second`` (a union by name); when the small plan
    holds both, the union is held too (the two driver copies' columns, concatenated)."""
    out = first.select(*columns).unionByName(second.select(*columns))
    head, tail = driver_frame(first), driver_frame(second)
    if head is not None and tail is not None:
        _held[out] = pd.concat([head[columns], tail[columns]], ignore_index=True)
    return out


def driver_frame(df: DataFrame) -> pd.DataFrame | None:
    """The driver's pandas copy of ``df`` when the small plan materialized it (the same
    rows and columns ``df.toPandas()`` gives; do not modify it), else ``None``."""
    return _held.get(df)


def selected_frame(df: DataFrame, columns: list[str]) -> pd.DataFrame:
    """``df.select(*columns).toPandas()``, without a Spark job for a frame the small
    plan holds (a copy of those columns of the driver's frame)."""
    frame = driver_frame(df)
    if frame is None:
        return df.select(*columns).toPandas()
    return frame[columns].copy()


#: row counts known without a job (:func:`counted`), while the frame lives
_counts: weakref.WeakKeyDictionary[DataFrame, int] = weakref.WeakKeyDictionary()


def counted(df: DataFrame, rows: int) -> DataFrame:
    """``df``, its row count recorded as ``rows`` (known on the driver, e.g. every row of
    an upload the rules accepted): :func:`row_count` then runs no Spark job for it."""
    _counts[df] = rows
    return df


def row_count(df: DataFrame) -> int:
    """``df.count()``, without a Spark job for a frame the small plan holds or whose
    count is known (:func:`counted`)."""
    frame = driver_frame(df)
    if frame is not None:
        return len(frame)
    known = _counts.get(df)
    return known if known is not None else df.count()


@dataclass(frozen=True)
class Plan:
    """How the stages are executed: the same library functions, two ways of running them.

    ``batch`` (tables of any size): every stage's output is locally checkpointed
    (computed once, kept on the executors, its lineage cut), counts are taken, and
    each stage is its own Spark jobs. ``small`` (an upload of a few thousand rows):
    the stages are chained into a handful of Spark jobs, with no checkpoint and no
    count; the two results a later stage reads more than once (the normalized points
    and the scored pairs) are collected to the driver and read back as local relations,
    so each later plan starts from data already in the driver. A small plan on a large
    table would gather the table on the driver, so :meth:`for_rows` chooses by size.
    """

    name: str
    small: bool

    def materialize(self, df: DataFrame, *, joined: bool = True) -> DataFrame:
        """``df`` computed once: a local checkpoint (batch) or a driver-side relation
        (small; ``joined``: see :func:`held_frame`)."""
        return _to_driver(df, joined=joined) if self.small else _checkpoint(df)

    @staticmethod
    def for_rows(rows: int, small_max_rows: int) -> Plan:
        """The small plan for at most ``small_max_rows`` input rows, else the batch plan."""
        return SMALL if 0 <= rows <= small_max_rows else BATCH


BATCH = Plan("batch", small=False)
SMALL = Plan("small", small=True)

#: SQL settings for the small plan, measured on uploads of 10 to 10,000 rows
#: (docs/service.md) and on match runs of 30 and 20,000 rows (README, *Speed*):
#: compiling generated code costs more than it saves on a few thousand rows, broadcast
#: joins cost a Spark job each (the explicit broadcast hints of the pipeline still
#: broadcast the small lookup tables), adaptive execution re-plans between stages, and
#: one shuffle partition is one task per stage. The service's session runs with them;
#: a match job sets them for a small run (:func:`small_plan_conf`).
SMALL_SQL_CONF: dict[str, str] = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.sql.autoBroadcastJoinThreshold": "-1",
    "spark.sql.shuffle.partitions": "1",
}

#: Spark's compiled expressions and whole-stage code (its defaults), for a query of the
#: small plan whose rows are many enough for compiling to pay: a lookup read, and the
#: against path's blocking and pair features over the uploads and the table rows near
#: them (:mod:`poimatch.runs.against`). A prepared query compiles once: Spark keeps the
#: generated classes (``spark.sql.codegen.cache.maxEntries``, see
#: :mod:`poimatch.session`), and every later run of the plan's copy finds them.
COMPILED_SQL_CONF: dict[str, str] = {
    "spark.sql.codegen.wholeStage": "true",
    "spark.sql.codegen.factoryMode": "FALLBACK",
}


@contextmanager
def session_conf(spark: SparkSession, conf: Mapping[str, str]) -> Iterator[None]:
    """``conf`` set on ``spark`` for the block, then the session's own values back (unset
    where it had none)."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


@contextmanager
def small_plan_conf(spark: SparkSession, *, enabled: bool = True) -> Iterator[None]:
    """:data:`SMALL_SQL_CONF` on ``spark`` for the block (``enabled``), then the
    session's own values back. The settings are the session's, not the thread's: use it
    where one run owns the session (a job), not around one request of a shared one."""
    with session_conf(spark, SMALL_SQL_CONF if enabled else {}):
        yield
