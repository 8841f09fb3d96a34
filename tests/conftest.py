"""One Spark session for the whole test run, tuned for tiny data."""

from __future__ import annotations

import fcntl
import os
import pickle  # nosec B403: a fitted test model shared between this run's workers
import subprocess  # nosec B404: the suite runs this interpreter on fixed probe scripts
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from poimatch.config import Settings, load_settings
from poimatch.lifecycle.tracking import assign_alias, configure_tracking, log_matcher
from poimatch.runs.batch import load_pois
from poimatch.runs.workflows import FitOutcome, fit_matcher, training_set
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.session import build_session
from poimatch.stages.plan import session_conf, small_plan_conf
from poimatch.stages.spec import MatchingSpec


def run_probe(script: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``script`` run by a fresh interpreter on this checkout's ``lib`` (what a command
    imports, as the suite's own interpreter has imported everything long since); the
    exit status is checked (stderr's tail on failure)."""
    done = subprocess.run(  # nosec B603: this interpreter, a fixed script
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


REPO = Path(__file__).resolve().parents[1]
# a short-lived JVM on small data (a spark-submit job, a notebook, the service under
# test): C1-only JIT and the serial GC cost far less CPU
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# the suite's own session lives as long as its pytest worker (minutes, thousands of
# queries): the full JIT pays there. tests/test_blocking.py and
# tests/test_incremental_blocking.py alone: 274 -> 219 CPU-seconds, 258 -> 150 s
SESSION_JVM_OPTIONS = "-XX:+UseSerialGC"
SHARED_DATA = REPO.parent / "shared" / "data" / "geoer_osm_fsq" / "geoer_osm_fsq.csv"


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """local[1], one shuffle partition, UI off: fast for hand-made frames.

    Interpreted rather than compiled expressions: on frames of a few thousand rows
    compiling costs more CPU than it saves. The JVM keeps its full JIT (C1 then C2; see
    ``SESSION_JVM_OPTIONS``) and the serial GC. The results are the same; the plans' own
    SQL settings are tested by tests/test_plans.py and tests/test_match_integrity.py.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    settings = load_settings(
        "ci",
        [
            "spark.master=local[1]",
            "spark.shuffle_partitions=1",
            "spark.driver_memory=4g",
            "spark.extra={spark.default.parallelism: '1', spark.sql.adaptive.enabled: 'false', "
            "spark.sql.codegen.wholeStage: 'false', spark.sql.codegen.factoryMode: NO_CODEGEN, "
            f"spark.driver.extraJavaOptions: '{SESSION_JVM_OPTIONS}'}}",
        ],
    )
    session = build_session(settings.spark)
    yield session
    session.stop()


#: compiled expressions (Spark's defaults), for the modules whose tables are large enough
#: for compiling to pay: the session interprets them (see :func:`spark`)
COMPILED = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


@pytest.fixture(scope="module")
def compiled(spark: SparkSession) -> Iterator[None]:
    """Spark's compiled expressions for one module, the session's settings back after.
    With the session's interpreted ones the incremental module's setup took 350 s
    instead of 186 s and the real-data candidate test 148 s instead of 78 s."""
    with session_conf(spark, COMPILED):
        yield


@pytest.fixture(scope="session")
def shared_geoer() -> Path:
    """The real labelled OSM–Foursquare data set, when the shared folder is present."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (a file) across processes."""
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fit_small_matcher(spark: SparkSession, root: Path) -> FitOutcome:
    settings = load_settings("ci", ["model.n_estimators=60"])
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "train.csv"
    write_pois_csv(generate_pois(3000, seed=61), csv)
    pois = load_pois(spark, str(csv), quarantine_path=str(root / "q"), require_labels=True).pois
    with small_plan_conf(spark):  # as train_model runs a training set this small
        return fit_matcher(training_set(pois, settings=settings), settings=settings)


@pytest.fixture(scope="session")
def small_matcher(
    spark: SparkSession,
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
    testrun_uid: str,
) -> FitOutcome:
    """One small fitted matcher (3,000 generated rows, 60 trees) shared by the modules
    that need a model but do not test training itself; register it with
    :func:`register_matcher` in each module's own MLflow store.

    Under pytest-xdist the first worker that needs it fits it and saves it (the Spark
    model through its own writer, the rest pickled) in a folder of this run that every
    worker sees; the others wait on a file lock and load it: one fit per run, not one
    per worker.
    """
    if worker_id == "master":  # not distributed
        return _fit_small_matcher(spark, tmp_path_factory.mktemp("small_matcher"))
    shared = tmp_path_factory.getbasetemp().parent / f"small-matcher-{testrun_uid}"
    shared.mkdir(exist_ok=True)
    with _exclusive(shared / "lock"):
        done = shared / "outcome.pkl"
        if done.exists():
            with done.open("rb") as handle:
                rest = pickle.load(handle)  # nosec B301: written by this test run above
            return FitOutcome(model=PipelineModel.load(str(shared / "model")), **rest)
        fit = _fit_small_matcher(spark, shared / "fit")
        fit.model.write().overwrite().save(str(shared / "model"))
        rest = {k: getattr(fit, k) for k in ("spec", "metrics", "valid_pairs", "curve")}
        with (shared / "outcome.tmp").open("wb") as handle:
            pickle.dump(rest, handle)
        (shared / "outcome.tmp").rename(done)
        return fit


def register_matcher(
    fit: FitOutcome, settings: Settings, *, spec: MatchingSpec | None = None
) -> tuple[str, str, str]:
    """Log and register ``fit`` as ``settings.model.name``: (model_uri, version, alias)."""
    experiment_id = configure_tracking(settings.tracking)
    used = spec or fit.spec
    example = pd.DataFrame({f: [0.0] for f in used.features})
    with mlflow.start_run(experiment_id=experiment_id):
        uri, version = log_matcher(
            fit.model, registered_name=settings.model.name, spec=used, input_example=example
        )
    alias = assign_alias(settings.model.name, version)
    return uri, version, alias


# Longest first, so two pytest-xdist workers (`make test`) finish together: `make test`
# passes --no-loadscope-reorder, so xdist hands out modules in this order (by default it
# hands out the modules with the most tests first, and the long end-to-end modules,
# which have few tests, ran last, one worker idle). The shared small model is fitted by
# the first module asking for it (test_awkward_uploads.py) while the other worker runs
# the notebooks, which need none. Modules not listed run after, in file order.
_MODULE_ORDER = (
    "test_notebooks.py",
    "test_awkward_uploads.py",  # the first to need small_matcher: it is fitted here
    "test_promotion.py",
    "test_safe_reruns.py",
    "test_service_e2e.py",
    "test_incremental.py",
    "test_chain.py",
    "test_cluster.py",
    "test_blocking.py",
    "test_match_integrity.py",
    "test_quality.py",
    "test_grouping.py",
    "test_jobs.py",
    "test_comparisons.py",
    "test_blocking_report.py",
    "test_realdata.py",
    "test_against.py",
    "test_scoring.py",
    "test_plans.py",
    "test_prepared.py",
    "test_normalize.py",
    "test_ingest.py",
    "test_explain.py",
    "test_namestats.py",
    "test_training.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_MODULE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
