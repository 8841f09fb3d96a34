"""REST service benchmark: ready time, warm latency per file size, throughput, memory.

    .venv/bin/python benchmarks/bench_service.py --env local \\
        --sizes 10,1000,10000 --clients 4 --duration 60 --mix 1000 \\
        --out benchmarks/results/service.json

By default (``--start``) it starts ``python -m poimatch.apps.service --env <env> --port <free
port> [--set ...]`` itself (every ``--set section.key=value`` is passed through), measures
the seconds from process start to the first ``GET /ready`` answering 200, and stops the
service at the end (SIGTERM, then SIGKILL of its process group after 30 s). With
``--url http://127.0.0.1:8004`` it benchmarks a service that is already running instead
(``--pid`` names its process for the memory figures; by default the process listening on
the URL's port is looked up in /proc).

Request files are made with :func:`poimatch.sample.generator.generate_pois` (``point_of_interest``
dropped; the generator's ids, checked unique per file), ``--variants`` different files per
size, all generated before any timing. Note the service refuses files over
``service.max_rows`` (20,000 by default) with 413, and answers 504 past
``service.timeout_seconds`` (60 s by default, waiting in the queue included).

1. Warm latency: per size, ``--warmups`` (2) requests, then ``--repeats`` sequential
   requests (default 20 for sizes up to 1,000 rows, 5 above; one number, or one per size):
   p50, p95 and max seconds, and rows/s (rows posted / summed latency).
2. Throughput: ``--clients`` (4) threads post the ``--mix`` files (1,000 rows by default)
   back to back for ``--duration`` seconds (no request starts after that; the ones in
   flight finish and are counted): requests/s and rows/s of correct answers over the
   whole run, p50/p95 latency, responses by status code. A 503 with ``error: busy`` is
   the service's deliberate back-pressure (the client sleeps ``Retry-After``, at most
   5 s, and goes on); any other 5xx or a transport error is reported loudly.
3. Memory: VmRSS of the service process and all its descendants (the Spark JVM and the
   JVM's Python workers), from /proc, sampled every second from start to end; for the
   throughput run: start, end, max and the least-squares slope in MB per minute. A JVM
   that leaves the tree while the service runs is reported loudly (with the kernel's
   OOM-killer line when ``dmesg`` is readable).

With ``--start`` the pipeline's own stage times (``stage <name>: <s> s`` in the service
log) are summarized too, for the start-up warm-up and for the benchmark's requests.

Every response is checked cheaply: status 200, header ``id,matches``, every posted id
exactly once, the first token of ``matches`` equal to the id, no id foreign to the file.

Prints a table and writes JSON (``--out``, default ``benchmarks/results/service.json``)
with the machine (nproc, memory, CPU model, Python, Java, load average), the command
line, the date, the service's command and ``/version``, and every figure. The service's
log goes next to it (``service.log``). Exit status: 0, or 1 when any response failed
other than by a deliberate 503 or the service's JVM died (the figures are still
written); 2 when the service never became ready. It never asserts on timings.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import subprocess  # nosec B404: starts the project's own service and `java -version`
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from poimatch import schema as S
from poimatch.sample.generator import generate_pois

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MAX_ROWS = 20_000  # service.max_rows in conf/base.yaml
BUSY_SLEEP_MAX = 5.0
LOUD = "!!!"


# ------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------- process memory


def _ppid_table() -> dict[int, int]:
    """pid -> ppid for every process readable in /proc."""
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = int(rest[1])
    return table


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (found through the ppid in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_table().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _status(pid: int) -> tuple[str, int] | None:
    """(Name, VmRSS bytes) of one process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    name, rss = "?", 0
    for line in text.splitlines():
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024  # kB
    return name, rss


_LAUNCHER = b"org.apache.spark.launcher.Main"


def _is_launcher(pid: int) -> bool:
    """Whether ``pid`` is Spark's launcher JVM (it builds the driver's command and exits)."""
    try:
        return _LAUNCHER in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class MemSample:
    t: float  # seconds since the benchmark started
    total_mb: float
    java_mb: float
    python_mb: float
    processes: int
    phase: str


