"""A query planned once and re-run on new rows: Spark's physical plan reused across requests.

Spark analyzes, optimizes and plans every DataFrame it is given, and a small match's
blocking and pair-feature query is a few hundred operators (four blocking passes, the
pair sides, 27 features): building it from Python and planning it cost ~2 s of a warm
10-row request, whatever the rows. The plan does not depend on the rows (the small plan
builds it without any Spark job: no count, no collect feeds it), only its input does.

:meth:`PreparedQuery.prepare` builds the query once over a stand-in for its input (a
scan of an existing RDD, which the optimizer cannot fold into constants or size up the
way it does a local relation) and keeps the physical plan. :meth:`PreparedQuery.run`
copies that plan with the stand-in's scans (every copy of them: a self-join scans its
input twice) replaced by scans of the new rows, and runs the copy. Every operator
above a replaced scan is a new copy (``withNewChildren``), so no shuffle or broadcast
of an earlier run is read again; what does not depend on the input (a constant lookup)
is shared. A reused exchange (one shuffle read by two joins) stays shared within the
copy. Plans with subqueries (held in expressions, out of the children's reach) are
refused at preparation.

This reaches into Spark's physical plan through py4j (Spark has no prepared statement
for DataFrames; Spark Connect caches analyzed plans only). ``tests/test_prepared.py``
checks a prepared query's output against the same query planned afresh on several
inputs, so a Spark upgrade that changes these classes fails there, not in the service.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from py4j.java_gateway import JavaClass
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

__all__ = [
    "ONE_PARTITION_MAX_ROWS",
    "PreparationError",
    "PreparedQuery",
    "fits_one_partition",
    "jvm_helper",
    "one_partition_scan",
    "use_jvm_helper",
    "use_reused_plans",
]

#: inputs of up to this many rows are declared one partition (:func:`one_partition_scan`,
#: :meth:`PreparedQuery.prepare`): their queries run without shuffles, in one task. Above
#: it they are not: one task gives up the second core, and a task is interrupted (a
#: request's timeout) only where it reads its input or a shuffle, so a one-task query over
#: 20,000 dense rows could not be stopped until it ended (tests/test_awkward_uploads.py).
ONE_PARTITION_MAX_ROWS = 5_000


def fits_one_partition(rows: int) -> bool:
    """Whether an input of ``rows`` rows is declared one partition (see above)."""
    return rows <= ONE_PARTITION_MAX_ROWS


_SCAN = "RDDScanExec"
_REUSED = "ReusedExchangeExec"
_SHUFFLE = "ShuffleExchangeExec"
_JOB_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


class PreparationError(ValueError):
    """The query cannot be prepared: its plan depends on its input's rows, or it holds
    what a copy would not reach (a subquery)."""


@dataclass(frozen=True)
class _Node:
    """One operator of the prepared plan: the JVM node, its kind and its children (as
    indices into the plan's node list), and whether it reads the input (a scan of the
    stand-in beneath it)."""

    node: Any
    kind: str  # "scan" (of the stand-in), "reused" (a reused exchange), "other"
    children: tuple[int, ...]
    reads_input: bool


@dataclass(frozen=True)
class PreparedQuery:
    """A physical plan built once by ``build`` over a stand-in input, re-run on new rows.

    ``input_schema``: what :meth:`run` accepts (the stand-in's schema).
    """

    spark: SparkSession
    input_schema: T.StructType
    output_schema: Any  # the JVM StructType of the output
    nodes: tuple[_Node, ...]  # the plan's operators, children before parents; the root last
    stand_in: int  # the id of the RDD the stand-in's scans read
    one_partition: bool  # the stand-in was declared one partition (so is each run's input)
    # the plan executed once, its RDDs re-run per run (:meth:`run`): [] not tried yet,
    # [None] where the plan or the helper does not allow it, [the JVM ReusedPlan]
    _reused: list[Any] = field(default_factory=list, compare=False, repr=False)
    _reused_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def prepare(
        cls,
        rows: DataFrame,
        build: Callable[[DataFrame], DataFrame],
        *,
        one_partition: bool = True,
    ) -> PreparedQuery:
        """``build`` applied to a stand-in with ``rows``' schema, planned, its plan kept.

        ``one_partition``: the stand-in is a :func:`one_partition_scan` (the plan has no
        shuffle for its joins and windows; each run reads its rows as one partition), for
        inputs of up to :data:`ONE_PARTITION_MAX_ROWS` rows; else a plain scan.

        ``rows`` is not read (no Spark job runs). ``build`` must not run Spark jobs
        either: a plan shaped by its input's data (a count, a collect) would be wrong for
        other rows.

        Raises:
            PreparationError: ``build`` ran a Spark job, or its plan holds a subquery.
        """
        spark = rows.sparkSession
        if one_partition:
            stand_in = one_partition_scan(rows)
            rdd = _scan_rdd(stand_in)
        else:
            rdd = rows._jdf.queryExecution().toRdd()
            jdf = _session(spark).internalCreateDataFrame(rdd, rows._jdf.schema(), False)
            stand_in = DataFrame(jdf, spark)
        sc = spark.sparkContext
        saved = {key: sc.getLocalProperty(key) for key in _JOB_PROPERTIES}
        group = f"poimatch-prepare-{uuid.uuid4().hex}"
        sc.setJobGroup(group, "poimatch: preparing a query (runs no job)")
        try:
            query = build(stand_in)
            plan = query._jdf.queryExecution().executedPlan()
        finally:
            for key, value in saved.items():
                sc.setLocalProperty(key, value)  # type: ignore[arg-type]
        ran = sc.statusTracker().getJobIdsForGroup(group)
        if ran:
            raise PreparationError(
                f"building the query ran {len(ran)} Spark job(s) on its input: a plan shaped "
                "by the input's rows cannot be reused for other rows"
            )
        if not plan.subqueriesAll().isEmpty():
            raise PreparationError(
                "the query's plan holds subqueries, which a copy would not reach"
            )
        if one_partition:
            plan = _without_one_partition_shuffles(spark, plan)
        nodes: list[_Node] = []
        _index(plan, rdd.id(), _jvm(spark).java.util.IdentityHashMap(), nodes)
        if not nodes[-1].reads_input:
            if plan.nodeName() == "AdaptiveSparkPlan":
                raise PreparationError(
                    "adaptive execution is on (spark.sql.adaptive.enabled): its plan is "
                    "re-planned as it runs, so there is no plan to copy; prepare queries "
                    "under the service's SQL settings (SERVICE_SQL_CONF, adaptive off)"
                )
            raise PreparationError("the query does not read its input")
        return cls(
            spark=spark,
            input_schema=rows.schema,
            output_schema=query._jdf.schema(),
            nodes=tuple(nodes),
            stand_in=int(rdd.id()),
            one_partition=one_partition,
        )

    def run(self, rows: DataFrame) -> DataFrame:
        """The prepared query over ``rows`` (read by the returned frame's action; a
        broadcast of the input is built here).

        Raises:
            ValueError: ``rows`` is of another session or another schema than the stand-in.
        """
        if rows.sparkSession is not self.spark:
            raise ValueError("the rows belong to another Spark session than the prepared query")
        if rows.schema != self.input_schema:
            raise ValueError(
                "the rows' schema differs from the prepared query's input: "
                f"{rows.schema.simpleString()} against {self.input_schema.simpleString()}"
            )
        rdd = (_one_partition(rows) if self.one_partition else rows)._jdf.queryExecution().toRdd()
        output = self._reused_run(rdd)
        if output is None:
            helper = jvm_helper(self.spark)
            root = (
                helper.withInput(self.nodes[-1].node, self.stand_in, rdd)
                if helper is not None
                else self._copy(rdd)
            )
            output = root.execute()
        jss = _session(self.spark)
        out = jss.internalCreateDataFrame(output, self.output_schema, False)
        return DataFrame(out, self.spark)

    def _reused_run(self, rdd: Any) -> Any | None:
        """The output RDD of the plan executed once (at the first run) with its input
        bound to ``rdd``, or ``None`` where the plan is copied per run instead.

        Executing a plan's copy builds its RDDs, and Spark's closure cleaner reads and
        test-serializes each operator's closure as it does (0.2 s of a warm 10-row match,
        ~0.4 s of a 1,000-row match against the POI table). A one-partition plan whose
        input reaches its output through narrow dependencies only (no shuffle or
        broadcast of the input: where it has one, a rerun would read the first run's
        output) is executed once over a slot, and each run binds the slot to its rows
        (``deploy/jvm/src/io/poimatch/jvm/ReusedPlan.java``). A run's output must be read
        before the query's next run; read after it, its job fails with an error that
        says so, and never reads the other run's rows."""
        if not self.one_partition or not _reuse_wanted[0]:
            return None
        with self._reused_lock:
            if not self._reused:
                reused = _reused_plans(self.spark)
                self._reused.append(
                    None if reused is None else reused.of(self.nodes[-1].node, self.stand_in, rdd)
                )
            plan = self._reused[0]
            return None if plan is None else plan.run(rdd)

    def _copy(self, rdd: Any) -> Any:
        """The plan's copy over ``rdd``, operator by operator over py4j (the rules of
        ``deploy/jvm/src/io/poimatch/jvm/PreparedPlans.java``, which does it in one call
        where its jar is on the driver's class path)."""
        jvm = _jvm(self.spark)
        copies: list[Any] = []
        for entry in self.nodes:  # children first: each copy's children are made already
            node = entry.node
            if not entry.reads_input:
                copy = node
            elif entry.kind == "scan":
                copy = node.copy(
                    node.output(),
                    rdd,
                    node.name(),
                    node.outputPartitioning(),
                    node.outputOrdering(),
                    node.stream(),
                )
            elif entry.kind == "reused":  # the same exchange copy as where it is first used
                reused = jvm.org.apache.spark.sql.execution.exchange.ReusedExchangeExec
                copy = reused(node.output(), copies[entry.children[0]])
            else:
                items = jvm.java.util.ArrayList()
                for child in entry.children:
                    items.add(copies[child])
                seq = jvm.scala.jdk.javaapi.CollectionConverters.asScala(items).toList()
                copy = node.withNewChildren(seq)
            copies.append(copy)
        return copies[-1]


