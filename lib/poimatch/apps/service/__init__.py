"""REST service for ad-hoc CSVs: the batch pipeline behind one warm local Spark session.

    make serve                                   (same as the next line, env local)
    .venv/bin/python -m poimatch.apps.service --env local [--port 8004] [--set section.key=v]

``POST /invocations`` takes a CSV in the input layout (multipart field ``file`` or a
raw ``text/csv`` body) and answers ``text/csv`` ``id,matches``: every input id once,
its own id first. Rows are validated by the same contract rules as the batch
(:func:`poimatch.io.ingest.check_rows`) and matched by the same stages
(:func:`poimatch.runs.workflows.match_with_model`) with ``models:/<model.name>@champion``.

Bad input gets a 4xx JSON body ``{"error": <code>, "message": <text>, ...}`` naming the
problem, never a 500. Spark work runs one request at a time from a bounded queue: a
full queue answers 503 with ``Retry-After``; a request over ``service.timeout_seconds``
(waiting plus running) answers 504 and its Spark jobs are cancelled.

The champion alias is polled every ``service.reload_seconds`` (or on
``POST /admin/reload``); a new version is loaded beside the old one and swapped in, so
requests in flight finish on the model they started with.

One module per concern: ``uploads`` (the request body and its 4xx errors), ``models``
(the warm model and its reloads), ``engine`` (the Spark work, through
:class:`poimatch.matcher.Matcher`), ``spark_queue`` (one request at a time) and ``app``
(the FastAPI application and ``main``).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from poimatch.apps.service.app import Runtime, create_app
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

__all__ = [
    "EXAMPLE_CSV",
    "SERVICE_SQL_CONF",
    "Engine",
    "LoadedModel",
    "ModelStore",
    "RequestError",
    "Runtime",
    "SparkEngine",
    "SparkLostError",
    "SparkQueue",
    "create_app",
    "header_text",
    "main",
    "parse_upload",
    "read_body",
    "start_session",
]

#: each public name's module in this package: imported when first asked for, so that
#: :func:`main` can start the JVM before the service's heavy imports (MLflow, XGBoost,
#: FastAPI: ~4 s), not after them
_EXPORTS = {
    "Runtime": "app",
    "create_app": "app",
    "SERVICE_SQL_CONF": "engine",
    "Engine": "engine",
    "SparkEngine": "engine",
    "LoadedModel": "models",
    "ModelStore": "models",
    "SparkQueue": "spark_queue",
    "EXAMPLE_CSV": "uploads",
    "RequestError": "uploads",
    "SparkLostError": "uploads",
    "header_text": "uploads",
    "parse_upload": "uploads",
    "read_body": "uploads",
}

log = logging.getLogger("poimatch.apps.service")  # the service's one logger name


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def start_session(settings: Settings) -> Future[SparkSession]:
    """The service's Spark session, built in a thread of its own (the JVM's start, ~3 s,
    beside whatever the caller does next); its failure is the future's exception.

    The same thread then builds Spark's case tables in that JVM
    (:func:`poimatch.columns.build_case_tables`): the warm-up's example has a non-ASCII
    category, and its first query would otherwise build them itself, 1.1 s of one core
    on the way to ready."""
    from poimatch.columns import build_case_tables
    from poimatch.session import build_session

    future: Future[SparkSession] = Future()

    def build() -> None:
        try:
            session = build_session(settings.spark)
        except BaseException as exc:  # reported where the session is awaited (/ready)
            future.set_exception(exc)
            return
        future.set_result(session)
        started = time.monotonic()
        try:
            build_case_tables(session)
        except Exception:  # only speed depends on it: the first lowercasing builds them
            log.exception("building Spark's case tables failed")
            return
        log.info("Spark's case tables built in %.1f s", time.monotonic() - started)

    threading.Thread(target=build, name="poimatch-spark-start", daemon=True).start()
    return future


def main(argv: list[str] | None = None) -> None:
    """``python -m poimatch.apps.service``: load the configuration and serve with uvicorn."""
    from poimatch.apps.cli import guarded_settings, job_parser

    parser = job_parser(__doc__ or "")
    parser.add_argument("--host", default=None, help="bind address (default service.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default service.port)")
    args = parser.parse_args(argv)
    settings = guarded_settings(args)  # logging set up once, config errors exit with status 2
    # the JVM starts now, while the application's modules import
    spark = start_session(settings)
    import uvicorn

    from poimatch.apps.service.app import create_app

    app = create_app(settings, spark=spark)
    uvicorn.run(
        app,
        host=args.host or settings.service.host,
        port=args.port or settings.service.port,
        log_level="info",
        access_log=False,
    )
