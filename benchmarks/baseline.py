"""The floor every evaluation set is held against: the course project's baseline.

As in ``../shared/background/`` (the write-up poimatch grows out of): candidate pairs
are rows whose coordinates, rounded to ``decimals`` places (3: about 100 m), are
equal; each pair gets two features, the haversine distance in km and the Levenshtein
distance of the raw names; an XGBoost classifier (scikit-learn API, on the driver)
labels pairs; a row's matches are itself and every partner scored at least 0.5.

pandas and numpy only: it is a yardstick, not part of the product, and it must not
share a line of matching code with poimatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cpdist
from xgboost import XGBClassifier

ID, NAME, LAT, LON, POI = "id", "name", "latitude", "longitude", "point_of_interest"
_EARTH_KM = 6371.0


def _pairs(rows: pd.DataFrame, decimals: int) -> pd.DataFrame:
    key = rows[LAT].round(decimals).astype(str) + "|" + rows[LON].round(decimals).astype(str)
    keyed = pd.DataFrame({"key": key, "i": np.arange(len(rows))})
    joined = keyed.merge(keyed, on="key", suffixes=("_l", "_r"))
    joined = joined[joined["i_l"] < joined["i_r"]]
    return pd.DataFrame({"l": joined["i_l"].to_numpy(), "r": joined["i_r"].to_numpy()})


def _features(rows: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    lat = np.radians(rows[LAT].to_numpy(dtype=np.float64))
    lon = np.radians(rows[LON].to_numpy(dtype=np.float64))
    lat_l, lat_r = lat[pairs["l"]], lat[pairs["r"]]
    dlat, dlon = lat_r - lat_l, lon[pairs["r"]] - lon[pairs["l"]]
    a = np.sin(dlat / 2) ** 2 + np.cos(lat_l) * np.cos(lat_r) * np.sin(dlon / 2) ** 2
    dist_km = 2 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    names = rows[NAME].fillna("").astype(str).to_numpy()
    lev = cpdist(
        list(names[pairs["l"]]), list(names[pairs["r"]]), scorer=Levenshtein.distance, workers=1
    )
    return np.column_stack([dist_km, np.asarray(lev, dtype=np.float64)])


@dataclass
class Baseline:
    """Rounded-coordinate blocking, haversine + Levenshtein, XGBoost, pairwise output."""

    decimals: int = 3
    seed: int = 7
    model: XGBClassifier = field(init=False)

    def fit(self, rows: pd.DataFrame) -> Baseline:
        """Train on labelled rows (``point_of_interest``)."""
        rows = rows.reset_index(drop=True)
        pairs = _pairs(rows, self.decimals)
        poi = rows[POI].to_numpy()
        labels = (poi[pairs["l"]] == poi[pairs["r"]]).astype(np.int64)
        self.model = XGBClassifier(
            n_estimators=200, max_depth=6, learning_rate=0.1, random_state=self.seed, n_jobs=2
        )
        self.model.fit(_features(rows, pairs), labels)
        return self

    def match(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``id``, ``matches`` for every row (itself first)."""
        rows = rows.reset_index(drop=True)
        ids = rows[ID].to_numpy()
        partners: list[list[str]] = [[str(i)] for i in ids]
        pairs = _pairs(rows, self.decimals)
        if len(pairs):
            proba = self.model.predict_proba(_features(rows, pairs))[:, 1]
            hit = pairs[proba >= 0.5]
            for left, right in zip(hit["l"].to_numpy(), hit["r"].to_numpy(), strict=True):
                partners[left].append(str(ids[right]))
                partners[right].append(str(ids[left]))
        return pd.DataFrame({ID: ids, "matches": [" ".join(p) for p in partners]})
