"""The synthetic POI generator: shape, profile, determinism, duplicates, hard negatives.

Pure pandas/numpy: no Spark session is started here.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poimatch.sample.generator import GeneratorProfile, generate_pois, write_pois_csv
from poimatch.schema import (
    ADDRESS,
    CATEGORIES,
    COUNTRY,
    ID,
    INPUT_COLUMNS,
    LATITUDE,
    LONGITUDE,
    NAME,
    PHONE,
    POI,
    URL,
)

N_ROWS = 20_000
SEED = 20240611
SCRIPTS = ("LATIN", "CYRILLIC", "CJK", "THAI", "ARABIC", "HANGUL", "HIRAGANA", "KATAKANA")


@pytest.fixture(scope="module")
def pois() -> pd.DataFrame:
    return generate_pois(N_ROWS, seed=SEED)


def _non_empty(series: pd.Series) -> pd.Series:
    if series.dtype == object:
        return series.notna() & (series.astype(str).str.strip() != "")
    return series.notna()


def _haversine_m(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * 6_371_000.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _pairs(df: pd.DataFrame, key: str | list[str]) -> pd.DataFrame:
    """All unordered pairs of rows sharing `key`, with their distance in metres."""
    left = df.reset_index(drop=True).reset_index()
    merged = left.merge(left, on=key, suffixes=("_l", "_r"))
    merged = merged[merged["index_l"] < merged["index_r"]]
    merged = merged.assign(
        dist_m=_haversine_m(
            merged[f"{LATITUDE}_l"].to_numpy(),
            merged[f"{LONGITUDE}_l"].to_numpy(),
            merged[f"{LATITUDE}_r"].to_numpy(),
            merged[f"{LONGITUDE}_r"].to_numpy(),
        )
    )
    return merged


def test_layout_and_exact_row_count(pois: pd.DataFrame) -> None:
    assert len(pois) == N_ROWS
    assert list(pois.columns) == [*INPUT_COLUMNS, POI]
    assert pois[LATITUDE].dtype == np.float64
    assert pois[LONGITUDE].dtype == np.float64
    text = [c for c in pois.columns if c not in (LATITUDE, LONGITUDE)]
    for column in text:
        values = pois[column].dropna()
        assert values.map(type).eq(str).all(), column


def test_non_empty_shares_match_profile(pois: pd.DataFrame) -> None:
    targets = GeneratorProfile().non_empty_shares()
    for column, target in targets.items():
        share = float(_non_empty(pois[column]).mean())
        if target == 1.0:
            assert share == 1.0, column
        else:
            assert abs(share - target) <= 0.05, f"{column}: {share:.3f} vs {target:.3f}"


def test_records_per_place(pois: pd.DataFrame) -> None:
    sizes = pois.groupby(POI).size()
    assert 1.3 <= sizes.mean() <= 1.8
    assert (sizes == 1).mean() > 0.5
    assert sizes.max() >= 10


def test_ids_unique_and_shaped(pois: pd.DataFrame) -> None:
    assert pois[ID].is_unique
    assert pois[ID].str.fullmatch(r"E_[0-9a-f]{14}").all()
    assert pois[POI].str.fullmatch(r"P_[0-9a-f]{14}").all()


def test_coordinates_in_range(pois: pd.DataFrame) -> None:
    assert pois[LATITUDE].between(-90, 90).all()
    assert pois[LONGITUDE].between(-180, 180).all()


def test_many_countries_and_scripts(pois: pd.DataFrame) -> None:
    assert pois[COUNTRY].nunique() >= 15
    seen: set[str] = set()
    for name in pois[NAME]:
        for ch in name:
            if ch.isalpha():
                seen.add(unicodedata.name(ch, "").split(" ")[0])
    found = {s for s in SCRIPTS if s in seen}
    if {"HIRAGANA", "KATAKANA"} & found:
        found = (found - {"HIRAGANA", "KATAKANA"}) | {"KANA"}
    assert len(found) >= 5, found


def test_deterministic_for_a_seed() -> None:
    first = generate_pois(3_000, seed=7)
    again = generate_pois(3_000, seed=7)
    other = generate_pois(3_000, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert not first[NAME].equals(other[NAME])


def test_rows_of_a_place_are_shuffled(pois: pd.DataFrame) -> None:
    poi = pois[POI].to_numpy()
    adjacent_same = float((poi[1:] == poi[:-1]).mean())
    assert adjacent_same < 0.01


def test_duplicates_are_mostly_close_with_a_far_tail(pois: pd.DataFrame) -> None:
    pairs = _pairs(pois[[POI, LATITUDE, LONGITUDE]], POI)
    assert len(pairs) > 1_000
    assert pairs["dist_m"].median() < 100.0
    assert (pairs["dist_m"] > 1_000.0).sum() > 0
    assert (pairs["dist_m"] > 1_000.0).mean() < 0.15


def test_duplicates_differ_in_text(pois: pd.DataFrame) -> None:
    multi = pois[pois.groupby(POI)[POI].transform("size") > 1]
    per_place = multi.groupby(POI).agg(
        names=(NAME, "nunique"),
        phones=(PHONE, "nunique"),
        urls=(URL, "nunique"),
        cats=(CATEGORIES, "nunique"),
        addresses=(ADDRESS, "nunique"),
    )
    assert (per_place["names"] > 1).mean() > 0.3
    assert (per_place["cats"] > 1).mean() > 0.1
    assert (per_place["addresses"] > 1).mean() > 0.1
    with_phone = per_place[multi.groupby(POI)[PHONE].count() > 1]
    assert (with_phone["phones"] > 1).mean() > 0.3
    with_url = per_place[multi.groupby(POI)[URL].count() > 1]
    assert (with_url["urls"] > 1).mean() > 0.3


def test_hard_negatives_same_name_nearby(pois: pd.DataFrame) -> None:
    frame = pois[[POI, NAME, COUNTRY, LATITUDE, LONGITUDE]].assign(
        norm=pois[NAME].str.lower().str.strip()
    )
    pairs = _pairs(frame, ["norm", COUNTRY])
    negatives = pairs[(pairs[f"{POI}_l"] != pairs[f"{POI}_r"]) & (pairs["dist_m"] < 1_000.0)]
    # chain outlets and repeated generic names: about 2,000 places here, about 300 by
    # chance alone when the generator makes no hard negatives
    assert negatives[f"{POI}_l"].nunique() >= 800


def test_same_building_different_places(pois: pd.DataFrame) -> None:
    frame = pois.dropna(subset=[ADDRESS])[[POI, NAME, ADDRESS, COUNTRY, LATITUDE, LONGITUDE]]
    pairs = _pairs(frame, [ADDRESS, COUNTRY])
    building = pairs[
        (pairs[f"{POI}_l"] != pairs[f"{POI}_r"])
        & (pairs["dist_m"] < 50.0)
        & (pairs[f"{NAME}_l"].str.lower() != pairs[f"{NAME}_r"].str.lower())
    ]
    assert len(building) >= 20


def test_write_csv_round_trip(tmp_path: Path) -> None:
    frame = generate_pois(500, seed=3)
    path = tmp_path / "pois.csv"
    write_pois_csv(frame, path)
    back = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    assert list(back.columns) == [*INPUT_COLUMNS, POI]
    assert len(back) == 500
    assert back[ID].tolist() == frame[ID].tolist()
    missing = frame[URL].isna().to_numpy()
    assert (back[URL].to_numpy()[missing] == "").all()
    assert back[NAME].tolist() == frame[NAME].tolist()


def test_small_and_empty_requests() -> None:
    assert len(generate_pois(1, seed=1)) == 1
    assert len(generate_pois(17, seed=1)) == 17
    empty = generate_pois(0, seed=1)
    assert empty.empty
    assert list(empty.columns) == [*INPUT_COLUMNS, POI]


def test_profile_is_validated() -> None:
    with pytest.raises(ValueError, match="url_share"):
        GeneratorProfile(url_share=1.5)
    with pytest.raises(ValueError, match="copy_keeps_field"):
        GeneratorProfile(copy_keeps_field=0.1, copy_adds_field=0.2)
    with pytest.raises(ValueError, match="n_rows"):
        generate_pois(-1, seed=1)


def test_profile_knobs_change_the_data() -> None:
    profile = GeneratorProfile(single_share=0.95, url_share=0.6, country_weights=(("JP", 1.0),))
    frame = generate_pois(4_000, seed=11, profile=profile)
    sizes = frame.groupby(POI).size()
    assert (sizes == 1).mean() > 0.9
    assert abs(float(_non_empty(frame[URL]).mean()) - 0.6) < 0.05
    assert set(frame[COUNTRY]) == {"JP"}
