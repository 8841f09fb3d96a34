"""Synthetic POI data shaped like the Foursquare Location Matching input.

Pure numpy/pandas, no Spark.  `generate_pois` makes a labelled frame (the input
columns plus `point_of_interest`) in three stages:

1. *Places*, vectorised with numpy: country and city (22 countries, Latin, Cyrillic,
   CJK, Hangul, Thai and Arabic scripts), a heavy-tailed distance from the city centre,
   a kind of name (chain brand, "<Surname>'s <Type>", "<Type> <Place>", word names,
   bare generic types such as "Bus Stop"), 1-3 Foursquare-style categories, address,
   zip, phone number and web domain.  Some places are *hard negatives* of the place
   before them: another outlet of the same chain a few hundred metres away, another
   business at the same address, or the same generic name nearby.
2. *Rows*: every place gets 1..n records (mostly one, mean about 1.5, a Zipf tail past
   ten).  The first record is the place as generated; the others differ the way real
   sources differ (case, typos, abbreviations, transliteration, words added or
   dropped, other language, coordinates off by a heavy-tailed distance, phone and url
   written differently, category synonyms).  Each column is present or missing per
   record, so a field can be present in one copy and missing in another.
3. Ids ("E_" + 14 hex digits, "P_" for places) and a shuffle of the rows.

Everything is drawn from one `numpy.random.Generator` seeded with `seed`, so the same
seed gives the same frame.  Word lists and cities are in `gazetteer.json` (beside this module).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from anyascii import anyascii

from poimatch.schema import (
    ADDRESS,
    CATEGORIES,
    CITY,
    COUNTRY,
    ID,
    INPUT_COLUMNS,
    LATITUDE,
    LONGITUDE,
    NAME,
    PHONE,
    POI,
    STATE,
    URL,
    ZIP,
)

__all__ = ["GeneratorProfile", "generate_pois", "write_pois_csv"]

ObjArray = npt.NDArray[np.object_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EARTH_M_PER_DEG = 111_320.0
_KIND_BRAND, _KIND_PERSONAL, _KIND_PLACE, _KIND_WORD, _KIND_GENERIC = range(5)
_DIGITS: ObjArray = np.array(list(string.digits), dtype=object)
_LETTERS: ObjArray = np.array(list(string.ascii_uppercase), dtype=object)
_FORMATTER = string.Formatter()


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class GeneratorProfile:
    """Every knob of the generator; the defaults match the real-data profile.

    The column shares (``categories_share`` .. ``url_share``) are targets for the share
    of non-empty values over all rows; name, latitude, longitude and country are always
    filled (see `non_empty_shares`).  Other ``*_share`` and ``p_*`` knobs are
    probabilities per place or per duplicate record.  A place either
    has a field or not; a record of a place that has it keeps it with probability
    ``copy_keeps_field``, a record of a place that lacks it still shows it with
    probability ``copy_adds_field`` (so copies disagree on presence).
    """

    # records per place: P(1) = single_share, P(k) ~ k**-group_tail_exponent for k >= 2
    single_share: float = 0.67
    group_tail_exponent: float = 3.8
    max_group_size: int = 30
    # non-empty shares over rows
    categories_share: float = 0.91
    city_share: float = 0.74
    address_share: float = 0.65
    state_share: float = 0.63
    zip_share: float = 0.48
    phone_share: float = 0.30
    url_share: float = 0.24
    copy_keeps_field: float = 0.92
    copy_adds_field: float = 0.04
    # kinds of names: brand, personal, place, word, generic
    kind_weights: tuple[float, float, float, float, float] = (0.20, 0.14, 0.30, 0.26, 0.10)
    branch_share: float = 0.25
    abbreviated_street_share: float = 0.3
    city_variant_share: float = 0.15
    state_variant_share: float = 0.25
    # hard negatives: P(a place is a sibling of the previous one), by the previous kind
    sibling_after_brand: float = 0.30
    sibling_after_generic: float = 0.35
    sibling_after_other: float = 0.06
    chain_offset_m: tuple[float, float] = (100.0, 800.0)
    building_offset_m: float = 10.0
    generic_offset_m: tuple[float, float] = (150.0, 1000.0)
    # distance of a place from its city centre: lognormal core plus uniform-in-log outskirts
    centre_median_km: float = 1.5
    centre_sigma: float = 0.9
    outskirts_share: float = 0.08
    outskirts_km: tuple[float, float] = (5.0, 50.0)
    # coordinates of a duplicate record: lognormal core, a far and a very far tail
    dup_near_median_m: float = 25.0
    dup_near_sigma: float = 0.55
    dup_far_share: float = 0.10
    dup_far_m: tuple[float, float] = (100.0, 1000.0)
    dup_very_far_share: float = 0.025
    dup_very_far_m: tuple[float, float] = (2000.0, 15000.0)
    # text perturbations of a duplicate record (each applied independently)
    p_other_language: float = 0.25
    p_transliterate: float = 0.35
    p_drop_word: float = 0.12
    p_add_word: float = 0.15
    p_abbreviate: float = 0.30
    p_case: float = 0.12
    p_typo: float = 0.12
    p_address_abbreviate: float = 0.35
    p_address_add_city: float = 0.10
    p_address_drop_part: float = 0.08
    p_city_variant: float = 0.20
    p_state_variant: float = 0.30
    p_zip_compact: float = 0.15
    p_phone_reformat: float = 0.55
    p_url_reformat: float = 0.55
    p_category_synonym: float = 0.25
    p_category_drop: float = 0.15
    p_category_add: float = 0.10
    p_category_shuffle: float = 0.10
    # None: the gazetteer's weights; else (country code, weight) pairs
    country_weights: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            is_share = f.name.endswith("_share") or f.name.startswith(("p_", "copy_", "sibling_"))
            if is_share and isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
        if self.copy_keeps_field <= self.copy_adds_field:
            raise ValueError("copy_keeps_field must be larger than copy_adds_field")
        if self.dup_far_share + self.dup_very_far_share > 1.0:
            raise ValueError("dup_far_share + dup_very_far_share must be at most 1")
        if self.max_group_size < 2:
            raise ValueError("max_group_size must be at least 2")
        if sum(self.kind_weights) <= 0 or min(self.kind_weights) < 0:
            raise ValueError("kind_weights must be non-negative with a positive sum")

    def non_empty_shares(self) -> dict[str, float]:
        """Target share of non-empty values over rows, per input column (id excluded)."""
        return {
            NAME: 1.0,
            LATITUDE: 1.0,
            LONGITUDE: 1.0,
            COUNTRY: 1.0,
            CATEGORIES: self.categories_share,
            CITY: self.city_share,
            ADDRESS: self.address_share,
            STATE: self.state_share,
            ZIP: self.zip_share,
            PHONE: self.phone_share,
            URL: self.url_share,
        }

    def group_size_pmf(self) -> FloatArray:
        """P(records per place = k) for k = 1..max_group_size (index k - 1)."""
        k = np.arange(2, self.max_group_size + 1, dtype=np.float64)
        tail = k**-self.group_tail_exponent
        tail = tail / tail.sum() * (1.0 - self.single_share)
        return np.concatenate([[self.single_share], tail])


# --------------------------------------------------------------------------- gazetteer


def _is_latin(text: str) -> bool:
    """True when every character is ASCII or Latin-1/Latin Extended (no other script)."""
    return all(ord(ch) < 0x250 or 0x1E00 <= ord(ch) < 0x1F00 for ch in text)


def _latin(text: str) -> str:
    return text if _is_latin(text) else " ".join(anyascii(text).split()).title()


def _obj(values: Sequence[str]) -> ObjArray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


@dataclass(frozen=True)
class _Words:
    """A word list in its own script and in Latin letters, index-aligned."""

    local: ObjArray
    latin: ObjArray

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> _Words:
        local: list[str] = []
        latin: list[str] = []
        for item in raw:
            if isinstance(item, list):
                local.append(str(item[0]))
                latin.append(str(item[1]))
            else:
                local.append(str(item))
                latin.append(_latin(str(item)))
        return cls(_obj(local), _obj(latin))

    def __len__(self) -> int:
        return len(self.local)


@dataclass(frozen=True)
class _Lang:
    code: str
    latin_script: bool
    types: ObjArray  # local type word per category index
    surnames: _Words
    places: _Words
    words: _Words
    streets: _Words
    stypes_full: ObjArray
    stypes_abbr: ObjArray
    personal: tuple[str, ...]
    place: tuple[str, ...]
    word: tuple[str, ...]
    branch: tuple[str, ...]
    address: tuple[str, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]


@dataclass(frozen=True)
class _Country:
    code: str
    lang: int
    latin_share: float
    tlds: tuple[str, ...]
    cc: str
    trunk: str
    length: int
    groups: tuple[int, ...]
    brands: IntArray
    brand_p: FloatArray


@dataclass(frozen=True)
class _Variants:
    """Spelling variants of many items, flattened: item i owns flat[off[i]:off[i]+cnt[i]]."""

    flat: ObjArray
    off: IntArray
    cnt: IntArray
    lists: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, lists: Sequence[Sequence[str]]) -> _Variants:
        cnt = np.array([len(v) for v in lists], dtype=np.int64)
        off = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        flat = _obj([s for v in lists for s in v])
        return cls(flat, off, cnt, tuple(tuple(v) for v in lists))


@dataclass(frozen=True)
class _Gazetteer:
    cat_names: ObjArray
    cat_type_en: ObjArray
    cat_p: FloatArray
    generic_cats: IntArray
    generic_p: FloatArray
    business_cats: IntArray
    business_p: FloatArray
    related: _Variants
    related_by_name: Mapping[str, tuple[str, ...]]
    langs: tuple[_Lang, ...]
    countries: tuple[_Country, ...]
    city_country: IntArray
    city_lat: FloatArray
    city_lon: FloatArray
    city_weight: FloatArray
    city_area: tuple[str, ...]
    city_zip: tuple[str, ...]
    city_names: _Variants
    city_states: _Variants
    brand_name: ObjArray
    brand_local: tuple[Mapping[str, str], ...]
    brand_cat: IntArray
    brand_domain: ObjArray
    brand_variants: _Variants
    abbreviations: Mapping[str, tuple[str, ...]]


@lru_cache(maxsize=1)
def _gazetteer() -> _Gazetteer:
    text = resources.files("poimatch.sample").joinpath("gazetteer.json").read_text("utf-8")
    raw: dict[str, Any] = json.loads(text)

    cats = raw["categories"]
    cat_names = [str(c[0]) for c in cats]
    cat_index = {n: i for i, n in enumerate(cat_names)}
    cat_weight = np.array([float(c[2]) for c in cats])
    generic = np.array([bool(c[3]) for c in cats])
    business = np.array([bool(c[4]) for c in cats])
    related_lists = [tuple(str(r) for r in c[5]) for c in cats]
    related_by_name: dict[str, tuple[str, ...]] = {}
    for name, rel in zip(cat_names, related_lists, strict=True):
        related_by_name[name] = rel
    generic_cats = np.flatnonzero(generic).astype(np.int64)
    business_cats = np.flatnonzero(business).astype(np.int64)

    lang_codes = list(raw["langs"])
    langs: list[_Lang] = []
    for code in lang_codes:
        d = raw["langs"][code]
        type_en = [str(c[1]) for c in cats]
        local_types = d["types"]
        langs.append(
            _Lang(
                code=code,
                latin_script=str(d["script"]) == "Latin",
                types=_obj([str(local_types.get(n, type_en[i])) for i, n in enumerate(cat_names)]),
                surnames=_Words.parse(d["surnames"]),
                places=_Words.parse(d["places"]),
                words=_Words.parse(d["words"]),
                streets=_Words.parse(d["streets"] or [""]),
                stypes_full=_obj([str(s[0]) for s in d["stypes"]] or [""]),
                stypes_abbr=_obj([str(s[1]) for s in d["stypes"]] or [""]),
                personal=tuple(d["personal"]),
                place=tuple(d["place"]),
                word=tuple(d["word"]),
                branch=tuple(d["branch"]),
                address=tuple(d["address"]),
                prefixes=tuple(d["prefixes"]),
                suffixes=tuple(d["suffixes"]),
            )
        )

    brands = raw["brands"]
    countries: list[_Country] = []
    city_rows: list[tuple[int, dict[str, Any], float]] = []
    for ci, c in enumerate(raw["countries"]):
        code = str(c["code"])
        member = [
            bi for bi, b in enumerate(brands) if "*" in b["countries"] or code in b["countries"]
        ]
        bw = np.array([float(brands[bi]["weight"]) for bi in member])
        phone = c["phone"]
        countries.append(
            _Country(
                code=code,
                lang=lang_codes.index(str(c["lang"])),
                latin_share=float(c["latin_share"]),
                tlds=tuple(str(t) for t in c["tlds"]),
                cc=str(phone["cc"]),
                trunk=str(phone["trunk"]),
                length=int(phone["length"]),
                groups=tuple(int(g) for g in phone["groups"]),
                brands=np.array(member, dtype=np.int64),
                brand_p=bw / bw.sum(),
            )
        )
        total = sum(float(city["weight"]) for city in c["cities"])
        for city in c["cities"]:
            city_rows.append((ci, city, float(c["weight"]) * float(city["weight"]) / total))

    return _Gazetteer(
        cat_names=_obj(cat_names),
        cat_type_en=_obj([str(c[1]) for c in cats]),
        cat_p=cat_weight / cat_weight.sum(),
        generic_cats=generic_cats,
        generic_p=cat_weight[generic_cats] / cat_weight[generic_cats].sum(),
        business_cats=business_cats,
        business_p=cat_weight[business_cats] / cat_weight[business_cats].sum(),
        related=_Variants.build(related_lists),
        related_by_name=related_by_name,
        langs=tuple(langs),
        countries=tuple(countries),
        city_country=np.array([r[0] for r in city_rows], dtype=np.int64),
        city_lat=np.array([float(r[1]["lat"]) for r in city_rows]),
        city_lon=np.array([float(r[1]["lon"]) for r in city_rows]),
        city_weight=np.array([r[2] for r in city_rows]),
        city_area=tuple(str(r[1]["area"]) for r in city_rows),
        city_zip=tuple(str(r[1]["zip"]) for r in city_rows),
        city_names=_Variants.build([[str(n) for n in r[1]["names"]] for r in city_rows]),
        city_states=_Variants.build([[str(n) for n in r[1]["states"]] for r in city_rows]),
        brand_name=_obj([str(b["name"]) for b in brands]),
        brand_local=tuple({str(k): str(v) for k, v in b["local"].items()} for b in brands),
        brand_cat=np.array([cat_index[str(b["cat"])] for b in brands], dtype=np.int64),
        brand_domain=_obj([str(b["domain"]) for b in brands]),
        brand_variants=_Variants.build(
            [[str(b["name"]), *(str(v) for v in b["variants"])] for b in brands]
        ),
        abbreviations={str(k): tuple(str(a) for a in v) for k, v in raw["abbreviations"].items()},
    )


# --------------------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, n_choices: int, size: int) -> IntArray:
    return rng.integers(0, n_choices, size=size, dtype=np.int64)


def _pick_variant(rng: np.random.Generator, var: _Variants, items: IntArray) -> IntArray:
    """A uniformly chosen flat index among the variants of each item."""
    u = rng.random(items.size)
    return var.off[items] + np.minimum((u * var.cnt[items]).astype(np.int64), var.cnt[items] - 1)


def _fill(template: str, values: Mapping[str, ObjArray], n: int, *, spaced: bool) -> ObjArray:
    """Fill a str.format template element-wise from object arrays.

    With ``spaced`` (Latin rendering of a non-Latin template) literal text in another
    script is dropped and fields are separated by spaces; collapse spaces afterwards.
    """
    out: ObjArray = np.full(n, "", dtype=object)
    for literal, field, _, _ in _FORMATTER.parse(template):
        if literal:
            out = out + (literal if not spaced or _is_latin(literal) else " ")
        if field is not None:
            out = out + " " + values[field] if spaced else out + values[field]
    return out


def _squeeze(arr: ObjArray) -> ObjArray:
    return _obj([" ".join(s.split()) for s in arr.tolist()])


def _offset(
    lat: FloatArray, lon: FloatArray, dist_m: FloatArray, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Move points by dist_m metres in uniformly random directions."""
    bearing = rng.random(dist_m.size) * (2.0 * math.pi)
    dlat = dist_m * np.cos(bearing) / _EARTH_M_PER_DEG
    coslat = np.maximum(np.cos(np.radians(lat)), 0.05)
    dlon = dist_m * np.sin(bearing) / (_EARTH_M_PER_DEG * coslat)
    new_lat = np.clip(lat + dlat, -89.999, 89.999)
    new_lon = (lon + dlon + 180.0) % 360.0 - 180.0
    return new_lat, new_lon


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> FloatArray:
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def _group_sizes(rng: np.random.Generator, n_rows: int, profile: GeneratorProfile) -> IntArray:
    """Records per place, summing exactly to n_rows (the last group is trimmed)."""
    pmf = profile.group_size_pmf()
    mean = float((np.arange(1, pmf.size + 1) * pmf).sum())
    chunks: list[IntArray] = []
    total = 0
    while total < n_rows:
        draw = rng.choice(
            np.arange(1, pmf.size + 1, dtype=np.int64),
            size=int((n_rows - total) / mean * 1.05) + 16,
            p=pmf,
        )
        chunks.append(draw)
        total += int(draw.sum())
    sizes = np.concatenate(chunks)
    csum = np.cumsum(sizes)
    n_places = int(np.searchsorted(csum, n_rows)) + 1
    sizes = sizes[:n_places].copy()
    sizes[-1] -= int(csum[n_places - 1]) - n_rows
    return sizes


