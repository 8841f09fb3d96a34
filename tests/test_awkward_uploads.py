"""Awkward uploads (tests/awkward.py) through the real service engine and the match job.

One Spark session for all of it: the service runs in-process (FastAPI's test client)
around a real :class:`poimatch.apps.service.SparkEngine` and a registered model, and
``jobs/match.py``'s ``main`` runs in-process too, as ``spark-submit`` would run it
(tests/test_jobs.py covers the wrapper itself). The checks: the service never answers
5xx and every 200 holds every input id once, in input order; the job fails with a named
error and exit status 2, or writes every usable id once and reports the rest. Last, a
request past its timeout is stopped for real (Spark, not a stand-in engine) and the next
request is served within its own timeout.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from awkward import HEADER, PLAIN_IDS, PLAIN_TEXT, SERVICE_LIMITS, Upload, corpus
from conftest import register_matcher
from fastapi.testclient import TestClient
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.apps.service import EXAMPLE_CSV, ModelStore, SparkEngine, create_app
from poimatch.config import Settings, load_settings
from poimatch.matcher import Matcher
from poimatch.runs.workflows import FitOutcome
from poimatch.stages.plan import session_conf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CORPUS = corpus()
MODEL = "poimatch-awkward-test"


def test_the_corpus_is_big_and_varied() -> None:
    assert len(CORPUS) >= 30
    assert len({u.name for u in CORPUS}) == len(CORPUS)
    assert {u.status for u in CORPUS} >= {200, 400, 413, 422}
    assert sum(u.job_ids is None for u in CORPUS) >= 10


@pytest.fixture(scope="module")
def lab(small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("awkward")
    overrides = [
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
        f"model.name={MODEL}",
    ]
    settings = load_settings("ci", [*overrides, *SERVICE_LIMITS])
    uri, _, _ = register_matcher(small_matcher, settings)
    return {"root": root, "overrides": overrides, "settings": settings, "uri": uri}


@pytest.fixture(scope="module")
def engine(spark: SparkSession, lab: dict[str, Any]) -> SparkEngine:
    settings: Settings = lab["settings"]
    store = ModelStore(lab["uri"])
    store.refresh()
    # as the service builds it
    return SparkEngine(
        Matcher(settings, spark), store, compiled_pairs=settings.service.compiled_pairs
    )


@pytest.fixture(scope="module")
def client(engine: SparkEngine, lab: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app(lab["settings"], engine=engine, warm_up=False)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield test_client


def _ids_of(text: str) -> list[str]:
    rows = list(csv.DictReader(text.splitlines(keepends=True)))
    for row in rows:
        assert row[S.MATCHES].split(" ")[0] == row[S.ID]
    return [row[S.ID] for row in rows]


# --------------------------------------------------------------------------- service


@pytest.mark.parametrize("upload", CORPUS, ids=[u.name for u in CORPUS])
def test_service_answers_each_upload(client: TestClient, upload: Upload) -> None:
    response = client.post(
        "/invocations", content=upload.body, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code < 500, response.text
    assert response.status_code == upload.status, response.text
    if response.status_code == 200:
        assert upload.job_ids is not None
        # every input id once, in input order (for these files, all ids are usable)
        assert _ids_of(response.text) == list(upload.job_ids)
        assert response.headers.get("X-Poimatch-Notes", "").isascii()
    else:
        assert response.json()["error"] == upload.code


def test_transport_variants(client: TestClient) -> None:
    def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    # a chunked body (no Content-Length) is read like any other
    plain = PLAIN_TEXT.encode()
    chunked = client.post(
        "/invocations", content=chunks(plain), headers={"Content-Type": "text/csv"}
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 200, chunked.text
    assert _ids_of(chunked.text) == list(PLAIN_IDS)
    # ... and stopped at the byte limit however it arrives
    too_big = plain * 500
    assert len(too_big) > 150_000
    over = client.post(
        "/invocations", content=chunks(too_big), headers={"Content-Type": "text/csv"}
    )
    assert (over.status_code, over.json()["error"]) == (413, "too_large")
    # multipart with a BOM; multipart without a boundary; a content type that is not CSV
    form = client.post(
        "/invocations", files={"file": ("x.csv", b"\xef\xbb\xbf" + plain, "text/csv")}
    )
    assert _ids_of(form.text) == list(PLAIN_IDS)
    broken = client.post(
        "/invocations", content=plain, headers={"Content-Type": "multipart/form-data"}
    )
    assert broken.status_code == 400, broken.text
    assert client.post("/invocations", json={"id": "a"}).status_code == 415


# ------------------------------------------------------------------------------ job


def _match_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("match_job", REPO / "jobs" / "match.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("upload", CORPUS, ids=[u.name for u in CORPUS])
def test_match_job_on_each_upload(
    lab: dict[str, Any],
    upload: Upload,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder: Path = lab["root"] / "job" / upload.name
    folder.mkdir(parents=True)
    source, out = folder / "in.csv", folder / "out.csv"
    source.write_bytes(upload.body)
    argv = ["match.py", "--env", "ci", "--input", str(source), "--output", str(out)]
    argv += ["--model", lab["uri"], *[a for o in lab["overrides"] for a in ("--set", o)]]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        _match_job().main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    if upload.job_ids is None:
        assert code == 2, captured.out
        assert captured.err.startswith("error: "), captured.err
        assert not out.exists()
        return
    assert code == 0, captured.err
    ids = _ids_of(out.read_text(encoding="utf-8"))
    assert sorted(ids) == sorted(upload.job_ids)  # each once
    with out.with_name("out.rejected.csv").open(encoding="utf-8", newline="") as handle:
        report = list(csv.DictReader(handle))
    assert sum(r[S.STATUS] == "dropped" for r in report) == upload.job_dropped
    assert all(r[S.REASON] for r in report)
    assert f"rejected_output={out.with_name('out.rejected.csv')}" in captured.out
    assert not (lab["root"] / "lake").exists()  # an ad-hoc run writes no table


# ---------------------------------------------------------------------------- timeout


def _heavy_body(rows: int) -> bytes:
    """``rows`` rows within a few hundred metres, each named with 900 characters: every
    candidate pair compares two long names (seconds of work per thousand pairs)."""
    lines = [",".join(HEADER)]
    for i in range(rows):
        name = f"Heavy {i} " + "abcdefghij" * 89
        lat, lon = 48.85 + (i % 97) * 0.00003, 2.35 + (i // 97) * 0.00003
        lines.append(f"h{i},{name},{lat:.6f},{lon:.6f},,,,,,,,")
    return ("\n".join(lines) + "\n").encode()


def test_a_timed_out_request_stops_and_the_next_is_served(
    engine: SparkEngine, lab: dict[str, Any]
) -> None:
    example = EXAMPLE_CSV.encode()
    # the time of a small request on this (possibly busy) machine, warm
    warm = load_settings("ci", [*lab["overrides"], "service.timeout_seconds=600"])
    with TestClient(create_app(warm, engine=engine, warm_up=False)) as client:
        for _ in range(2):
            assert client.post("/invocations", content=example).status_code == 200
        started = time.monotonic()
        assert client.post("/invocations", content=example).status_code == 200
        small = time.monotonic() - started
    timeout = max(8.0, 4 * small)
    heavy = _heavy_body(20_000)
    settings = load_settings(
        "ci",
        [
            *lab["overrides"],
            f"service.timeout_seconds={timeout:.1f}",
            "service.max_rows=20000",
            f"service.max_body_bytes={len(heavy) + 1}",
        ],
    )
    with TestClient(create_app(settings, engine=engine, warm_up=False)) as client:
        started = time.monotonic()
        response = client.post("/invocations", content=heavy)
        assert response.status_code == 504, response.text[:500]
        assert time.monotonic() - started < timeout + 10
        # the abandoned request lets go of the Spark thread within a stage, not after
        # the minutes its 20,000 long names would take
        released = time.monotonic()
        while "poimatch_queue_depth 0.0" not in client.get("/metrics").text:
            assert time.monotonic() - released < 60, "the timed-out request kept running"
            time.sleep(0.2)
        let_go = time.monotonic() - released
        started = time.monotonic()
        after = client.post("/invocations", content=example)
        assert after.status_code == 200, after.text
        served = time.monotonic() - started
        assert served < timeout
        assert "E_00002f98667edf_copy" in after.text
    print(
        f"small request {small:.1f} s, timeout {timeout:.1f} s, the timed-out request let "
        f"go {let_go:.1f} s after its 504, the next one was served in {served:.1f} s"
    )


def test_a_cancelled_request_stops_at_the_first_stage_boundary(engine: SparkEngine) -> None:
    from poimatch.apps.service import parse_upload
    from poimatch.cancellation import CancelledError

    table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=100)
    loaded = engine.model()
    assert loaded is not None
    engine.cancel("req-cancelled-early")  # before it starts: it finds its flag set
    jobs_before = engine.spark.sparkContext.statusTracker().getJobIdsForGroup("req-cancelled-early")
    with pytest.raises(CancelledError, match="before validation"):
        engine.match(table, loaded, "req-cancelled-early")
    assert (
        engine.spark.sparkContext.statusTracker().getJobIdsForGroup("req-cancelled-early")
        == jobs_before
    )  # no Spark job ran


def test_the_rules_in_the_points_job_answer_as_the_rules_alone(
    engine: SparkEngine, lab: dict[str, Any]
) -> None:
    # a warm service runs the upload rules in the prepared points' job; a service that
    # prepares nothing runs them on their own, then normalizes the accepted rows: the
    # same answer, or the same 422 naming the same rows, for every upload that parses
    from poimatch.apps.service import RequestError, parse_upload

    stepwise = SparkEngine(engine.matcher, engine.store, reuse_plan=False)
    loaded = engine.model()
    assert loaded is not None

    def answer(eng: SparkEngine, table: Any, tag: str) -> object:
        try:
            return eng.match(table, loaded, tag).to_dict("records")
        except RequestError as exc:
            return (exc.status, exc.code, exc.body())

    # every upload the rules reject, and the accepted ones whose rows differ most
    accepted = {"quotes_commas_newlines", "non_latin_ids", "thirty_rows_at_one_point"}
    compared = 0
    for upload in CORPUS:
        if upload.status != 422 and upload.name not in accepted:
            continue
        table, _ = parse_upload(upload.body, max_rows=100)
        fused = answer(engine, table, f"fused-{upload.name}")
        assert fused == answer(stepwise, table, f"steps-{upload.name}"), upload.name
        compared += 1
    assert compared == 9 + len(accepted)


def test_a_warm_small_request_runs_two_spark_jobs_of_one_stage_each(
    engine: SparkEngine,
) -> None:
    # what a small request costs in Spark's fixed per-job and per-stage overheads: the
    # upload's rules with its normalization, then its pairs with their features (each
    # planned once)
    from poimatch.apps.service import SERVICE_SQL_CONF, parse_upload

    table, _ = parse_upload(EXAMPLE_CSV.encode(), max_rows=100)
    loaded = engine.model()
    assert loaded is not None
    # a model object of its own: its queries are prepared under the service's settings
    # (prepared queries are kept per model, planned under the settings of their first use)
    fresh = dataclasses.replace(loaded, model=dataclasses.replace(loaded.model))
    tracker = engine.spark.sparkContext.statusTracker()
    with session_conf(engine.spark, SERVICE_SQL_CONF):
        for i in range(3):  # the first prepares the queries
            tag = f"req-counted-{i}"
            out = engine.match(table, fresh, tag)
            jobs = tracker.getJobIdsForGroup(tag)
    assert "E_00002f98667edf_copy" in " ".join(out[S.MATCHES])
    stages = [s for j in jobs if (info := tracker.getJobInfo(j)) for s in info.stageIds]
    assert (len(jobs), len(stages)) == (2, 2)
