"""Match quality that does not depend on the table: copies, invariance, monotone scores.

The model is the suite's shared small matcher (3,000 generated rows, 60 trees).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings, load_settings
from poimatch.runs.workflows import FitOutcome, match_with_model, training_set
from poimatch.sample.generator import generate_pois
from poimatch.stages.candidates import cached_candidates, cached_points
from poimatch.stages.features import MONOTONE
from poimatch.stages.scoring import score_pairs

_COLUMNS = [f.name for f in S.poi_table_schema().fields]


def _frame(spark: SparkSession, pdf: pd.DataFrame) -> DataFrame:
    out = pdf.reindex(columns=_COLUMNS).astype(object)
    out = out.where(out.notna() & (out != ""), None)
    out[S.LATITUDE] = out[S.LATITUDE].astype(float)
    out[S.LONGITUDE] = out[S.LONGITUDE].astype(float)
    return spark.createDataFrame(out, schema=S.poi_table_schema())


def _edited(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Trivial edits: name case, street-type spelling, phone punctuation, 10 m jitter."""
    out = rows.copy()
    out[S.NAME] = [n.upper() if n != n.upper() else n.lower() for n in out[S.NAME]]
    spell = {"Street": "St.", "St": "Street", "Avenue": "Ave", "Road": "Rd."}
    out[S.ADDRESS] = [
        re.sub(r"\b(Street|St|Avenue|Road)\b", lambda m: spell[m.group(1)], a)
        if isinstance(a, str)
        else a
        for a in out[S.ADDRESS]
    ]
    out[S.PHONE] = [
        " ".join(re.findall(r"\d{1,3}", re.sub(r"\D", "", p))) if isinstance(p, str) else p
        for p in out[S.PHONE]
    ]
    angle = rng.uniform(0, 2 * np.pi, len(out))
    lat = out[S.LATITUDE].astype(float).to_numpy()
    out[S.LATITUDE] = lat + 10 * np.sin(angle) / 111_320
    out[S.LONGITUDE] = out[S.LONGITUDE].astype(float) + 10 * np.cos(angle) / (
        111_320 * np.cos(np.radians(lat))
    )
    return out


def _with_copies(base: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``base`` plus exact copies of ``n`` rows (id + "~x") and edited copies of ``n`` others."""
    rng = np.random.default_rng(seed)
    picked = base.iloc[rng.choice(len(base), size=2 * n, replace=False)]
    exact = picked.iloc[:n].assign(**{S.ID: picked[S.ID].iloc[:n] + "~x"})
    edited = _edited(picked.iloc[n:], rng)
    edited[S.ID] = edited[S.ID] + "~e"
    return pd.concat([base, exact, edited], ignore_index=True)


def _copies_matched(matches: DataFrame) -> pd.Series:
    rows = matches.where(F.col(S.ID).contains("~")).select(S.ID, S.MATCHES).toPandas()
    found = [
        i.split("~")[0] in m.split() for i, m in zip(rows[S.ID], rows[S.MATCHES], strict=False)
    ]
    return pd.Series(found, index=rows[S.ID])


def _match(spark: SparkSession, fit: FitOutcome, pdf: pd.DataFrame) -> DataFrame:
    return match_with_model(_frame(spark, pdf), model=fit.model, spec=fit.spec).matches


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """1,000 generated rows of another seed than the model's: a sparse table (22
    countries), with a place's rows sharing ``point_of_interest``."""
    return generate_pois(1000, seed=2024)