# --------------------------------------------------------------------------- places


@dataclass
class _Places:
    country: IntArray
    city: IntArray
    lang: IntArray
    kind: IntArray
    cat: IntArray
    brand: IntArray
    lat: FloatArray
    lon: FloatArray
    name: ObjArray
    name_alt: ObjArray
    type_local: ObjArray
    type_en: ObjArray
    categories: ObjArray
    address: ObjArray
    city_name: ObjArray
    state: ObjArray
    zip: ObjArray
    phone_digits: ObjArray
    phone_format: IntArray
    url_format: IntArray
    tld: ObjArray


def _categories_strings(rng: np.random.Generator, gz: _Gazetteer, cat: IntArray) -> ObjArray:
    """Primary category plus 0-2 related ones, comma separated."""
    n = cat.size
    out = gz.cat_names[cat].copy()
    n_extra = rng.choice(3, size=n, p=[0.55, 0.33, 0.12])
    cnt = gz.related.cnt[cat]
    n_extra = np.minimum(n_extra, cnt)
    r1 = np.minimum((rng.random(n) * cnt).astype(np.int64), np.maximum(cnt - 1, 0))
    step = 1 + np.minimum(
        (rng.random(n) * np.maximum(cnt - 1, 1)).astype(np.int64), np.maximum(cnt - 2, 0)
    )
    r2 = np.where(cnt > 0, (r1 + step) % np.maximum(cnt, 1), 0)
    safe_off = gz.related.off[cat]
    flat = gz.related.flat
    has1 = n_extra >= 1
    has2 = n_extra >= 2
    extra1 = flat[np.minimum(safe_off + r1, flat.size - 1)]
    extra2 = flat[np.minimum(safe_off + r2, flat.size - 1)]
    out[has1] = out[has1] + ", " + extra1[has1]
    out[has2] = out[has2] + ", " + extra2[has2]
    first = has1 & (rng.random(n) < 0.2)
    out[first & ~has2] = extra1[first & ~has2] + ", " + gz.cat_names[cat[first & ~has2]]
    return out


