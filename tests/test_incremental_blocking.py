"""Incremental blocking: the rows a change can reach, and their lists redone alone.

A table is changed (rows added, some at an existing stack's point with smaller ids;
rows deleted, moved and renamed; a key that was too generic to block on no longer is);
blocking is run on the table before and after. Every row that stayed and whose own
candidate list changed must be among the rows :func:`rows_near_changes` (with the rows
whose lists held a leaving row) names, and :func:`directed_candidates` over those rows
alone must give exactly their lists of a run over the whole table.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.stages.blocking import (
    BITS,
    KTH,
    LEVEL,
    OTHER,
    candidate_pairs,
    directed_candidates,
    kth_distances,
    level_hint,
    pass_label,
    pass_names,
    rows_near_changes,
)

_COLS = (
    f"{S.ID} string, {S.LATITUDE} double, {S.LONGITUDE} double, {S.N_NAME} string, "
    f"{S.N_PHONE} string, {S.N_URL} string"
)
_DEG_PER_M = 1 / 111_320
_SETTINGS = BlockingSettings(
    cell_m=300.0, k_nearest=4, key_passes=("name", "phone", "url"), k_key=2, max_key_group=12
)
Row = tuple[Any, ...]


def _row(rng: random.Random, i: str, spread: float, generic: bool) -> Row:
    r = spread * rng.random() ** 3  # dense near the centre (fine grids), sparse outside
    a = rng.random() * 2 * math.pi
    lat = 48.0 + r * math.sin(a) * _DEG_PER_M
    lon = 2.0 + r * math.cos(a) * _DEG_PER_M / math.cos(math.radians(48.0))
    name = "bus stop" if generic else f"place {rng.randrange(400)}"
    phone = f"+33{rng.randrange(60)}" if rng.random() < 0.3 else None
    url = f"site{rng.randrange(40)}.fr" if rng.random() < 0.2 else None
    return (i, lat, lon, name, phone, url)


def _tables() -> tuple[list[Row], list[Row]]:
    rng = random.Random(11)
    before = [_row(rng, f"r{i:03d}", 3000.0, i % 9 == 0) for i in range(700)]
    before += [(f"s{i}", 48.001, 2.001, f"stack {i}", None, None) for i in range(7)]
    # one more row than the cap allows: "corner shop" is too generic until one leaves
    shops = [_row(rng, f"c{i:02d}", 3000.0, False) for i in range(_SETTINGS.max_key_group + 1)]
    before += [(*shop[:3], "corner shop", *shop[4:]) for shop in shops]
    after = [row for row in before if row[0] != "c05"]
    gone = set(rng.sample(range(700), 12))
    moved = set(rng.sample(sorted(set(range(700)) - gone), 6))
    renamed = set(rng.sample(sorted(set(range(700)) - gone - moved), 6))
    for i in sorted(gone, reverse=True):
        del after[i]  # (the first 700 rows come first in both)
    index = {row[0]: n for n, row in enumerate(after)}
    for i in moved:
        rid, lat, lon, *rest = before[i]
        after[index[rid]] = (rid, lat + 40 * _DEG_PER_M, lon, *rest)
    for i in renamed:
        rid, lat, lon, _, phone, url = before[i]
        after[index[rid]] = (rid, lat, lon, "bus stop", phone, url)
    after += [_row(rng, f"n{i:02d}", 3000.0, i % 4 == 0) for i in range(14)]
    # an arriving row at the stack's point with the smallest id pushes one out
    after += [("a0", 48.001, 2.001, "stack new", None, None)]
    after += [("s9", *before[3][1:])]  # an exact copy of a row under a new id
    return before, after


def _lists(frame: DataFrame) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for r in frame.collect():
        out.setdefault(r[S.ID], set()).add((r[OTHER], int(r[BITS])))
    return out


@pytest.fixture(scope="module")
def tables(spark: SparkSession) -> dict[str, Any]:
    before_rows, after_rows = _tables()
    before = spark.createDataFrame(before_rows, _COLS)
    after = spark.createDataFrame(after_rows, _COLS)
    old = directed_candidates(before, settings=_SETTINGS).cache()
    new = directed_candidates(after, settings=_SETTINGS).cache()
    frames = {
        "before_rows": before_rows,
        "after_rows": after_rows,
        "before": before,
        "after": after,
        "old": old,
        "new": new,
    }
    frames["affected"] = _affected(spark, frames)  # read by two tests: computed once
    return frames


def _affected(spark: SparkSession, t: dict[str, Any]) -> set[str]:
    before: Sequence[Row] = t["before_rows"]
    after: Sequence[Row] = t["after_rows"]
    old_values, new_values = set(before), set(after)
    arriving = [r for r in after if r not in old_values]
    leaving = [r for r in before if r not in new_values]
    stay = {r[0] for r in after if r in old_values}
    kth = kth_distances(t["old"], _SETTINGS)
    kept = t["before"].where(F.col(S.ID).isin(sorted(stay))).join(kth, on=S.ID, how="left")
    added = spark.createDataFrame(arriving, _COLS)
    removed = spark.createDataFrame(leaving, _COLS)
    near = {r[S.ID] for r in rows_near_changes(kept, added, removed, settings=_SETTINGS).collect()}
    leaving_ids = {r[0] for r in leaving}
    held = {i for i, lst in _lists(t["old"]).items() if {o for o, _ in lst} & leaving_ids}
    current = {r[0] for r in after}
    return (near | held | {r[0] for r in arriving}) & current


def test_every_row_whose_list_changed_is_redone(spark: SparkSession, tables: Any) -> None:
    old, new = _lists(tables["old"]), _lists(tables["new"])
    unchanged_rows = {r[0] for r in set(tables["after_rows"]) & set(tables["before_rows"])}
    changed_lists = {i for i in unchanged_rows if old.get(i, set()) != new.get(i, set())}
    affected = tables["affected"]
    assert len(changed_lists) >= 20  # the changes reach rows around them: not trivial
    assert changed_lists <= affected, sorted(changed_lists - affected)
    # ... and only what the changes can reach is redone, not the table (here 174 lists
    # changed and 238 rows are redone, of 723)
    assert len(affected) < 1.6 * len(changed_lists)


def test_lists_redone_alone_equal_the_whole_tables(spark: SparkSession, tables: Any) -> None:
    affected = sorted(tables["affected"])
    ids = spark.createDataFrame([(i,) for i in affected], f"{S.ID} string")
    # grid levels to start on: from the last run's k-th distances (null for new rows),
    # and for every third row a level far too fine (redone on the coarse grid)
    hint = level_hint(F.col(KTH), _SETTINGS.cell_m)
    too_fine = F.crc32(F.col(S.ID)) % 3 == 0
    hints = ids.join(
        kth_distances(tables["old"], _SETTINGS).select(S.ID, hint.alias(LEVEL)),
        on=S.ID,
        how="left",
    ).withColumn(LEVEL, F.when(too_fine, F.lit(4)).otherwise(F.col(LEVEL)))
    assert {r[LEVEL] for r in hints.collect()} >= {None, 0, 2, 4}
    whole = {i: lst for i, lst in _lists(tables["new"]).items() if i in set(affected)}
    for query in (ids, hints):
        alone = directed_candidates(tables["after"], settings=_SETTINGS, query_ids=query)
        assert _lists(alone) == whole


def test_directed_lists_make_the_candidate_pairs(spark: SparkSession, tables: Any) -> None:
    names = pass_names(_SETTINGS)
    pairs = candidate_pairs(tables["after"], settings=_SETTINGS)
    expected = {(r[S.ID_L], r[S.ID_R], r[S.PASS]) for r in pairs.collect()}
    canonical = (
        tables["new"]
        .select(F.least(S.ID, OTHER).alias(S.ID_L), F.greatest(S.ID, OTHER).alias(S.ID_R), BITS)
        .groupBy(S.ID_L, S.ID_R)
        .agg(F.bit_or(BITS).alias(BITS))
        .select(S.ID_L, S.ID_R, pass_label(F.col(BITS), names).alias(S.PASS))
    )
    got = {(r[S.ID_L], r[S.ID_R], r[S.PASS]) for r in canonical.collect()}
    assert got == expected
    assert {p for *_, p in got} >= {"spatial", "name", "name,spatial"}
