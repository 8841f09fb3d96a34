"""The FastAPI application: endpoints, metrics, readiness, model reloads."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
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
from pyspark.sql import SparkSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from poimatch import schema as S
from poimatch.apps.service.engine import SERVICE_SQL_CONF, Engine, SparkEngine
from poimatch.apps.service.models import LoadedModel, ModelStore
from poimatch.apps.service.spark_queue import SparkQueue
from poimatch.apps.service.uploads import (
    EXAMPLE_CSV,
    RequestError,
    SparkLostError,
    header_text,
    parse_upload,
    read_body,
)
from poimatch.config import Settings
from poimatch.io.lookup import KnownTable
from poimatch.lifecycle.tracking import CHAMPION, configure_tracking
from poimatch.matcher import Matcher
from poimatch.runs.against import KNOWN_GROUPS, KNOWN_IDS
from poimatch.runs.batch import AGAINST_TABLES
from poimatch.session import build_session

log = logging.getLogger("poimatch.apps.service")  # one logger name for the whole service

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


class Runtime:
    """The service's life outside its routes: Spark and the model started in the
    background, the model alias polled and reloaded, the session stopped at shutdown;
    with the readiness state, the metrics and the Spark queue the routes read."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        spark: SparkSession | Future[SparkSession] | None = None,
        warm_up: bool = True,
    ) -> None:
        self.settings = settings
        self.svc = settings.service
        self.metrics = _Metrics()
        self.state = _State()
        self.queue = SparkQueue(self.svc.queue_size, on_depth=self.metrics.queue.set)
        self.engine = engine
        self._spark = spark
        self._warm_up = warm_up

    def start_engine(self) -> None:
        """Build the engine (session, model) unless one was given, warm it up, and mark
        the service ready; a failure is reported by ``/ready``, not raised."""
        settings, svc, state = self.settings, self.svc, self.state
        try:
            if self.engine is None:
                state.reason = "starting Spark"
                given = self._spark
                if isinstance(given, Future):  # being built (main: beside the imports)
                    session, state.owns_session = given.result(), True
                else:
                    session = given or build_session(settings.spark)
                    state.owns_session = given is None
                for key, value in SERVICE_SQL_CONF.items():
                    session.conf.set(key, value)
                session.conf.set("spark.sql.shuffle.partitions", str(svc.shuffle_partitions))
                configure_tracking(settings.tracking)
                uri = svc.model_uri or f"models:/{settings.model.name}@{CHAMPION}"
                store = ModelStore(uri)
                state.reason = f"loading {uri}"
                store.refresh()
                self.engine = SparkEngine(
                    Matcher(settings, session),
                    store,
                    small_max_rows=svc.small_max_rows,
                    lookup_path=settings.storage.table_path(settings.storage.lookup_table),
                    reuse_plan=svc.reuse_plan,
                    hold_lookup_max_rows=svc.hold_lookup_max_rows,
                    compiled_pairs=svc.compiled_pairs,
                )
            eng = self.engine
            if isinstance(eng, SparkEngine):
                eng.after_hold = self.warm_against
                eng.refresh_lookup(hold=False)  # held after the warm-up, not beside it
            loaded = eng.model()
            if loaded is None:
                raise RuntimeError("no model loaded")
            self.metrics.model_loaded(loaded)
            if self._warm_up:
                state.reason = "warming up"
                table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=svc.max_rows)
                # one real match: the JVM, the Python workers and the cached column
                # expressions are warm after it (a second run cost 6 s for ~1 s gained)
                eng.match(table, loaded, "warm-up")
            state.ready, state.reason = True, "ready"
            state.ready_seconds = time.monotonic() - state.started
            log.info("ready in %.1f s", state.ready_seconds)
            if isinstance(eng, SparkEngine):
                eng.start_holding()
        except Exception as exc:  # start-up failures are reported by /ready, not raised
            log.exception("start-up failed")
            state.reason = f"start-up failed: {type(exc).__name__}: {exc}"

    def warm_against(self, known: KnownTable) -> None:
        """Once ``known`` is held: one real against match of the example rows, queued on
        the Spark thread, so that the first ``?against=pois`` request does not plan and
        compile the against query itself (18-20 s for a 1M-row table's first request
        here); a failure is logged (requests then plan it themselves)."""
        eng = self.engine
        loaded = eng.model() if eng is not None else None
        if not isinstance(eng, SparkEngine) or loaded is None:
            return
        table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=self.svc.max_rows)

        def warm() -> None:
            started = time.monotonic()
            try:
                eng.match_against(table, loaded, known, "warm-up-against")
            except Exception:  # the requests still work: they plan the query themselves
                log.exception("against warm-up for %s failed", known.label())
                return
            log.info("against warm-up for %s: %.1f s", known.label(), time.monotonic() - started)

        self.queue.background(warm)

    def reload_model(self) -> bool:
        """Load the alias's version if it moved (and re-pin the lookup table); True when
        the model changed."""
        eng = self.engine
        if not isinstance(eng, SparkEngine):
            return False
        changed = eng.store.refresh()
        eng.refresh_lookup()
        if changed:
            loaded = eng.store.current
            self.metrics.reloads.inc()
            if loaded is not None:
                self.metrics.model_loaded(loaded)
        return changed

    async def poll_champion(self) -> None:
        """Every ``service.reload_seconds``, once ready: :meth:`reload_model`."""
        while True:
            await asyncio.sleep(self.svc.reload_seconds)
            if not self.state.ready:
                continue
            try:
                await asyncio.to_thread(self.reload_model)
            except Exception:  # keep serving the loaded model; log and retry
                log.exception("checking the model alias failed")

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """FastAPI's lifespan: start in the background, poll, and shut down."""
        starter = threading.Thread(target=self.start_engine, name="poimatch-start", daemon=True)
        starter.start()
        poller = asyncio.create_task(self.poll_champion())
        yield
        poller.cancel()
        self.queue.shutdown()
        eng = self.engine
        if self.state.owns_session and isinstance(eng, SparkEngine) and not self.state.lost:
            eng.spark.stop()  # our own session: take the JVM down with us


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    spark: SparkSession | Future[SparkSession] | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """The FastAPI application: the routes over a :class:`Runtime`.

    Args:
        settings: configuration (``service`` section for limits, ``model.name``...).
        engine: a ready engine (tests); by default a :class:`SparkEngine` is built at
            start-up in the background, on ``spark`` or a new session.
        spark: the session to use instead of building one; or the session being built
            for the service (a future: it is the service's own, stopped at shutdown; a
            failure to build it is reported by ``/ready``).
        warm_up: run :data:`EXAMPLE_CSV` through the pipeline before reporting ready.
    """
    rt = Runtime(settings, engine=engine, spark=spark, warm_up=warm_up)
    svc, metrics, state, queue = rt.svc, rt.metrics, rt.state, rt.queue
    ids = itertools.count(1)

    app = FastAPI(
        title="poimatch",
        version=_package_version(),
        summary="Match points of interest in a CSV: which rows are the same place.",
        lifespan=rt.lifespan,
    )
    app.state.runtime = rt

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
        eng = rt.engine
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
        changed = await asyncio.to_thread(rt.reload_model)
        loaded = rt.engine.model() if rt.engine is not None else None
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
            known = rt.engine.known() if isinstance(rt.engine, SparkEngine) else None
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
        eng = rt.engine
        loaded = eng.model() if eng is not None else None
        if eng is None or loaded is None:
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