#: where the driver's class path has poimatch's JVM helper (``scripts/build_jvm.sh``);
#: ``use_jvm_helper(False)`` makes :meth:`PreparedQuery.run` copy plans over py4j
_HELPER = "io.poimatch.jvm.PreparedPlans"
_helper_wanted = [True]


_REUSED_PLAN = "io.poimatch.jvm.ReusedPlan"
_reuse_wanted = [True]


def use_reused_plans(wanted: bool) -> None:
    """Whether :meth:`PreparedQuery.run` re-runs a one-partition plan executed once where
    it can (the default) or copies and executes the plan per run (tests compare them)."""
    _reuse_wanted[0] = wanted


def _reused_plans(spark: SparkSession) -> Any | None:
    """The JVM class of plans executed once and re-run, or ``None`` without the helper."""
    if jvm_helper(spark) is None:
        return None
    cls: Any = _jvm(spark)
    for part in _REUSED_PLAN.split("."):
        cls = getattr(cls, part)
    return cls if isinstance(cls, JavaClass) else None


def use_jvm_helper(wanted: bool) -> None:
    """Whether :meth:`PreparedQuery.run` copies plans in the JVM helper when it is there
    (the default) or over py4j (the fallback; tests compare the two)."""
    _helper_wanted[0] = wanted


