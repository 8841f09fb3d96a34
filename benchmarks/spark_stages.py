"""Every Spark stage of an event log, in submission order: what each job did and cost.

    .venv/bin/python benchmarks/spark_stages.py /tmp/pm-scale/events/local-... [FROM_S [TO_S]]

For each stage: seconds since the application started, stage and job id, wall seconds,
task seconds (executor run time), tasks, records read (shuffle and input), shuffle read
and written (MB, compressed), records written to the shuffle, the job's description (the
match stage that ran it: ``poimatch <stage>``) and Spark's call site. ``benchmarks/
scale.py --profile`` keeps the log in its work folder's ``events``; compare two logs to
see which step a change made cheaper and whether a stage is recomputed (two stages
reading and writing the same records).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _stage() -> dict[str, Any]:
    return {"run": 0.0, "sr": 0.0, "sw": 0.0, "n": 0, "rec_in": 0, "rec_out": 0}


def main() -> None:
    path = sys.argv[1]
    lo = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    hi = float(sys.argv[3]) if len(sys.argv) > 3 else float("inf")
    stages: dict[int, dict[str, Any]] = {}
    jobs: dict[int, tuple[int, str]] = {}
    started = 0.0
    with open(path) as log:
        for raw in log:
            event = json.loads(raw)
            kind = event.get("Event")
            if kind == "SparkListenerApplicationStart":
                started = event["Timestamp"] / 1000
            elif kind == "SparkListenerJobStart":
                props = event.get("Properties") or {}
                for sid in event["Stage IDs"]:
                    jobs[sid] = (event["Job ID"], props.get("spark.job.description", ""))
            elif kind == "SparkListenerTaskEnd":
                st = stages.setdefault(event["Stage ID"], _stage())
                m = event.get("Task Metrics") or {}
                sr = m.get("Shuffle Read Metrics") or {}
                sw = m.get("Shuffle Write Metrics") or {}
                st["run"] += m.get("Executor Run Time", 0) / 1000
                st["n"] += 1
                st["sr"] += (sr.get("Remote Bytes Read", 0) + sr.get("Local Bytes Read", 0)) / 1e6
                st["sw"] += sw.get("Shuffle Bytes Written", 0) / 1e6
                st["rec_in"] += sr.get("Total Records Read", 0)
                st["rec_in"] += (m.get("Input Metrics") or {}).get("Records Read", 0)
                st["rec_out"] += sw.get("Shuffle Records Written", 0)
            elif kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                st = stages.setdefault(info["Stage ID"], _stage())
                st["sub"] = info.get("Submission Time", 0) / 1000
                st["wall"] = (info.get("Completion Time", 0) - info.get("Submission Time", 0)) / 1e3
                st["name"] = info["Stage Name"]
    print(
        f"{'at_s':>7} {'stage':6} {'job':5} {'wall_s':>6} {'task_s':>7} {'tasks':>5} "
        f"{'in_M':>6} {'shuf_r_MB':>9} {'shuf_w_MB':>9} {'out_M':>6}  description / call site"
    )
    total = 0.0
    for sid, st in sorted(stages.items(), key=lambda item: item[1].get("sub", 0.0)):
        if "sub" not in st or not lo <= st["sub"] - started < hi:
            continue
        job, description = jobs.get(sid, (-1, ""))
        total += st["run"]
        print(
            f"{st['sub'] - started:7.1f} s{sid:<5} j{job:<4} {st['wall']:6.1f} {st['run']:7.1f} "
            f"{st['n']:5d} {st['rec_in'] / 1e6:6.2f} {st['sr']:9.1f} {st['sw']:9.1f} "
            f"{st['rec_out'] / 1e6:6.2f}  {description[:28]} {st['name'][:44]}"
        )
    print(f"task seconds in the window: {total:.1f}")


if __name__ == "__main__":
    main()