def _country_places(
    rng: np.random.Generator,
    gz: _Gazetteer,
    profile: GeneratorProfile,
    pl: _Places,
    *,
    ci: int,
    ix: IntArray,
) -> None:
    """Names, categories and addresses of the places `ix`, all in country `ci`."""
    country = gz.countries[ci]
    lang = gz.langs[country.lang]
    m = ix.size
    kind = pl.kind[ix]

    # categories: brands bring theirs, generic names use generic categories
    brand = np.full(m, -1, dtype=np.int64)
    is_brand = kind == _KIND_BRAND
    brand[is_brand] = rng.choice(country.brands, size=int(is_brand.sum()), p=country.brand_p)
    cat = rng.choice(gz.cat_p.size, size=m, p=gz.cat_p).astype(np.int64)
    is_generic = kind == _KIND_GENERIC
    cat[is_generic] = rng.choice(gz.generic_cats, size=int(is_generic.sum()), p=gz.generic_p)
    is_personal = kind == _KIND_PERSONAL
    cat[is_personal] = rng.choice(gz.business_cats, size=int(is_personal.sum()), p=gz.business_p)
    cat[is_brand] = gz.brand_cat[brand[is_brand]]
    type_local = lang.types[cat]
    type_en = gz.cat_type_en[cat]

    name: ObjArray = np.full(m, "", dtype=object)
    alt: ObjArray = np.full(m, "", dtype=object)
    spaced = not lang.latin_script
    for k, templates in (
        (_KIND_PERSONAL, lang.personal),
        (_KIND_PLACE, lang.place),
        (_KIND_WORD, lang.word),
    ):
        sel = np.flatnonzero(kind == k)
        if sel.size == 0:
            continue
        tpl_idx = _pick(rng, len(templates), sel.size)
        s_i, p_i, w_i, w2_i = (
            _pick(rng, len(w), sel.size)
            for w in (lang.surnames, lang.places, lang.words, lang.words)
        )
        local = {
            "surname": lang.surnames.local[s_i],
            "place": lang.places.local[p_i],
            "word": lang.words.local[w_i],
            "word2": lang.words.local[w2_i],
            "type": type_local[sel],
        }
        latin = {
            "surname": lang.surnames.latin[s_i],
            "place": lang.places.latin[p_i],
            "word": lang.words.latin[w_i],
            "word2": lang.words.latin[w2_i],
            "type": type_en[sel],
        }
        for t, template in enumerate(templates):
            sub = tpl_idx == t
            if not sub.any():
                continue
            n_sub = int(sub.sum())
            name[sel[sub]] = _fill(template, _subset(local, sub), n_sub, spaced=False)
            alt[sel[sub]] = _fill(template, _subset(latin, sub), n_sub, spaced=spaced)

    gen = np.flatnonzero(is_generic)
    name[gen] = type_local[gen]
    alt[gen] = type_en[gen]

    bsel = np.flatnonzero(is_brand)
    if bsel.size:
        b = brand[bsel]
        local_names = _obj([gz.brand_local[i].get(lang.code, gz.brand_name[i]) for i in b.tolist()])
        variant = gz.brand_variants.flat[_pick_variant(rng, gz.brand_variants, b)]
        name[bsel] = local_names
        alt[bsel] = np.where(local_names != gz.brand_name[b], gz.brand_name[b], variant)
        branch = rng.random(bsel.size) < profile.branch_share
        if branch.any():
            bi = bsel[branch]
            tpl_idx = _pick(rng, len(lang.branch), bi.size)
            p_i = _pick(rng, len(lang.places), bi.size)
            for t, template in enumerate(lang.branch):
                sub = tpl_idx == t
                if not sub.any():
                    continue
                loc = {"name": name[bi[sub]], "place": lang.places.local[p_i[sub]]}
                lat = {"name": alt[bi[sub]], "place": lang.places.latin[p_i[sub]]}
                name[bi[sub]] = _fill(template, loc, int(sub.sum()), spaced=False)
                alt[bi[sub]] = _fill(template, lat, int(sub.sum()), spaced=spaced)

    if spaced:
        alt = _squeeze(alt)
    # some places are known under their Latin / English name first
    swap = rng.random(m) < country.latin_share
    name[swap], alt[swap] = alt[swap], name[swap].copy()

    # address
    tpl_idx = _pick(rng, len(lang.address), m)
    st_i = _pick(rng, lang.stypes_full.size, m)
    stype = np.where(
        rng.random(m) < profile.abbreviated_street_share,
        lang.stypes_abbr[st_i],
        lang.stypes_full[st_i],
    )
    num = np.exp(rng.uniform(0.0, math.log(400.0), m)).astype(np.int64)
    values = {
        "street": lang.streets.local[_pick(rng, len(lang.streets), m)],
        "stype": stype,
        "num": num.astype(str).astype(object),
        "num2": rng.integers(1, 40, m).astype(str).astype(object),
        "num3": rng.integers(1, 25, m).astype(str).astype(object),
        "place": lang.places.local[_pick(rng, len(lang.places), m)],
    }
    address: ObjArray = np.full(m, "", dtype=object)
    for t, template in enumerate(lang.address):
        sub = tpl_idx == t
        if sub.any():
            address[sub] = _fill(template, _subset(values, sub), int(sub.sum()), spaced=False)

    pl.brand[ix] = brand
    pl.cat[ix] = cat
    pl.type_local[ix] = type_local
    pl.type_en[ix] = type_en
    pl.name[ix] = name
    pl.name_alt[ix] = alt
    pl.categories[ix] = _categories_strings(rng, gz, cat)
    pl.address[ix] = address
    pl.tld[ix] = _obj(country.tlds)[_pick(rng, len(country.tlds), m)]


