"""A match job's Spark jobs by step, from its event log: how many jobs, stages and
tasks each step ran, how many were Delta's own, and when the step's jobs ran.

    ./spark-submit.sh jobs/match.py --incremental --set "spark.extra={\\
        spark.eventLog.enabled: 'true', spark.eventLog.dir: 'file:///tmp/ev', \\
        spark.eventLog.compress: 'false', spark.eventLog.rolling.enabled: 'false'}"
    .venv/bin/python benchmarks/job_steps.py /tmp/ev/local-...

A job's step is the one its description names (``poimatch <step>``, or Delta's
``Delta: poimatch <step>: ...`` for the Delta jobs it ran inside that step; see
``poimatch.stages.plan.name_jobs``): the job's own steps (``input``, ``match``,
``output``, ``write``, ``figures``), an incremental run's (``incremental rows`` ...
``incremental state``) and the stages inside them (``points``, ``pair_features``,
``scoring``, ``grouping``). Steps are listed in the order their first job started;
``first`` and ``last`` are seconds since the application started, ``busy`` the sum of
the step's job wall times (jobs may overlap).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

_STEP = re.compile(r"poimatch ([a-z_ ]+?)(?: \[|:|$)")


@dataclass
class Step:
    jobs: int = 0
    delta: int = 0
    stages: int = 0
    tasks: int = 0
    busy: float = 0.0
    first: float = float("inf")
    last: float = 0.0


def steps(lines: list[str]) -> tuple[dict[str, Step], float, int]:
    """Per step its figures (in first-job order), the application's seconds, jobs."""
    started = ended = 0.0
    opened: dict[int, tuple[str, float]] = {}
    found: dict[str, Step] = {}
    for raw in lines:
        event = json.loads(raw)
        kind = event.get("Event")
        if kind == "SparkListenerApplicationStart":
            started = event["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            ended = event["Timestamp"] / 1000
        elif kind == "SparkListenerJobStart":
            described = (event.get("Properties") or {}).get("spark.job.description") or ""
            match = _STEP.search(described)
            name = match.group(1) if match else "(unnamed)"
            step = found.setdefault(name, Step())
            step.jobs += 1
            step.delta += described.startswith("Delta:")
            step.stages += len(event["Stage IDs"])
            step.tasks += sum(s["Number of Tasks"] for s in event["Stage Infos"])
            at = event["Submission Time"] / 1000 - started
            step.first = min(step.first, at)
            opened[event["Job ID"]] = (name, at)
        elif kind == "SparkListenerJobEnd" and event["Job ID"] in opened:
            name, at = opened.pop(event["Job ID"])
            done = event["Completion Time"] / 1000 - started
            found[name].busy += done - at
            found[name].last = max(found[name].last, done)
    jobs = sum(s.jobs for s in found.values())
    return found, ended - started, jobs


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as log:
        found, seconds, jobs = steps(log.readlines())
    print(f"application {seconds:.1f} s, {jobs} Spark jobs")
    print(
        f"{'step':24s} {'jobs':>5s} {'delta':>5s} {'stages':>6s} {'tasks':>6s} "
        f"{'busy_s':>7s} {'first_s':>7s} {'last_s':>7s}"
    )
    for name, s in found.items():
        print(
            f"{name:24s} {s.jobs:5d} {s.delta:5d} {s.stages:6d} {s.tasks:6d} "
            f"{s.busy:7.1f} {s.first:7.1f} {s.last:7.1f}"
        )


if __name__ == "__main__":
    main()
