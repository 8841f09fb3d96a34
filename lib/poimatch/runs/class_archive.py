"""The Spark driver's class archive: JVMs that start without parsing Spark's classes again.

A local Spark driver loads about twenty thousand classes from Spark's jars as it starts
and as it first runs SQL, and the JVM parses and verifies every one, every start: CPU
that a two-core machine pays before each job, the service's readiness and each test
module's session. Java's class-data sharing keeps them instead: a JVM started with
``-XX:ArchiveClassesAtExit=FILE`` writes the classes it loaded, parsed and verified to
FILE when it exits; a JVM started with ``-XX:SharedArchiveFile=FILE`` maps them.

``make setup`` builds one (``python -m poimatch.runs.class_archive``): a driver JVM runs
the matching stages over a few hundred made-up rows (the contract rules, normalization,
name statistics, the small plan's blocking and pair features, a Delta write, merge and read,
a Spark ML pipeline saved and loaded), exits, and the archive it wrote is moved into the
jars folder (:data:`poimatch.session.CLASS_ARCHIVE`). :func:`poimatch.session.build_session`
and ``spark-submit.sh`` pass it to local drivers when it exists. It holds this machine's
Java build and the installed pyspark's jars: a JVM whose Java or class path differs
ignores it (``-Xshare:auto``, its warnings silenced), so a stale archive costs speed,
never a result.
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404: this interpreter, this module
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.config import BlockingSettings, SparkSettings
from poimatch.session import CDS_QUIET, CLASS_ARCHIVE, build_session

__all__ = ["build_archive", "main"]

_DUMP = "-XX:ArchiveClassesAtExit={path} " + CDS_QUIET


def _rows(n: int = 120, seed: int = 7) -> pd.DataFrame:
    """``n`` made-up raw input rows around one city, some of them near-copies."""
    rng = np.random.default_rng(seed)
    words = ["cafe", "central", "pizza", "bank", "park", "north", "hotel", "royal", "market"]
    names = [" ".join(rng.choice(words, size=2)) for _ in range(n)]
    lat = 40.70 + rng.normal(0, 0.01, n)
    lon = -74.00 + rng.normal(0, 0.01, n)
    frame = pd.DataFrame(
        {
            S.ID: [f"p{i}" for i in range(n)],
            S.NAME: [f"{m.title()} {i % 7}" if i % 3 else m.upper() for i, m in enumerate(names)],
            S.LATITUDE: [f"{v:.6f}" for v in lat],
            S.LONGITUDE: [f"{v:.6f}" for v in lon],
            S.ADDRESS: [f"{i % 50} Main St" for i in range(n)],
            S.CITY: ["New York"] * n,
            S.STATE: ["NY"] * n,
            S.ZIP: [f"100{i % 10:02d}" for i in range(n)],
            S.COUNTRY: ["US"] * n,
            S.URL: [f"http://www.site{i % 40}.com/" for i in range(n)],
            S.PHONE: [f"+1 212 555 {i % 60:04d}" for i in range(n)],
            S.CATEGORIES: ["Cafes, Bakeries"] * n,
        }
    )
    return frame[list(S.INPUT_COLUMNS)]


def _exercise(spark: SparkSession, workdir: Path) -> None:
    """Run what a match, the service and the nightly job run, on :func:`_rows`."""
    from delta.tables import DeltaTable
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import SQLTransformer

    from poimatch.io.ingest import accepted_rows, check_rows
    from poimatch.io.tables import write_delta
    from poimatch.stages.candidates import cached_candidates, cached_points
    from poimatch.stages.namestats import count_name_stats
    from poimatch.stages.normalize import add_normalized_columns
    from poimatch.stages.plan import SMALL

    schema = T.StructType([T.StructField(c, T.StringType(), True) for c in S.INPUT_COLUMNS])
    raw = spark.createDataFrame(_rows(), schema=schema).withColumn(S.SOURCE_FILE, F.lit("x"))
    pois = accepted_rows(check_rows(raw)).withColumn(S.POI, F.col(S.ID))
    stats = count_name_stats(pois.transform(add_normalized_columns))
    # the small plan only: the batch plan's extra classes (checkpoints) are few, and
    # running it too cost 15 s more here
    points = cached_points(pois, stats=stats, plan=SMALL)
    pairs = cached_candidates(points, settings=BlockingSettings(), plan=SMALL)
    pairs.groupBy(S.PASS).count().toPandas()
    table = str(workdir / "pois")
    write_delta(pois, table)
    changed = pois.limit(20).withColumn(S.NAME, F.upper(F.col(S.NAME)))
    (
        DeltaTable.forPath(spark, table)
        .alias("t")
        .merge(changed.alias("s"), f"t.{S.ID} = s.{S.ID}")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    spark.read.format("delta").option("versionAsOf", 0).load(table).count()
    DeltaTable.forPath(spark, table).history(1).collect()
    model = Pipeline(stages=[SQLTransformer(statement="SELECT id FROM __THIS__")]).fit(pois)
    model.write().overwrite().save(str(workdir / "model"))
    PipelineModel.load(str(workdir / "model")).transform(pois).count()


def _dump(archive: Path, jars_dir: str) -> None:
    """In this process: a driver JVM that writes ``archive`` as it exits."""
    settings = SparkSettings(
        master="local[2]",
        jars_dir=jars_dir,
        extra={"spark.driver.extraJavaOptions": _DUMP.format(path=archive)},
    )
    spark = build_session(settings)
    jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as workdir:
        _exercise(spark, Path(workdir))
    spark.stop()
    jvm.stdin.close()  # the gateway exits when its stdin closes; the archive is written then
    jvm.wait(timeout=300)


def build_archive(jars_dir: str | Path = ".jars", *, timeout: float = 900) -> Path:
    """Build the class archive into ``jars_dir`` (replacing one there) and return its path.

    Raises:
        RuntimeError: the driver JVM failed or wrote no archive (its stderr's tail).
    """
    target = Path(jars_dir) / CLASS_ARCHIVE
    partial = target.with_name(f".{CLASS_ARCHIVE}.{os.getpid()}")
    started = time.monotonic()
    done = subprocess.run(  # nosec B603: this interpreter, this module
        [
            sys.executable,
            "-m",
            "poimatch.runs.class_archive",
            "--dump",
            str(partial.resolve()),
            str(jars_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "GX_ANALYTICS_ENABLED": "false"},
    )
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"no class archive: the driver JVM exited with {done.returncode}; "
            f"its stderr ends:\n{done.stderr[-2000:]}"
        )
    os.replace(partial, target)
    size = target.stat().st_size / 1e6
    print(f"class archive: {target} ({size:.0f} MB, {time.monotonic() - started:.0f} s)")
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m poimatch.runs.class_archive [JARS_DIR]`` (``make setup`` runs it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("jars_dir", nargs="?", default=".jars", help="the jars folder")
    parser.add_argument("--dump", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dump:
        _dump(Path(args.dump), args.jars_dir)
    else:
        build_archive(args.jars_dir)


if __name__ == "__main__":
    main()