def _subset(values: Mapping[str, ObjArray], mask: BoolArray) -> dict[str, ObjArray]:
    return {k: v[mask] for k, v in values.items()}


def _city_fields(
    rng: np.random.Generator, gz: _Gazetteer, profile: GeneratorProfile, pl: _Places
) -> None:
    """City and state spellings, zip codes and phone numbers, per city."""
    n = pl.city.size
    variant = rng.random(n) < profile.city_variant_share
    ni = gz.city_names.off[pl.city]
    ni[variant] = _pick_variant(rng, gz.city_names, pl.city[variant])
    pl.city_name[:] = gz.city_names.flat[ni]
    si = gz.city_states.off[pl.city]
    other = rng.random(n) < profile.state_variant_share
    si[other] = _pick_variant(rng, gz.city_states, pl.city[other])
    pl.state[:] = gz.city_states.flat[si]

    order = np.argsort(pl.city, kind="stable")
    bounds = np.searchsorted(pl.city[order], np.arange(gz.city_lat.size + 1))
    for c in range(gz.city_lat.size):
        ix = order[bounds[c] : bounds[c + 1]]
        m = ix.size
        if m == 0:
            continue
        zips: ObjArray = np.full(m, "", dtype=object)
        for ch in gz.city_zip[c]:
            if ch == "#":
                zips = zips + _DIGITS[_pick(rng, 10, m)]
            elif ch == "@":
                zips = zips + _LETTERS[_pick(rng, 26, m)]
            else:
                zips = zips + ch
        pl.zip[ix] = zips
        country = gz.countries[int(gz.city_country[c])]
        area = gz.city_area[c]
        fill = max(country.length - len(area), 1)
        rest = rng.integers(2 * 10 ** (fill - 1), 10**fill, m)
        pl.phone_digits[ix] = area + rest.astype(str).astype(object)


