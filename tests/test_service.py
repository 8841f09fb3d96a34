"""REST service, HTTP layer: parsing, errors, backpressure, timeouts, model swaps.

These use FastAPI's test client with a gated engine, so the queue and the deadlines
can be driven step by step; tests/test_service_e2e.py runs the real server process
with Spark and a registered model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from poimatch import schema as S
from poimatch.apps.service import (
    EXAMPLE_CSV,
    LoadedModel,
    ModelStore,
    RequestError,
    SparkLostError,
    create_app,
    parse_upload,
)
from poimatch.config import load_settings
from poimatch.stages.spec import MatchingSpec

HEADER = "id,name,latitude,longitude,address,city,state,zip,country,url,phone,categories"


def _loaded(version: str) -> LoadedModel:
    spec = MatchingSpec(
        threshold=0.5, grouping_mode="components", max_group_size=25, features=(), blocking={}
    )
    return LoadedModel(
        uri=f"models:/m/{version}",
        name="m",
        version=version,
        alias="champion",
        model=None,  # type: ignore[arg-type]  # the gated engine never scores
        spec=spec,
        loaded_at="now",
    )


class GatedEngine:
    """Answers each row alone, but only when the test opens the gate."""

    def __init__(self) -> None:
        self.current = _loaded("1")
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.cancelled: list[str] = []
        self.seen_versions: list[str] = []

    def model(self) -> LoadedModel:
        return self.current

    def match(self, table: pd.DataFrame, model: LoadedModel, tag: str) -> pd.DataFrame:
        self.running.set()
        self.seen_versions.append(model.version)
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        ids = table[S.ID].tolist()
        return pd.DataFrame({S.ID: ids[::-1], S.MATCHES: ids[::-1]})

    def cancel(self, tag: str) -> None:
        self.cancelled.append(tag)
        self.gate.set()


def _settings(*overrides: str) -> Any:
    return load_settings("ci", list(overrides))


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


@contextmanager
def _client(engine: GatedEngine, *overrides: str) -> Iterator[TestClient]:
    app = create_app(_settings(*overrides), engine=engine, warm_up=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.02)
        yield client


@pytest.fixture
def client(engine: GatedEngine) -> Iterator[TestClient]:
    with _client(engine) as test_client:
        yield test_client


def _csv(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode("utf-8")


# ------------------------------------------------------------------------ parsing


def test_parse_keeps_every_column_as_text_with_row_numbers() -> None:
    table, notes = parse_upload(EXAMPLE_CSV.encode(), max_rows=100)
    assert table[S.ID].tolist()[2] == "E_00002f98667edf"
    assert table.loc[2, S.ADDRESS] == "Межевая улица, 60"  # quoted comma kept
    assert table.loc[0, S.ADDRESS] is None  # empty -> missing
    assert table.loc[4, S.ZIP] == "11480.0"  # text, not a float
    assert table["_row"].tolist() == list(range(1, 8))
    assert notes == []


def test_parse_accepts_bom_and_extra_columns_and_notes_them() -> None:
    body = b"\xef\xbb\xbfid,name,latitude,longitude,colour\na,A,1.0,2.0,red\n"
    table, notes = parse_upload(body, max_rows=10)
    assert table[S.ID].tolist() == ["a"]
    assert table[S.CITY].tolist() == [None]
    assert any("ignored columns: ['colour']" in n for n in notes)
    assert any("absent optional columns" in n and "'city'" in n for n in notes)


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (b"", 400, "empty_body", "empty body"),
        (b"  \n\n", 400, "empty_body", "empty body"),
        (b"id,name,lat,lon\na,b,1,2\n", 400, "missing_columns", "['latitude', 'longitude']"),
        (b"id,name,latitude,longitude,name\na,b,1,2,c\n", 400, "duplicate_columns", "['name']"),
        (b"id,name,latitude,longitude\n", 400, "no_rows", "no data rows"),
        (b"id,name,latitude,longitude\na,b,1,2\nc,d,3\n", 400, "malformed_rows", "[2]"),
        (b"id,name,latitude,longitude\na,\xff\xfe,1,2\n", 400, "not_utf8", "byte 29 (line 2)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 400, "not_csv", "NUL"),
        (b'{"id": 1, "name": "x"}', 400, "missing_columns", "missing required column"),
    ],
)
def test_parse_names_the_problem(body: bytes, status: int, code: str, needle: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_upload(body, max_rows=10)
    assert (info.value.status, info.value.code) == (status, code)
    assert needle in info.value.message


def test_parse_row_limit_is_413() -> None:
    body = _csv(*[f"r{i},n,1,2,,,,,,,," for i in range(11)])
    with pytest.raises(RequestError) as info:
        parse_upload(body, max_rows=10)
    assert info.value.status == 413
    assert "more than 10 data rows; the limit is 10" in info.value.message


def test_parse_stops_reading_at_the_row_limit() -> None:
    # record 12 is ragged and record 13 is not CSV at all (a field past the csv
    # module's size limit): reading stops at record 11, so neither is ever seen
    rows = [f"r{i},n,1,2,,,,,,,," for i in range(11)]
    body = _csv(*rows, "r11,n,1", '"' + "x" * 200_000 + '",n,1,2,,,,,,,,')
    with pytest.raises(RequestError) as info:
        parse_upload(body, max_rows=10)
    assert (info.value.status, info.value.code) == (413, "too_many_rows")
    with pytest.raises(RequestError) as info:
        parse_upload(body, max_rows=20)  # with room for them, they are read and named
    assert info.value.code == "not_csv"


def test_header_text_is_safe_for_any_column_name() -> None:
    from urllib.parse import unquote

    from poimatch.apps.service import header_text

    note = "ignored columns: ['категория', '名前', 'a\nb', '100%']"
    encoded = header_text(note)
    encoded.encode("ascii")  # no UnicodeEncodeError: any HTTP stack can send it
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)  # no control characters
    assert unquote(encoded) == note
    assert header_text("absent optional columns: ['city']") == (
        "absent optional columns: ['city']"  # ASCII reads as it is
    )


# -------------------------------------------------------------------------- HTTP


def test_health_ready_version_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    version = client.get("/version").json()
    assert version["model_version"] == "1"
    assert version["model_alias"] == "champion"
    assert version["threshold"] == 0.5
    assert version["package_version"]
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert {"text/csv", "multipart/form-data"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_raw_and_multipart_give_the_same_csv_in_input_order(client: TestClient) -> None:
    raw = client.post(
        "/invocations", content=EXAMPLE_CSV.encode(), headers={"Content-Type": "text/csv"}
    )
    form = client.post(
        "/invocations", files={"file": ("pois.csv", EXAMPLE_CSV.encode(), "text/csv")}
    )
    assert raw.status_code == form.status_code == 200
    assert raw.headers["content-type"].startswith("text/csv")
    assert raw.text == form.text
    lines = raw.text.splitlines()
    assert lines[0] == "id,matches"
    # the engine answers in reverse order; the service restores the input order
    assert [line.split(",")[0] for line in lines[1:]] == [
        r.split(",")[0] for r in EXAMPLE_CSV.splitlines()[1:]
    ]
    assert raw.headers["X-Model-Version"] == "1"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"", "headers": {"Content-Type": "text/csv"}}, 400, "empty_body"),
        ({"json": {"id": "a"}}, 415, "not_csv"),
        ({"files": {"other": ("x.csv", b"id\n", "text/csv")}}, 400, "no_file"),
        (
            {"content": b"id,name\na,b\n", "headers": {"Content-Type": "text/csv"}},
            400,
            "missing_columns",
        ),
    ],
)
def test_bad_requests_get_json_4xx(
    client: TestClient, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = client.post("/invocations", **kwargs)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == code
    assert body["message"]


def test_body_over_limit_is_413_before_reading(engine: GatedEngine) -> None:
    with _client(engine, "service.max_body_bytes=2048") as client:
        big = _csv(*[f"r{i},name {i},1.0,2.0,,,,,,,," for i in range(200)])
        assert len(big) > 2048
        response = client.post("/invocations", content=big, headers={"Content-Type": "text/csv"})
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
        assert "2048" in response.json()["message"]
        assert engine.seen_versions == []  # never reached Spark


def test_unknown_path_is_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# ------------------------------------------------------------------- backpressure


def test_full_queue_answers_503_with_retry_after(engine: GatedEngine) -> None:
    with _client(engine, "service.queue_size=1") as client:
        engine.gate.clear()
        results: list[int] = []

        def post(client: TestClient = client, results: list[int] = results) -> None:
            r = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
            results.append(r.status_code)

        first = threading.Thread(target=post)
        first.start()
        assert engine.running.wait(10)
        second = threading.Thread(target=post)  # waits in the queue (capacity 1)
        second.start()
        deadline = time.monotonic() + 10
        while "poimatch_queue_depth 2.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        third = client.post("/invocations", content=_csv("b,B,1,2,,,,,,,,"))
        assert third.status_code == 503
        assert third.json()["error"] == "busy"
        assert int(third.headers["Retry-After"]) >= 1
        engine.gate.set()
        first.join(10)
        second.join(10)
        assert sorted(results) == [200, 200]
        metrics = client.get("/metrics").text
        assert 'poimatch_requests_total{endpoint="/invocations",status="503"} 1.0' in metrics
        assert 'poimatch_requests_total{endpoint="/invocations",status="200"} 2.0' in metrics
        assert "poimatch_rows_processed_total 2.0" in metrics
        assert "poimatch_queue_depth 0.0" in metrics
        # who serves (an info metric beside the version gauge) and the process itself
        info = 'poimatch_model_info{alias="champion",name="m",uri="models:/m/1",version="1"} 1.0'
        assert info in metrics
        assert "poimatch_model_version 1.0" in metrics
        rss = [line for line in metrics.splitlines() if line.startswith("process_resident")]
        assert len(rss) == 1
        assert float(rss[0].split()[-1]) > 10e6  # this Python process: tens of MB at least


def test_slow_request_is_504_and_its_jobs_are_cancelled(engine: GatedEngine) -> None:
    with _client(engine, "service.timeout_seconds=0.3") as client:
        engine.gate.clear()
        response = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
        assert response.status_code == 504
        assert response.json()["error"] == "timeout"
        deadline = time.monotonic() + 10
        while not engine.cancelled:  # cancelling runs on its own thread
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert engine.cancelled == [response.headers["X-Request-Id"]]
        engine.gate.set()
        assert client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,")).status_code == 200


def test_request_in_flight_keeps_its_model_when_the_champion_moves(
    engine: GatedEngine, client: TestClient
) -> None:
    engine.gate.clear()
    answers: list[Any] = []
    worker = threading.Thread(
        target=lambda: answers.append(client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,")))
    )
    worker.start()
    assert engine.running.wait(10)
    engine.current = replace(_loaded("2"))  # the alias moved while the request runs
    engine.gate.set()
    worker.join(10)
    assert answers[0].headers["X-Model-Version"] == "1"
    after = client.post("/invocations", content=_csv("b,B,1,2,,,,,,,,"))
    assert after.headers["X-Model-Version"] == "2"
    assert engine.seen_versions == ["1", "2"]
    assert client.get("/version").json()["model_version"] == "2"


def test_model_uri_must_name_an_alias_or_a_version() -> None:
    assert ModelStore("models:/poimatch-xgb@champion").alias == "champion"
    assert ModelStore("models:/poimatch-xgb/3").target_version() == "3"
    with pytest.raises(ValueError, match="expected models:/<name>@<alias>"):
        ModelStore("runs:/abc/model")


class LostEngine(GatedEngine):
    """A Spark whose JVM died: every call fails like py4j does."""

    def match(self, table: pd.DataFrame, model: LoadedModel, tag: str) -> pd.DataFrame:
        raise SparkLostError("the Spark driver JVM is gone: [Errno 111] Connection refused")


def test_lost_spark_fails_health_so_the_process_is_restarted() -> None:
    with _client(LostEngine()) as client:
        response = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
        assert response.status_code == 503
        assert response.json()["error"] == "spark_lost"
        assert response.headers["Retry-After"] == "30"
        assert client.get("/health").status_code == 503
        assert client.get("/ready").status_code == 503
        again = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
        assert again.status_code == 503
        assert again.json()["error"] == "not_ready"


def test_a_session_that_fails_to_start_is_reported_by_ready() -> None:
    from concurrent.futures import Future

    from pyspark.sql import SparkSession

    from poimatch.apps import service

    # main() starts the JVM beside the imports and hands the service the future
    starting: Future[SparkSession] = Future()
    starting.set_exception(RuntimeError("Java gateway process exited"))
    app = create_app(_settings(), spark=starting)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while "failed" not in (body := client.get("/ready").json())["status"]:
            assert time.monotonic() < deadline, body
            time.sleep(0.02)
        assert client.get("/ready").status_code == 503
        assert body["status"] == "start-up failed: RuntimeError: Java gateway process exited"
        refused = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
        assert refused.status_code == 503
        assert refused.json()["error"] == "not_ready"
    # the package's names import on first use (main starts Spark before the heavy ones)
    assert service.SparkQueue.__module__ == "poimatch.apps.service.spark_queue"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = service.nothing


# ------------------------------------------------------------- integrity and auth


def test_non_latin_column_names_are_noted_not_a_500(client: TestClient) -> None:
    from urllib.parse import unquote

    body = (
        'id,name,latitude,longitude,категория,名前,"multi\nline"\na,A,1,2,x,y,z\nb,B,1,2,x,y,z\n'
    ).encode()
    response = client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    notes = unquote(response.headers["X-Poimatch-Notes"])
    # the list of names as Python prints it: the newline inside a name shows as \\n
    assert "ignored columns: ['категория', '名前', 'multi\\nline']" in notes
    assert response.text == "id,matches\na,a\nb,b\n"


class BrokenEngine(GatedEngine):
    """Fails the way an internal bug would, with paths and a Java trace in the text."""

    def match(self, table: pd.DataFrame, model: LoadedModel, tag: str) -> pd.DataFrame:
        raise RuntimeError("py4j: An error occurred at /srv/secret/path\n\tat org.apache.X")


def test_a_500_body_is_generic_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    with _client(BrokenEngine()) as client:
        response = client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,"))
    assert response.status_code == 500
    request_id = response.headers["X-Request-Id"]
    assert response.json() == {"error": "internal", "request_id": request_id}
    assert "secret" not in response.text
    # the detail is in the log, under the same request id
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged
    assert any("/srv/secret/path" in str(r.exc_info[1]) for r in logged if r.exc_info)


def test_parsing_runs_off_the_event_loop(
    engine: GatedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poimatch.apps.service import app

    parsing, release = threading.Event(), threading.Event()
    real = app.parse_upload

    def slow_parse(data: bytes, *, max_rows: int) -> Any:
        parsing.set()
        assert release.wait(20), "never released"
        return real(data, max_rows=max_rows)

    monkeypatch.setattr(app, "parse_upload", slow_parse)
    with _client(engine) as client:
        results: list[int] = []
        worker = threading.Thread(
            target=lambda: results.append(
                client.post("/invocations", content=_csv("a,A,1,2,,,,,,,,")).status_code
            )
        )
        worker.start()
        assert parsing.wait(10)
        # the upload is still being parsed, and the service answers
        assert client.get("/health").status_code == 200
        assert "poimatch_queue_depth" in client.get("/metrics").text
        release.set()
        worker.join(20)
        assert results == [200]


TOKEN = "s3cret-token-0123456789"


def test_bearer_token_guards_invocations_and_admin(engine: GatedEngine) -> None:
    with _client(engine, f"service.token={TOKEN}") as client:
        body = _csv("a,A,1,2,,,,,,,,")
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {
                "Authorization": TOKEN  # no scheme
            },
        ):
            response = client.post("/invocations", content=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.post("/admin/reload").status_code == 401
        assert engine.seen_versions == []  # nothing reached the engine
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/invocations", content=body, headers=good).status_code == 200
        assert client.post("/admin/reload", headers=good).status_code == 200
        # health checks and metrics stay open
        for path in ("/health", "/ready", "/version", "/metrics"):
            assert client.get(path).status_code == 200


def test_token_is_optional_and_never_shown() -> None:
    assert _settings().service.token is None  # default: no authentication
    settings = _settings(f"service.token={TOKEN}")
    assert TOKEN not in str(settings.flat())  # logged with runs: masked
    with pytest.raises(ValueError, match=r"service\.token"):
        _settings("service.token=short")
