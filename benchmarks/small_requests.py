"""Latency of the service's engine on small uploads, and of a trivial Python UDF query.

    .venv/bin/python benchmarks/small_requests.py --sizes 7 --repeats 16
    .venv/bin/python benchmarks/small_requests.py --sizes 7 --repeats 16 --set "spark.extra={
        spark.python.daemon.module: pyspark.daemon,
        spark.python.sql.dataFrameDebugging.enabled: 'true'}"

One process, one local session built as the service builds it (env ``local``, the
service's SQL settings, one shuffle partition), then ``SparkEngine.match`` (what
``POST /invocations`` runs after parsing) on the service's example file (7 rows) and on
generated files of the other ``--sizes``, ``--repeats`` times each; the first request is
cold. Per request: seconds, CPU seconds (this process, its JVM and Python workers: less
moved by other load on the box than the wall time), Spark jobs and stages. Before them,
``--udf-queries`` runs of a one-row Python UDF query (the fixed cost of a Python UDF
stage).

The model is ``--model`` or, by default, the test suite's small model (3,000 generated
rows, 60 trees) fitted and registered in a temporary MLflow store. ``--set`` takes any
configuration override, e.g. ``spark.extra`` to compare Spark settings (the second line
above: Spark's own worker daemon and PySpark's call-site capture, as before 7a9dbdf and
8486a30). ``--gap`` waits before each request: Spark stops Python workers idle for a
minute, so with ``--gap 70`` every request starts its Python workers afresh, as a service
called now and then does. ``--against LOOKUP`` matches each upload against a nightly
run's lookup table as well (``?against=pois``), held on the driver first as the service
holds it, unless ``--set service.hold_lookup_max_rows=0`` (then each request reads its
files). ``--profile N`` prints the driver's cProfile of the last N requests of each size
(and saves it beside the work files). ``--plans`` prints the operators of each query
the requests prepared (:mod:`poimatch.stages.prepared`), by kind: the sort-merge joins,
sorts, windows and aggregates a warm request re-runs. ``--hash-joins`` (an experiment,
not the library's plan) asks for a shuffled hash join at every join the queries are built
with (Spark's ``shuffle_hash`` hint on the right side, where no hint is already there), to
compare with the sort-merge joins Spark chooses. Each size's last answer is printed as a
fingerprint (``answer=``: SHA-256 of its rows in id order, each list of ids after a row's
own as a set), to compare runs with and without an option.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import hashlib
import os
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from service_start import _jobs as print_jobs

from poimatch import schema as S
from poimatch.apps.service import (
    EXAMPLE_CSV,
    SERVICE_SQL_CONF,
    ModelStore,
    SparkEngine,
    parse_upload,
)
from poimatch.config import load_settings
from poimatch.io.lookup import pin_lookup
from poimatch.lifecycle.tracking import assign_alias, configure_tracking, log_matcher
from poimatch.matcher import Matcher
from poimatch.runs.batch import load_pois
from poimatch.runs.workflows import fit_matcher, training_set
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session
from poimatch.stages.plan import small_plan_conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="7,1000", help="rows per upload (7 = the example)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--udf-queries", type=int, default=6)
    parser.add_argument("--model", default=None, help="model URI (default: fit a small one)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds idle before each request (over 60 s, Spark has stopped its idle workers)",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="LOOKUP",
        help="match against this lookup table as well (a nightly run's storage.lookup_table)",
    )
    parser.add_argument(
        "--jobs",
        action="store_true",
        help="print the Spark jobs of the last request of each size (gaps, times, stages)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="print the driver's cProfile (cumulative) of the last N requests of each size",
    )
    parser.add_argument(
        "--plans",
        action="store_true",
        help="print the operators of the queries the requests prepared, by kind",
    )
    parser.add_argument(
        "--hash-joins",
        action="store_true",
        help="experiment: a shuffle_hash hint on every join's right side",
    )
    args = parser.parse_args()
    if args.hash_joins:
        _hint_hash_joins()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(tempfile.mkdtemp(prefix="pm-small-requests-"))
    settings = load_settings(
        "local",
        [
            f"storage.root={work / 'lake'}",
            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"tracking.artifact_root={work / 'artifacts'}",
            "model.name=small-requests",
            *args.overrides,
        ],
    )
    spark = build_session(settings.spark)
    conf = spark.sparkContext.getConf()
    print(
        f"python.daemon.module={conf.get('spark.python.daemon.module', 'pyspark.daemon')} "
        f"dataFrameDebugging={conf.get('spark.python.sql.dataFrameDebugging.enabled', 'true')} "
        f"reuse_plan={settings.service.reuse_plan}"
    )
    for key, value in SERVICE_SQL_CONF.items():
        spark.conf.set(key, value)
    spark.conf.set("spark.sql.shuffle.partitions", str(settings.service.shuffle_partitions))

    @F.udf(T.LongType())
    def length(value: str) -> int:
        return len(value)

    one = spark.createDataFrame([("abc",)], "v string").coalesce(1)
    udf_times = []
    for _ in range(args.udf_queries):
        started = time.perf_counter()
        one.select(length("v")).collect()
        udf_times.append(time.perf_counter() - started)
    if udf_times:
        shown = " / ".join(f"{t:.3f}" for t in udf_times)
        warm_udf = f"{statistics.median(udf_times[1:]):.3f}" if len(udf_times) > 1 else "-"
        print(f"udf_query seconds={shown} warm_median={warm_udf}")

    configure_tracking(settings.tracking)
    uri = args.model or _small_model(spark, work)
    store = ModelStore(uri)
    store.refresh()
    engine = SparkEngine(
        Matcher(settings, spark),
        store,
        reuse_plan=settings.service.reuse_plan,
        hold_lookup_max_rows=settings.service.hold_lookup_max_rows,
        compiled_pairs=settings.service.compiled_pairs,
    )
    loaded = engine.model()
    assert loaded is not None
    known = pin_lookup(spark, args.against) if args.against else None
    if args.against:
        assert known is not None, f"no lookup table at {args.against}"
        started = time.perf_counter()
        held = engine.hold(known)  # as the service does in the background once pinned
        print(
            f"against={known.label()} held={held is not None} "
            f"hold_seconds={time.perf_counter() - started:.1f}"
        )
    tracker = spark.sparkContext.statusTracker()
    for size in [int(s) for s in args.sizes.split(",")]:
        table = _upload(size, work)
        times, cpus = [], []
        profiles: list[cProfile.Profile] = []
        for i in range(args.repeats):
            tag = f"bench-{size}-{i}"
            if args.gap:
                time.sleep(args.gap)
            profiler = cProfile.Profile() if i >= args.repeats - args.profile else None
            last_started = time.time()
            started, cpu = time.perf_counter(), _tree_cpu_seconds(os.getpid())
            if profiler is not None:
                profiler.enable()
            out = engine.match(table, loaded, tag, known=known)
            if profiler is not None:
                profiler.disable()
                profiles.append(profiler)
            times.append(time.perf_counter() - started)
            cpus.append(_tree_cpu_seconds(os.getpid()) - cpu)
            jobs = tracker.getJobIdsForGroup(tag)
            stages = sum(len(info.stageIds) for j in jobs if (info := tracker.getJobInfo(j)))
            assert len(out) == len(table)
            print(
                f"rows={size} run={i} seconds={times[-1]:.2f} cpu_seconds={cpus[-1]:.2f} "
                f"jobs={len(jobs)} stages={stages}"
            )
        if args.jobs:
            print_jobs(spark, tag, last_started)
        warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
        warm_cpu = statistics.median(cpus[1:]) if len(cpus) > 1 else cpus[0]
        print(
            f"rows={size} warm_median={warm:.2f} warm_cpu_median={warm_cpu:.2f} "
            f"answer={_fingerprint(out)}",
            flush=True,
        )
        if profiles:
            stats = pstats.Stats(profiles[0])
            for extra in profiles[1:]:
                stats.add(extra)
            dump = work / f"profile-{size}.pstats"
            stats.dump_stats(dump)
            print(f"rows={size} profile={dump}")
            stats.sort_stats("cumulative").print_stats(60)
    if args.plans:
        _print_prepared_plans()
    spark.stop()


#: join types whose right side a shuffled hash join can build
_RIGHT_BUILT = {"inner", "left", "leftouter", "left_outer", "semi", "leftsemi", "left_semi"}
_RIGHT_BUILT |= {"anti", "leftanti", "left_anti", "full", "outer", "fullouter", "full_outer"}


def _hint_hash_joins() -> None:
    """Every ``DataFrame.join`` of this process asks for a shuffled hash join: the
    ``shuffle_hash`` hint on its right side, unless that side is a hint already (the
    pipeline's ``F.broadcast`` of a lookup table stays a broadcast)."""
    from pyspark.sql.classic.dataframe import DataFrame

    join = DataFrame.join

    def hinted(self: DataFrame, other: DataFrame, on: Any = None, how: str | None = None) -> Any:
        bare = other._jdf.logicalPlan().nodeName() not in ("UnresolvedHint", "ResolvedHint")
        if (how or "inner").lower() in _RIGHT_BUILT and bare:
            other = other.hint("shuffle_hash")  # type: ignore[assignment]
        return join(self, other, on, how)

    DataFrame.join = hinted  # type: ignore[method-assign,assignment]


def _print_prepared_plans() -> None:
    """Each prepared query of this process: its key and its operators by kind."""
    from poimatch.stages import candidates

    for queries in candidates._prepared.values():
        for key, query in queries.items():
            tree = query.nodes[-1].node.treeString()
            kinds = collections.Counter(
                re.findall(r"^[\s:+-]*\*?(?:\(\d+\) )?([A-Z][A-Za-z]+)", tree, re.MULTILINE)
            )
            shown = " ".join(f"{k}={n}" for k, n in kinds.most_common())
            nodes = len(query.nodes)
            print(f"prepared {key[0]} one_partition={query.one_partition} operators={nodes}")
            print(f"  {shown}")


def _fingerprint(answer: pd.DataFrame) -> str:
    """SHA-256 (16 hex digits) of ``answer``'s rows in id order, each space-separated list
    as a set (``matches`` as its first id, the row's own, and the set of the rest)."""

    def cell(column: str, value: object) -> str:
        if not isinstance(value, str) or " " not in value:
            return str(value)
        ids = value.split(" ")
        kept = ids[:1] if column == S.MATCHES else []
        return " ".join([*kept, *sorted(ids[len(kept) :])])

    columns = list(answer.columns)
    rows = sorted(
        "\t".join(cell(c, v) for c, v in zip(columns, row, strict=True))
        for row in answer.itertuples(index=False)
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, with reaped children's) of ``root`` and every process
    beneath it: this interpreter, Spark's JVM and its Python workers (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(v) for v in fields[11:15]) / tick
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in tree)


def _upload(size: int, work: Path) -> pd.DataFrame:
    if size == 7:
        body = EXAMPLE_CSV.encode()
    else:
        path = work / f"upload-{size}.csv"
        pois = generate_pois(size, seed=5).drop(columns=["point_of_interest"])
        write_pois_csv(pois, path)
        body = path.read_bytes()
    table, _ = parse_upload(body, max_rows=max(size, 100))
    return table


def _small_model(spark: SparkSession, work: Path) -> str:
    fit_settings = load_settings("ci", ["model.n_estimators=60"])
    csv = work / "train.csv"
    write_pois_csv(generate_pois(3000, seed=61), csv)
    pois = load_pois(spark, str(csv), quarantine_path=str(work / "q"), require_labels=True).pois
    with small_plan_conf(pois.sparkSession):
        fit = fit_matcher(training_set(pois, settings=fit_settings), settings=fit_settings)
    example = pd.DataFrame({f: [0.0] for f in fit.spec.features})
    with mlflow.start_run():
        uri, version = log_matcher(
            fit.model, registered_name="small-requests", spec=fit.spec, input_example=example
        )
    assign_alias("small-requests", version)
    return uri


if __name__ == "__main__":
    main()
