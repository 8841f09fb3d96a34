"""The Spark engine: one warm local session; a request's rows checked by the input
rules and matched through the facade, with cooperative cancellation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pandas as pd
from py4j.protocol import Py4JNetworkError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.apps.service.models import LoadedModel, ModelStore
from poimatch.apps.service.uploads import ROW, SparkLostError, problem_for_rejections
from poimatch.cancellation import cancel_scope, check_cancelled
from poimatch.columns import named_columns
from poimatch.io.ingest import accepted_rows, check_rows, poi_layout
from poimatch.io.lookup import HeldLookup, KnownTable, held_lookup, hold_lookup, pin_lookup
from poimatch.matcher import Matcher
from poimatch.stages.candidates import prepared_points
from poimatch.stages.plan import (
    SMALL,
    SMALL_SQL_CONF,
    Plan,
    counted,
    held_select,
    local_frame,
    selected_frame,
    set_call_site,
)
from poimatch.stages.prepared import fits_one_partition

if TYPE_CHECKING:
    from poimatch.runs.workflows import MatchResult

log = logging.getLogger("poimatch.apps.service")  # one logger name for the whole service


#: SQL settings of the service's own session: the small plan's
#: (:data:`poimatch.stages.plan.SMALL_SQL_CONF`; the shuffle partitions are
#: ``service.shuffle_partitions``)
SERVICE_SQL_CONF: dict[str, str] = {
    k: v for k, v in SMALL_SQL_CONF.items() if k != "spark.sql.shuffle.partitions"
}

# ---------------------------------------------------------------------------- engine


class Engine(Protocol):
    """What the HTTP layer needs from the matcher (the real one is :class:`SparkEngine`)."""

    def model(self) -> LoadedModel | None: ...

    def match(self, table: pd.DataFrame, model: LoadedModel, tag: str) -> pd.DataFrame: ...

    def cancel(self, tag: str) -> None: ...


class _Run:
    """One request's work on the Spark thread: its cancellation flag and its end."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.started = False
        self.done = threading.Event()
        self.created = time.monotonic()


_FORGET_UNSTARTED_S = 3600.0  # a cancelled request that never started (skipped in the queue)