def _make_places(
    rng: np.random.Generator, n_places: int, profile: GeneratorProfile, gz: _Gazetteer
) -> _Places:
    weights = gz.city_weight.copy()
    if profile.country_weights is not None:
        wanted = dict(profile.country_weights)
        codes = [gz.countries[int(c)].code for c in gz.city_country]
        share = np.array([wanted.get(code, 0.0) for code in codes])
        per_country = np.bincount(gz.city_country, weights=gz.city_weight)
        weights = share * gz.city_weight / per_country[gz.city_country]
        if weights.sum() <= 0:
            raise ValueError("country_weights select no known country")
    city = rng.choice(weights.size, size=n_places, p=weights / weights.sum()).astype(np.int64)
    kind_p = np.array(profile.kind_weights) / sum(profile.kind_weights)
    kind = rng.choice(5, size=n_places, p=kind_p).astype(np.int64)

    # hard negatives: a sibling copies country and city of the last non-sibling (its root)
    after = np.select(
        [kind == _KIND_BRAND, kind == _KIND_GENERIC],
        [profile.sibling_after_brand, profile.sibling_after_generic],
        profile.sibling_after_other,
    )
    sibling = np.zeros(n_places, dtype=bool)
    if n_places > 1:
        sibling[1:] = rng.random(n_places - 1) < after[:-1]
    idx = np.arange(n_places, dtype=np.int64)
    root = np.maximum.accumulate(np.where(sibling, 0, idx))
    city = city[root]
    kind[sibling] = kind[root[sibling]]
    country = gz.city_country[city]

    # place coordinates: heavy-tailed distance from the city centre
    far = rng.random(n_places) < profile.outskirts_share
    dist_km = np.where(
        far,
        _log_uniform(rng, *profile.outskirts_km, n_places),
        np.minimum(
            rng.lognormal(math.log(profile.centre_median_km), profile.centre_sigma, n_places),
            profile.outskirts_km[1],
        ),
    )
    lat, lon = _offset(gz.city_lat[city], gz.city_lon[city], dist_km * 1000.0, rng)

    def empty() -> ObjArray:
        return np.full(n_places, "", dtype=object)

    pl = _Places(
        country=country,
        city=city,
        lang=np.array([gz.countries[c].lang for c in range(len(gz.countries))])[country],
        kind=kind,
        cat=np.zeros(n_places, dtype=np.int64),
        brand=np.full(n_places, -1, dtype=np.int64),
        lat=lat,
        lon=lon,
        name=empty(),
        name_alt=empty(),
        type_local=empty(),
        type_en=empty(),
        categories=empty(),
        address=empty(),
        city_name=empty(),
        state=empty(),
        zip=empty(),
        phone_digits=empty(),
        phone_format=rng.choice(len(_PHONE_FORMATS), size=n_places).astype(np.int64),
        url_format=rng.choice(len(_URL_FORMATS), size=n_places).astype(np.int64),
        tld=empty(),
    )
    for ci in range(len(gz.countries)):
        ix = np.flatnonzero(country == ci)
        if ix.size:
            _country_places(rng, gz, profile, pl, ci=ci, ix=ix)
    _city_fields(rng, gz, profile, pl)

    # siblings: same chain / same generic name nearby, or same address
    sib = np.flatnonzero(sibling)
    r = root[sib]
    same_name = (kind[r] == _KIND_BRAND) | (kind[r] == _KIND_GENERIC)
    copy_name = sib[same_name]
    src = r[same_name]
    for arr in (pl.name, pl.name_alt, pl.type_local, pl.type_en, pl.categories, pl.tld):
        arr[copy_name] = arr[src]
    pl.cat[copy_name] = pl.cat[src]
    pl.brand[copy_name] = pl.brand[src]
    building = sib[~same_name]
    for arr in (pl.address, pl.zip, pl.city_name, pl.state):
        arr[building] = arr[r[~same_name]]
    dist_m = np.where(
        kind[r] == _KIND_BRAND,
        rng.uniform(*profile.chain_offset_m, sib.size),
        np.where(
            kind[r] == _KIND_GENERIC,
            rng.uniform(*profile.generic_offset_m, sib.size),
            rng.uniform(0.0, profile.building_offset_m, sib.size),
        ),
    )
    pl.lat[sib], pl.lon[sib] = _offset(pl.lat[r], pl.lon[r], dist_m, rng)
    return pl


