"""Scale benchmark: the nightly match end to end at several sizes, with stage timings.

    .venv/bin/python benchmarks/scale.py --sizes 10000,100000,1000000 \\
        --out benchmarks/results/scale.json

For each size it generates POIs with :mod:`poimatch.sample.generator` (cached in the work
folder), ingests them with ``jobs/ingest.py`` into a fresh Delta POI table, then runs
the match the way ``jobs/match.py`` does (``poimatch.runs.batch.run_match`` under
``./spark-submit.sh``, reading the POI table) and evaluates the output against the
generated truth. A model is trained first on ``--train-rows`` rows of another seed with
``jobs/train.py`` unless ``--model URI`` names one in the work folder's MLflow store.

Everything (tables, MLflow store, registered model ``poimatch-scale``, outputs, logs)
lives under ``--workdir`` (default ``/tmp/poimatch-scale``): production tables and the
project's MLflow store are never touched.

Recorded per size: wall time of the ingest job and of the match job (JVM start to the
end of ``run_match``: read, match, output contract check, Delta and CSV writes), the
match's stages (``normalize`` = normalized points, ``blocking_features`` = candidate
pairs and every feature, ``scoring``, ``grouping``, ``write``), candidate pairs, pairs
per second, peak RSS of the job's process tree (driver JVM + Python driver + Python
workers, sampled from /proc every 0.2 s), and IoU. ``--profile`` also turns on Spark's
event log and summarizes, per stage of the match, the slowest Spark stages (task count,
longest task, shuffle, spill). Writes the JSON to ``--out`` and a markdown table next to
it (``--md``, default: ``--out`` with ``.md``).

Internal: ``scale.py --worker-match ...`` is the part run under spark-submit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess  # nosec B404: runs the project's own spark-submit wrapper
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "spark-submit.sh"
MODEL_NAME = "poimatch-scale"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --------------------------------------------------------------------- process memory


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, int, str, float]]:
    """pid -> (ppid, rss bytes, command name, cpu seconds incl. waited-for children)."""
    table: dict[int, tuple[int, int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text().split()
        except OSError:
            continue
        close = stat.rfind(")")
        comm = stat[stat.find("(") + 1 : close]
        rest = stat[close + 2 :].split()
        cpu = sum(int(x) for x in rest[11:15]) / _TICK  # utime stime cutime cstime
        table[int(entry)] = (int(rest[1]), int(statm[1]) * _PAGE, comm, cpu)
    return table


class TreeSampler(threading.Thread):
    """Samples RSS and CPU time of a process and its descendants until stopped.

    CPU is cumulative over every process seen in the tree (its last reading is kept
    after it exits), so it is robust to other load on the machine, unlike wall time.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int, int, float]] = []  # t, total, java, py, cpu
        self._cpu: dict[int, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            table = _proc_table()
            children: dict[int, list[int]] = {}
            for pid, row in table.items():
                children.setdefault(row[0], []).append(pid)
            todo, total, java, python = [self.pid], 0, 0, 0
            while todo:
                pid = todo.pop()
                if pid in table:
                    _, rss, comm, cpu = table[pid]
                    self._cpu[pid] = cpu
                    total += rss
                    if comm == "java":
                        java += rss
                    elif comm.startswith("python"):
                        python += rss
                todo.extend(children.get(pid, []))
            self.samples.append((time.time(), total, java, python, sum(self._cpu.values())))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        """Peak total / JVM / Python RSS (GiB) and CPU seconds between two epoch times."""
        window = [s for s in self.samples if start <= s[0] <= end] or self.samples
        gib = float(1 << 30)
        if not window:
            return {
                "jvm_plus_python_gib": 0.0,
                "total_gib": 0.0,
                "jvm_gib": 0.0,
                "python_gib": 0.0,
                "cpu_s": 0.0,
            }
        before = [s[4] for s in self.samples if s[0] < start]
        return {
            # JVM + Python per sample: a helper the JVM forks shares its pages for an
            # instant and would count them twice in the tree's total
            "jvm_plus_python_gib": round(max(s[2] + s[3] for s in window) / gib, 2),
            "total_gib": round(max(s[1] for s in window) / gib, 2),
            "jvm_gib": round(max(s[2] for s in window) / gib, 2),
            "python_gib": round(max(s[3] for s in window) / gib, 2),
            "cpu_s": round(window[-1][4] - (before[-1] if before else 0.0), 1),
        }


def run_job(
    argv: Sequence[str], log: Path, env: dict[str, str]
) -> tuple[int, float, float, list[str], TreeSampler]:
    """Run a command, sampling its process tree; returns rc, start, end, stdout lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w") as err:
        proc = subprocess.Popen(  # nosec B603: fixed argv, no shell
            list(argv), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        out, _ = proc.communicate()
        ended = time.time()
        sampler.stop()
    lines = out.splitlines()
    (log.with_suffix(".out")).write_text(out)
    if proc.returncode != 0:
        print(f"  FAILED rc={proc.returncode}: {' '.join(argv)} (see {log})", file=sys.stderr)
    return proc.returncode, started, ended, lines, sampler


def _value(lines: Sequence[str], key: str) -> str | None:
    for line in lines:
        for token in line.split():
            if token.startswith(f"{key}="):
                return token.split("=", 1)[1]
    return None


# --------------------------------------------------------------------- Spark event log


def _summarize_event_log(path: Path, windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Per match stage: Spark stages, tasks, longest task, shuffle and spill (from the log)."""
    stages: dict[int, dict[str, Any]] = {}
    files = sorted(path.glob("events_*")) if path.is_dir() else [path]
    for raw in (line for f in files for line in f.read_text().splitlines()):
        event = json.loads(raw)
        kind = event.get("Event")
        if kind == "SparkListenerTaskEnd":
            sid = event["Stage ID"]
            info, metrics = event["Task Info"], event.get("Task Metrics") or {}
            st = stages.setdefault(sid, {"tasks": 0, "max_task_s": 0.0, "run_s": 0.0})
            dur = (info["Finish Time"] - info["Launch Time"]) / 1000.0
            st["tasks"] += 1
            st["max_task_s"] = max(st["max_task_s"], dur)
            st["run_s"] += metrics.get("Executor Run Time", 0) / 1000.0
            st["gc_s"] = st.get("gc_s", 0.0) + metrics.get("JVM GC Time", 0) / 1000.0
            st["spill_mb"] = st.get("spill_mb", 0.0) + metrics.get("Disk Bytes Spilled", 0) / 1e6
            st["peak_exec_mem_mb"] = max(
                st.get("peak_exec_mem_mb", 0.0), metrics.get("Peak Execution Memory", 0) / 1e6
            )
            sw = metrics.get("Shuffle Write Metrics") or {}
            sr = metrics.get("Shuffle Read Metrics") or {}
            st["shuffle_write_mb"] = (
                st.get("shuffle_write_mb", 0.0) + sw.get("Shuffle Bytes Written", 0) / 1e6
            )
            st["shuffle_read_mb"] = (
                st.get("shuffle_read_mb", 0.0)
                + (sr.get("Remote Bytes Read", 0) + sr.get("Local Bytes Read", 0)) / 1e6
            )
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            st = stages.setdefault(info["Stage ID"], {"tasks": 0, "max_task_s": 0.0, "run_s": 0.0})
            st["name"] = info["Stage Name"]
            st["submitted"] = info.get("Submission Time", 0) / 1000.0
            st["wall_s"] = (info.get("Completion Time", 0) - info.get("Submission Time", 0)) / 1e3
    out: dict[str, Any] = {}
    for stage, (start, end) in windows.items():
        inside = [s for s in stages.values() if "submitted" in s and start <= s["submitted"] < end]
        top = sorted(inside, key=lambda s: -s.get("wall_s", 0.0))[:4]
        out[stage] = {
            "spark_stages": len(inside),
            "tasks": sum(s["tasks"] for s in inside),
            "task_run_s": round(sum(s["run_s"] for s in inside), 1),
            "gc_s": round(sum(s.get("gc_s", 0.0) for s in inside), 1),
            "spill_mb": round(sum(s.get("spill_mb", 0.0) for s in inside), 1),
            "max_task_s": round(max((s["max_task_s"] for s in inside), default=0.0), 1),
            "top": [
                {
                    k: (round(v, 1) if isinstance(v, float) else v)
                    for k, v in s.items()
                    if k != "submitted"
                }
                for s in top
            ],
        }
    return out


# --------------------------------------------------------------------- worker (in Spark)


def worker_match(args: argparse.Namespace) -> None:
    """Under spark-submit: run_match on the POI table with stage marks, then evaluate."""
    session_start = time.time()
    from poimatch.apps.cli import start_job
    from poimatch.runs import batch
    from poimatch.runs.batch import run_evaluate, run_match
    from poimatch.stages.plan import record_stages

    settings, spark = start_job(args)
    session_ready = time.time()
    marks: list[tuple[str, float]] = []
    original = batch.match_pois

    def timed_match_pois(*a: Any, **k: Any) -> Any:
        marks.append(("match_pois:start", time.time()))
        result = original(*a, **k)
        marks.append(("match_pois:end", time.time()))
        return result

    batch.match_pois = timed_match_pois  # type: ignore[assignment]
    with record_stages() as stage_marks:
        lines = run_match(
            spark, settings, input_path=None, output_csv=args.output, model_uri=args.model
        )
    match_end = time.time()
    marks = sorted(marks + stage_marks, key=lambda m: m[1])
    n_rows = (
        spark.read.format("delta")
        .load(settings.storage.table_path(settings.storage.pois_table))
        .count()
    )
    eval_lines = run_evaluate(spark, args.output, args.truth)
    report = {
        "session_start": session_start,
        "session_ready": session_ready,
        "match_end": match_end,
        "marks": marks,
        "lines": lines.lines(),
        "eval_lines": eval_lines.lines(),
        "rows": n_rows,
        "conf": {
            k: v
            for k, v in spark.sparkContext.getConf().getAll()
            if k.startswith("spark.sql") or k.startswith("spark.driver") or "arrow" in k
        },
    }
    Path(args.report).write_text(json.dumps(report, indent=2))


# --------------------------------------------------------------------- orchestration


def _stage_seconds(report: dict[str, Any], launched: float) -> dict[str, float]:
    marks: dict[str, float] = {}
    for name, t in report["marks"]:
        marks.setdefault(name, t)
    end = report["match_end"]

    def span(a: str, b: str) -> float:
        return round(marks[b] - marks[a], 1) if a in marks and b in marks else float("nan")

    grouping_end = marks.get("match_pois:end", marks.get("grouping:end", end))
    return {
        "jvm_and_session": round(report["session_ready"] - launched, 1),
        "load_model_and_input": round(marks["points:start"] - report["session_ready"], 1),
        "normalize": span("points:start", "points:end"),
        "blocking_features": span("pair_features:start", "pair_features:end"),
        "scoring": span("pair_features:end", "grouping:start"),
        "grouping": round(grouping_end - marks["grouping:start"], 1),
        "write": round(end - grouping_end, 1),
        "match_wall": round(end - launched, 1),
    }


def _windows(report: dict[str, Any], launched: float) -> dict[str, tuple[float, float]]:
    marks: dict[str, float] = {}
    for name, t in report["marks"]:
        marks.setdefault(name, t)
    end = report["match_end"]
    grouping_end = marks.get("match_pois:end", marks.get("grouping:end", end))
    return {
        "load": (launched, marks["points:start"]),
        "normalize": (marks["points:start"], marks["points:end"]),
        "blocking_pair_features": (marks["pair_features:start"], marks["pair_features:end"]),
        "scoring": (marks["pair_features:end"], marks["grouping:start"]),
        "grouping": (marks["grouping:start"], grouping_end),
        "write": (grouping_end, end),
    }


def _machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    java = subprocess.run(  # nosec B603 B607: fixed argv
        ["java", "-version"], capture_output=True, text=True, check=False
    ).stderr.splitlines()
    return {
        "cores": os.cpu_count(),
        "mem_gib": round(int(mem) / (1 << 20), 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "java": java[0] if java else "",
        "loadavg_at_start": os.getloadavg(),
    }


def _data(workdir: Path, rows: int, seed: int) -> Path:
    from poimatch.sample.generator import generate_pois, write_pois_csv

    path = workdir / "data" / f"gen-{rows}-s{seed}.csv"
    if not path.is_file():
        started = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        write_pois_csv(generate_pois(rows, seed=seed), tmp)
        tmp.rename(path)
        print(f"  generated {rows} rows seed {seed} in {time.perf_counter() - started:.1f} s")
    return path


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env["MLFLOW_TRACKING_URI"] = uri
    env["MLFLOW_REGISTRY_URI"] = uri
    env["POIMATCH_DRIVER_MEMORY"] = env.get("POIMATCH_DRIVER_MEMORY", "6g")
    return env


def _sets(workdir: Path, root: Path, extra: Sequence[str]) -> list[str]:
    sets = [
        f"storage.root={root}",
        f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        f"tracking.artifact_root={workdir / 'mlartifacts'}",
        "tracking.experiment=poimatch-scale",
        f"model.name={MODEL_NAME}",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# poimatch scale benchmark",
        "",
        f"Machine: {m['cores']} cores, {m['mem_gib']} GiB, {m['cpu']}, Python {m['python']}, "
        f"{m['java']}; load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
        f" ({results['note']}).",
        f"Command: `{results['command']}`",
        "",
    ]
    train = results.get("train")
    if train:
        lines += [
            f"Training ({train['rows']} rows, `jobs/train.py`): {train['wall_s']:.0f} s wall, "
            f"{train['peak_rss']['cpu_s']:.0f} CPU s, "
            f"peak RSS {train['peak_rss']['total_gib']} GiB; "
            f"model {train['model_uri']}; "
            f"validation IoU {train.get('iou', 'n/a')}.",
            "",
        ]
    head = (
        "| rows | ingest s | match wall s | incl. ingest s | JVM+session | load | normalize "
        "| blocking+features | scoring | grouping | write | match CPU s | candidates | per row "
        "| pairs/s | peak RSS GiB JVM+Py (JVM / Py) | IoU |"
    )
    lines += [head, "|" + "---|" * 17]
    for r in results["runs"]:
        s = r["stages"]
        peak = r["peak_rss"]
        lines.append(
            f"| {r['rows']:,} | {_fmt(r['ingest_wall_s'])} | {_fmt(s['match_wall'])} "
            f"| {_fmt(r['end_to_end_incl_ingest_s'])} | {_fmt(s['jvm_and_session'])} "
            f"| {_fmt(s['load_model_and_input'])} | {_fmt(s['normalize'])} "
            f"| {_fmt(s['blocking_features'])} | {_fmt(s['scoring'])} | {_fmt(s['grouping'])} "
            f"| {_fmt(s['write'])} | {_fmt(peak['cpu_s'])} | {r['candidates']:,} "
            f"| {r['candidates_per_row']} "
            f"| {r['pairs_per_second']:,.0f} | {peak.get('jvm_plus_python_gib')} "
            f"({peak['jvm_gib']} / "
            f"{peak['python_gib']}) | {r['iou']} |"
        )
    inc = results.get("incremental")
    if inc:
        lines += [
            "",
            f"Incremental ({inc['rows']:,} rows + {inc['added_rows']:,} new, "
            f"`jobs/match.py --incremental`, whole job): "
            f"{inc['incremental']['wall_s']:.0f} s wall, {inc['incremental']['cpu_s']:.0f} CPU s "
            f"= {inc['ratio_to_full']:.2f} x the full match's {inc['full_match_wall_s']:.0f} s; "
            f"first run without state {inc['first_incremental']['wall_s']:.0f} s; "
            f"ingest of the new rows {inc['ingest_new_rows']['wall_s']:.0f} s.",
        ]
    ratios = results.get("ratios", {})
    if ratios:
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v}" for k, v in ratios.items())]
    for r in results["runs"]:
        if "profile" in r:
            lines += ["", f"Profile at {r['rows']:,} rows (Spark event log):", ""]
            lines += [
                "| stage | spark stages | tasks | task s | GC s | spill MB | longest task s |"
            ]
            lines += ["|---|---|---|---|---|---|---|"]
            for name, p in r["profile"].items():
                lines.append(
                    f"| {name} | {p['spark_stages']} | {p['tasks']} | {p['task_run_s']} "
                    f"| {p['gc_s']} | {p['spill_mb']} | {p['max_task_s']} |"
                )
    return "\n".join(lines) + "\n"


def measure_incremental(
    args: argparse.Namespace, workdir: Path, env: dict[str, str], rows: int, model: str
) -> dict[str, Any]:
    """The nightly incremental run after ``--incremental-fraction`` new rows arrive.

    On a copy of the size's POI table: a first ``jobs/match.py --incremental`` (no
    state yet: computes and stores everything), the ingest of the new rows (another
    seed's generated places) by MERGE, then the measured ``--incremental`` run.
    Wall times are whole spark-submit jobs (JVM start to exit).
    """
    source = workdir / f"lake-{rows}" / "pois"
    root = workdir / f"lake-{rows}-inc"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(source, root / "pois")
    added = max(1, int(rows * args.incremental_fraction))
    new_csv = _data(workdir, added, args.seed + 1000)
    sets = _sets(workdir, root, args.overrides)
    out: dict[str, Any] = {"rows": rows, "added_rows": added}
    steps = (
        ("first_incremental", ["jobs/match.py", "--incremental", "--model", model]),
        ("ingest_new_rows", ["jobs/ingest.py", "--input", str(new_csv)]),
        ("incremental", ["jobs/match.py", "--incremental", "--model", model]),
    )
    for name, job in steps:
        print(f"  {name} ({rows} rows + {added})")
        rc, t0, t1, lines, sampler = run_job(
            [str(SUBMIT), *job, *sets], workdir / "logs" / f"inc-{rows}-{name}.log", env
        )
        if rc != 0:
            raise SystemExit(rc)
        out[name] = {
            "wall_s": round(t1 - t0, 1),
            "cpu_s": sampler.peak(t0, t1)["cpu_s"],
            "peak_gib": sampler.peak(t0, t1)["jvm_plus_python_gib"],
            "lines": [line for line in lines if "=" in line][:20],
        }
        print(f"    {out[name]['wall_s']} s wall, {out[name]['cpu_s']} CPU s")
    return out


def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = _env(workdir)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "benchmarks/scale.py", *sys.argv[1:]]),
        "machine": _machine(),
        "note": args.note,
        "driver_memory": env["POIMATCH_DRIVER_MEMORY"],
        "overrides": list(args.overrides),
        "runs": [],
    }
    out = Path(args.out)
    md = Path(args.md) if args.md else out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))
        md.write_text(_markdown(results))

    model = args.model
    if model is None:
        train_csv = _data(workdir, args.train_rows, args.train_seed)
        print(f"training on {args.train_rows} rows (seed {args.train_seed})")
        argv = [str(SUBMIT), "jobs/train.py", "--input", str(train_csv)]
        argv += _sets(workdir, workdir / "lake-train", args.overrides)
        rc, t0, t1, lines, sampler = run_job(argv, workdir / "logs" / "train.log", env)
        if rc != 0:
            raise SystemExit(rc)
        model = _value(lines, "model_uri")
        results["train"] = {
            "rows": args.train_rows,
            "seed": args.train_seed,
            "wall_s": round(t1 - t0, 1),
            "model_uri": model,
            "iou": _value(lines, "iou"),
            "peak_rss": sampler.peak(),
            "loadavg_after": os.getloadavg(),
        }
        print(f"  train {t1 - t0:.0f} s, model {model}")
        save()
    for rows in sizes:
        csv = _data(workdir, rows, args.seed)
        root = workdir / f"lake-{rows}"
        if not args.reuse_table or not (root / "pois").is_dir():
            shutil.rmtree(root, ignore_errors=True)
            argv = [str(SUBMIT), "jobs/ingest.py", "--input", str(csv)]
            argv += _sets(workdir, root, args.overrides)
            print(f"ingest {rows} rows")
            rc, t0, t1, _, _ = run_job(argv, workdir / "logs" / f"ingest-{rows}.log", env)
            if rc != 0:
                raise SystemExit(rc)
            ingest_s = round(t1 - t0, 1)
            print(f"  ingest {ingest_s} s")
        else:
            ingest_s = float("nan")
        report_path = workdir / "logs" / f"match-{rows}.json"
        output = workdir / "out" / f"matches-{rows}.csv"
        output.parent.mkdir(parents=True, exist_ok=True)
        submit_opts: list[str] = []
        events = workdir / "events"
        if args.profile:
            shutil.rmtree(events, ignore_errors=True)
            events.mkdir(parents=True)
            submit_opts = [
                "--conf",
                "spark.eventLog.enabled=true",
                "--conf",
                f"spark.eventLog.dir=file://{events}",
                "--conf",
                "spark.eventLog.compress=false",
                "--conf",
                "spark.eventLog.rolling.enabled=false",
            ]
        argv = [str(SUBMIT), *submit_opts, str(Path(__file__).resolve()), "--worker-match"]
        argv += ["--model", str(model), "--output", str(output), "--truth", str(csv)]
        argv += ["--report", str(report_path), *_sets(workdir, root, args.overrides)]
        print(f"match {rows} rows")
        load_before = os.getloadavg()
        rc, launched, _, _, sampler = run_job(argv, workdir / "logs" / f"match-{rows}.log", env)
        if rc != 0:
            raise SystemExit(rc)
        report = json.loads(report_path.read_text())
        stages = _stage_seconds(report, launched)
        candidates = int(_value(report["lines"], "candidates") or 0)
        iou = _value(report["eval_lines"], "iou")
        run: dict[str, Any] = {
            "rows": rows,
            "seed": args.seed,
            "ingest_wall_s": ingest_s,
            "stages": stages,
            "end_to_end_incl_ingest_s": round(ingest_s + stages["match_wall"], 1),
            "candidates": candidates,
            "candidates_per_row": _value(report["lines"], "candidates_per_row"),
            "pairs_per_second": candidates / max(stages["match_wall"], 1e-9),
            "pairs_per_second_blocking_to_scoring": candidates
            / max(stages["blocking_features"] + stages["scoring"], 1e-9),
            "peak_rss": sampler.peak(launched, report["match_end"]),
            "peak_rss_by_stage": {
                k: sampler.peak(a, b)["jvm_plus_python_gib"]
                for k, (a, b) in _windows(report, launched).items()
            },
            "cpu_s_by_stage": {
                k: sampler.peak(a, b)["cpu_s"] for k, (a, b) in _windows(report, launched).items()
            },
            "iou": float(iou) if iou else None,
            "evaluate": report["eval_lines"],
            "match_lines": report["lines"],
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "spark_conf": report["conf"],
        }
        if args.profile:
            logs = sorted(events.iterdir())
            if logs:
                run["profile"] = _summarize_event_log(logs[-1], _windows(report, launched))
        results["runs"].append(run)
        save()
        if args.incremental_fraction and rows == max(sizes):
            inc = measure_incremental(args, workdir, env, rows, str(model))
            inc["full_match_wall_s"] = stages["match_wall"]
            inc["ratio_to_full"] = round(inc["incremental"]["wall_s"] / stages["match_wall"], 3)
            results["incremental"] = inc
        print(
            f"  match {stages['match_wall']} s {stages} candidates={candidates} "
            f"peak={run['peak_rss']} iou={iou}"
        )
        save()
    by_rows = {r["rows"]: r for r in results["runs"]}
    if 100_000 in by_rows and 1_000_000 in by_rows:
        a, b = by_rows[100_000], by_rows[1_000_000]
        results["ratios"] = {
            "match_wall(1M)/match_wall(100k)": round(
                b["stages"]["match_wall"] / a["stages"]["match_wall"], 2
            ),
            "incl_ingest(1M)/incl_ingest(100k)": round(
                b["end_to_end_incl_ingest_s"] / a["end_to_end_incl_ingest_s"], 2
            ),
        }
    save()
    print(md.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
    parser.add_argument("--workdir", default="/tmp/poimatch-scale")
    parser.add_argument("--model", default=None, help="model URI in the workdir's MLflow store")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--train-seed", type=int, default=1001)
    parser.add_argument("--seed", type=int, default=7, help="seed of the matched data")
    parser.add_argument("--profile", action="store_true", help="Spark event log summary")
    parser.add_argument(
        "--incremental-fraction",
        type=float,
        default=0.01,
        help="at the largest size, time an incremental run after adding this share of rows "
        "(0 to skip)",
    )
    parser.add_argument("--reuse-table", action="store_true", help="skip ingest if table exists")
    parser.add_argument("--note", default="machine shared with other sessions: timings noisy")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    # worker mode (run under spark-submit by the orchestrator)
    parser.add_argument("--worker-match", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--truth", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--env", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_match:
        worker_match(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
