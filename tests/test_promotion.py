"""Promotion gate, rollback and research isolation, on a real registry and Delta tables.

One small model is trained into a throw-away MLflow store; further versions are the
same fitted pipeline logged with a different matching spec (a threshold of 0.999
matches almost nothing), so "better" and "worse" models cost no extra training.
The research test runs last: it arms the process-wide guard for this module's
production root and model.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import TEST_JVM_OPTIONS, register_matcher
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from poimatch.config import Settings, load_settings
from poimatch.io.ingest import ingest_file
from poimatch.io.tables import delta_version, write_delta
from poimatch.isolation import IsolationError, enforce, protected_roots
from poimatch.lifecycle.tracking import CHALLENGER, CHAMPION, assign_alias, configure_tracking
from poimatch.runs.batch import load_pois, run_match
from poimatch.runs.promotion import PREVIOUS, ModelScore, decide, rollback, run_gate
from poimatch.runs.workflows import FitOutcome, train_model
from poimatch.sample.generator import generate_pois, write_pois_csv

REPO = Path(__file__).resolve().parents[1]
MODEL = "poimatch-gate-test"


def _score(version: str, iou: float, precision: float = 0.95, ceiling: float = 0.99) -> ModelScore:
    return ModelScore(version, iou, precision, 0.9, ceiling, 8.0)


# ----------------------------------------------------------------- the rule, by hand


def test_decide_needs_the_margin() -> None:
    champion = _score("1", 0.900)
    ok, reasons = decide(champion, _score("2", 0.9015), margin=0.002, tolerance=0.002)
    assert not ok
    assert "gain +0.0015 < margin 0.0020" in reasons[0]
    ok, reasons = decide(champion, _score("2", 0.9025), margin=0.002, tolerance=0.002)
    assert ok
    assert "gain +0.0025 >= margin" in reasons[0]


@pytest.mark.parametrize(
    ("guard", "challenger"),
    [
        ("pair_precision", _score("2", 0.95, precision=0.940)),
        ("iou_ceiling", _score("2", 0.95, ceiling=0.980)),
    ],
)
def test_decide_refuses_a_guard_regression(guard: str, challenger: ModelScore) -> None:
    ok, reasons = decide(_score("1", 0.90), challenger, margin=0.002, tolerance=0.005)
    assert not ok
    assert any(r.startswith(f"guard {guard} regressed") for r in reasons)


def test_decide_allows_a_guard_drop_within_tolerance() -> None:
    ok, _ = decide(
        _score("1", 0.90), _score("2", 0.95, precision=0.946), margin=0.002, tolerance=0.005
    )
    assert ok


def test_decide_without_champion_promotes() -> None:
    ok, reasons = decide(None, _score("1", 0.5), margin=0.002, tolerance=0.002)
    assert ok
    assert "no champion" in reasons[0]


def test_research_settings_cannot_name_production() -> None:
    from poimatch.config import ConfigError

    with pytest.raises(ConfigError, match="overlaps the production root"):
        load_settings("research", ["storage.root=data/lake/sub"])
    with pytest.raises(ConfigError, match=r"model\.name is the production model"):
        load_settings("research", ["model.name=poimatch-xgb"])
    with pytest.raises(ConfigError, match=r"tracking\.experiment is the production experiment"):
        load_settings("research", ["tracking.experiment=poimatch"])
    research = load_settings("research")
    assert research.storage.root.endswith("data/research/lake")
    assert research.lifecycle.role == "research"


# -------------------------------------------------------------- the gate, for real


@pytest.fixture(scope="module")
def registry(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gate")
    overrides = [
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
        f"model.name={MODEL}",
        "model.n_estimators=60",
        "lifecycle.promotion_margin=0.002",
    ]
    settings: Settings = load_settings("ci", overrides)
    storage = settings.storage
    train_csv, eval_csv = root / "train.csv", root / "eval.csv"
    write_pois_csv(generate_pois(1000, seed=60), train_csv)
    write_pois_csv(generate_pois(1500, seed=62), eval_csv)
    quarantine = storage.table_path(storage.quarantine_table)
    eval_path = storage.table_path(settings.lifecycle.eval_table)
    ingest_file(spark, str(eval_csv), pois_path=eval_path, quarantine_path=quarantine)
    pois_path = storage.table_path(storage.pois_table)
    ingest_file(spark, str(train_csv), pois_path=pois_path, quarantine_path=quarantine)
    _, good, alias = register_matcher(small_matcher, settings)
    assert alias == CHAMPION
    # v2: the same model with a threshold that matches almost nothing -> a worse challenger
    strict = replace(small_matcher.spec, threshold=0.999, calibration=None)
    _, worse, alias = register_matcher(small_matcher, settings, spec=strict)
    assert alias == CHALLENGER
    return {
        "settings": settings,
        "overrides": overrides,
        "good": good,
        "worse": worse,
        "eval_path": eval_path,
        "eval_csv": eval_csv,
        "root": root,
    }


def _aliases() -> dict[str, str]:
    return {k: str(v) for k, v in MlflowClient().get_registered_model(MODEL).aliases.items()}


@pytest.mark.slow
def test_gate_keeps_the_champion_against_a_worse_challenger(
    spark: SparkSession, registry: dict[str, Any]
) -> None:
    settings = registry["settings"]
    version = delta_version(spark, registry["eval_path"])
    decision = run_gate(spark, settings)
    assert decision.promote is False
    assert decision.champion is not None
    assert decision.champion.version == registry["good"]
    assert decision.challenger.version == registry["worse"]
    assert decision.champion.iou - decision.challenger.iou > 0.05
    assert decision.champion.iou > 0.85
    assert "< margin" in decision.reasons[0]
    assert decision.eval_version == version
    assert _aliases() == {CHAMPION: registry["good"], CHALLENGER: registry["worse"]}
    run = mlflow.get_run(decision.run_id)
    assert run.data.tags["poimatch.decision"] == "keep"
    assert run.data.params["eval_version"] == str(version)
    # 1,500 evaluation rows: the small plan, as a match run of that size
    assert run.data.params["plan"] == "small"
    assert run.data.params["challenger_version"] == registry["worse"]
    assert run.data.metrics["champion_iou"] == pytest.approx(decision.champion.iou)
    assert run.data.metrics["challenger_iou"] == pytest.approx(decision.challenger.iou)
    assert run.data.metrics["promoted"] == 0.0
    registry["good_score"] = decision.champion
    registry["pinned"] = version


@pytest.mark.slow
def test_dry_run_measures_on_the_pinned_version_and_moves_nothing(
    spark: SparkSession, registry: dict[str, Any]
) -> None:
    settings = registry["settings"]
    client = MlflowClient()
    # a bad champion and a good challenger (as after an unlucky earlier promotion)
    client.set_registered_model_alias(MODEL, CHAMPION, registry["worse"])
    client.set_registered_model_alias(MODEL, CHALLENGER, registry["good"])
    # the evaluation table moves on; the gate still reads the pinned version
    extra = registry["root"] / "more.csv"
    write_pois_csv(generate_pois(300, seed=63), extra)
    storage = settings.storage
    ingest_file(
        spark,
        str(extra),
        pois_path=registry["eval_path"],
        quarantine_path=storage.table_path(storage.quarantine_table),
    )
    assert delta_version(spark, registry["eval_path"]) > registry["pinned"]
    decision = run_gate(spark, settings, eval_version=registry["pinned"], dry_run=True)
    assert decision.promote is True
    assert decision.eval_version == registry["pinned"]
    assert decision.challenger.iou == pytest.approx(registry["good_score"].iou, abs=1e-12)
    assert _aliases() == {CHAMPION: registry["worse"], CHALLENGER: registry["good"]}
    run = mlflow.get_run(decision.run_id)
    assert run.data.tags["poimatch.dry_run"] == "true"
    assert run.data.metrics["promoted"] == 0.0


@pytest.mark.slow
def test_gate_promotes_a_better_challenger_and_rollback_restores(
    spark: SparkSession, registry: dict[str, Any]
) -> None:
    settings = registry["settings"]
    decision = run_gate(spark, settings, eval_version=registry["pinned"])
    assert decision.promote is True
    assert _aliases() == {CHAMPION: registry["good"], PREVIOUS: registry["worse"]}
    tags = MlflowClient().get_model_version(MODEL, registry["good"]).tags
    assert tags["poimatch.promotion_run"] == decision.run_id
    # the documented one-command rollback, as a job
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [
            str(REPO / "spark-submit.sh"),
            *("--driver-java-options", TEST_JVM_OPTIONS),
            "jobs/promote.py",
            "--env",
            "ci",
            "--rollback",
            *[a for o in registry["overrides"] for a in ("--set", o)],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = f"rollback: champion v{registry['good']} -> v{registry['worse']}"
    assert expected in proc.stdout
    # registry calls only: the job started no Spark session (the gate runs above do)
    assert "SparkContext: Running Spark version" not in proc.stderr, proc.stderr[-3000:]
    assert _aliases() == {CHAMPION: registry["worse"], PREVIOUS: registry["good"]}
    demoted, restored = rollback(settings)  # and back again
    assert (demoted, restored) == (registry["worse"], registry["good"])
    assert _aliases()[CHAMPION] == registry["good"]


@pytest.mark.slow
def test_research_run_leaves_production_untouched(
    spark: SparkSession, registry: dict[str, Any]
) -> None:
    prod: Settings = registry["settings"]
    storage = prod.storage
    prod_tables = {
        name: delta_version(spark, storage.table_path(name))
        for name in (storage.pois_table, prod.lifecycle.eval_table, storage.quarantine_table)
    }
    prod_aliases = _aliases()
    root = registry["root"]
    research = load_settings(
        "research",
        [
            f"storage.root={root / 'research'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'research-artifacts'}",
            f"lifecycle.production_storage_root={storage.root}",
            f"lifecycle.production_model_name={MODEL}",
            "model.n_estimators=40",
            # what conf/ci.yaml trains with: two folds, one thinned copy (this test is
            # about isolation, not the research configuration's training)
            "model.folds=2",
            "model.sample_rates=[1.0, 0.3]",
        ],
    )
    enforce(research)
    assert storage.root in protected_roots()
    train_csv = root / "research.csv"
    write_pois_csv(generate_pois(1200, seed=64), train_csv)
    pois = load_pois(
        spark,
        str(train_csv),
        quarantine_path=research.storage.table_path("q"),
        require_labels=True,
    ).pois
    trained = train_model(pois, settings=research, data_versions={"pois": "research"})
    assert trained.alias == CHALLENGER  # a research model is never a champion
    assert trained.model_uri.startswith("models:/poimatch-xgb-research/")
    lines = run_match(
        spark,
        research,
        input_path=str(registry["eval_csv"]),
        output_csv=None,
        model_uri=trained.model_uri,
        table=research.storage.table_path(research.storage.matches_table),
    )
    assert lines.written["matches_table"].startswith(str(root / "research"))
    # every door into production is shut
    frame = spark.createDataFrame([("a",)], "id string")
    with pytest.raises(IsolationError, match="may not write production table"):
        write_delta(frame, storage.table_path(storage.matches_table))
    with pytest.raises(IsolationError, match="may not write production table"):
        ingest_file(
            spark,
            str(train_csv),
            pois_path=storage.table_path(storage.pois_table),
            quarantine_path=research.storage.table_path("q"),
        )
    with pytest.raises(IsolationError, match="may not set alias"):
        assign_alias(MODEL, "1")
    with pytest.raises(IsolationError, match="production environment only"):
        run_gate(spark, research)
    with pytest.raises(IsolationError):
        run_gate(spark, prod)  # even with production settings, from this process
    # and production is exactly as it was
    assert _aliases() == prod_aliases
    for name, version in prod_tables.items():
        assert delta_version(spark, storage.table_path(name)) == version
    assert not Path(storage.table_path(storage.matches_table)).exists()
    research_runs = mlflow.search_runs(experiment_names=["poimatch-research"])
    assert len(research_runs) == 1


def test_each_configuration_gets_its_own_store(tmp_path: Path) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second configuration in the
    # same process (and its subprocesses) must still get the store it names
    first = load_settings("ci", [f"tracking.tracking_uri=sqlite:///{tmp_path / 'a.db'}"])
    second = load_settings("ci", [f"tracking.tracking_uri=sqlite:///{tmp_path / 'b.db'}"])
    configure_tracking(first.tracking)
    configure_tracking(second.tracking)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b.db'}"
