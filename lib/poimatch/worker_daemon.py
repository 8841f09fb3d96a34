"""pyspark's Python worker daemon without the per-task re-read of Spark's bundled zips.

Spark starts its Python workers with ``pyspark.zip`` and ``py4j-*.zip`` (from the
installed pyspark's ``python/lib``) and the ``spark-core`` jar first on ``PYTHONPATH``.
Before every task the worker calls :func:`importlib.invalidate_caches`
(``pyspark.worker_util.setup_spark_files``), and on Python 3.11 a zip importer's
``invalidate_caches`` re-reads the whole zip directory: ``pyspark.zip`` holds 1,328
files, the jar thousands of classes. py-spy on a reused worker running a trivial Python
UDF over 7 rows: 0.45 s of the query's 0.5 s were these re-reads. A small match runs a
dozen Python UDF stages, so they were seconds of every small request.

The same pyspark and py4j are installed as packages (the driver imports them), so this
module takes the bundled zips and jars off ``sys.path`` (and out of the importer cache)
before pyspark is imported, then runs ``pyspark.daemon`` as Spark would. When the
installed packages cannot be found without them, the path is left as it was. Files a
job ships (``--py-files``) are added by the worker per task, after this, as before.

:func:`poimatch.session.build_session` uses it for local masters only
(``spark.python.daemon.module``): there the workers run the driver's interpreter, which
imports poimatch; a cluster's executors may not have poimatch installed before the job's
files arrive, so they keep Spark's own daemon.

Before forking workers, the daemon imports what every worker of a match needs
(:data:`PRELOAD`: pandas, pyarrow and the stage modules whose pandas UDFs the workers
unpickle): a forked worker inherits them instead of importing them again. Spark stops a
worker idle for a minute, so a service called now and then starts new ones; and a
cold start forks one per core at once. ``POIMATCH_WORKER_PRELOAD`` (comma-separated
module names, empty for none) replaces the list. A module that fails to import is named
on stderr and left to the worker (which then fails with the real error, if it needs it).

This module must stay importable without pyspark (it runs before pyspark is imported).
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["PRELOAD", "bundled_zip", "preload", "strip_bundled_zips"]

#: imported by the daemon before it forks workers (not the scoring stage: XGBoost takes
#: seconds to import, and the small plan scores on the driver)
PRELOAD: tuple[str, ...] = (
    "pandas",
    "pyarrow",
    "poimatch.stages.normalize",
    "poimatch.stages.features",
)


def bundled_zip(entry: str) -> bool:
    """Whether a ``sys.path`` entry is one Spark puts first for its workers: its bundled
    ``pyspark.zip``, ``py4j-*.zip`` or a jar (Spark adds the jar holding its Python
    runner, which holds no Python)."""
    name = os.path.basename(entry)
    if name.endswith(".jar"):
        return True
    return name.endswith(".zip") and (name == "pyspark.zip" or name.startswith("py4j-"))


def strip_bundled_zips() -> bool:
    """Take Spark's bundled zips and jars off ``sys.path`` and out of the importer cache, when the
    installed pyspark and py4j are importable without them; whether it did."""
    kept = [entry for entry in sys.path if not bundled_zip(entry)]
    if len(kept) == len(sys.path):
        return False
    saved = sys.path[:]
    sys.path[:] = kept
    if any(importlib.util.find_spec(name) is None for name in ("pyspark", "py4j")):
        sys.path[:] = saved
        return False
    for entry in saved:
        if bundled_zip(entry):
            sys.path_importer_cache.pop(entry, None)
    return True


def preload(modules: tuple[str, ...] | None = None) -> list[str]:
    """Import ``modules`` (default: ``POIMATCH_WORKER_PRELOAD`` or :data:`PRELOAD`); the
    ones that failed, each named on stderr."""
    if modules is None:
        listed = os.environ.get("POIMATCH_WORKER_PRELOAD")
        modules = PRELOAD if listed is None else tuple(m for m in listed.split(",") if m.strip())
    failed = []
    for name in modules:
        try:
            importlib.import_module(name.strip())
        except Exception as exc:  # a worker that needs it fails with the real error
            print(f"poimatch.worker_daemon: not preloaded {name}: {exc!r}", file=sys.stderr)
            failed.append(name)
    return failed


if __name__ == "__main__":  # pragma: no cover - runs as Spark's worker daemon
    strip_bundled_zips()
    preload()
    from pyspark.daemon import manager

    manager()  # type: ignore[no-untyped-call]
