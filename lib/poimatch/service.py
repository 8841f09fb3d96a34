"""REST service for ad-hoc CSVs: the batch pipeline behind one warm local Spark session.

    make serve                                   (same as the next line, env local)
    .venv/bin/python -m poimatch.service --env local [--port 8004] [--set section.key=v]

``POST /invocations`` takes a CSV in the input layout (multipart field ``file`` or a
raw ``text/csv`` body) and answers ``text/csv`` ``id,matches``: every input id once,
its own id first. Rows are validated by the same contract rules as the batch
(:func:`poimatch.ingest.check_rows`) and matched by the same stages
(:func:`poimatch.workflows.match_with_model`) with ``models:/<model.name>@champion``.

Bad input gets a 4xx JSON body ``{"error": <code>, "message": <text>, ...}`` naming the
problem, never a 500. Spark work runs one request at a time from a bounded queue: a
full queue answers 503 with ``Retry-After``; a request over ``service.timeout_seconds``
(waiting plus running) answers 504 and its Spark jobs are cancelled.

The champion alias is polled every ``service.reload_seconds`` (or on
``POST /admin/reload``); a new version is loaded beside the old one and swapped in, so
requests in flight finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import itertools
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from mlflow.tracking import MlflowClient
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from py4j.protocol import Py4JNetworkError
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from poimatch import schema as S
from poimatch.against import KNOWN_GROUPS, KNOWN_IDS, match_against
from poimatch.batch import AGAINST_TABLES
from poimatch.cancellation import cancel_scope, check_cancelled
from poimatch.cli import guarded_settings, job_parser
from poimatch.columns import named_columns
from poimatch.config import ConfigError, Settings
from poimatch.grouping import LOCAL_MAX_EDGES
from poimatch.ingest import accepted_rows, check_rows
from poimatch.lookup import KnownTable, pin_lookup
from poimatch.pipeline import SMALL_SQL_CONF, MatchingSpec, Plan
from poimatch.session import build_session
from poimatch.tracking import CHAMPION, configure_tracking, load_matcher
from poimatch.workflows import match_with_model

__all__ = [
    "EXAMPLE_CSV",
    "LoadedModel",
    "ModelStore",
    "RequestError",
    "SparkEngine",
    "SparkQueue",
    "create_app",
    "header_text",
    "main",
    "parse_upload",
    "read_body",
]

log = logging.getLogger(__name__)
R = TypeVar("R")

_ROW = "_row"  # 1-based data row number of the request (the header is row 0)

#: SQL settings of the service's own session: the small plan's
#: (:data:`poimatch.pipeline.SMALL_SQL_CONF`; the shuffle partitions are
#: ``service.shuffle_partitions``)
SERVICE_SQL_CONF: dict[str, str] = {
    k: v for k, v in SMALL_SQL_CONF.items() if k != "spark.sql.shuffle.partitions"
}
_MAX_LISTED = 10  # offending rows / ids named in an error message

# The service warms up on this file (the example): two exact duplicates.
EXAMPLE_CSV = """\
id,name,latitude,longitude,address,city,state,zip,country,url,phone,categories
E_00001118ad0191,Jamu Petani Bagan Serai,5.012169,100.535805,,,,,MY,,,Cafés
E_000020eb6fed40,Johnny's Bar,40.43420889065938,-80.56416034698486,497 N 12th St,Weirton,WV,26062,US,,,Bars
E_00002f98667edf,QIWI,47.215134,39.686088,"Межевая улица, 60",Ростов-на-Дону,,,RU,https://qiwi.com,+78003011131,ATMs
E_001b6bad66eb98,"Gelora Sriwijaya, Jaka Baring Sport City",-3.01467472168758,104.79437444575598,,,,,ID,,,Stadiums
E_0283d9f61e569d,Stadion Gelora Sriwijaya,-3.021726757527373,104.78862762451172,Jalan Gubernur Hasan Bastari,Palembang,South Sumatra,11480.0,ID,,,Soccer Stadiums
E_00002f98667edf_copy,QIWI,47.215134,39.686088,"Межевая улица, 60",Ростов-на-Дону,,,RU,https://qiwi.com,+78003011131,ATMs
E_001b6bad66eb98_copy,"Gelora Sriwijaya, Jaka Baring Sport City",-3.01467472168758,104.79437444575598,,,,,ID,,,Stadiums
"""  # noqa: E501


# ------------------------------------------------------------------------------- errors


class SparkLostError(RuntimeError):
    """The service's Spark JVM died (e.g. killed for memory): the process must restart."""


