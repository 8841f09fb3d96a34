"""``poimatch explain``: each feature's push on a pair's score adds up to the model's score."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import register_matcher
from pyspark.sql import SparkSession

from poimatch import schema as S
from poimatch.apps import commands
from poimatch.config import load_settings
from poimatch.runs.batch import load_match_input
from poimatch.runs.explain import explain_pair
from poimatch.runs.workflows import FitOutcome, match_with_model
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.stages.plan import SMALL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("explain")
    csv = root / "rows.csv"
    write_pois_csv(generate_pois(400, seed=91), csv)
    pois = load_match_input(spark, str(csv)).pois
    result = match_with_model(pois, model=small_matcher.model, spec=small_matcher.spec, plan=SMALL)
    pairs = result.scored.toPandas().sort_values(S.SCORE)
    return {"root": root, "csv": csv, "pois": pois, "pairs": pairs}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_contributions_add_up_to_the_score_a_match_run_gives(
    scored: dict[str, Any], small_matcher: FitOutcome
) -> None:
    pairs = scored["pairs"]
    # the weakest and the strongest candidate pair: one each side of the threshold
    for _, pair in pairs.iloc[[0, -1]].iterrows():
        explained = explain_pair(
            scored["pois"],
            pair[S.ID_R],  # either order
            pair[S.ID_L],
            model=small_matcher.model,
            spec=small_matcher.spec,
        )
        assert (explained.id_l, explained.id_r) == (pair[S.ID_L], pair[S.ID_R])
        assert explained.score == pytest.approx(pair[S.SCORE], abs=1e-6)
        assert explained.margin == pytest.approx(_logit(explained.probability), abs=1e-3)
        assert set(explained.contributions) == set(small_matcher.spec.features)
        assert any(abs(c) > 1e-3 for c in explained.contributions.values())
    low, high = pairs.iloc[0][S.SCORE], pairs.iloc[-1][S.SCORE]
    assert low < small_matcher.spec.threshold <= high


def test_any_two_rows_can_be_explained_and_bad_ids_are_named(
    scored: dict[str, Any], small_matcher: FitOutcome
) -> None:
    rows = scored["pois"].select(S.ID).orderBy(S.ID).limit(2).collect()
    a, b = rows[0][S.ID], rows[1][S.ID]
    explained = explain_pair(
        scored["pois"], a, b, model=small_matcher.model, spec=small_matcher.spec
    )
    assert explained.margin == pytest.approx(_logit(explained.probability), abs=1e-3)
    with pytest.raises(ValueError, match="not in the input: nope"):
        explain_pair(scored["pois"], a, "nope", model=small_matcher.model, spec=small_matcher.spec)
    with pytest.raises(ValueError, match="two different ids"):
        explain_pair(scored["pois"], a, a, model=small_matcher.model, spec=small_matcher.spec)


def test_the_command_prints_the_waterfall_and_draws_it(
    scored: dict[str, Any],
    small_matcher: FitOutcome,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root: Path = scored["root"]
    overrides = [
        f"storage.root={root / 'lake'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'artifacts'}",
        "model.name=poimatch-explain-test",
    ]
    uri, _, _ = register_matcher(small_matcher, load_settings("ci", overrides))
    pair = scored["pairs"].iloc[-1]
    png = root / "why.png"
    argv = [pair[S.ID_L], pair[S.ID_R], "--input", str(scored["csv"]), "--model", uri]
    sets = [arg for o in overrides for arg in ("--set", o)]
    commands.main(["explain", *argv, "--png", str(png), "--top", "5", "--env", "ci", *sets])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        f"pair {pair[S.ID_L]} {pair[S.ID_R]}: score={pair[S.SCORE]:.4f} (match"
    )
    assert out[2].startswith("(bias)")
    assert len(out) == 3 + 5 + 1 + 1  # header, columns, bias, 5 features, the rest, png
    assert out[-1] == f"png={png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:
        commands.main(
            [
                "explain",
                pair[S.ID_L],
                "nope",
                "--input",
                str(scored["csv"]),
                "--model",
                uri,
                "--env",
                "ci",
                *sets,
            ]
        )
    assert exit_info.value.code == 2
    assert "not in the input: nope" in capsys.readouterr().err
