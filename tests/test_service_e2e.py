"""REST service end to end: the real server process, Spark, and a registered model.

A small model is trained into a throw-away MLflow store; ``python -m poimatch.apps.service``
is started on a free loopback port against it, and real files are posted: the
issue's 7-row example, each bad-input case, 8 concurrent different files, and a
champion alias move picked up without a restart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import mlflow
import pytest
from conftest import TEST_JVM_OPTIONS, register_matcher
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.apps.service import EXAMPLE_CSV
from poimatch.config import load_settings
from poimatch.io.lookup import write_lookup
from poimatch.lifecycle.tracking import CHAMPION, configure_tracking, load_matcher, log_matcher
from poimatch.runs.workflows import FitOutcome, match_with_model
from poimatch.sample.generator import generate_pois

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL = "poimatch-service-test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("service")
    overrides = [
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
        f"model.name={MODEL}",
    ]
    settings = load_settings("ci", overrides)
    model_uri, _, alias = register_matcher(small_matcher, settings)
    assert alias == CHAMPION

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["GX_ANALYTICS_ENABLED"] = "false"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "poimatch.apps.service",
            "--env",
            "ci",
            "--port",
            str(port),
            *[a for o in overrides for a in ("--set", o)],
            "--set",
            "spark.driver_memory=2g",
            # C1 alone and the serial GC, as every JVM of the suite (tiny data: less CPU)
            "--set",
            f"spark.extra={{spark.driver.extraJavaOptions: '{TEST_JVM_OPTIONS}'}}",
            "--set",
            "service.timeout_seconds=600",
            "--set",
            "service.reload_seconds=3600",
            "--set",
            "service.max_rows=500",
            "--set",
            "service.max_body_bytes=200000",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            while True:
                assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
                assert time.monotonic() - started < 600, "service not ready in 600 s"
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            yield {
                "client": client,
                "base": base,
                "root": root,
                "settings": settings,
                "model_uri": model_uri,
                "spec": small_matcher.spec,
                "ready_seconds": time.monotonic() - started,
            }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})


def _groups(text: str) -> dict[str, list[str]]:
    lines = text.strip().splitlines()
    assert lines[0] == "id,matches"
    return {line.split(",")[0]: line.split(",")[1].split(" ") for line in lines[1:]}


def test_example_file_matches_the_copies(server: dict[str, Any]) -> None:
    response = _post(server["client"], EXAMPLE_CSV.encode())
    assert response.status_code == 200, response.text
    groups = _groups(response.text)
    ids = [line.split(",")[0] for line in EXAMPLE_CSV.splitlines()[1:]]
    assert list(groups) == ids
    for i, matches in groups.items():
        assert matches[0] == i
        assert len(matches) == len(set(matches))
    assert "E_00002f98667edf_copy" in groups["E_00002f98667edf"]
    assert "E_00002f98667edf" in groups["E_00002f98667edf_copy"]
    assert "E_001b6bad66eb98_copy" in groups["E_001b6bad66eb98"]
    assert "E_001b6bad66eb98" in groups["E_001b6bad66eb98_copy"]
    assert groups["E_000020eb6fed40"] == ["E_000020eb6fed40"]  # a bar in West Virginia
    assert "E_00002f98667edf" not in groups["E_001b6bad66eb98"]


def test_multipart_upload_and_service_endpoints(server: dict[str, Any]) -> None:
    client = server["client"]
    form = client.post("/invocations", files={"file": ("x.csv", EXAMPLE_CSV.encode(), "text/csv")})
    assert form.status_code == 200
    assert form.text == _post(client, EXAMPLE_CSV.encode()).text
    version = client.get("/version").json()
    assert version["model_name"] == MODEL
    assert version["model_version"] == "1"
    assert version["model_alias"] == "champion"
    assert version["threshold"] == pytest.approx(server["spec"].threshold)
    metrics = client.get("/metrics").text
    assert 'poimatch_requests_total{endpoint="/invocations",status="200"}' in metrics
    assert "poimatch_request_seconds_bucket" in metrics
    assert "poimatch_queue_depth" in metrics
    assert "poimatch_rows_processed_total" in metrics
    assert client.get("/docs").status_code == 200
    assert client.get("/ready").json()["ready"] is True


HEAD = "id,name,latitude,longitude"


@pytest.mark.parametrize(
    ("body", "status", "code", "needles"),
    [
        (b"", 400, "empty_body", ["empty"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 400, "not_csv", ["NUL"]),
        (b"id,title,lat\na,b,c\n", 400, "missing_columns", ["'name'", "'latitude'"]),
        (
            f"{HEAD}\na,A,north,2\nb,B,1,2\nc,C,x,y\n".encode(),
            422,
            "invalid_rows",
            ["non_numeric_latitude: data rows [1, 3]", "non_numeric_longitude: data rows [3]"],
        ),
        (
            f"{HEAD}\na,A,95,2\nb,B,1,200\n".encode(),
            422,
            "invalid_rows",
            ["latitude_out_of_range: data rows [1]", "longitude_out_of_range: data rows [2]"],
        ),
        (
            f"{HEAD}\na,A,1,2\nb,B,1,2\na,C,1,2\n".encode(),
            422,
            "invalid_rows",
            ["duplicate_id: ids ['a'] (data rows [1, 3])"],
        ),
        (f"{HEAD}\na,\xe9t\xe9,1,2\n".encode("latin-1"), 400, "not_utf8", ["line 2"]),
        (
            (HEAD + "\n" + "\n".join(f"r{i},n,1,2" for i in range(501)) + "\n").encode(),
            413,
            "too_many_rows",
            ["more than 500 data rows"],
        ),
        (
            f"{HEAD}\na b,A,1,2\n".encode(),
            422,
            "invalid_rows",
            ["whitespace_in_id: data rows [1]"],  # was a 500: the output check failed
        ),
        (f"{HEAD}\nz,Z,0,0\n".encode(), 422, "invalid_rows", ["zero_coordinates"]),
        (HEAD.encode() + b"\n" + b"x" * 200_001, 413, "too_large", ["200000"]),
    ],
)
def test_bad_input_gets_a_named_4xx(
    server: dict[str, Any], body: bytes, status: int, code: str, needles: list[str]
) -> None:
    response = _post(server["client"], body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == code
    for needle in needles:
        assert needle in payload["message"]


def test_bom_and_unknown_columns_are_accepted(server: dict[str, Any]) -> None:
    body = "\ufeff" + EXAMPLE_CSV.replace("categories\n", "categories,colour\n", 1).replace(
        "\n", ",blue\n"
    ).replace("categories,colour,blue\n", "categories,colour\n", 1)
    response = _post(server["client"], body.encode("utf-8"))
    assert response.status_code == 200, response.text
    assert "ignored columns: ['colour']" in response.headers["X-Poimatch-Notes"]
    assert response.text == _post(server["client"], EXAMPLE_CSV.encode()).text


def test_non_latin_column_names_and_chunked_bodies_over_real_http(
    server: dict[str, Any],
) -> None:
    # uvicorn encodes headers as Latin-1: a note naming 'категория' used to be a 500
    body = (
        EXAMPLE_CSV.replace("categories\n", "categories,категория\n", 1)
        .replace("\n", ",x\n")
        .replace("categories,категория,x\n", "categories,категория\n", 1)
    )
    response = _post(server["client"], body.encode())
    assert response.status_code == 200, response.text
    assert unquote(response.headers["X-Poimatch-Notes"]) == "ignored columns: ['категория']"

    def chunks() -> Iterator[bytes]:
        data = EXAMPLE_CSV.encode()
        for i in range(0, len(data), 100):
            yield data[i : i + 100]

    chunked = server["client"].post(
        "/invocations", content=chunks(), headers={"Content-Type": "text/csv"}
    )
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 200, chunked.text
    assert chunked.text == _post(server["client"], EXAMPLE_CSV.encode()).text


def test_eight_concurrent_files_each_get_their_own_ids(server: dict[str, Any]) -> None:
    bodies = []
    for k in range(8):
        frame = generate_pois(25 + 5 * k, seed=500 + k).drop(columns=[S.POI])
        frame[S.ID] = [f"c{k}_{i}" for i in range(len(frame))]
        bodies.append(frame.to_csv(index=False).encode())

    def post(body: bytes) -> httpx.Response:
        with httpx.Client(base_url=server["base"], timeout=600) as client:
            return _post(client, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, bodies))
    for k, response in enumerate(responses):
        assert response.status_code == 200, response.text
        groups = _groups(response.text)
        expected = [f"c{k}_{i}" for i in range(25 + 5 * k)]
        assert list(groups) == expected
        every = {m for ms in groups.values() for m in ms}
        assert every <= set(expected), f"file {k} got foreign ids"


def test_champion_move_is_picked_up_without_restart(server: dict[str, Any]) -> None:
    settings = server["settings"]
    configure_tracking(settings.tracking)
    model, spec, _ = load_matcher(server["model_uri"])
    strict = replace(spec, threshold=0.999)
    example = __import__("pandas").DataFrame({f: [0.0] for f in spec.features})
    with mlflow.start_run():
        _, version = log_matcher(model, registered_name=MODEL, spec=strict, input_example=example)
    MlflowClient().set_registered_model_alias(MODEL, CHAMPION, version)
    client = server["client"]
    reloaded = client.post("/admin/reload").json()
    assert reloaded["changed"] is True
    assert reloaded["model_version"] == version
    after = client.get("/version").json()
    assert after["model_version"] == version
    assert after["threshold"] == pytest.approx(0.999)
    response = _post(client, EXAMPLE_CSV.encode())
    assert response.headers["X-Model-Version"] == version
    assert client.post("/admin/reload").json()["changed"] is False


def test_against_pois_reads_the_pinned_lookup_table(
    server: dict[str, Any], spark: SparkSession, small_matcher: FitOutcome
) -> None:
    client = server["client"]
    settings = server["settings"]
    headers = {"Content-Type": "text/csv"}
    unknown = client.post("/invocations?against=places", content=EXAMPLE_CSV, headers=headers)
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "unknown_table"
    missing = client.post("/invocations?against=pois", content=EXAMPLE_CSV, headers=headers)
    assert missing.status_code == 409
    assert missing.json()["error"] == "no_lookup_table"

    # the nightly run's lookup table, where the service looks for it
    table = generate_pois(600, seed=77)
    typed = table.assign(
        **{
            S.LATITUDE: table[S.LATITUDE].astype(float),
            S.LONGITUDE: table[S.LONGITUDE].astype(float),
            S.SOURCE: None,
            S.POI: None,
        }
    )
    columns = [f.name for f in S.poi_table_schema().fields]
    result = match_with_model(
        spark.createDataFrame(typed[columns], schema=S.poi_table_schema()),
        model=small_matcher.model,
        spec=small_matcher.spec,
    )
    assert result.points is not None
    path = settings.storage.table_path(settings.storage.lookup_table)
    write_lookup(
        result.points, result.matches, path, rows=600, rows_per_file=100, user_metadata="test"
    )
    groups = result.matches.select(S.ID, S.GROUP_ID).toPandas().set_index(S.ID)[S.GROUP_ID]
    assert client.post("/admin/reload").status_code == 200

    copies = table.sample(20, random_state=2).drop(columns=[S.POI])
    original = list(copies[S.ID])
    copies[S.ID] = "copy_" + copies[S.ID]
    copies[S.NAME] = copies[S.NAME].str.lower()
    response = client.post(
        "/invocations?against=pois",
        content=copies.to_csv(index=False).encode(),
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert unquote(response.headers["X-Poimatch-Table"]) == f"{path}@v0"
    lines = response.text.strip().splitlines()
    assert lines[0] == "id,matches,known_ids,known_groups"
    rows = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert sorted(rows) == sorted(copies[S.ID])
    found = 0
    for new, old in zip(copies[S.ID], original, strict=True):
        _, matches, known, known_groups = rows[new]
        assert matches.split(" ")[0] == new
        if old in known.split(" "):
            found += 1
            assert groups[old] in known_groups.split(" ")
    # the 60-tree test model on lower-cased copies: 18 to 20 of 20 found in runs here;
    # the quality figure is benchmarks/against.py's (1.000 on four unseen cities)
    assert found >= 18

    # the reload pinned the table and began holding it on the driver in the background;
    # once held, an against match of the example rows warms the query up on the Spark
    # thread, and requests pick the table's rows on the driver: the same answer
    log = server["root"] / "server.log"
    deadline = time.monotonic() + 120
    while f"against warm-up for {path}@v0:" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    text = log.read_text()
    assert text.index(f"lookup {path}@v0 held: 600 rows") < text.index("against warm-up for")
    again = client.post(
        "/invocations?against=pois",
        content=copies.to_csv(index=False).encode(),
        headers=headers,
    )
    assert again.status_code == 200, again.text
    assert again.text == response.text
