"""Scoring: the direct booster path gives the pipeline model's own probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import Settings, load_settings
from poimatch.runs.batch import load_pois
from poimatch.runs.workflows import FitOutcome, training_set
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages.scoring import BoosterModel, _score_on_driver, booster_score, score_pairs


@pytest.fixture(scope="module")
def featured(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> DataFrame:
    """Featured candidate pairs of another generated sample, with a few nulled features."""
    root: Path = tmp_path_factory.mktemp("scoring")
    csv = root / "pois.csv"
    write_pois_csv(generate_pois(800, seed=83), csv)
    pois = load_pois(spark, str(csv), quarantine_path=str(root / "q"), require_labels=True).pois
    pairs = training_set(pois, settings=load_settings("ci", ["model.sample_rates=[1.0]"])).pairs
    # missing values must reach the booster as missing, exactly as through the assembler
    hole = F.xxhash64(S.ID_L) % 3 == 0
    return pairs.withColumn(
        S.F_NAME_JW, F.when(hole, F.lit(None)).otherwise(F.col(S.F_NAME_JW))
    ).withColumn(S.F_DIST_M, F.when(~hole, F.col(S.F_DIST_M)))


def _store(tmp_path: Path, model_name: str) -> Settings:
    """ci settings with an MLflow store of this test and ``model_name``."""
    return load_settings(
        "ci",
        [
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tracking.artifact_root={tmp_path / 'artifacts'}",
            f"model.name={model_name}",
        ],
    )


def test_direct_scores_equal_the_pipeline_models_probabilities(
    small_matcher: FitOutcome, featured: DataFrame
) -> None:
    model = small_matcher.model
    assert booster_score(model) is not None
    direct = score_pairs(model, featured).select(S.ID_L, S.ID_R, S.SCORE)
    reference = model.transform(featured).select(
        S.ID_L, S.ID_R, vector_to_array(F.col("probability")).getItem(1).alias("ref")
    )
    both = direct.join(reference, on=[S.ID_L, S.ID_R]).toPandas()
    assert len(both) == featured.count() > 500
    assert both[S.SCORE].notna().all()
    np.testing.assert_allclose(both[S.SCORE], both["ref"], rtol=0, atol=1e-6)
    assert (both[S.SCORE] > 0.9).any()
    assert (both[S.SCORE] < 0.1).any()


def test_other_pipelines_fall_back_to_transform(small_matcher: FitOutcome) -> None:
    assembler, classifier = small_matcher.model.stages
    assert isinstance(assembler, VectorAssembler)
    other = PipelineModel(stages=[classifier])
    assert booster_score(other) is None
    skipping = VectorAssembler(
        inputCols=assembler.getInputCols(), outputCol="features", handleInvalid="skip"
    )
    assert booster_score(PipelineModel(stages=[skipping, classifier])) is None


def test_calibration_maps_both_paths_the_same_way(
    small_matcher: FitOutcome, featured: DataFrame
) -> None:
    from pyspark.ml.feature import SQLTransformer

    calibration = small_matcher.spec.calibration
    assert calibration is not None
    model = small_matcher.model
    # a third stage makes the pipeline one that only model.transform can score
    slow_model = PipelineModel(
        stages=[*model.stages, SQLTransformer(statement="SELECT * FROM __THIS__")]
    )
    assert booster_score(slow_model) is None
    raw = score_pairs(model, featured).select(S.ID_L, S.ID_R, F.col(S.SCORE).alias("raw"))
    fast = score_pairs(model, featured, calibration).select(S.ID_L, S.ID_R, S.SCORE)
    slow = score_pairs(slow_model, featured, calibration).select(
        S.ID_L, S.ID_R, F.col(S.SCORE).alias("slow")
    )
    both = raw.join(fast, on=[S.ID_L, S.ID_R]).join(slow, on=[S.ID_L, S.ID_R]).toPandas()
    np.testing.assert_allclose(both[S.SCORE], both["slow"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(both[S.SCORE], calibration.apply(both["raw"].to_numpy()), atol=1e-9)
    # calibration is monotone: it never reorders two pairs
    ordered = both.sort_values("raw")
    assert (np.diff(ordered[S.SCORE].to_numpy()) >= -1e-12).all()
    assert not np.allclose(both[S.SCORE], both["raw"])


def test_registered_pyfunc_scores_pairs_as_the_batch_does(
    small_matcher: FitOutcome, featured: DataFrame, tmp_path: Path
) -> None:
    """``mlflow.pyfunc.load_model`` of a registered version: a pandas frame of pair
    features in, the batch's calibrated probabilities out (no Spark in the model), with
    the booster as an mlflow.xgboost model, the spec and name statistics inside it."""
    import json

    import mlflow
    import mlflow.pyfunc
    from conftest import register_matcher

    from poimatch.lifecycle.tracking import load_matcher

    settings = _store(tmp_path, "poimatch-pyfunc-test")
    uri, version, _ = register_matcher(small_matcher, settings)
    spec = small_matcher.spec
    batch = score_pairs(small_matcher.model, featured, spec.calibration).toPandas()

    served = mlflow.pyfunc.load_model(f"models:/poimatch-pyfunc-test/{version}")
    # ids ride along and are ignored; columns are taken by name, in any order
    frame = batch[[S.ID_L, S.ID_R, *reversed(spec.features)]]
    out = served.predict(frame)
    np.testing.assert_allclose(out["probability"], batch[S.SCORE], rtol=0, atol=1e-6)
    assert (out["match"] == (out["probability"] >= spec.threshold)).all()
    assert out["match"].any()
    assert not out["match"].all()

    info = mlflow.models.get_model_info(uri)
    assert set(info.flavors) == {"python_function"}
    signature = info.signature
    assert signature is not None
    assert signature.inputs.input_names() == list(spec.features)
    assert signature.outputs.input_names() == ["probability", "match"]
    model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    artifacts = model_dir / "artifacts"
    assert "xgboost" in (artifacts / "booster" / "MLmodel").read_text()
    assert json.loads((artifacts / "spec.json").read_text())["threshold"] == spec.threshold
    assert (model_dir / "code" / "poimatch" / "scorer.py").is_file()
    assert (model_dir / "scorer_model.py").is_file()  # models from code: no pickle
    # no Spark pipeline in the model: matching scores with the booster alone
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "booster",
        "name_stats.json",
        "spec.json",
    ]
    # the batch's loader reads the same model: its booster and frozen name statistics,
    # with no Spark job
    sc = featured.sparkSession.sparkContext
    sc.setJobGroup("test_scoring_load", "loading a registered model")
    try:
        model, loaded, _ = load_matcher(uri)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert sc.statusTracker().getJobIdsForGroup("test_scoring_load") == []
    assert isinstance(model, BoosterModel)
    assert model.features == spec.features
    assert loaded == spec
    assert loaded.stats() == spec.stats()
    # the same scores on the batch's path (a UDF on the workers) and the small plan's
    # (the driver): the loaded booster is the trained pipeline's
    by_pair = [S.ID_L, S.ID_R]
    expected = batch.sort_values(by_pair)[S.SCORE].to_numpy()
    again = score_pairs(model, featured, loaded.calibration).toPandas()
    np.testing.assert_array_equal(again.sort_values(by_pair)[S.SCORE].to_numpy(), expected)
    held = _score_on_driver(model, featured, loaded.calibration)
    assert held is not None
    on_driver = held.toPandas().sort_values(by_pair)[S.SCORE].to_numpy()
    np.testing.assert_array_equal(on_driver, expected)
    with pytest.raises(mlflow.exceptions.MlflowException, match=spec.features[0]):
        served.predict(frame.drop(columns=[spec.features[0]]))


def test_a_registered_version_is_loaded_once_and_resolved_on_every_call(
    small_matcher: FitOutcome, tmp_path: Path
) -> None:
    """load_matcher keeps a loaded registered version (its artifacts never change) but
    asks the registry each time: an alias that moved loads the other version, and a
    deleted version is not served from memory."""
    import mlflow
    from conftest import register_matcher
    from mlflow.tracking import MlflowClient

    from poimatch.lifecycle.tracking import load_matcher

    settings = _store(tmp_path, "poimatch-cache-test")
    _, first, _ = register_matcher(small_matcher, settings)
    _, second, _ = register_matcher(small_matcher, settings)
    client = MlflowClient()
    client.set_registered_model_alias("poimatch-cache-test", "champion", first)
    by_alias = "models:/poimatch-cache-test@champion"
    model, spec, meta = load_matcher(by_alias)
    again, spec_again, meta_again = load_matcher(f"models:/poimatch-cache-test/{first}")
    assert again is model  # the same loaded pipeline, no second load
    assert spec_again == spec == small_matcher.spec
    assert meta_again == meta
    meta_again["changed"] = True
    assert "changed" not in load_matcher(by_alias)[2]  # callers get their own copy
    client.set_registered_model_alias("poimatch-cache-test", "champion", second)
    moved, _, _ = load_matcher(by_alias)
    assert moved is not model
    client.delete_model_version("poimatch-cache-test", first)
    with pytest.raises(mlflow.exceptions.MlflowException):
        load_matcher(f"models:/poimatch-cache-test/{first}")