# --------------------------------------------------------------------------- perturbation


class _Draw:
    """Uniform numbers from the numpy generator, buffered for cheap scalar use."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._i = 0

    def u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(1 << 16).tolist()
            self._i = 0
        v = self._buf[self._i]
        self._i += 1
        return v

    def below(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def pick(self, seq: Sequence[str]) -> str:
        return seq[self.below(len(seq))]


def _abbreviation_regexes(
    table: Mapping[str, tuple[str, ...]],
) -> tuple[re.Pattern[str], dict[str, tuple[str, ...]], re.Pattern[str], dict[str, str]]:
    forward: dict[str, tuple[str, ...]] = {}
    reverse: dict[str, str] = {}
    words: list[str] = []
    anywhere: list[str] = []
    for key, alts in table.items():
        full = key.lstrip("~")
        forward[full] = alts
        (anywhere if key.startswith("~") else words).append(re.escape(full))
        for a in alts:
            if len(a.rstrip(".")) >= 2 and a not in reverse and a != full:
                reverse[a] = full
    by_len = sorted(words, key=len, reverse=True)
    anywhere = sorted(anywhere, key=len, reverse=True)
    fwd = re.compile("|".join([rf"(?<!\w)(?:{'|'.join(by_len)})(?!\w)", *anywhere]))
    rev_keys = sorted((re.escape(a) for a in reverse), key=len, reverse=True)
    rev = re.compile(rf"(?<!\w)(?:{'|'.join(rev_keys)})(?![\w.])")
    return fwd, forward, rev, reverse


class _Perturber:
    """Changes one record's strings the way a second source would write them."""

    def __init__(self, draw: _Draw, profile: GeneratorProfile, gz: _Gazetteer) -> None:
        self.d = draw
        self.p = profile
        self.gz = gz
        self.fwd, self.forward, self.rev, self.reverse = _abbreviation_regexes(gz.abbreviations)
        self.latin_branch = next(lg.branch for lg in gz.langs if lg.code == "en")
        self.place_words = [
            (tuple(lang.places.local.tolist()), tuple(lang.places.latin.tolist()))
            for lang in gz.langs
        ]

    # -- generic string edits
    def case(self, s: str) -> str:
        u = self.d.u()
        if u < 0.35:
            return s.lower()
        if u < 0.6:
            return s.upper()
        if u < 0.85:
            return s.title()
        return s[:1].lower() + s[1:]

    def typo(self, s: str) -> str:
        n = len(s)
        if n < 4:
            return s
        i = self.d.below(n - 1)
        u = self.d.u()
        if u < 0.3:
            return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
        if u < 0.55:
            return s[:i] + s[i + 1 :]
        if u < 0.8:
            return s[: i + 1] + s[i] + s[i + 1 :]
        ch = string.ascii_lowercase[self.d.below(26)] if s[i].isascii() else s[self.d.below(n)]
        return s[:i] + ch + s[i + 1 :]

    def abbreviate(self, s: str) -> str:
        def shorten(m: re.Match[str]) -> str:
            return self.d.pick(self.forward[m.group(0)])

        out = self.fwd.sub(shorten, s)
        if out != s:
            return out

        def expand(m: re.Match[str]) -> str:
            return self.reverse[m.group(0)]

        return self.rev.sub(expand, s)

    def transliterate(self, s: str) -> str:
        t = " ".join(anyascii(s).split())
        return t.title() if self.d.u() < 0.6 else t

    # -- fields
    def name(self, s: str, alt: str, t_local: str, t_en: str, *, lang: int, city: str) -> str:
        d, p = self.d, self.p
        orig = s
        if alt != s and d.u() < p.p_other_language:
            s = alt
        elif not s.isascii() and d.u() < p.p_transliterate:
            s = self.transliterate(s)
        if d.u() < p.p_drop_word:
            s = self._drop_word(s, t_local, t_en)
        if d.u() < p.p_add_word:
            s = self._add_word(s, lang, city, t_en)
        if d.u() < p.p_abbreviate:
            s = self.abbreviate(s)
        if d.u() < p.p_case:
            s = self.case(s)
        if d.u() < p.p_typo:
            s = self.typo(s)
        s = " ".join(s.split())
        return s or orig

    def _drop_word(self, s: str, t_local: str, t_en: str) -> str:
        for t in (t_local, t_en):
            if t and t in s and s.strip() != t:
                return s.replace(t, " ", 1)
        tokens = s.split()
        if len(tokens) < 2:
            return s
        del tokens[-1 if self.d.u() < 0.5 else self.d.below(len(tokens))]
        return " ".join(tokens)

    def _add_word(self, s: str, lang: int, city: str, t_en: str) -> str:
        d = self.d
        lg = self.gz.langs[lang]
        latin = s.isascii()
        u = d.u()
        if u < 0.35:
            local, lat = self.place_words[lang]
            place = d.pick(lat if latin else local)
            template = d.pick(self.latin_branch if latin else lg.branch)
            return template.replace("{name}", s).replace("{place}", place)
        if u < 0.55 and city:
            return f"{s} {city}" if d.u() < 0.8 else f"{city} {s}"
        if u < 0.75 and (lg.suffixes or lg.prefixes):
            if lg.suffixes and (not lg.prefixes or d.u() < 0.5):
                return f"{s} {d.pick(lg.suffixes)}"
            return f"{d.pick(lg.prefixes)} {s}"
        if t_en.lower() not in s.lower():
            return f"{s} {t_en}"
        return f"{s} Ltd"

    def address(self, s: str, city: str) -> str:
        d, p = self.d, self.p
        orig = s
        if d.u() < p.p_address_abbreviate:
            s = self.abbreviate(s)
        if not s.isascii() and d.u() < p.p_transliterate * 0.5:
            s = self.transliterate(s)
        if d.u() < p.p_address_drop_part:
            head, sep, _ = s.rpartition(",")
            if sep and head.strip():
                s = head
            else:
                s = " ".join(t for t in s.split() if not t.isdigit()) or s
        if city and d.u() < p.p_address_add_city:
            s = f"{s}, {city}"
        if d.u() < p.p_case * 0.5:
            s = self.case(s)
        if d.u() < p.p_typo * 0.5:
            s = self.typo(s)
        s = " ".join(s.split())
        return s or orig

    def variant(self, s: str, options: tuple[str, ...], prob: float) -> str:
        if len(options) > 1 and self.d.u() < prob:
            choice = self.d.pick(options)
            if choice == s:
                choice = options[(options.index(s) + 1) % len(options)]
            s = choice
        if not s.isascii() and self.d.u() < self.p.p_transliterate * 0.3:
            return self.transliterate(s)
        if self.d.u() < self.p.p_case * 0.5:
            return self.case(s)
        return s

    def zip(self, s: str) -> str:
        if self.d.u() < self.p.p_zip_compact:
            return s.replace(" ", "").replace("-", "") or s
        return s

    def categories(self, s: str) -> str:
        d, p = self.d, self.p
        parts = s.split(", ")
        if d.u() < p.p_category_synonym:
            i = d.below(len(parts))
            related = self.gz.related_by_name.get(parts[i])
            if related:
                parts[i] = d.pick(related)
        if len(parts) > 1 and d.u() < p.p_category_drop:
            del parts[d.below(len(parts))]
        if d.u() < p.p_category_add and len(parts) < 3:
            related = self.gz.related_by_name.get(parts[0])
            if related:
                parts.append(d.pick(related))
        if len(parts) > 1 and d.u() < p.p_category_shuffle:
            parts = parts[1:] + parts[:1]
        return ", ".join(dict.fromkeys(parts))


