"""Declarative comparisons: each feature is a definition; adding one is configuration.

The built-in features are :class:`poimatch.stages.comparisons.Comparison` records built by
the kind registry of :mod:`poimatch.stages.features`; ``model.comparisons`` adds more. A
comparison added by configuration is computed beside the built-ins, constrained in
its own direction, recorded in full in the trained model's spec, and computed again
wherever that model is loaded: in a match run's scored pairs, from the spec alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import register_matcher
from pydantic import ValidationError
from pyspark.sql import SparkSession
from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler

from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.lifecycle.tracking import load_matcher
from poimatch.lifecycle.training import monotone_constraints
from poimatch.runs.batch import load_pois, run_match
from poimatch.runs.workflows import FitOutcome, fit_matcher, training_set
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages import comparisons as C
from poimatch.stages.features import (
    FEATURE_COLUMNS,
    MONOTONE,
    PAIR_SIDE_COLUMNS,
    add_pair_features,
    pair_side_col,
)
from poimatch.stages.spec import MatchingSpec

ADDR_JW = {
    "name": "f_addr_jw",
    "kind": "fuzzy",
    "column": S.N_ADDRESS,
    "scorer": "jaro_winkler",
    "monotone": 1,
}
CITY_LEV = {
    "name": "f_city_lev_norm",
    "kind": "levenshtein_norm",
    "column": S.N_CITY,
    "monotone": -1,
}


def _yaml(entry: dict[str, object]) -> str:
    return "{" + ", ".join(f"{k}: {'null' if v is None else v}" for k, v in entry.items()) + "}"


def test_the_built_in_features_are_definitions() -> None:
    assert tuple(c.name for c in C.BUILTIN) == FEATURE_COLUMNS
    assert {c.name: c.monotone for c in C.BUILTIN if c.monotone} == MONOTONE
    assert C.builtin(S.F_NAME_JW).model_dump() == {
        "name": S.F_NAME_JW,
        "kind": "fuzzy",
        "column": S.N_NAME,
        "scorer": "jaro_winkler",
        "monotone": 1,
    }
    # a stored spec without definitions (before this) gets the built-ins'
    spec = MatchingSpec(0.5, "components", 50, (S.F_DIST_M, S.F_NAME_JW), {})
    assert spec.comparisons == (C.builtin(S.F_DIST_M), C.builtin(S.F_NAME_JW))
    assert spec.added == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({**ADDR_JW, "kind": "fuzzzy"}, "unknown kind 'fuzzzy'"),
        ({**ADDR_JW, "scorer": "jaro"}, "unknown scorer 'jaro'"),
        ({**ADDR_JW, "scorer": None}, "goes with kind fuzzy"),
        ({**CITY_LEV, "scorer": "ratio"}, "goes with kind fuzzy"),
        ({**ADDR_JW, "column": S.N_CATEGORIES}, "needs a text column"),
        ({**CITY_LEV, "kind": "set_jaccard"}, "needs a token-array column"),
        ({"name": "f_x", "kind": "distance_m", "column": S.N_NAME}, "reads no column"),
        ({**ADDR_JW, "name": "addr_jw"}, "pattern"),
        ({**ADDR_JW, "monotone": 2}, "monotone"),
        ({**ADDR_JW, "weight": 3}, "weight"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_problem(
    entry: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        C.Comparison.model_validate(entry)
    with pytest.raises(ValueError, match=problem):
        load_settings("ci", [f"model.comparisons=[{_yaml(entry)}]"])


def test_names_must_be_new_and_features_known() -> None:
    added = (C.Comparison.model_validate(ADDR_JW),)
    assert C.definitions((S.F_DIST_M, "f_addr_jw"), added)[1] == added[0]
    with pytest.raises(ValueError, match="already taken"):
        C.definitions(
            (S.F_DIST_M,), (C.Comparison.model_validate({**ADDR_JW, "name": S.F_NAME_JW}),)
        )
    with pytest.raises(
        ValueError, match=r"unknown feature\(s\) \['f_addr_jw'\].*model.comparisons"
    ):
        C.definitions((S.F_DIST_M, "f_addr_jw"))
    assert monotone_constraints((S.F_DIST_M, "f_addr_jw", S.F_NAME_LEN_MIN), added) == "(-1,1,0)"


def _type(column: str) -> str:
    if column in (S.LATITUDE, S.LONGITUDE, S.N_NAME_FREQ):
        return "double"
    if column in C.ARRAY_COLUMNS:
        return "array<string>"
    return "map<string,double>" if column == S.N_NAME_IDF else "string"


def test_an_added_comparison_is_computed_beside_the_built_ins(spark: SparkSession) -> None:
    left, right = ("12 baker street", "london"), ("12 baker st", "londn")
    given = {
        S.LATITUDE: (51.5, 51.5001),
        S.LONGITUDE: (-0.1, -0.1),
        S.N_ADDRESS: (left[0], right[0]),
        S.N_CITY: (left[1], right[1]),
    }
    fields = [(S.ID_L, "string", "a"), (S.ID_R, "string", "b")]
    for column in PAIR_SIDE_COLUMNS:
        for i, side in enumerate(("l", "r")):
            value = given.get(column, (None, None))[i]
            fields.append((pair_side_col(column, side), _type(column), value))
    schema = ", ".join(f"`{name}` {kind}" for name, kind, _ in fields)
    frame = spark.createDataFrame([tuple(v for _, _, v in fields)], schema)
    added = (C.Comparison.model_validate(ADDR_JW), C.Comparison.model_validate(CITY_LEV))
    plain = add_pair_features(frame).first()
    out = add_pair_features(frame, added).first()
    assert plain is not None
    assert out is not None
    expected = JaroWinkler.normalized_similarity(left[0], right[0])
    assert out["f_addr_jw"] == pytest.approx(expected)
    assert out["f_city_lev_norm"] == pytest.approx(1 / 6)
    # the built-ins are what they were without the added ones
    for feature in FEATURE_COLUMNS:
        assert out[feature] == plain[feature], feature
    assert out[S.F_ADDR_TOKEN_SET] == pytest.approx(fuzz.token_set_ratio(left[0], right[0]) / 100)
    clash = C.Comparison.model_validate({**ADDR_JW, "name": S.F_NAME_JW})
    with pytest.raises(ValueError, match="built-in"):
        add_pair_features(frame, (clash,))


def test_a_comparison_added_by_config_reaches_the_model_spec_and_output(
    spark: SparkSession, tmp_path: Path
) -> None:
    overrides = [
        f"storage.root={tmp_path / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        "model.name=poimatch-comparisons-test",
        "model.n_estimators=40",
        f"model.comparisons=[{_yaml(ADDR_JW)}]",
    ]
    settings = load_settings("ci", overrides)
    csv = tmp_path / "train.csv"
    write_pois_csv(generate_pois(1500, seed=71), csv)
    pois = load_pois(spark, str(csv), quarantine_path=str(tmp_path / "q"), require_labels=True).pois
    fit: FitOutcome = fit_matcher(training_set(pois, settings=settings), settings=settings)
    assert fit.spec.features[-1] == "f_addr_jw"
    assert fit.spec.added == (C.Comparison.model_validate(ADDR_JW),)
    assert fit.spec.to_dict()["comparisons"][-1] == ADDR_JW
    uri, _, _ = register_matcher(fit, settings)
    # loaded elsewhere, the spec alone says how to compute it
    _, spec, _ = load_matcher(uri)
    assert spec.added == fit.spec.added
    source = tmp_path / "match.csv"
    write_pois_csv(generate_pois(300, seed=72).drop(columns=[S.POI]), source)
    pairs = tmp_path / "pairs"
    lines = run_match(
        spark,
        settings,
        input_path=str(source),
        output_csv=str(tmp_path / "out.csv"),
        model_uri=uri,
        pairs_table=str(pairs),
    )
    assert lines.written["pairs_table"] == str(pairs)
    scored = spark.read.format("delta").load(str(pairs))
    assert "f_addr_jw" in scored.columns
    values = [r["f_addr_jw"] for r in scored.select("f_addr_jw").collect()]
    known = [v for v in values if v is not None]
    assert known
    assert all(0.0 <= v <= 1.0 for v in known)
    assert any(v == 1.0 for v in known)
    assert any(v < 0.9 for v in known)