class RequestError(Exception):
    """A request the service refuses: HTTP status, a stable code and a message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.code, "message": self.message, **self.details}


# ----------------------------------------------------------------------- request body


_CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/octet-stream")


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The uploaded CSV's bytes: multipart field ``file`` or the raw body.

    Raises:
        RequestError: 413 over ``max_bytes``; 415 for a content type that is not
            CSV; 400 for a multipart form without ``file``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(
            413,
            "too_large",
            f"the body has {int(declared)} bytes; "
            f"the limit is {max_bytes} (service.max_body_bytes)",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(
                413,
                "too_large",
                f"the body exceeds the limit of {max_bytes} bytes (service.max_body_bytes)",
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _multipart_file(request.headers, data, max_bytes=max_bytes)
    if content_type and content_type not in _CSV_TYPES:
        raise RequestError(
            415,
            "not_csv",
            f"content type {content_type!r} is not CSV: send text/csv, "
            "or multipart/form-data with the file in field 'file'",
        )
    return data


async def _multipart_file(headers: Headers, data: bytes, *, max_bytes: int) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield data

    parser = MultiPartParser(headers, stream(), max_files=1, max_fields=10, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(
            400, "bad_multipart", f"the multipart form cannot be read: {exc}"
        ) from None
    upload = form.get("file")
    if upload is None:
        raise RequestError(
            400, "no_file", f"the multipart form has no field 'file' (fields: {list(form.keys())})"
        )
    if isinstance(upload, UploadFile):
        content = await upload.read()
        await upload.close()
        return content
    return str(upload).encode("utf-8")


def parse_upload(data: bytes, *, max_rows: int) -> tuple[pd.DataFrame, list[str]]:
    """Decode and split an uploaded CSV into string columns of the input layout.

    Records are read one at a time and reading stops at the first record past
    ``max_rows``: a body of a million short lines costs ``max_rows + 1`` records, not a
    million. Run it off the event loop (it is CPU work).

    Returns:
        The rows (every input column, ``None`` for empty or absent values, plus
        ``_row``, the 1-based data row number) and notes about ignored or absent
        optional columns.

    Raises:
        RequestError: empty body, undecodable bytes, not CSV, missing or duplicate
            columns, rows with the wrong number of fields (400); too many rows (413).
    """
    if not data.strip():
        raise RequestError(400, "empty_body", "the request has no CSV (empty body)")
    if b"\x00" in data:
        raise RequestError(400, "not_csv", "the body holds NUL bytes: it is not a CSV text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RequestError(
            400,
            "not_utf8",
            f"bytes that are not UTF-8 at byte {exc.start} (line {line}): "
            "re-encode the file as UTF-8",
            byte_offset=exc.start,
            line=line,
        ) from None
    records = (r for r in csv.reader(io.StringIO(text, newline="")) if any(v.strip() for v in r))
    try:
        first = next(records, None)
        if first is None:
            raise RequestError(400, "empty_body", "the request has no CSV header line")
        header = _checked_header(first)
        body: list[list[str]] = []
        for record in records:
            body.append(record)
            if len(body) > max_rows:
                raise RequestError(
                    413,
                    "too_many_rows",
                    f"the CSV has more than {max_rows} data rows; "
                    f"the limit is {max_rows} (service.max_rows)",
                )
    except csv.Error as exc:
        raise RequestError(400, "not_csv", f"the body is not CSV: {exc}") from None
    if not body:
        raise RequestError(400, "no_rows", "the CSV has a header but no data rows")
    ragged = [i for i, r in enumerate(body, start=1) if len(r) != len(header)]
    if ragged:
        raise RequestError(
            400,
            "malformed_rows",
            f"{len(ragged)} row(s) do not have {len(header)} fields like the header: "
            f"data rows {ragged[:_MAX_LISTED]}",
            rows=ragged[:_MAX_LISTED],
        )
    position = {h: i for i, h in enumerate(header)}
    columns: dict[str, list[str | None]] = {}
    for name in S.INPUT_COLUMNS:
        at = position.get(name)
        columns[name] = [
            (r[at] if r[at].strip() else None) if at is not None else None for r in body
        ]
    table = pd.DataFrame(columns, dtype=object)
    table[_ROW] = range(1, len(body) + 1)
    notes = []
    absent = [c for c in S.INPUT_COLUMNS if c not in position]
    if absent:
        notes.append(f"absent optional columns: {absent}")
    ignored = [h for h in header if h not in S.INPUT_COLUMNS]
    if ignored:
        notes.append(f"ignored columns: {ignored}")
    return table, notes


def _checked_header(record: list[str]) -> list[str]:
    """The header's column names; 400 when a required one is missing or one repeats."""
    header = [h.strip() for h in record]
    missing = [c for c in S.REQUIRED_COLUMNS if c not in header]
    if missing:
        shown = header if len(header) <= 20 else [*header[:20], "..."]
        raise RequestError(
            400,
            "missing_columns",
            f"missing required column(s) {missing}; the header has {shown}",
            missing=missing,
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise RequestError(
            400, "duplicate_columns", f"duplicate column name(s) {dupes} in the header"
        )
    return header


# Printable ASCII other than "%" stays as it is; everything else (non-ASCII letters,
# control characters such as a newline in a quoted column name) is percent-encoded.
_NOTE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(text: str) -> str:
    """``text`` made safe for an HTTP header: percent-encoded UTF-8 (RFC 3986 style).

    HTTP header values are Latin-1 at most and may hold no control characters, while
    a note can name any column of the upload (``категория``, a quoted newline). ASCII
    text reads as it is; decode with ``urllib.parse.unquote``.
    """
    return quote(text, safe=_NOTE_SAFE)


def _problem_for_rejections(rejected: list[tuple[int, str | None, str]]) -> RequestError:
    """One 422 naming each rule's first offending rows (and ids, for duplicates)."""
    by_reason: dict[str, list[tuple[int, str | None]]] = {}
    for row, ident, reasons in rejected:
        for reason in reasons.split(","):
            by_reason.setdefault(reason, []).append((row, ident))
    parts = []
    for reason in sorted(by_reason):
        hits = by_reason[reason]
        rows = [r for r, _ in hits[:_MAX_LISTED]]
        if reason == "duplicate_id":
            ids = sorted({str(i) for _, i in hits})[:_MAX_LISTED]
            parts.append(f"duplicate_id: ids {ids} (data rows {rows})")
        else:
            parts.append(f"{reason}: data rows {rows}")
    return RequestError(
        422,
        "invalid_rows",
        f"{len(rejected)} of the rows are invalid: " + "; ".join(parts),
        reasons={k: [r for r, _ in v[:_MAX_LISTED]] for k, v in sorted(by_reason.items())},
    )


# ------------------------------------------------------------------------ model store


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, loaded and ready to score."""

    uri: str
    name: str
    version: str
    alias: str | None
    model: PipelineModel
    spec: MatchingSpec
    loaded_at: str

    def describe(self) -> dict[str, Any]:
        """What ``GET /version`` shows about the model."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_alias": self.alias,
            "model_uri": self.uri,
            "threshold": self.spec.threshold,
            "grouping_mode": self.spec.grouping_mode,
            "loaded_at": self.loaded_at,
        }


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ModelStore:
    """Follows a registered model: an alias (polled) or a fixed version.

    ``current`` is swapped atomically; a request reads it once and keeps that model.
    """

    def __init__(self, uri: str) -> None:
        alias = _ALIAS_URI.match(uri)
        fixed = _VERSION_URI.match(uri)
        if not alias and not fixed:
            raise ConfigError(
                f"service.model_uri {uri!r}: expected models:/<name>@<alias> "
                "or models:/<name>/<version>"
            )
        match = alias or fixed
        assert match is not None  # nosec B101
        self.uri = uri
        self.name = match["name"]
        self.alias: str | None = alias["alias"] if alias else None
        self._fixed_version: str | None = fixed["version"] if fixed else None
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model new requests use (``None`` until the first load)."""
        return self._current

    def target_version(self) -> str:
        """The version the alias points at now (or the fixed version)."""
        if self._fixed_version is not None:
            return self._fixed_version
        assert self.alias is not None  # nosec B101
        return str(MlflowClient().get_model_version_by_alias(self.name, self.alias).version)

    def refresh(self) -> bool:
        """Load the alias's version if it moved; returns True when the model changed."""
        with self._lock:
            version = self.target_version()
            current = self._current
            if current is not None and current.version == version:
                return False
            uri = f"models:/{self.name}/{version}"
            model, spec, _ = load_matcher(uri)
            loaded = LoadedModel(
                uri=uri,
                name=self.name,
                version=version,
                alias=self.alias,
                model=model,
                spec=spec,
                loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._current = loaded
        log.info("model %s version %s loaded (alias %s)", self.name, version, self.alias)
        return True


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
        spark: SparkSession,
        store: ModelStore,
        *,
        max_iterations: int,
        local_max_edges: int = LOCAL_MAX_EDGES,
        link_only: bool = False,
        small_max_rows: int = 20_000,
        lookup_path: str | None = None,
    ) -> None:
        self.spark = spark
        self.small_max_rows = small_max_rows
        self.lookup_path = lookup_path
        self._known: KnownTable | None = None
        self.store = store
        self.max_iterations = max_iterations
        self.local_max_edges = local_max_edges
        self.link_only = link_only
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def model(self) -> LoadedModel | None:
        """The model a new request should use."""
        return self.store.current

    def refresh_lookup(self) -> KnownTable | None:
        """Pin the lookup table's current version (at start-up and with every model poll)."""
        if self.lookup_path is not None:
            self._known = pin_lookup(self.spark, self.lookup_path)
        return self._known

    def known(self) -> KnownTable | None:
        """The pinned lookup table a new ``?against=pois`` request reads."""
        return self._known

    def match_against(
        self, table: pd.DataFrame, model: LoadedModel, known: KnownTable, tag: str
    ) -> pd.DataFrame:
        """:meth:`match` against the pinned lookup table as well: ``id``, ``matches``,
        ``known_ids``, ``known_groups`` (see :func:`poimatch.against.match_against`)."""
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
            try:
                with cancel_scope(run.cancelled):
                    return self._match(table, model, known)
            finally:
                sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
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
        fields = [T.StructField(c, T.StringType(), True) for c in S.INPUT_COLUMNS]
        schema = T.StructType([*fields, T.StructField(_ROW, T.LongType(), False)])
        raw = self.spark.createDataFrame(table, schema=schema).withColumn(
            S.SOURCE_FILE, F.lit("request")
        )
        plan = Plan.for_rows(len(table), self.small_max_rows)
        # the rules run once; their verdicts are read twice (rejected, accepted)
        checked = plan.materialize(check_rows(raw))
        rejected = (
            checked.where(F.col(S.REASON).isNotNull())
            .select(_ROW, S.ID, S.REASON)
            .orderBy(_ROW)
            .collect()
        )
        if rejected:
            raise _problem_for_rejections(
                [(int(r[_ROW]), r[S.ID], str(r[S.REASON])) for r in rejected]
            )
        check_cancelled("matching")
        pois = accepted_rows(checked).select(
            *named_columns(f.name for f in S.poi_table_schema().fields)
        )
        if known is not None:
            return match_against(
                pois,
                known,
                model=model.model,
                spec=model.spec,
                max_iterations=self.max_iterations,
                local_max_edges=self.local_max_edges,
                link_only=self.link_only,
            ).matches
        result = match_with_model(
            pois,
            model=model.model,
            spec=model.spec,
            max_iterations=self.max_iterations,
            local_max_edges=self.local_max_edges,
            link_only=self.link_only,
            plan=plan,
        )
        try:
            check_cancelled("output")
            return result.matches.select(S.ID, S.MATCHES).toPandas()
        finally:
            result.matches.unpersist()