# --------------------------------------------------------------------------- phone / url


_PHONE_FORMATS = (
    "+{cc} {spaced}",  # +33 1 42 34 56 78
    "+{cc} {dashed}",  # +1 415-555-0132
    "{trunk}{digits}",  # 0142345678
    "+{cc}{digits}",  # +14155550132
    "({trunk}{head}) {tail_spaced}",  # (415) 555 0132
    "{trunk}{dashed}",  # 03-1234-5678
    "{cc}{digits}",  # 14155550132
    "+{cc} ({head}) {tail_dashed}",  # +1 (415) 555-0132
)
_URL_FORMATS = (
    "http://www.{domain}/",
    "{domain}",
    "https://{domain}/",
    "https://www.{domain}",
    "www.{domain}",
    "https://{domain}/{lang}/home",
    "http://{domain}/index.html",
)


def _format_phone(digits: str, country: _Country, fmt: int) -> str:
    """One of the `_PHONE_FORMATS` for a national number (without trunk prefix)."""
    groups: list[str] = []
    pos = 0
    for g in country.groups:
        if pos >= len(digits):
            break
        groups.append(digits[pos : pos + g])
        pos += g
    if pos < len(digits):
        groups.append(digits[pos:])
    text = _PHONE_FORMATS[fmt].format(
        cc=country.cc,
        trunk=country.trunk,
        digits=digits,
        spaced=" ".join(groups),
        dashed="-".join(groups),
        head=groups[0],
        tail_spaced=" ".join(groups[1:]),
        tail_dashed="-".join(groups[1:]),
    )
    return text.strip()


def _slug(text: str, joiner: str) -> str:
    tokens = re.findall(r"[a-z0-9]+", anyascii(text).lower())
    return joiner.join(tokens)[:30].strip("-")


def _format_url(domain: str, fmt: int, lang: str) -> str:
    return _URL_FORMATS[fmt].format(domain=domain, lang=lang)


# --------------------------------------------------------------------------- rows


def _presence(
    rng: np.random.Generator,
    target: float,
    place_of_row: IntArray,
    profile: GeneratorProfile,
    eligible: BoolArray,
) -> BoolArray:
    """Rows where a column is filled: a place-level latent flag plus per-record noise.

    Only rows of `eligible` places (a per-place mask) are ever filled; the others are
    made up for so that the share over all rows still meets `target`.
    """
    a, b = profile.copy_keeps_field, profile.copy_adds_field
    row_ok = eligible[place_of_row]
    frac = float(row_ok.mean()) if row_ok.size else 1.0
    wanted = min(target / frac, 1.0) if frac > 0 else 0.0
    u = rng.random(place_of_row.size)
    if wanted >= a:  # too high for the two-level model: rows drawn independently
        return row_ok & (u < wanted)
    has = rng.random(eligible.size) < max(0.0, (wanted - b) / (a - b))
    return row_ok & np.where(has[place_of_row], u < a, u < b)


def _unique_hex_ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    values = rng.integers(0, 1 << 56, size=n, dtype=np.int64)
    while True:
        uniq, first = np.unique(values, return_index=True)
        if uniq.size == n:
            break
        dup = np.setdiff1d(np.arange(n), first)
        values[dup] = rng.integers(0, 1 << 56, size=dup.size, dtype=np.int64)
    return [f"{prefix}{v:014x}" for v in values.tolist()]


def _column(values: list[str], present: BoolArray) -> ObjArray:
    arr = _obj(values)
    arr[~present] = None
    return arr