def test_copies_match_in_two_row_tables(
    spark: SparkSession, small_matcher: FitOutcome, sample: pd.DataFrame
) -> None:
    """Each row and its copy alone: islands 2 degrees apart (far beyond every blocking
    area, so each island is matched exactly as a 2-row table would be)."""
    rows = sample.drop_duplicates(S.POI).head(24).reset_index(drop=True)
    rows[S.LATITUDE] = -40.0 + 2.0 * (rows.index // 12)
    rows[S.LONGITUDE] = -170.0 + 2.0 * (rows.index % 12)
    rng = np.random.default_rng(5)
    exact = rows.iloc[:12].assign(**{S.ID: rows[S.ID].iloc[:12] + "~x"})
    edited = _edited(rows.iloc[12:], rng)
    edited[S.ID] = edited[S.ID] + "~e"
    table = pd.concat([rows, exact, edited], ignore_index=True)
    matched = _copies_matched(_match(spark, small_matcher, table))
    assert len(matched) == 24
    assert matched.all(), list(matched[~matched].index)


def test_copies_match_in_a_sparse_table(
    spark: SparkSession, small_matcher: FitOutcome, sample: pd.DataFrame
) -> None:
    matched = _copies_matched(_match(spark, small_matcher, _with_copies(sample, 30, seed=7)))
    assert len(matched) == 60
    assert matched.all(), list(matched[~matched].index)


def test_copies_match_in_a_dense_table(
    spark: SparkSession, small_matcher: FitOutcome, sample: pd.DataFrame
) -> None:
    """The same 1,000 rows with their places moved into a 1.5 km square (about 450 rows
    per km2); each place's rows keep their offsets from one another."""
    rng = np.random.default_rng(9)
    dense = sample.copy()
    first = dense.groupby(S.POI)[[S.LATITUDE, S.LONGITUDE]].transform("first")
    places = dense[S.POI].unique()
    centre = pd.DataFrame(
        {
            "y": rng.uniform(0, 1500, len(places)) / 111_320,
            "x": rng.uniform(0, 1500, len(places)) / (111_320 * np.cos(np.radians(48.85))),
        },
        index=places,
    )
    dense[S.LATITUDE] = (
        48.85 + centre.loc[dense[S.POI], "y"].to_numpy() + (dense[S.LATITUDE] - first[S.LATITUDE])
    )
    dense[S.LONGITUDE] = (
        2.35 + centre.loc[dense[S.POI], "x"].to_numpy() + (dense[S.LONGITUDE] - first[S.LONGITUDE])
    )
    matched = _copies_matched(_match(spark, small_matcher, _with_copies(dense, 30, seed=8)))
    assert len(matched) == 60
    assert matched.all(), list(matched[~matched].index)


def test_scores_do_not_depend_on_rows_outside_the_candidate_lists(
    spark: SparkSession, small_matcher: FitOutcome, sample: pd.DataFrame
) -> None:
    """Adding far rows that share names, tokens and phones with the table's rows leaves
    every pair and score of the table's own rows as it was (with statistics counted
    over the matched table, every shared name's frequency would change)."""
    spec = small_matcher.spec
    far = sample.assign(
        **{S.ID: sample[S.ID] + "~far", S.LATITUDE: sample[S.LATITUDE].astype(float) + 3.0}
    )
    blocking = BlockingSettings.model_validate(spec.blocking)

    def scored(pdf: pd.DataFrame) -> pd.DataFrame:
        points = cached_points(_frame(spark, pdf), stats=spec.stats())
        pairs = cached_candidates(points, settings=blocking)
        out = score_pairs(small_matcher.model, pairs, spec.calibration)
        own = out.where(~F.col(S.ID_L).contains("~") & ~F.col(S.ID_R).contains("~"))
        return own.select(S.ID_L, S.ID_R, S.SCORE, *spec.features).toPandas()

    alone = scored(sample).sort_values([S.ID_L, S.ID_R]).reset_index(drop=True)
    crowded = scored(pd.concat([sample, far])).sort_values([S.ID_L, S.ID_R])
    crowded = crowded.reset_index(drop=True)
    assert len(alone) > 300
    pd.testing.assert_frame_equal(alone, crowded)


def test_scores_never_fall_as_a_similarity_rises(small_matcher: FitOutcome) -> None:
    """The booster's monotone constraints, probed on 400 real feature vectors: raising a
    ``+1`` feature (or lowering a ``-1`` one) never lowers the score."""
    features = small_matcher.spec.features
    booster = small_matcher.model.stages[-1].get_booster()
    vectors = pd.DataFrame(
        np.random.default_rng(1).uniform(0, 1, (400, len(features))), columns=list(features)
    )
    base = booster.inplace_predict(vectors.to_numpy(np.float32), missing=np.nan)
    checked = 0
    for name, direction in MONOTONE.items():
        if name not in features:
            continue
        moved = vectors.copy()
        moved[name] = moved[name] + direction * 0.5
        score = booster.inplace_predict(moved.to_numpy(np.float32), missing=np.nan)
        assert (score >= base - 1e-6).all(), name
        checked += 1
    assert checked >= 15


def test_label_scope_follows_the_sources(spark: SparkSession, tmp_path: Path) -> None:
    """Rows naming two sources: training keeps only pairs across them (the labels'
    scope) and says so; without sources every candidate pair is a training pair."""
    pdf = generate_pois(500, seed=31)
    pdf[S.SOURCE] = np.where(np.arange(len(pdf)) % 2 == 0, "osm", "fsq")
    settings = load_settings("ci", ["model.sample_rates=[1.0]"])
    linked = training_set(_frame(spark, pdf), settings=settings)
    assert linked.label_scope == "cross_source"
    same = linked.pairs.where(F.col(f"{S.SOURCE}_l") == F.col(f"{S.SOURCE}_r")).count()
    assert same == 0
    assert linked.pairs.count() > 200
    plain = training_set(_frame(spark, pdf.drop(columns=[S.SOURCE])), settings=settings)
    assert plain.label_scope == "all"
    forced = load_settings("ci", ["model.sample_rates=[1.0]", "model.label_scope=all"])
    assert training_set(_frame(spark, pdf), settings=forced).label_scope == "all"