# ----------------------------------------------------------------------------- queue


class SparkQueue:
    """One Spark request at a time; at most ``capacity`` waiting; deadlines enforced."""

    def __init__(self, capacity: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poimatch-spark")
        self._pending = 0
        self._lock = threading.Lock()
        self._on_depth = on_depth or (lambda _: None)

    @property
    def pending(self) -> int:
        """Requests running or waiting."""
        return self._pending

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            depth = self._pending
        self._on_depth(depth)

    async def run(
        self,
        fn: Callable[[], R],
        *,
        timeout: float,
        on_timeout: Callable[[], None],
        retry_after: int,
    ) -> R:
        """Run ``fn`` on the Spark thread; 503 when full, 504 past ``timeout`` seconds.

        The deadline covers waiting and running; a request whose deadline passed
        while it waited is skipped, one that is running is cancelled (``on_timeout``).
        """
        with self._lock:
            if self._pending >= 1 + self.capacity:
                raise RequestError(
                    503,
                    "busy",
                    f"{self._pending} requests are already running or waiting; retry later",
                    headers={"Retry-After": str(retry_after)},
                )
            self._pending += 1
            depth = self._pending
        self._on_depth(depth)
        deadline = time.monotonic() + timeout

        def guarded() -> R:
            if time.monotonic() > deadline:
                raise TimeoutError("deadline passed while waiting")
            return fn()

        future = self._executor.submit(guarded)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            # cancelling talks to the JVM: never block the event loop on it
            threading.Thread(target=on_timeout, name="poimatch-cancel", daemon=True).start()
            raise RequestError(
                504,
                "timeout",
                f"the request took longer than {timeout:g} s (service.timeout_seconds)",
            ) from None

    def shutdown(self) -> None:
        """Stop accepting work; running work finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------- app


def _internal_error(request_id: str) -> JSONResponse:
    """The one 500 body: generic, with the request id to find the detail in the log."""
    return JSONResponse(
        {"error": "internal", "request_id": request_id},
        status_code=500,
        headers={"X-Request-Id": request_id},
    )


@dataclass
class _State:
    ready: bool = False
    lost: bool = False  # Spark died: /health fails so that the supervisor restarts us
    owns_session: bool = False  # we built the session (not given a session or an engine)
    reason: str = "starting"
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "poimatch_requests_total",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "poimatch_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.queue = Gauge(
            "poimatch_queue_depth",
            "Requests running or waiting for Spark",
            registry=self.registry,
        )
        self.rows = Counter(
            "poimatch_rows_processed_total",
            "Input rows matched and returned",
            registry=self.registry,
        )
        self.model_version = Gauge(
            "poimatch_model_version",
            "Registered version of the model serving new requests",
            registry=self.registry,
        )
        self.reloads = Counter(
            "poimatch_model_reloads_total", "Model versions loaded", registry=self.registry
        )
        self.model = Info(
            "poimatch_model", "The model serving new requests", registry=self.registry
        )
        # process_* (CPU seconds, resident memory, open files, start time) of the service
        ProcessCollector(registry=self.registry)

    def model_loaded(self, loaded: LoadedModel) -> None:
        """Publish the model now serving: its version (gauge) and who it is (info)."""
        self.model_version.set(float(loaded.version))
        self.model.info(
            {
                "name": loaded.name,
                "version": str(loaded.version),
                "alias": loaded.alias or "",
                "uri": loaded.uri,
            }
        )


def _package_version() -> str:
    try:
        return package_version("poimatch")
    except PackageNotFoundError:
        return "unknown"


_ENDPOINTS = {"/invocations", "/health", "/ready", "/version", "/metrics", "/admin/reload"}


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    spark: SparkSession | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """The FastAPI application.

    Args:
        settings: configuration (``service`` section for limits, ``model.name``...).
        engine: a ready engine (tests); by default a :class:`SparkEngine` is built at
            start-up in the background, on ``spark`` or a new session.
        spark: the session to use instead of building one.
        warm_up: run :data:`EXAMPLE_CSV` through the pipeline before reporting ready.
    """
    svc = settings.service
    metrics = _Metrics()
    state = _State()
    queue = SparkQueue(svc.queue_size, on_depth=metrics.queue.set)
    holder: dict[str, Engine] = {}
    if engine is not None:
        holder["engine"] = engine
    ids = itertools.count(1)

    def start_engine() -> None:
        try:
            if "engine" not in holder:
                state.reason = "starting Spark"
                session = spark or build_session(settings.spark)
                state.owns_session = spark is None
                for key, value in SERVICE_SQL_CONF.items():
                    session.conf.set(key, value)
                session.conf.set("spark.sql.shuffle.partitions", str(svc.shuffle_partitions))
                configure_tracking(settings.tracking)
                uri = svc.model_uri or f"models:/{settings.model.name}@{CHAMPION}"
                store = ModelStore(uri)
                state.reason = f"loading {uri}"
                store.refresh()
                holder["engine"] = SparkEngine(
                    session,
                    store,
                    max_iterations=settings.grouping.max_iterations,
                    local_max_edges=settings.grouping.local_max_edges,
                    link_only=settings.matching.link_only,
                    small_max_rows=svc.small_max_rows,
                    lookup_path=settings.storage.table_path(settings.storage.lookup_table),
                )
            eng = holder["engine"]
            if isinstance(eng, SparkEngine):
                eng.refresh_lookup()
            loaded = eng.model()
            if loaded is None:
                raise RuntimeError("no model loaded")
            metrics.model_loaded(loaded)
            if warm_up:
                state.reason = "warming up"
                table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=svc.max_rows)
                # one real match: the JVM, the Python workers and the cached column
                # expressions are warm after it (a second run cost 6 s for ~1 s gained)
                eng.match(table, loaded, "warm-up")
            state.ready, state.reason = True, "ready"
            state.ready_seconds = time.monotonic() - state.started
            log.info("ready in %.1f s", state.ready_seconds)
        except Exception as exc:  # start-up failures are reported by /ready, not raised
            log.exception("start-up failed")
            state.reason = f"start-up failed: {type(exc).__name__}: {exc}"

    def reload_model() -> bool:
        eng = holder.get("engine")
        if not isinstance(eng, SparkEngine):
            return False
        changed = eng.store.refresh()
        eng.refresh_lookup()
        if changed:
            loaded = eng.store.current
            metrics.reloads.inc()
            if loaded is not None:
                metrics.model_loaded(loaded)
        return changed

    async def poll_champion() -> None:
        while True:
            await asyncio.sleep(svc.reload_seconds)
            if not state.ready:
                continue
            try:
                await asyncio.to_thread(reload_model)
            except Exception:  # keep serving the loaded model; log and retry
                log.exception("checking the model alias failed")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        starter = threading.Thread(target=start_engine, name="poimatch-start", daemon=True)
        starter.start()
        poller = asyncio.create_task(poll_champion())
        yield
        poller.cancel()
        queue.shutdown()
        eng = holder.get("engine")
        if state.owns_session and isinstance(eng, SparkEngine) and not state.lost:
            eng.spark.stop()  # our own session: take the JVM down with us

    app = FastAPI(
        title="poimatch",
        version=_package_version(),
        summary="Match points of interest in a CSV: which rows are the same place.",
        lifespan=lifespan,
    )

    token = svc.token.get_secret_value().encode() if svc.token is not None else None

    def authorized(request: Request) -> bool:
        path = request.url.path
        if token is None or not (path == "/invocations" or path.startswith("/admin/")):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        request_id = f"req-{next(ids)}"
        request.state.request_id = request_id
        path = request.url.path
        if not authorized(request):
            response: Response = JSONResponse(
                {"error": "unauthorized", "message": "a valid bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="poimatch"'},
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # never the detail to the client: it is in the log
                log.exception("request %s: unexpected error", request_id)
                response = _internal_error(request_id)
        response.headers["X-Request-Id"] = request_id
        endpoint = path if path in _ENDPOINTS else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestError)
    async def problem(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": str(exc.detail)}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        request_id = str(getattr(request.state, "request_id", "unknown"))
        log.error("request %s: unexpected error", request_id, exc_info=exc)
        return _internal_error(request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "message": str(exc)}, status_code=400)

    @app.get("/health", summary="The process is alive")
    async def health() -> JSONResponse:
        if state.lost:
            return JSONResponse({"status": "failed", "reason": state.reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="Model loaded and Spark warm")
    async def ready() -> JSONResponse:
        body = {"ready": state.ready, "status": state.reason}
        if state.ready_seconds is not None:
            body["ready_seconds"] = round(state.ready_seconds, 2)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/version", summary="Model and package versions")
    async def version() -> JSONResponse:
        eng = holder.get("engine")
        loaded = eng.model() if eng is not None else None
        body: dict[str, Any] = {"package_version": _package_version()}
        if loaded is not None:
            body |= loaded.describe()
        return JSONResponse(body, status_code=200 if loaded is not None else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", summary="Check the model alias now and load a new version")
    async def admin_reload() -> JSONResponse:
        if not state.ready:
            raise RequestError(503, "not_ready", f"not ready: {state.reason}")
        changed = await asyncio.to_thread(reload_model)
        eng = holder["engine"]
        loaded = eng.model()
        return JSONResponse(
            {"changed": changed, **(loaded.describe() if loaded is not None else {})}
        )

    @app.post(
        "/invocations",
        summary="Match the rows of a CSV",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/csv": {}}, "description": "id,matches for every input id"},
            400: {"description": "not a usable CSV (named problem)"},
            413: {"description": "over the size or row limit"},
            415: {"description": "content type is not CSV"},
            422: {"description": "rows break the input rules (rows named)"},
            503: {"description": "queue full (Retry-After) or not ready"},
            504: {"description": "over the time limit"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                },
            }
        },
    )
    async def invocations(request: Request) -> Response:
        if not state.ready:
            raise RequestError(
                503, "not_ready", f"not ready: {state.reason}", headers={"Retry-After": "5"}
            )
        against = request.query_params.get("against")
        known: KnownTable | None = None
        if against is not None:
            if against not in AGAINST_TABLES:
                raise RequestError(
                    400,
                    "unknown_table",
                    f"against={against!r}: only {list(AGAINST_TABLES)} can be matched against",
                )
            eng0 = holder.get("engine")
            known = eng0.known() if isinstance(eng0, SparkEngine) else None
            if known is None:
                raise RequestError(
                    409,
                    "no_lookup_table",
                    "the POI table has no lookup table yet: run the nightly match "
                    "(jobs/match.py without --input)",
                )
        data = await read_body(request, max_bytes=svc.max_body_bytes)
        # CPU work on a worker thread: /health and /metrics keep answering meanwhile
        table, notes = await asyncio.to_thread(parse_upload, data, max_rows=svc.max_rows)
        del data
        eng = holder["engine"]
        loaded = eng.model()
        if loaded is None:
            raise RequestError(503, "not_ready", "no model loaded")
        tag = str(request.state.request_id)
        try:
            out = await queue.run(
                (
                    (lambda: eng.match_against(table, loaded, known, tag))
                    if known is not None and isinstance(eng, SparkEngine)
                    else (lambda: eng.match(table, loaded, tag))
                ),
                timeout=svc.timeout_seconds,
                on_timeout=lambda: eng.cancel(tag),
                retry_after=max(1, int(svc.timeout_seconds // 4)),
            )
        except SparkLostError as exc:
            state.ready, state.lost, state.reason = False, True, str(exc)
            log.error("%s; /health now fails so that the process is restarted", exc)
            raise RequestError(503, "spark_lost", str(exc), headers={"Retry-After": "30"}) from None
        expected = table[S.ID].tolist()
        got = dict(zip(out[S.ID], out[S.MATCHES], strict=True))
        if sorted(got) != sorted(expected) or any(
            not str(got[i]).split(" ")[0] == i for i in expected
        ):
            raise RuntimeError("output contract broken: ids missing, repeated or not first")
        metrics.rows.inc(len(expected))
        body = pd.DataFrame({S.ID: expected, S.MATCHES: [got[i] for i in expected]})
        headers = {
            "X-Model-Version": loaded.version,
            "X-Request-Id": tag,
        }
        if known is not None:
            extra = out.set_index(S.ID)
            for column in (KNOWN_IDS, KNOWN_GROUPS):
                body[column] = [extra.at[i, column] for i in expected]
            headers["X-Poimatch-Table"] = header_text(known.label())
        if notes:
            headers["X-Poimatch-Notes"] = header_text("; ".join(notes))
        return Response(
            body.to_csv(index=False, lineterminator="\n"),
            media_type="text/csv",
            headers=headers,
        )

    return app


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    """``python -m poimatch.service``: load the configuration and serve with uvicorn."""
    import uvicorn

    parser = job_parser(__doc__ or "")
    parser.add_argument("--host", default=None, help="bind address (default service.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default service.port)")
    args = parser.parse_args(argv)
    settings = guarded_settings(args)  # logging set up once, config errors exit with status 2
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.service.host,
        port=args.port or settings.service.port,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