class SparkEngine:
    """Runs requests through the library's pipeline on one warm local Spark session.

    Cancelling a request (after its timeout) sets its flag, checked at every stage
    boundary of the pipeline (:mod:`poimatch.cancellation`), and cancels its Spark job
    group, again for every job it still starts, until the request's thread gives up:
    the Spark thread is free for the next request within one stage.
    """

    #: How long a cancel keeps cancelling the jobs of a request that does not stop.
    CANCEL_PATIENCE_S = 300.0

    def __init__(
        self,
        matcher: Matcher,
        store: ModelStore,
        *,
        small_max_rows: int = 20_000,
        lookup_path: str | None = None,
        reuse_plan: bool = True,
        hold_lookup_max_rows: int = 0,
        compiled_pairs: bool = False,
    ) -> None:
        self.matcher = matcher
        self.spark = matcher.spark
        self.small_max_rows = small_max_rows
        self.reuse_plan = reuse_plan
        self.compiled_pairs = compiled_pairs
        self.lookup_path = lookup_path
        self.hold_lookup_max_rows = hold_lookup_max_rows
        self._known: KnownTable | None = None
        self._holding: threading.Thread | None = None
        #: called with the table version once it is held (the service: an against
        #: warm-up match on its Spark thread)
        self.after_hold: Callable[[KnownTable], None] | None = None
        self.store = store
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def model(self) -> LoadedModel | None:
        """The model a new request should use."""
        return self.store.current

    def refresh_lookup(self, *, hold: bool = True) -> KnownTable | None:
        """Pin the lookup table's current version (at start-up and with every model poll)
        and, with ``hold``, :meth:`start_holding` it."""
        if self.lookup_path is not None:
            self._known = pin_lookup(self.spark, self.lookup_path)
            if hold:
                self.start_holding()
        return self._known

    def start_holding(self) -> None:
        """Hold the pinned version on the driver (:meth:`hold`) in the background, unless
        it is held or being held: until it is, requests read the table's files."""
        known = self._known
        busy = self._holding is not None and self._holding.is_alive()
        missing = known is not None and held_lookup(known) is None
        if missing and self.hold_lookup_max_rows > 0 and not busy:
            self._holding = threading.Thread(
                target=self.hold, args=(known,), name="poimatch-hold-lookup", daemon=True
            )
            self._holding.start()

    def hold(self, known: KnownTable) -> HeldLookup | None:
        """Hold ``known`` on the driver (:func:`poimatch.io.lookup.hold_lookup`) if it has at
        most ``hold_lookup_max_rows`` rows; a failure is logged, and requests keep reading
        the table's files."""
        started = time.monotonic()
        try:
            held = hold_lookup(self.spark, known, self.hold_lookup_max_rows)
        except Exception:  # the files stay readable: the requests fall back to them
            log.exception("holding %s failed", known.label())
            return None
        if held is not None:
            log.info(
                "lookup %s held: %d rows in %.1f s",
                known.label(),
                held.table.num_rows,
                time.monotonic() - started,
            )
            if self.after_hold is not None:
                try:
                    self.after_hold(known)
                except Exception:  # the table is held: requests use it all the same
                    log.exception("after holding %s", known.label())
        return held

    def known(self) -> KnownTable | None:
        """The pinned lookup table a new ``?against=pois`` request reads."""
        return self._known

    def match_against(
        self, table: pd.DataFrame, model: LoadedModel, known: KnownTable, tag: str
    ) -> pd.DataFrame:
        """:meth:`match` against the pinned lookup table as well: ``id``, ``matches``,
        ``known_ids``, ``known_groups`` (see :func:`poimatch.runs.against.match_against`)."""
        return self.match(table, model, tag, known=known)

    def _run(self, tag: str) -> _Run:
        with self._lock:
            now = time.monotonic()
            for old in [
                t
                for t, r in self._runs.items()
                if not r.started and now - r.created > _FORGET_UNSTARTED_S
            ]:
                del self._runs[old]
            return self._runs.setdefault(tag, _Run())

    def cancel(self, tag: str) -> None:
        """Stop one request (after its timeout): flag it, cancel its Spark jobs.

        Blocks until the request's thread has stopped (or :attr:`CANCEL_PATIENCE_S`);
        call it off the event loop. A request that has not started yet finds its flag
        set at its first stage boundary.
        """
        run = self._run(tag)
        run.cancelled.set()
        if not run.started:
            return
        sc = self.spark.sparkContext
        deadline = time.monotonic() + self.CANCEL_PATIENCE_S
        while True:
            sc.cancelJobGroup(tag)  # the job running now, then any it starts before a boundary
            if run.done.wait(0.5) or time.monotonic() > deadline:
                break
        log.info("request %s stopped after its timeout", tag)

    def match(
        self,
        table: pd.DataFrame,
        model: LoadedModel,
        tag: str,
        known: KnownTable | None = None,
    ) -> pd.DataFrame:
        """Validate the rows like the batch, then match them: ``id``, ``matches`` (and
        ``known_ids``, ``known_groups`` when matched against ``known`` too).

        Raises:
            RequestError: 422 naming the rows the contract rules reject.
            poimatch.cancellation.CancelledError: the request was cancelled.
        """
        run = self._run(tag)
        run.started = True
        try:
            sc = self.spark.sparkContext
            sc.setJobGroup(tag, f"poimatch request {tag}", interruptOnCancel=True)
            set_call_site(sc, f"poimatch request {tag}")
            try:
                with cancel_scope(run.cancelled):
                    return self._match(table, model, known)
            finally:
                sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
                set_call_site(sc, None)
        except (Py4JNetworkError, ConnectionError) as exc:
            raise SparkLostError(f"the Spark driver JVM is gone: {exc}") from exc
        finally:
            run.done.set()
            with self._lock:
                self._runs.pop(tag, None)

    def _match(
        self, table: pd.DataFrame, model: LoadedModel, known: KnownTable | None
    ) -> pd.DataFrame:
        check_cancelled("validation")
        raw = upload_frame(self.spark, table)
        plan = Plan.for_rows(len(table), self.small_max_rows)
        if plan.small and self.reuse_plan and known is None:
            return self._match_prepared(counted(raw, len(table)), model)
        if fits_one_partition(len(table)):
            # one partition (a coalesce declares it): the rules' duplicate-id window
            # needs no shuffle, so they run as one stage
            raw = raw.coalesce(1)
        # the rules run once; their verdicts are read twice (rejected, accepted)
        # (read by the prepared normalization, which reads its input as one partition)
        checked = plan.materialize(check_rows(raw), joined=not self.reuse_plan)
        verdicts = selected_frame(checked, [ROW, S.ID, S.REASON])  # on the driver already
        _reject(verdicts)
        check_cancelled("matching")
        # no row was rejected (else 422 above): every row is accepted, a count known here
        pois = counted(
            accepted_rows(checked).select(
                *named_columns(f.name for f in S.poi_table_schema().fields)
            ),
            len(verdicts),
        )
        if known is not None:
            return self.matcher.match_frame_against(
                pois, known, model=model, reuse_plan=self.reuse_plan, held=held_lookup(known)
            )
        result = self.matcher.match_frame(pois, model=model, plan=plan, reuse_plan=self.reuse_plan)
        return self._output(result)

    def _match_prepared(self, raw: DataFrame, model: LoadedModel) -> pd.DataFrame:
        """A small upload on prepared queries (a warm service): the rules, the
        normalization and the name statistics in one Spark job, their verdicts read on the
        driver, then (no row rejected) the points matched."""
        checked = prepared_points(raw, owner=model.model, stats=model.spec.stats(), layout=_rules)
        verdicts = selected_frame(checked, [ROW, S.ID, S.REASON])  # held on the driver
        _reject(verdicts)
        check_cancelled("matching")
        # held on the driver too: counted without a job
        points = held_select(checked, [c for c in checked.columns if c not in (ROW, S.REASON)])
        result = self.matcher.match_frame(
            points,
            model=model,
            plan=SMALL,
            reuse_plan=True,
            normalized=True,
            compiled_pairs=self.compiled_pairs,
        )
        return self._output(result)

    @staticmethod
    def _output(result: MatchResult) -> pd.DataFrame:
        try:
            check_cancelled("output")
            return selected_frame(result.matches, [S.ID, S.MATCHES])
        finally:
            result.matches.unpersist()