def generate_pois(
    n_rows: int, *, seed: int, profile: GeneratorProfile | None = None
) -> pd.DataFrame:
    """Make `n_rows` synthetic POI records labelled with their place.

    Columns are `INPUT_COLUMNS` followed by `POI`; every column holds strings (None
    when missing) except latitude and longitude (float64).  Rows of one place are not
    adjacent.  The same `seed` (and profile) always gives an equal frame.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    prof = profile or GeneratorProfile()
    columns = [*INPUT_COLUMNS, POI]
    if n_rows == 0:
        empty = {c: pd.Series([], dtype=object) for c in columns}
        empty[LATITUDE] = pd.Series([], dtype=np.float64)
        empty[LONGITUDE] = pd.Series([], dtype=np.float64)
        return pd.DataFrame(empty, columns=columns)

    gz = _gazetteer()
    rng = np.random.default_rng(seed)
    sizes = _group_sizes(rng, n_rows, prof)
    pl = _make_places(rng, sizes.size, prof, gz)

    place_of_row = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n_rows) - np.repeat(starts, sizes)
    dups = np.flatnonzero(rank > 0)

    # bare generic places ("Bus Stop", "ATM") have neither phone nor website
    everyone = np.ones(sizes.size, dtype=bool)
    may_contact = pl.kind != _KIND_GENERIC
    present = {
        col: _presence(
            rng, share, place_of_row, prof, may_contact if col in (PHONE, URL) else everyone
        )
        for col, share in prof.non_empty_shares().items()
        if share < 1.0
    }

    # coordinates: duplicates are off by a heavy-tailed distance
    lat = pl.lat[place_of_row]
    lon = pl.lon[place_of_row]
    u = rng.random(dups.size)
    dist = np.where(
        u < prof.dup_very_far_share,
        _log_uniform(rng, *prof.dup_very_far_m, dups.size),
        np.where(
            u < prof.dup_very_far_share + prof.dup_far_share,
            _log_uniform(rng, *prof.dup_far_m, dups.size),
            rng.lognormal(math.log(prof.dup_near_median_m), prof.dup_near_sigma, dups.size),
        ),
    )
    lat[dups], lon[dups] = _offset(lat[dups], lon[dups], dist, rng)

    # strings: the first record of a place as generated, the others perturbed
    names = pl.name[place_of_row].tolist()
    addresses = pl.address[place_of_row].tolist()
    cities = pl.city_name[place_of_row].tolist()
    states = pl.state[place_of_row].tolist()
    zips = pl.zip[place_of_row].tolist()
    cats = pl.categories[place_of_row].tolist()
    pert = _Perturber(_Draw(rng), prof, gz)
    p_name, p_alt = pl.name.tolist(), pl.name_alt.tolist()
    p_tloc, p_ten = pl.type_local.tolist(), pl.type_en.tolist()
    p_lang, p_city = pl.lang.tolist(), pl.city.tolist()
    city_opts, state_opts = gz.city_names.lists, gz.city_states.lists
    has_address, has_city = present[ADDRESS].tolist(), present[CITY].tolist()
    has_state, has_zip = present[STATE].tolist(), present[ZIP].tolist()
    has_cats = present[CATEGORIES].tolist()
    for j in dups.tolist():
        pi = int(place_of_row[j])
        city_txt = cities[j]
        names[j] = pert.name(
            p_name[pi], p_alt[pi], p_tloc[pi], p_ten[pi], lang=p_lang[pi], city=city_txt
        )
        if has_address[j]:
            addresses[j] = pert.address(addresses[j], city_txt)
        if has_city[j]:
            cities[j] = pert.variant(city_txt, city_opts[p_city[pi]], prof.p_city_variant)
        if has_state[j]:
            states[j] = pert.variant(states[j], state_opts[p_city[pi]], prof.p_state_variant)
        if has_zip[j]:
            zips[j] = pert.zip(zips[j])
        if has_cats[j]:
            cats[j] = pert.categories(cats[j])

    # phone and url: the place's format, or another one in a duplicate
    phone_fmt = pl.phone_format[place_of_row]
    url_fmt = pl.url_format[place_of_row]
    re_phone = rng.random(dups.size) < prof.p_phone_reformat
    phone_fmt[dups[re_phone]] = _pick(rng, len(_PHONE_FORMATS), int(re_phone.sum()))
    re_url = rng.random(dups.size) < prof.p_url_reformat
    url_fmt[dups[re_url]] = _pick(rng, len(_URL_FORMATS), int(re_url.sum()))
    joiner = np.where(rng.random(sizes.size) < 0.3, "-", "").astype(object)
    phones: list[str] = [""] * n_rows
    urls: list[str] = [""] * n_rows
    domains: dict[int, str] = {}
    p_country, p_digits = pl.country.tolist(), pl.phone_digits.tolist()
    for j in np.flatnonzero(present[PHONE]).tolist():
        pi = int(place_of_row[j])
        country = gz.countries[p_country[pi]]
        phones[j] = _format_phone(p_digits[pi], country, int(phone_fmt[j]))
    for j in np.flatnonzero(present[URL]).tolist():
        pi = int(place_of_row[j])
        domain = domains.get(pi)
        if domain is None:
            b = int(pl.brand[pi])
            if b >= 0:
                domain = str(gz.brand_domain[b])
            else:
                latin = p_name[pi] if _is_latin(p_name[pi]) else p_alt[pi]
                domain = (_slug(latin, joiner[pi]) or f"place{pi}") + str(pl.tld[pi])
            domains[pi] = domain
        urls[j] = _format_url(domain, int(url_fmt[j]), gz.langs[p_lang[pi]].code)

    country_codes = _obj([c.code for c in gz.countries])[pl.country[place_of_row]]
    data: dict[str, Any] = {
        ID: _obj(_unique_hex_ids(rng, n_rows, "E_")),
        NAME: _obj(names),
        LATITUDE: np.round(lat, 7),
        LONGITUDE: np.round(lon, 7),
        ADDRESS: _column(addresses, present[ADDRESS]),
        CITY: _column(cities, present[CITY]),
        STATE: _column(states, present[STATE]),
        ZIP: _column(zips, present[ZIP]),
        COUNTRY: country_codes,
        URL: _column(urls, present[URL]),
        PHONE: _column(phones, present[PHONE]),
        CATEGORIES: _column(cats, present[CATEGORIES]),
        POI: _obj(_unique_hex_ids(rng, sizes.size, "P_"))[place_of_row],
    }
    order = rng.permutation(n_rows)
    frame = pd.DataFrame({c: data[c][order] for c in columns}, columns=columns)
    return frame


def write_pois_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a frame as UTF-8 CSV with a header, in the input layout's column order.

    The input columns come first (in `INPUT_COLUMNS` order), then `POI` when present;
    missing values are written as empty fields.
    """
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks input columns: {missing}")
    columns = [*INPUT_COLUMNS, *([POI] if POI in df.columns else [])]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(target, columns=columns, index=False, encoding="utf-8", na_rep="")