class TreeSampler(threading.Thread):
    """Samples the VmRSS of a process tree every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, t0: float, interval: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.t0, self.interval = pid, t0, interval
        self.samples: list[MemSample] = []
        self.phase = "startup"
        self.events: list[dict[str, Any]] = []  # JVMs of the service that went away
        self._jvms: dict[int, int] = {}  # pid -> last VmRSS seen
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def sample(self) -> MemSample | None:
        total = java = python = 0
        count = 0
        jvms: dict[int, int] = {}
        for pid in process_tree(self.pid):
            got = _status(pid)
            if got is None:
                continue
            name, rss = got
            count += 1
            total += rss
            if name == "java":
                java += rss
                if not _is_launcher(pid):  # spark-class's launcher JVM exits by design
                    jvms[pid] = rss
            elif name.startswith("python"):
                python += rss
        if count == 0:
            return None
        self._note_lost_jvms(jvms)
        mb = 1e6
        return MemSample(
            round(time.monotonic() - self.t0, 2),
            round(total / mb, 1),
            round(java / mb, 1),
            round(python / mb, 1),
            count,
            self.phase,
        )

    def _note_lost_jvms(self, jvms: dict[int, int]) -> None:
        """Record (and print loudly) a JVM that left the tree while the service runs."""
        with self._lock:
            lost = {pid: rss for pid, rss in self._jvms.items() if pid not in jvms}
            self._jvms = jvms
        for pid, rss in lost.items():
            event = {
                "t_s": round(time.monotonic() - self.t0, 2),
                "phase": self.phase,
                "pid": pid,
                "last_rss_mb": round(rss / 1e6, 1),
                "kernel": kernel_kill_line(pid),
            }
            self.events.append(event)
            print(
                f"{LOUD} the service's JVM (pid {pid}, {event['last_rss_mb']} MB) exited "
                f"at t={event['t_s']} s during {self.phase}: {event['kernel'] or 'cause unknown'}",
                file=sys.stderr,
                flush=True,
            )

    def run(self) -> None:
        while not self._stop_event.is_set():
            got = self.sample()
            if got is not None:
                self.samples.append(got)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def summary(self, phase: str) -> dict[str, Any] | None:
        window = [s for s in self.samples if s.phase == phase]
        if not window:
            return None
        return {
            "samples": len(window),
            "start_mb": window[0].total_mb,
            "end_mb": window[-1].total_mb,
            "max_mb": max(s.total_mb for s in window),
            "slope_mb_per_min": _r(slope_per_minute([(s.t, s.total_mb) for s in window]), 2),
            "end_java_mb": window[-1].java_mb,
            "end_python_mb": window[-1].python_mb,
            "max_processes": max(s.processes for s in window),
            "tenths_mean_mb": _tenths(window),
            "steady_growth": _steady_growth(window),
        }


def _tenths(window: list[MemSample]) -> list[float]:
    """Mean RSS (MB) of each tenth of the window, in time order."""
    t0, t1 = window[0].t, window[-1].t
    span = max(t1 - t0, 1e-9)
    buckets: list[list[float]] = [[] for _ in range(10)]
    for s in window:
        buckets[min(int((s.t - t0) / span * 10), 9)].append(s.total_mb)
    return [round(sum(b) / len(b), 1) for b in buckets if b]


def _steady_growth(window: list[MemSample]) -> float | None:
    """RSS growth once warm: the last tenth's mean over the second tenth's, minus one.

    The first tenth holds the JVM heap growing to its working size under the first
    large requests (bounded by the driver's -Xmx); a leak shows as growth after it.
    """
    tenths = _tenths(window)
    if len(tenths) < 3 or tenths[1] <= 0:
        return None
    return round(tenths[-1] / tenths[1] - 1.0, 4)


def kernel_kill_line(pid: int) -> str | None:
    """The kernel log's OOM-killer line for ``pid``, when ``dmesg`` can be read."""
    try:
        out = subprocess.run(  # nosec B603 B607: fixed argv, no shell
            ["dmesg"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    needle = f"Killed process {pid} "
    hits = [line.strip() for line in out.stdout.splitlines() if needle in line]
    return hits[-1] if hits else None


def listening_pid(port: int) -> int | None:
    """The pid of the (readable) process listening on TCP ``port``, from /proc/net/tcp*."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in wanted for fd in fds):
                return int(entry)
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model, Python, Java, Spark and the load average."""
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else "java"
    try:
        out = subprocess.run(  # nosec B603: fixed argv, no shell
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        java_version = "; ".join((out.stderr or out.stdout).strip().splitlines())
    except (OSError, subprocess.TimeoutExpired, IndexError) as exc:
        java_version = f"unavailable ({exc})"
    try:
        spark = package_version("pyspark")
    except PackageNotFoundError:
        spark = "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "mem_total_gib": round(mem_kb / (1 << 20), 1),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "java": java_version,
        "pyspark": spark,
        "platform": platform.platform(),
        "loadavg": _read("/proc/loadavg").split()[:3],
    }


# ---------------------------------------------------------------------------- service


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """The service under test: its URL and, when known, its process."""

    url: str
    pid: int | None
    command: list[str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ready_seconds: float | None = None  # process start -> first /ready 200 (started only)
    ready_body: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] = field(default_factory=dict)


def _log_tail(path: Path | None, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""


def wait_ready(service: Service, started: float, timeout: float) -> None:
    """Poll ``/ready`` every 0.25 s until 200; SystemExit(2) on exit or timeout."""
    with httpx.Client(base_url=service.url, timeout=10) as client:
        while True:
            if service.proc is not None and service.proc.poll() is not None:
                raise SystemExit(
                    f"error: the service exited with status {service.proc.returncode} "
                    f"before it was ready; log tail:\n{_log_tail(service.log_path)}"
                )
            if time.monotonic() - started > timeout:
                raise SystemExit(
                    f"error: the service was not ready after {timeout:g} s; "
                    f"log tail:\n{_log_tail(service.log_path)}"
                )
            try:
                response = client.get("/ready")
                if response.status_code == 200:
                    if service.proc is not None:  # from process start: only when started
                        service.ready_seconds = time.monotonic() - started
                    service.ready_body = response.json()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)


def start_service(env_name: str, overrides: Sequence[str], log_path: Path) -> tuple[Service, float]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "poimatch.apps.service",
        "--env",
        env_name,
        "--port",
        str(port),
        *[a for o in overrides for a in ("--set", o)],
    ]
    env = dict(os.environ)
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    env["PYTHONUNBUFFERED"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(  # nosec B603: fixed argv, no shell
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the JVM is stopped with it
        )
    service = Service(
        url=f"http://127.0.0.1:{port}",
        pid=proc.pid,
        command=command,
        proc=proc,
        log_path=log_path,
    )
    return service, started


def stop_service(service: Service) -> dict[str, Any]:
    """SIGTERM the service, wait up to 30 s, then SIGKILL its process group."""
    proc = service.proc
    if proc is None:
        return {}
    result: dict[str, Any] = {}
    tree = process_tree(proc.pid)
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            result["killed"] = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    result["stop_seconds"] = round(time.monotonic() - started, 2)
    result["returncode"] = proc.returncode
    # the JVM exits when its parent's pipe closes; give it a moment, then make sure
    deadline = time.monotonic() + 15
    left = [p for p in tree[1:] if Path(f"/proc/{p}").exists()]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in left if Path(f"/proc/{p}").exists()]
    if left:
        result["leftover_pids"] = left
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return result


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RequestFile:
    size: int
    seed: int
    ids: tuple[str, ...]
    body: bytes


def make_files(sizes: Sequence[int], variants: int, seed: int) -> dict[int, list[RequestFile]]:
    """``variants`` different CSV files per size, in the service's input layout."""
    files: dict[int, list[RequestFile]] = {}
    for k, size in enumerate(sorted(set(sizes))):
        files[size] = []
        for v in range(variants):
            file_seed = seed + 1000 * k + v
            frame = generate_pois(size, seed=file_seed).drop(columns=[S.POI])
            ids = tuple(str(i) for i in frame[S.ID])
            if len(set(ids)) != len(ids):
                raise SystemExit(f"error: generated file (seed {file_seed}) has duplicate ids")
            body = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
            files[size].append(RequestFile(size, file_seed, ids, body))
    return files


@dataclass
class Outcome:
    size: int
    started: float  # monotonic
    seconds: float
    status: str  # HTTP status code, or "error:<Exception>"
    failure: str | None  # None when the response is a correct 200
    detail: str = ""
    retry_after: float | None = None


#: the endpoint posted to: ``/invocations``, or ``/invocations?against=<table>`` (--against)
ENDPOINT = {"path": "/invocations", "header": [S.ID, S.MATCHES]}


def check_response(request: RequestFile, text: str) -> str | None:
    """None when the body is a correct answer for ``request``, else the first problem."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != ENDPOINT["header"]:
        return f"bad header {header!r}"
    posted = set(request.ids)
    seen: set[str] = set()
    for row in reader:
        problem = _check_row(row, posted, seen) if row else None
        if problem:
            return problem
    if len(seen) != len(posted):
        return f"{len(posted) - len(seen)} of {len(posted)} posted ids missing"
    return None


def _check_row(row: list[str], posted: set[str], seen: set[str]) -> str | None:
    """One ``id,matches`` row: a posted id, new, first in its matches, no foreign id
    (with --against, two more fields: the known ids and their groups)."""
    if len(row) != len(ENDPOINT["header"]):
        return f"row with {len(row)} fields: {row[:3]!r}"
    ident, matches = row[0], row[1]
    tokens = matches.split(" ")
    problem = None
    if ident in seen:
        problem = f"id {ident!r} answered twice"
    elif ident not in posted:
        problem = f"id {ident!r} was not posted"
    elif tokens[0] != ident:
        problem = f"matches of {ident!r} start with {tokens[0]!r}"
    elif foreign := [t for t in tokens if t not in posted]:
        problem = f"matches of {ident!r} name ids not in the file: {foreign[:3]!r}"
    seen.add(ident)
    return problem


def post(client: httpx.Client, request: RequestFile) -> Outcome:
    started = time.monotonic()
    try:
        response = client.post(
            str(ENDPOINT["path"]), content=request.body, headers={"Content-Type": "text/csv"}
        )
    except httpx.HTTPError as exc:
        return Outcome(
            request.size,
            started,
            time.monotonic() - started,
            f"error:{type(exc).__name__}",
            "transport",
            str(exc)[:300],
        )
    seconds = time.monotonic() - started
    status = str(response.status_code)
    if response.status_code != 200:
        retry = response.headers.get("retry-after")
        return Outcome(
            request.size,
            started,
            seconds,
            status,
            f"status {status}",
            response.text[:300],
            float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
        )
    problem = check_response(request, response.text)
    return Outcome(
        request.size, started, seconds, status, problem and "wrong answer", problem or ""
    )


def is_deliberate_503(outcome: Outcome) -> bool:
    return outcome.status == "503" and '"busy"' in outcome.detail


def is_loud(outcome: Outcome) -> bool:
    """5xx other than the deliberate busy 503, or no HTTP answer at all."""
    if outcome.status.startswith("error:"):
        return True
    return outcome.status.startswith("5") and not is_deliberate_503(outcome)


class Alerts:
    """Loud problems: printed to stderr as they happen and kept for the summary."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, phase: str, outcome: Outcome) -> None:
        item = {
            "phase": phase,
            "size": outcome.size,
            "status": outcome.status,
            "failure": outcome.failure,
            "seconds": round(outcome.seconds, 3),
            "detail": outcome.detail,
        }
        with self._lock:
            self.items.append(item)
            first = len(self.items) <= 10
        if first:
            print(
                f"{LOUD} {phase}: {outcome.size}-row request -> {outcome.status} "
                f"({outcome.failure}) after {outcome.seconds:.2f} s: {outcome.detail}",
                file=sys.stderr,
                flush=True,
            )

    def consider(self, phase: str, outcome: Outcome) -> None:
        if is_loud(outcome) or outcome.failure == "wrong answer":
            self.add(phase, outcome)


def summarize(outcomes: Sequence[Outcome], elapsed: float | None = None) -> dict[str, Any]:
    """Latency percentiles and rates; failures and status counts."""
    good = [o for o in outcomes if o.failure is None]
    seconds = [o.seconds for o in good]
    rows = sum(o.size for o in good)
    out: dict[str, Any] = {
        "requests": len(outcomes),
        "ok": len(good),
        "failures": len(outcomes) - len(good),
        "failure_kinds": dict(Counter(o.failure for o in outcomes if o.failure)),
        "status_counts": dict(sorted(Counter(o.status for o in outcomes).items())),
        "p50_s": _r(percentile(seconds, 0.50)),
        "p95_s": _r(percentile(seconds, 0.95)),
        "max_s": _r(max(seconds) if seconds else None),
        "mean_s": _r(sum(seconds) / len(seconds) if seconds else None),
    }
    if elapsed is None:
        total = sum(seconds)
        out["rows_per_s"] = _r(rows / total if total else None, 1)
    else:
        out["elapsed_s"] = round(elapsed, 2)
        out["requests_per_s"] = round(len(good) / elapsed, 3) if elapsed else None
        out["rows_per_s"] = round(rows / elapsed, 1) if elapsed else None
        out["rows_ok"] = rows
    return out


# ---------------------------------------------------------------------------- phases


def warm_latency(
    url: str,
    *,
    files: dict[int, list[RequestFile]],
    sizes: Sequence[int],
    repeats: dict[int, int],
    warmups: int,
    timeout: float,
    alerts: Alerts,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for size in sizes:
            variants = files[size]
            warm = [post(client, variants[i % len(variants)]) for i in range(warmups)]
            for outcome in warm:
                alerts.consider(f"warm-up {size}", outcome)
            outcomes: list[Outcome] = []
            for i in range(repeats[size]):
                outcome = post(client, variants[i % len(variants)])
                alerts.consider(f"latency {size}", outcome)
                outcomes.append(outcome)
            stats = summarize(outcomes)
            stats["warmup_s"] = [round(o.seconds, 3) for o in warm]
            stats["warmup_failures"] = sum(1 for o in warm if o.failure)
            stats["seconds"] = [round(o.seconds, 3) for o in outcomes]
            results[str(size)] = stats
            print(
                f"  latency {size:>6} rows: p50 {_fmt(stats['p50_s'])} s, "
                f"max {_fmt(stats['max_s'])} s, failures {stats['failures']}",
                flush=True,
            )
    return results


def throughput(
    url: str,
    *,
    files: Sequence[RequestFile],
    clients: int,
    duration: float,
    timeout: float,
    alerts: Alerts,
    sampler: TreeSampler | None,
) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + duration

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            i = index
            while time.monotonic() < deadline:
                outcome = post(client, files[i % len(files)])
                i += 1
                alerts.consider("throughput", outcome)
                with lock:
                    outcomes.append(outcome)
                if is_deliberate_503(outcome):
                    pause = min(outcome.retry_after or 1.0, BUSY_SLEEP_MAX)
                    time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    if sampler is not None:
        sampler.phase = "throughput"
    threads = [
        threading.Thread(target=client_loop, args=(k,), name=f"client-{k}") for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    if sampler is not None:
        got = sampler.sample()  # the end of the window, after the last response
        if got is not None:
            sampler.samples.append(got)
        sampler.phase = "after"
    stats = summarize(outcomes, elapsed)
    stats["clients"] = clients
    stats["duration_s"] = duration
    stats["mix"] = sorted({f.size for f in files})
    stats["deliberate_503"] = sum(1 for o in outcomes if is_deliberate_503(o))
    stats["loud_5xx_or_errors"] = sum(1 for o in outcomes if is_loud(o))
    stats["by_size"] = {
        str(size): summarize([o for o in outcomes if o.size == size], elapsed)
        for size in sorted({o.size for o in outcomes})
    }
    return stats


def metrics_snapshot(url: str) -> dict[str, float]:
    """The service's own request and row counters from ``/metrics``."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    wanted = ("poimatch_requests_total{", "poimatch_rows_processed_total ")
    snapshot: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            key, _, value = line.rpartition(" ")
            snapshot[key] = float(value)
    return snapshot


_STAGE = re.compile(r"poimatch\.pipeline: stage (\w+): ([0-9.]+) s")


def stage_times(log_path: Path | None) -> dict[str, dict[str, Any]]:
    """The pipeline's own stage times (logged at INFO) before and after ``ready``."""
    if log_path is None or not log_path.exists():
        return {}
    found: dict[str, dict[str, list[float]]] = {"warm_up": {}, "requests": {}}
    part = "warm_up"
    for line in log_path.read_text(errors="replace").splitlines():
        if "poimatch.apps.service: ready in" in line or "__main__: ready in" in line:
            part = "requests"
        elif match := _STAGE.search(line):
            found[part].setdefault(match[1], []).append(float(match[2]))
    return {
        part: {
            stage: {
                "n": len(values),
                "p50_s": _r(percentile(values, 0.5), 1),
                "max_s": max(values),
                "total_s": round(sum(values), 1),
            }
            for stage, values in stages.items()
        }
        for part, stages in found.items()
    }


# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    m, svc = report["machine"], report["service"]
    print()
    print(f"poimatch service benchmark  {report['date']}")
    print(
        f"machine: {m['nproc']} cpu ({m['cpu_model']}), {m['mem_total_gib']} GiB, "
        f"Python {m['python']}, {m['java']}, pyspark {m['pyspark']}, "
        f"load {' '.join(m['loadavg'])} -> {' '.join(report['loadavg_end'])}"
    )
    version = svc.get("version", {})
    print(
        f"service: {svc['url']} ({svc['mode']}), model "
        f"{version.get('model_name', '?')} v{version.get('model_version', '?')}"
    )
    if svc.get("ready_seconds") is not None:
        print(f"ready seconds (process start -> /ready 200): {svc['ready_seconds']:.1f}")
    if svc.get("ready_body", {}).get("ready_seconds") is not None:
        print(f"ready seconds reported by the service: {svc['ready_body']['ready_seconds']}")
    mem = report["memory"]
    if mem.get("at_ready_mb") is not None:
        print(f"RSS at ready: {mem['at_ready_mb']:.0f} MB")

    if report["latency"]:
        print()
        print("warm latency (sequential, one client)")
        head = (
            f"{'rows':>7} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'max s':>8} "
            f"{'rows/s':>10} {'fail':>5}"
        )
        print(head)
        print("-" * len(head))
        for size, st in report["latency"].items():
            print(
                f"{int(size):>7} {st['requests']:>4} {_fmt(st['p50_s']):>8} "
                f"{_fmt(st['p95_s']):>8} {_fmt(st['max_s']):>8} "
                f"{_fmt(st['rows_per_s'], ',.0f'):>10} {st['failures']:>5}"
            )

    tp = report.get("throughput")
    if tp:
        print()
        print(
            f"throughput: {tp['clients']} clients, {tp['duration_s']:g} s "
            f"(ran {tp['elapsed_s']:.1f} s), mix {tp['mix']}"
        )
        print(
            f"  requests {tp['requests']} (ok {tp['ok']}), "
            f"{_fmt(tp['requests_per_s'])} req/s, {_fmt(tp['rows_per_s'], ',.1f')} rows/s, "
            f"p50 {_fmt(tp['p50_s'])} s, p95 {_fmt(tp['p95_s'])} s, max {_fmt(tp['max_s'])} s"
        )
        print(f"  status codes: {tp['status_counts']}  (deliberate 503: {tp['deliberate_503']})")
        tm = mem.get("throughput")
        if tm:
            print(
                f"  RSS (service + JVM + workers, {tm['samples']} samples): start "
                f"{tm['start_mb']:.0f} MB, end {tm['end_mb']:.0f} MB, max {tm['max_mb']:.0f} MB, "
                f"slope {_fmt(tm['slope_mb_per_min'], '+.1f')} MB/min "
                f"(end: JVM {tm['end_java_mb']:.0f}, Python {tm['end_python_mb']:.0f})"
            )
            tenths = " ".join(f"{v:.0f}" for v in tm.get("tenths_mean_mb", []))
            growth = tm.get("steady_growth")
            print(
                f"  RSS mean per tenth of the run (MB): {tenths}; growth once warm "
                f"(last tenth / second tenth - 1): "
                f"{'n/a' if growth is None else f'{growth:+.1%}'}"
            )
    for part, stages in svc.get("stages", {}).items():
        if stages:
            shown = ", ".join(
                f"{name} {st['p50_s']:g}/{st['max_s']:g}" for name, st in stages.items()
            )
            print(f"service stage seconds, {part} (p50/max, from its log): {shown}")
    for event in mem.get("jvm_exits", []):
        print(
            f"{LOUD} the service's JVM (pid {event['pid']}, last RSS {event['last_rss_mb']} MB) "
            f"exited at t={event['t_s']} s during {event['phase']}: "
            f"{event['kernel'] or 'cause unknown (see the service log)'}"
        )
    if mem.get("note"):
        print(f"memory: {mem['note']}")
    print()
    failures = report["failures"]
    print(
        f"failed responses (deliberate 503s included): {failures['total']} "
        f"{failures['kinds'] or ''}"
    )
    if report["alerts"]:
        print(
            f"{LOUD} {len(report['alerts'])} loud problem(s) (5xx other than a busy 503, "
            "transport errors, wrong answers); the first ones:"
        )
        for item in report["alerts"][:10]:
            print(f"{LOUD}   {item}")


# ---------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("_", "").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--start",
        action="store_true",
        default=True,
        help="start the service as a subprocess (default)",
    )
    where.add_argument("--url", default=None, help="benchmark a running service instead")
    parser.add_argument("--pid", type=int, default=None, help="with --url: its process id")
    parser.add_argument("--env", default="local", help="configuration overlay (default local)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="passed through to the service (repeatable; only with --start)",
    )
    parser.add_argument(
        "--sizes", type=_int_list, default=[10, 1000, 10000], help="latency file sizes (rows)"
    )
    parser.add_argument(
        "--repeats",
        type=_int_list,
        default=None,
        help="timed requests per size: one number or one per size "
        "(default 20 up to 1,000 rows, 5 above)",
    )
    parser.add_argument("--warmups", type=int, default=2, help="untimed requests per size")
    parser.add_argument(
        "--against",
        default=None,
        help="post to /invocations?against=TABLE (e.g. pois): match against the POI table",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent throughput clients")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="throughput seconds (0: skip it)"
    )
    parser.add_argument("--mix", type=_int_list, default=[1000], help="throughput file sizes")
    parser.add_argument("--variants", type=int, default=3, help="different files per size")
    parser.add_argument("--seed", type=int, default=9000, help="first generator seed")
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="client timeout per request (s)"
    )
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--sample-seconds", type=float, default=1.0, help="RSS sampling period")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/service.json")
    parser.add_argument(
        "--service-log", type=Path, default=None, help="default: service.log next to --out"
    )
    args = parser.parse_args(argv)
    if args.against:
        ENDPOINT["path"] = f"/invocations?against={args.against}"
        ENDPOINT["header"] = [S.ID, S.MATCHES, "known_ids", "known_groups"]
    if args.url and args.overrides:
        parser.error("--set is passed to a service this script starts; not with --url")
    if args.repeats is None:
        args.repeats = [20 if s <= 1000 else 5 for s in args.sizes]
    elif len(args.repeats) == 1:
        args.repeats = args.repeats * len(args.sizes)
    elif len(args.repeats) != len(args.sizes):
        parser.error(f"--repeats has {len(args.repeats)} values for {len(args.sizes)} sizes")
    if args.clients < 1 or args.variants < 1 or args.warmups < 0:
        parser.error("--clients and --variants must be at least 1, --warmups at least 0")
    return args


def _max_rows(overrides: Sequence[str]) -> int:
    """service.max_rows as a service started with these overrides sees it."""
    value = DEFAULT_MAX_ROWS
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip() == "service.max_rows" and raw.strip().isdigit():
            value = int(raw)
    return value


@contextmanager
def _service(args: argparse.Namespace, log_path: Path) -> Iterator[tuple[Service, float]]:
    if args.url:
        url = args.url.rstrip("/")
        port = urlsplit(url).port or 80
        service = Service(url=url, pid=args.pid or listening_pid(port))
        yield service, time.monotonic()
        return
    service, started = start_service(args.env, args.overrides, log_path)
    try:
        yield service, started
    finally:
        service.stop = stop_service(service)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    out: Path = args.out if args.out.is_absolute() else Path.cwd() / args.out
    log_path: Path = args.service_log or out.with_name("service.log")
    sizes: list[int] = args.sizes
    repeats = dict(zip(sizes, args.repeats, strict=True))
    duration: float = args.duration

    limit = None if args.url else _max_rows(args.overrides)
    too_big = [s for s in [*sizes, *args.mix] if limit is not None and s > limit]
    if too_big:
        print(
            f"warning: sizes {too_big} exceed service.max_rows={limit}: expect 413 "
            "(raise it with --set service.max_rows=N)",
            file=sys.stderr,
        )

    print(f"generating request files: sizes {sorted(set(sizes) | set(args.mix))}", flush=True)
    files = make_files([*sizes, *args.mix], args.variants, args.seed)

    alerts = Alerts()
    report: dict[str, Any] = {
        "date": date,
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": machine,
        "settings": {
            "sizes": sizes,
            "repeats": repeats,
            "warmups": args.warmups,
            "clients": args.clients,
            "duration_s": duration,
            "mix": args.mix,
            "variants": args.variants,
            "seed": args.seed,
            "request_timeout_s": args.request_timeout,
        },
        "latency": {},
        "throughput": None,
        "memory": {},
    }
    sampler: TreeSampler | None = None
    with _service(args, log_path) as (service, started):
        report["service"] = {
            "mode": "url" if args.url else "start",
            "url": service.url,
            "pid": service.pid,
            "command": shlex.join(service.command) if service.command else None,
            "log": str(service.log_path) if service.log_path else None,
        }
        if service.pid is not None:
            sampler = TreeSampler(service.pid, t0, args.sample_seconds)
            sampler.start()
        else:
            report["memory"]["note"] = "service process not found: no memory figures (--pid)"
        try:
            print(f"waiting for {service.url}/ready ...", flush=True)
            wait_ready(service, started, args.ready_timeout)
            report["service"]["ready_seconds"] = _r(service.ready_seconds, 2)
            report["service"]["ready_body"] = service.ready_body
            if service.ready_seconds is not None:
                print(f"ready after {service.ready_seconds:.1f} s", flush=True)
            version = httpx.get(f"{service.url}/version", timeout=30)
            report["service"]["version"] = version.json()
            if sampler is not None:
                got = sampler.sample()
                report["memory"]["at_ready_mb"] = got.total_mb if got else None
                sampler.phase = "latency"

            report["latency"] = warm_latency(
                service.url,
                files=files,
                sizes=sizes,
                repeats=repeats,
                warmups=args.warmups,
                timeout=args.request_timeout,
                alerts=alerts,
            )
            if duration > 0:
                mix = [f for size in args.mix for f in files[size]]
                print(f"  throughput: {args.clients} clients for {duration:g} s ...", flush=True)
                report["throughput"] = throughput(
                    service.url,
                    files=mix,
                    clients=args.clients,
                    duration=duration,
                    timeout=args.request_timeout,
                    alerts=alerts,
                    sampler=sampler,
                )
            report["service"]["metrics"] = metrics_snapshot(service.url)
        finally:
            if sampler is not None:
                sampler.phase = "after"
                sampler.stop()
    if service.proc is not None:
        report["service"]["stop"] = service.stop
        report["service"]["stages"] = stage_times(service.log_path)

    if sampler is not None:
        report["memory"]["throughput"] = sampler.summary("throughput")
        report["memory"]["latency"] = sampler.summary("latency")
        report["memory"]["max_mb"] = max((s.total_mb for s in sampler.samples), default=None)
        report["memory"]["jvm_exits"] = sampler.events
        report["memory"]["samples"] = [
            [s.t, s.total_mb, s.java_mb, s.python_mb, s.processes, s.phase] for s in sampler.samples
        ]
        report["memory"]["samples_columns"] = [
            "t_s",
            "total_mb",
            "java_mb",
            "python_mb",
            "processes",
            "phase",
        ]
    failures: Counter[str] = Counter()
    for st in report["latency"].values():
        failures.update(st["failure_kinds"])
    if report["throughput"]:
        failures.update(report["throughput"]["failure_kinds"])
    report["failures"] = {"total": sum(failures.values()), "kinds": dict(failures)}
    report["alerts"] = alerts.items
    report["loadavg_end"] = _read("/proc/loadavg").split()[:3]
    report["total_seconds"] = round(time.monotonic() - t0, 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_report(report)
    print(f"\nwrote {out}")
    deliberate = 0
    if report["throughput"]:
        deliberate = report["throughput"]["deliberate_503"]
    jvm_exits = report["memory"].get("jvm_exits", [])
    return 1 if report["failures"]["total"] > deliberate or jvm_exits else 0


if __name__ == "__main__":
    sys.exit(main())
