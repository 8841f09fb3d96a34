"""End to end on generated data: ingest → train (MLflow registry) → match → evaluate.

The IoU floor is far above what predicting each row alone scores (about 0.75 on
generated data), so a broken model, threshold or grouping cannot pass.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import Settings, load_settings
from poimatch.io.contracts import data_docs_index
from poimatch.io.ingest import ingest_file
from poimatch.io.tables import input_fingerprint, read_matches
from poimatch.lifecycle.evaluation import iou
from poimatch.lifecycle.tracking import CHALLENGER, CHAMPION, load_matcher
from poimatch.runs.batch import load_pois, run_evaluate, run_match
from poimatch.runs.workflows import train_model
from poimatch.sample.generator import generate_pois, write_pois_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("chain")
    settings: Settings = load_settings(
        "ci",
        [
            f"storage.root={root / 'lake'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'artifacts'}",
            "model.name=poimatch-test",
            "model.n_estimators=120",
            "model.num_workers=1",
        ],
    )
    train_csv, test_csv = root / "train.csv", root / "test.csv"
    write_pois_csv(generate_pois(4000, seed=11), train_csv)
    write_pois_csv(generate_pois(2500, seed=12), test_csv)
    storage = settings.storage
    pois_table = storage.table_path(storage.pois_table)
    quarantine = storage.table_path(storage.quarantine_table)
    ingest_file(
        spark,
        str(train_csv),
        pois_path=pois_table,
        quarantine_path=quarantine,
        validations=storage.validations_path(),
    )
    pois = load_pois(spark, pois_table, quarantine_path=quarantine, require_labels=True).pois
    fingerprint = input_fingerprint(spark, pois_table)  # delta:<path>@v<N>
    first = train_model(pois, settings=settings, data_versions={"pois": fingerprint})
    out_csv = root / "out.csv"
    lines = run_match(
        spark, settings, input_path=str(test_csv), output_csv=str(out_csv), model_uri=None
    )
    return {
        "settings": settings,
        "first": first,
        "pois_table": pois_table,
        "fingerprint": fingerprint,
        "test_csv": test_csv,
        "out_csv": out_csv,
        "match_lines": lines,
        "pois": pois,
    }


def test_trained_model_beats_identity_by_far(chain: dict[str, object], spark: SparkSession) -> None:
    test_csv, out_csv = chain["test_csv"], chain["out_csv"]
    truth = spark.read.option("header", "true").csv(str(test_csv))
    submission = read_matches(spark, str(out_csv))
    score = iou(submission, truth).iou
    identity = iou(truth.select(S.ID, F.col(S.ID).alias(S.MATCHES)), truth).iou
    assert identity < 0.85
    assert score >= 0.90
    assert score - identity >= 0.1
    evaluation = run_evaluate(spark, str(out_csv), str(test_csv))
    assert evaluation.iou.iou == pytest.approx(score)
    assert evaluation.lines()[-1] == f"iou={score:.4f}"


def test_output_has_every_id_once_with_itself_first(
    chain: dict[str, object], spark: SparkSession
) -> None:
    ids = {
        r[S.ID] for r in spark.read.option("header", "true").csv(str(chain["test_csv"])).collect()
    }
    rows = read_matches(spark, str(chain["out_csv"])).collect()
    assert len(rows) == len(ids)
    assert {r[S.ID] for r in rows} == ids
    assert all(r[S.MATCHES].split(" ")[0] == r[S.ID] for r in rows)


def test_run_is_tracked_and_registered(chain: dict[str, object]) -> None:
    first = chain["first"]
    settings = chain["settings"]
    assert isinstance(settings, Settings)
    client = MlflowClient()
    run = client.get_run(first.run_id)  # type: ignore[attr-defined]
    assert run.data.params["blocking.k_nearest"] == str(settings.blocking.k_nearest)
    assert run.data.params["data.pois"] == chain["fingerprint"]
    # 4,000 labelled rows: the small plan's blocking and SQL settings (and the session's
    # own settings given back afterwards)
    assert run.data.params["training.plan"] == "small"
    # the training table is the run's input: a Delta dataset at the version trained on
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "pois"
    assert given.dataset.source_type == "delta_table"
    source = json.loads(given.dataset.source)
    assert source["path"] == chain["pois_table"]
    assert chain["fingerprint"] == f"delta:{chain['pois_table']}@v{source['delta_table_version']}"
    assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "training"
    schema = json.loads(given.dataset.schema)
    assert S.POI in {c["name"] for c in schema["mlflow_colspec"]}
    for metric in (
        "candidate_pair_recall",
        "iou_ceiling",
        "pair_precision",
        "pair_recall",
        "pair_f1",
        "auc",
        "iou",
        "threshold",
    ):
        assert metric in run.data.metrics
    assert 0.0 < run.data.metrics["threshold"] < 1.0
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}  # type: ignore[attr-defined]
    assert {
        "evaluation/feature_importance.png",
        "evaluation/precision_recall.png",
        "evaluation/iou_vs_threshold.png",
    } <= artifacts
    # the ingest's great_expectations Data Docs are linked from the run and kept with it
    docs = run.data.tags["poimatch.data_docs"]
    project = settings.storage.validations_path()
    assert project is not None
    assert docs == data_docs_index(project).resolve().as_uri()
    kept = {a.path for a in client.list_artifacts(first.run_id, "data_docs")}  # type: ignore[attr-defined]
    assert "data_docs/index.html" in kept
    assert "data_docs/validations" in kept
    assert first.alias == CHAMPION  # type: ignore[attr-defined]
    version = client.get_model_version_by_alias(settings.model.name, CHAMPION)
    assert version.run_id == first.run_id  # type: ignore[attr-defined]
    _, spec, _ = load_matcher(f"models:/{settings.model.name}@{CHAMPION}")
    assert spec == first.spec  # type: ignore[attr-defined]


def test_second_version_becomes_challenger(chain: dict[str, object]) -> None:
    settings = chain["settings"]
    assert isinstance(settings, Settings)
    small = settings.model_copy(
        update={"model": settings.model.model_copy(update={"n_estimators": 20})}
    )
    # what is checked is where the second version lands, not how well it matches: a
    # quarter of the places (every row of each, so the labels stay whole) is enough
    pois = chain["pois"]
    assert isinstance(pois, DataFrame)
    quarter = pois.where(F.abs(F.hash(S.POI)) % 4 == 0)
    second = train_model(quarter, settings=small, data_versions={"pois": "delta:v0"})
    assert second.alias == CHALLENGER
    client = MlflowClient()
    champion = client.get_model_version_by_alias(settings.model.name, CHAMPION)
    assert champion.run_id == chain["first"].run_id  # type: ignore[attr-defined]
    assert mlflow.get_tracking_uri().startswith("sqlite:///")