def jvm_helper(spark: SparkSession) -> Any | None:
    """The JVM class that copies a prepared plan in one call
    (``deploy/jvm/src/io/poimatch/jvm/PreparedPlans.java``), or ``None`` when the driver
    does not have it (a session without the project's jars) or it is turned off."""
    if not _helper_wanted[0]:
        return None
    helper: Any = _jvm(spark)
    for part in _HELPER.split("."):
        helper = getattr(helper, part)
    return helper if isinstance(helper, JavaClass) else None


def _one_partition(rows: DataFrame) -> DataFrame:
    """``rows`` in one partition (a coalesce: no shuffle), as the stand-in's scan declares."""
    return rows.coalesce(1)


def one_partition_scan(rows: DataFrame) -> DataFrame:
    """``rows`` (a small frame) as a scan of one partition that tells the planner so.

    Its output is one partition (``SinglePartition``), which satisfies every
    distribution a join, window or aggregate asks of it, and its size is estimated as
    empty: the planner keeps a join of one-partition sides in one partition only when
    each side's estimate is at most ``spark.sql.maxSinglePartitionBytes``, and a scan of
    an RDD has no size (Spark assumes the largest, ``spark.sql.defaultSizeInBytes``). So
    a query over such scans runs its joins, windows and aggregates in one task, without
    a shuffle (a stage, a write and a read) per key. Planned over a scan Spark made
    itself (``createDataFrame`` of a pandas frame), a small match's pair query had 18
    shuffles; over this one it has 6 (a union of passes and the joins above it still
    shuffle). The rows are read once per action, like any scan; only for small frames
    (the small plan's), whose estimate of 0 bytes would otherwise mislead the planner.
    """
    spark = rows.sparkSession
    jvm = _jvm(spark)
    rdd = _one_partition(rows)._jdf.queryExecution().toRdd()
    attributes = jvm.org.apache.spark.sql.catalyst.types.DataTypeUtils.toAttributes(
        rows._jdf.schema()
    )
    none = _module(getattr(jvm.scala, "None$"))
    scan = jvm.org.apache.spark.sql.execution.LogicalRDD(
        attributes,
        rdd,
        _module(getattr(jvm.org.apache.spark.sql.catalyst.plans.physical, "SinglePartition$")),
        _module(getattr(jvm.scala.collection.immutable, "Nil$")),  # no ordering
        False,  # not streaming
        none,  # no stream
        _session(spark),
        jvm.scala.Some(_empty_statistics(jvm, attributes)),
        none,  # no constraints
    )
    return DataFrame(jvm.org.apache.spark.sql.classic.Dataset.ofRows(_session(spark), scan), spark)