def upload_frame(spark: SparkSession, table: pd.DataFrame) -> DataFrame:
    """A parsed upload (:func:`poimatch.apps.service.uploads.parse_upload`) as a Spark
    frame: its input columns as strings, its row numbers, its source named."""
    fields = [T.StructField(c, T.StringType(), True) for c in S.INPUT_COLUMNS]
    schema = T.StructType(
        [
            *fields,
            T.StructField(ROW, T.LongType(), False),
            T.StructField(S.SOURCE_FILE, T.StringType(), False),
        ]
    )
    return local_frame(spark, table.assign(**{S.SOURCE_FILE: "request"}), schema)


def _rules(raw: DataFrame) -> DataFrame:
    """The upload rules' verdict on each raw row (``reason``, null when valid), the rows
    in the POI table's layout with their upload row number: the prepared points' first
    step (:meth:`SparkEngine._match_prepared`).

    A rejected row's name is left out (null): the name statistics aggregate per id,
    which only the accepted rows hold once each (every copy of a repeated id, and every
    missing one, is rejected), and a rejected row's points are never matched."""
    checked = check_rows(raw)
    named = checked.withColumn(S.NAME, F.when(F.col(S.REASON).isNull(), F.col(S.NAME)))
    return poi_layout(named, extra=(ROW, S.REASON))


def _reject(verdicts: pd.DataFrame) -> None:
    """Raise 422 naming every rejected row (upload order), if any.

    Raises:
        RequestError: 422 ``invalid_rows``.
    """
    rejected = verdicts[verdicts[S.REASON].notna()].sort_values(ROW)
    if len(rejected):
        raise problem_for_rejections(
            [
                (int(row), id_, str(reason))
                for row, id_, reason in zip(
                    rejected[ROW], rejected[S.ID], rejected[S.REASON], strict=True
                )
            ]
        )