def _scan_rdd(scan: DataFrame) -> Any:
    """The RDD a :func:`one_partition_scan` reads (its logical plan's)."""
    return scan._jdf.queryExecution().analyzed().rdd()


def _empty_statistics(jvm: Any, attributes: Any) -> Any:
    """Statistics of an empty relation of ``attributes`` (0 bytes; Spark's estimates
    count an operator above it as 1 byte, and a join's as the product of its sides').
    Made in the JVM: py4j turns a Scala ``BigInt`` into a Python int."""
    logical = jvm.org.apache.spark.sql.catalyst.plans.logical
    nil = _module(getattr(jvm.scala.collection.immutable, "Nil$"))
    none = _module(getattr(jvm.scala, "None$"))
    return logical.LocalRelation(attributes, nil, False, none).computeStats()


def _module(scala_object_class: Any) -> Any:
    """The instance of a Scala ``object`` (its class's static ``MODULE$`` field)."""
    return getattr(scala_object_class, "MODULE$")


def _jvm(spark: SparkSession) -> Any:
    jvm = spark._jvm
    if jvm is None:
        raise RuntimeError("no JVM: the Spark session is not a classic (py4j) session")
    return jvm


def _session(spark: SparkSession) -> Any:
    return spark._jsparkSession


def _without_one_partition_shuffles(spark: SparkSession, plan: Any) -> Any:
    """``plan`` with each shuffle into one partition replaced by a coalesce into one.

    Over a one-partition input, the planner still shuffles wherever an operator forgets
    its child's partitioning (a Python UDF, an ``explode``, a union) and the one above
    asks for one (a join, a window, an aggregate): a shuffle into a single partition,
    each a stage of its own (its rows written and read back). A coalesce into one
    partition gives the same rows in the same single partition without a stage (Spark's
    ``CoalesceExec(1)`` declares ``SinglePartition``, which satisfies every
    distribution), so the query runs as one stage. An exchange another part of the plan
    re-reads (``ReusedExchangeExec``) is kept: the reuse saves more than the stage.
    """
    jvm = _jvm(spark)
    coalesce = jvm.org.apache.spark.sql.execution.CoalesceExec
    reused_exchanges = jvm.java.util.IdentityHashMap()
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.getClass().getSimpleName() == _REUSED:
            reused_exchanges.put(node.child(), True)
        kids = node.children()
        stack.extend(kids.apply(i) for i in range(kids.length()))
    seen = jvm.java.util.IdentityHashMap()  # JVM node -> index into ``done``
    done: list[tuple[Any, bool]] = []

    def rewrite(node: Any) -> tuple[Any, bool]:
        """The node's rewritten copy and whether it differs from the node."""
        known = seen.get(node)
        if known is not None:
            return done[int(known)]
        kind = node.getClass().getSimpleName()
        if kind == _REUSED:  # its exchange is a field, not a child: point it at the copy
            exchange, changed = rewrite(node.child())
            out = (
                jvm.org.apache.spark.sql.execution.exchange.ReusedExchangeExec(
                    node.output(), exchange
                )
                if changed
                else node
            )
        else:
            kids = node.children()
            new = [rewrite(kids.apply(i)) for i in range(kids.length())]
            changed = any(c for _, c in new)
            if (
                kind == _SHUFFLE
                and node.outputPartitioning().numPartitions() == 1
                and not reused_exchanges.containsKey(node)
            ):
                out, changed = coalesce(1, new[0][0]), True
            elif changed:
                items = jvm.java.util.ArrayList()
                for child, _ in new:
                    items.add(child)
                out = node.withNewChildren(
                    jvm.scala.jdk.javaapi.CollectionConverters.asScala(items).toList()
                )
            else:
                out = node
        seen.put(node, len(done))
        done.append((out, changed))
        return out, changed

    return rewrite(plan)[0]


def _index(node: Any, scan_rdd: int, seen: Any, nodes: list[_Node]) -> int:
    """Append ``node`` and the operators beneath it to ``nodes`` (children first, each
    JVM node once: ``seen`` maps it to its index by identity); its index."""
    known = seen.get(node)
    if known is not None:
        return int(known)
    kind = node.getClass().getSimpleName()
    if kind == _SCAN and node.rdd().id() == scan_rdd:
        entry = _Node(node, "scan", (), reads_input=True)
    elif kind == _REUSED:  # its exchange is a field, not a child
        child = _index(node.child(), scan_rdd, seen, nodes)
        entry = _Node(node, "reused", (child,), nodes[child].reads_input)
    else:
        kids = node.children()
        children = tuple(_index(kids.apply(i), scan_rdd, seen, nodes) for i in range(kids.length()))
        entry = _Node(node, "other", children, any(nodes[c].reads_input for c in children))
    nodes.append(entry)
    seen.put(node, len(nodes) - 1)
    return len(nodes) - 1
