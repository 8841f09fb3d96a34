"""Matching uploads against the POI table through its lookup table.

A generated table is matched (batch plan) and its lookup table written; uploads are
trivially edited copies of table rows (new ids), rows far from anything, and a row
carrying an id the table also has. Each copy must find its original id and group; the
lookup must read only the files of the cells it needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.lookup import (
    HELD_DEG,
    STORED,
    HeldLookup,
    KnownTable,
    _cells_each,
    _cells_within,
    _held_cells,
    _reach_deg,
    held_lookup,
    hold_lookup,
    known_rows,
    pin_lookup,
    write_lookup,
)
from poimatch.runs.against import KNOWN_GROUPS, KNOWN_IDS, match_against
from poimatch.runs.workflows import FitOutcome, match_with_model
from poimatch.sample.generator import generate_pois
from poimatch.stages import candidates
from poimatch.stages.blocking import nearest_rows
from poimatch.stages.candidates import cached_candidates, cached_points
from poimatch.stages.namestats import add_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH, SMALL

COLUMNS = [f.name for f in S.poi_table_schema().fields]


def _frame(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    frame = frame.copy()
    frame[S.LATITUDE] = frame[S.LATITUDE].astype(float)
    frame[S.LONGITUDE] = frame[S.LONGITUDE].astype(float)
    for column in (S.SOURCE, S.POI):
        if column not in frame.columns:
            frame[column] = None
    return spark.createDataFrame(frame[COLUMNS], schema=S.poi_table_schema())


def _written(points: DataFrame, folder: Path, *, rows: int, rows_per_file: int) -> KnownTable:
    """A lookup table of ``points`` (each row its own group) under ``folder``, pinned."""
    path = str(folder / "pois_lookup")
    write_lookup(
        points,
        points.select(S.ID, F.col(S.ID).alias(S.GROUP_ID)),
        path,
        rows=rows,
        rows_per_file=rows_per_file,
        user_metadata="test",
    )
    known = pin_lookup(points.sparkSession, path)
    assert known is not None
    return known


@pytest.fixture(scope="module")
def lookup(
    spark: SparkSession, small_matcher: FitOutcome, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    table = generate_pois(1500, seed=808)
    result = match_with_model(
        _frame(spark, table), model=small_matcher.model, spec=small_matcher.spec, plan=BATCH
    )
    assert result.points is not None
    path = str(tmp_path_factory.mktemp("lookup") / "pois_lookup")
    write_lookup(
        result.points,
        result.matches,
        path,
        rows=result.rows,
        rows_per_file=200,
        user_metadata="input=test model=small",
    )
    groups = result.matches.select(S.ID, S.GROUP_ID).toPandas().set_index(S.ID)[S.GROUP_ID]
    known = pin_lookup(spark, path)
    assert known is not None
    held = HeldLookup.load(spark, known)
    return {"table": table, "path": path, "known": known, "groups": groups, "held": held}


def _upload(table: pd.DataFrame) -> pd.DataFrame:
    copies = table.sample(60, random_state=9).copy()
    copies[S.POI] = copies[S.ID]  # the original id, for the test only
    copies[S.ID] = "up_" + copies[S.ID]
    copies[S.NAME] = copies[S.NAME].str.upper() + " "  # trivial edits
    copies[S.ADDRESS] = copies[S.ADDRESS].str.replace(" ", "  ", n=1, regex=False)
    far = table.head(3).copy()
    far[S.POI] = None
    far[S.ID] = [f"far_{i}" for i in range(3)]
    far[S.NAME] = ["Zzyzx Lodge", "Qwerty Atelier", "Vxq Depot"]
    far[S.LATITUDE] = ["-45.0", "-45.01", "-45.02"]
    far[S.LONGITUDE] = ["-170.0", "-170.0", "-170.0"]
    for column in (S.PHONE, S.URL):
        far[column] = ""
    return pd.concat([copies, far], ignore_index=True)


def test_edited_copies_find_their_original_ids_and_groups(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any]
) -> None:
    upload = _upload(lookup["table"])
    original = dict(zip(upload[S.ID], upload[S.POI], strict=True))
    result = match_against(
        _frame(spark, upload.assign(**{S.POI: None})),
        lookup["known"],
        model=small_matcher.model,
        spec=small_matcher.spec,
    )
    out = result.matches.set_index(S.ID)
    assert sorted(out.index) == sorted(upload[S.ID])  # every uploaded id once
    assert all(str(out.at[i, S.MATCHES]).split(" ")[0] == i for i in out.index)
    copies = [i for i in out.index if i.startswith("up_")]
    found = [i for i in copies if original[i] in str(out.at[i, KNOWN_IDS]).split(" ")]
    assert len(found) / len(copies) >= 0.95, out.loc[copies].head(10)
    for i in found:  # the original's group comes with it
        assert lookup["groups"][original[i]] in str(out.at[i, KNOWN_GROUPS]).split(" ")
    for i in ("far_0", "far_1", "far_2"):  # nothing near: nothing known
        assert out.at[i, KNOWN_IDS] == ""
    # uploaded ids never appear among the known ones, table ids never among the uploaded
    assert not any("up_" in str(v) for v in out[KNOWN_IDS])
    assert all(t.startswith(("up_", "far_")) for m in out[S.MATCHES] for t in str(m).split(" "))
    assert 0 < result.known_read < len(lookup["table"])


def test_an_uploaded_id_the_table_also_has_is_kept_apart(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any]
) -> None:
    row = lookup["table"].sample(1, random_state=4).copy()
    same_id = str(row[S.ID].iloc[0])
    result = match_against(
        _frame(spark, row.assign(**{S.POI: None})),
        lookup["known"],
        model=small_matcher.model,
        spec=small_matcher.spec,
    )
    out = result.matches
    assert out[S.ID].tolist() == [same_id]
    assert out[S.MATCHES].tolist() == [same_id]
    assert same_id in str(out[KNOWN_IDS].iloc[0]).split(" ")


def test_prepared_queries_give_the_same_answers_on_other_uploads(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any]
) -> None:
    """The service's warm path (``reuse_plan``): its queries are prepared on one upload
    and re-run on another (other rows, other cells, exact copies); the answers must be
    those of the queries planned afresh (the batch's plan of the small plan's settings,
    interpreted, where the prepared against query runs compiled as one partition)."""
    table = lookup["table"]
    first = _upload(table)
    second = table.sample(40, random_state=21).copy()
    second[S.ID] = "cp_" + second[S.ID]  # exact copies under new ids
    edited = table.sample(25, random_state=22).copy()
    edited[S.ID] = "ed_" + edited[S.ID]
    edited[S.NAME] = edited[S.NAME].str.lower()
    second = pd.concat([second, edited, second.head(5).assign(**{S.ID: lambda f: f[S.ID] + "~2"})])

    def run(upload: pd.DataFrame, reuse: bool) -> pd.DataFrame:
        frame = _frame(spark, upload.assign(**{S.POI: None}))
        out = match_against(
            frame,
            lookup["known"],
            model=small_matcher.model,
            spec=small_matcher.spec,
            reuse_plan=reuse,
        ).matches
        return out.sort_values(S.ID).reset_index(drop=True)

    run(first, True)  # prepares the three queries
    prepared = dict(candidates._prepared[small_matcher.model])
    assert {key[0] for key in prepared} >= {"points", "name_stats", "candidates"}
    # the against query is the one-partition plan (compiled): no shuffle between its steps
    assert [key[-2] for key in prepared if key[0] == "candidates"] == [True]
    reused = run(second, True)
    assert dict(candidates._prepared[small_matcher.model]) == prepared  # none prepared again
    fresh = run(second, False)
    pd.testing.assert_frame_equal(reused, fresh)
    # the copies found their originals (the reused plan read the second upload's cells)
    known = dict(zip(reused[S.ID], reused[KNOWN_IDS], strict=True))
    copies = [i for i in known if i.startswith("cp_")]
    assert all(i[3:].removesuffix("~2") in known[i].split(" ") for i in copies), known


def _files_read(df: DataFrame) -> int:
    """Files the scans of ``df``'s executed plan read (their ``numFiles`` metric)."""
    df.collect()
    plan = df._jdf.queryExecution().executedPlan()
    leaves = plan.collectLeaves()
    total = 0
    for i in range(leaves.size()):
        metric = leaves.apply(i).metrics().get("numFiles")
        if metric.isDefined():
            total += int(metric.get().value())
    return total


def test_a_lookup_reads_only_the_files_of_its_cells(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any]
) -> None:
    files = len(list(Path(lookup["path"]).glob("*.parquet")))
    assert files >= 6
    blocking = BlockingSettings.model_validate(small_matcher.spec.blocking)
    one = lookup["table"].head(1)
    near = pd.DataFrame(
        {
            S.LATITUDE: one[S.LATITUDE].astype(float),
            S.LONGITUDE: one[S.LONGITUDE].astype(float),
            S.N_NAME: [None],
            S.N_PHONE: [None],
            S.N_URL: [None],
        }
    )
    rows = known_rows(spark, lookup["known"], near, blocking)
    read = _files_read(rows)
    assert 1 <= read < files
    ids = {r[S.ID] for r in rows.collect()}
    assert str(one[S.ID].iloc[0]) in ids


@pytest.mark.parametrize("held", [False, True], ids=["files", "held"])
def test_a_lookup_for_a_thousand_uploads_reads_every_row_within_reach(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any], held: bool
) -> None:
    """A lookup for 1,000 uploads plans and runs (its filter once held a box per upload,
    and overflowed the JVM's stack) and finds each table row from its own coordinates,
    from the files and from the table held on the driver."""
    table = lookup["table"]
    blocking = BlockingSettings.model_validate(small_matcher.spec.blocking)
    near = pd.DataFrame(
        {
            S.LATITUDE: table[S.LATITUDE].astype(float),
            S.LONGITUDE: table[S.LONGITUDE].astype(float),
            S.N_NAME: None,
            S.N_PHONE: None,
            S.N_URL: None,
        }
    )
    assert len(near.drop_duplicates()) >= 1000
    on = lookup["held"] if held else None
    ids = {r[S.ID] for r in known_rows(spark, lookup["known"], near, blocking, held=on).collect()}
    assert ids == set(table[S.ID])  # each row is among the nearest to its own coordinates


@pytest.mark.parametrize("link_only", [False, True], ids=["dedupe", "link"])
def test_the_held_table_picks_every_row_the_files_give(
    spark: SparkSession, tmp_path: Path, link_only: bool
) -> None:
    """The rows picked from the held table hold every row the read of the files gives
    (each upload's exact k nearest, and the key rows), deduplicating and linking
    sources: for uploads inside a dense square (hundreds of rows within a cell) exactly
    those, as the k-th nearest within the inner disc bounds the pick; with uploads
    around it too (fewer than k within the inner disc: the box of the upload's reach is
    kept whole), more. A table held at another version is not used."""
    blocking = BlockingSettings(k_nearest=5)
    rng = np.random.default_rng(21)
    base = dict.fromkeys(COLUMNS, "")
    square = 0.004  # degrees: ~450 m of dense rows, with a sparse ring around it

    def row(i: str, dlat: float, dlon: float, source: str | None) -> dict[str, Any]:
        return {
            **base,
            S.ID: i,
            S.NAME: f"Place {i}",
            S.LATITUDE: 40.0 + dlat,
            S.LONGITUDE: -3.0 + dlon,
            S.SOURCE: source,
        }

    sources = ["osm", "fsq"]
    table = [row(f"d{i}", *rng.uniform(0, square, 2), sources[i % 2]) for i in range(600)] + [
        row(f"s{i}", *rng.uniform(-0.01, square + 0.01, 2), sources[i % 2]) for i in range(60)
    ]

    def uploads(n: int, low: float, high: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                S.LATITUDE: 40.0 + rng.uniform(low, high, n),
                S.LONGITUDE: -3.0 + rng.uniform(low, high, n),
                S.N_NAME: None,
                S.N_PHONE: None,
                S.N_URL: None,
                S.SOURCE: rng.choice(["osm", "fsq", None], n),
            }
        )

    dense = uploads(40, 0.0015, square - 0.0015)  # k rows within a few metres
    spread = pd.concat([dense, uploads(20, -0.006, square + 0.006)], ignore_index=True)
    points = add_normalized_columns(_frame(spark, pd.DataFrame(table)))
    known = _written(points, tmp_path, rows=len(table), rows_per_file=200)

    def read(near: pd.DataFrame, held: HeldLookup | None) -> set[str]:
        rows = known_rows(spark, known, near, blocking, link_only=link_only, held=held)
        return {r[S.ID] for r in rows.collect()}

    held = HeldLookup.load(spark, known)
    files = read(dense, None)
    assert len(files) > 8 * blocking.k_nearest
    assert read(dense, held) == files  # the k-th nearest within the disc: exactly those
    files = read(spread, None)
    picked = read(spread, held)
    assert picked >= files, sorted(files - picked)[:10]
    assert len(picked) < len(table)  # the far side of the ring is beyond every box
    held.known = KnownTable(known.path, known.version + 1, known.metadata)
    assert read(spread, held) == files


def test_a_table_is_held_only_up_to_its_bound_and_once_per_version(
    spark: SparkSession, lookup: dict[str, Any]
) -> None:
    known = lookup["known"]
    rows = len(lookup["table"])
    assert hold_lookup(spark, known, rows - 1) is None  # one row over the bound
    assert held_lookup(known) is None
    held = hold_lookup(spark, known, rows)
    assert held is not None
    assert held.table.num_rows == rows
    assert held_lookup(known) is held
    assert hold_lookup(spark, known, rows) is held  # held already: not read again
    newer = KnownTable(known.path, known.version + 1, known.metadata)
    assert held_lookup(newer) is None  # a newer version is not the one held


def test_the_held_table_gives_the_same_answers_as_the_files(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any]
) -> None:
    """Matched against the table held on the driver, an upload gets exactly the answers
    it gets from the table's files: the same uploaded matches, known ids and groups;
    also as the service runs it (prepared queries; the held rows' name statistics
    looked up on the driver, not by a Spark job)."""
    upload = _frame(spark, _upload(lookup["table"]).assign(**{S.POI: None}))

    def run(held: HeldLookup | None, reuse: bool = False) -> pd.DataFrame:
        return match_against(
            upload,
            lookup["known"],
            model=small_matcher.model,
            spec=small_matcher.spec,
            held=held,
            reuse_plan=reuse,
        ).matches.sort_values(S.ID, ignore_index=True)

    from_files, from_held = run(None), run(lookup["held"])
    assert (from_files[KNOWN_IDS] != "").sum() >= 50
    pd.testing.assert_frame_equal(from_held, from_files)
    pd.testing.assert_frame_equal(run(lookup["held"], reuse=True), from_files)


@pytest.mark.parametrize("held", [False, True], ids=["files", "held"])
def test_reading_the_nearest_rows_gives_the_candidates_of_the_whole_table(
    spark: SparkSession, small_matcher: FitOutcome, lookup: dict[str, Any], held: bool
) -> None:
    """The rows a lookup reads (each upload's k nearest in its 3x3 cells, and the rows
    sharing its keys), from the files or picked from the table held on the driver, give
    the uploads every candidate pair, of every pass, that they get with the whole table
    present (here no key is common enough for the lookup to drop it); and the read is
    under half the table."""
    spec = small_matcher.spec
    blocking = BlockingSettings.model_validate(spec.blocking)
    upload = _upload(lookup["table"]).assign(**{S.POI: None})
    uploaded = _frame(spark, upload).withColumn(S.ID, F.concat(F.lit("u:"), F.col(S.ID)))
    up_points = cached_points(uploaded, stats=spec.stats(), plan=SMALL)
    near = up_points.select(
        S.LATITUDE, S.LONGITUDE, S.N_NAME, S.N_PHONE, S.N_URL, S.SOURCE
    ).toPandas()
    read = known_rows(spark, lookup["known"], near, blocking, held=lookup["held"] if held else None)
    whole = spark.read.format("delta").load(lookup["path"]).select(*STORED)

    def pairs(rows: DataFrame) -> set[tuple[str, str, str]]:
        table = add_name_stats(
            rows.withColumn(S.ID, F.concat(F.lit("k:"), F.col(S.ID))), spec.stats()
        )
        points = up_points.unionByName(SMALL.materialize(table), allowMissingColumns=True)
        found = cached_candidates(
            points,
            settings=blocking,
            plan=SMALL,
            query=F.col(S.ID).startswith("u:"),
            added=spec.added,
        )
        return {
            (r[S.ID_L], r[S.ID_R], r[S.PASS])
            for r in found.select(S.ID_L, S.ID_R, S.PASS).collect()
        }

    most = whole.groupBy(S.N_NAME).count().agg(F.max("count")).first()
    assert most is not None
    assert most[0] < blocking.max_key_group
    from_read, from_whole = pairs(read), pairs(whole)
    assert len(from_whole) > len(upload)
    assert from_read == from_whole
    assert read.count() < 0.5 * len(lookup["table"])


@pytest.mark.parametrize("held", [False, True], ids=["files", "held"])
def test_a_key_held_by_max_key_group_rows_of_the_area_is_not_read(
    spark: SparkSession, tmp_path: Path, held: bool
) -> None:
    """The key passes' read leaves out a key that ``max_key_group`` or more rows of the
    area hold (too generic to block on) and reads every row of a key held by fewer, per
    pass; a row of a generic key near an upload still comes with the spatial read. The
    same from the files and from the table held on the driver."""
    cap = 4
    blocking = BlockingSettings(max_key_group=cap)
    base = dict.fromkeys(COLUMNS, "")
    lat, lon = 40.0, -3.0

    def row(i: str, name: str, dlat: float, dlon: float, phone: str = "") -> dict[str, Any]:
        return {
            **base,
            S.ID: i,
            S.NAME: name,
            S.PHONE: phone,
            S.LATITUDE: lat + dlat,
            S.LONGITUDE: lon + dlon,
        }

    # 5 km and more east of the uploads (beyond the spatial read, within the key passes'):
    # "Chain Cafe" held by cap rows (one of them beside upload 0), "Rare Bistro" by
    # cap - 1 (one of them a row whose phone cap rows hold)
    table = [row("chain_near", "Chain Cafe", 0.0001, 0.0)]
    table += [row(f"chain_{i}", "Chain Cafe", 0.01 * i, 0.06) for i in range(cap - 1)]
    table += [row(f"rare_{i}", "Rare Bistro", 0.01 * i, 0.07) for i in range(cap - 2)]
    table += [row(f"phone_{i}", f"Shop {i}", 0.01 * i, 0.08, "+1 555 0100") for i in range(cap)]
    table[-1][S.NAME] = "Rare Bistro"
    uploads = [
        row("u0", "Chain Cafe", 0.0, 0.0),
        row("u1", "Rare Bistro", 0.002, 0.0, "+1 555 0100"),
    ]
    points = add_normalized_columns(_frame(spark, pd.DataFrame(table + uploads)))
    table_points = points.where(~F.col(S.ID).startswith("u"))
    known = _written(table_points, tmp_path, rows=len(table), rows_per_file=100)
    near = (
        points.where(F.col(S.ID).startswith("u"))
        .select(S.LATITUDE, S.LONGITUDE, S.N_NAME, S.N_PHONE, S.N_URL, S.SOURCE)
        .toPandas()
    )
    on = HeldLookup.load(spark, known) if held else None
    read = {r[S.ID] for r in known_rows(spark, known, near, blocking, held=on).collect()}
    # the generic name's rows but the spatial neighbour and the generic phone's rows but
    # the one named as an upload are left out
    assert read == {"chain_near", "rare_0", "rare_1", f"phone_{cap - 1}"}


def test_the_band_cut_keeps_every_nearest_row(spark: SparkSession) -> None:
    """Given the queries' latitudes, ``nearest_rows`` drops rows more than one latitude
    band from every query before copying them, and broadcasts the nearest ids: the rows
    it returns are the same as without the cut, for queries on band borders, rows on the
    bands just beyond reach, dense stacks and sparse ones, at the equator and at 60°."""
    settings = BlockingSettings(cell_m=300.0, k_nearest=3)
    band = settings.cell_m / 111_320.0  # degrees of latitude per band
    rng = np.random.default_rng(5)
    queries, rows = [], []
    for base_lat, base_lon in ((0.0, 10.0), (60.0, -3.0), (-33.9, 151.2)):
        edge = math.floor(base_lat / band) * band  # a band border near the base
        for j, lat in enumerate((edge, edge + band * 0.999, edge + band * 0.5)):
            queries.append((f"q{base_lat}_{j}", lat, base_lon))
        for i in range(400):  # within ~4 bands of the border, some stacked on one point
            lat = edge + rng.uniform(-4.5, 4.5) * band if i % 7 else edge + band * 2
            lon = base_lon + rng.uniform(-0.02, 0.02)
            rows.append((f"r{base_lat}_{i:03d}", lat, lon))
    schema = "id string, latitude double, longitude double"
    q = spark.createDataFrame(queries, schema)
    r = spark.createDataFrame(rows, schema)
    plain = {x[S.ID] for x in nearest_rows(q, r, settings=settings).collect()}
    cut = nearest_rows(q, r, settings=settings, query_latitudes=[x[1] for x in queries])
    assert {x[S.ID] for x in cut.collect()} == plain
    assert len(plain) > len(queries)  # each query found rows
    # and the cut drops the rows out of reach before copying them
    none = nearest_rows(q, r, settings=settings, query_latitudes=[-80.0])
    assert none.count() == 0


@pytest.mark.parametrize(("deg", "reach"), [(HELD_DEG, 600.0), (0.01, 600.0), (0.5, 50_000.0)])
def test_each_upload_s_cells_are_the_cells_within_its_reach(deg: float, reach: float) -> None:
    """An upload's cells (vectorized, :func:`_cells_each`) are exactly the cells of the
    points of its reach's box, each once: across the ±180° meridian, near a pole (a box
    round the globe) and at 0°; :func:`_cells_within` is their union."""
    lat = np.array([40.4406, -33.87, 51.5, 0.0, 89.9995, -89.9999, 12.0])
    lon = np.array([-79.9959, 179.9999, -179.9998, 0.0, 10.0, -45.0, 180.0])
    query, cells = _cells_each(lat, lon, reach, deg)
    dlat, dlon = _reach_deg(lat, reach)
    n_x = round(360 / deg)
    for i in range(len(lat)):
        mine = cells[query == i]
        assert len(mine) == len(set(mine.tolist()))
        # points every half cell over the box, its edges included, reach every cell it touches
        ys = np.append(np.arange(lat[i] - dlat, lat[i] + dlat, deg / 2), lat[i] + dlat)
        xs = np.append(np.arange(lon[i] - dlon[i], lon[i] + dlon[i], deg / 2), lon[i] + dlon[i])
        y = np.floor((np.clip(ys, -90.0, 90.0) + 90.0) / deg).astype(np.int64)
        x = np.mod(np.floor((xs + 180.0) / deg).astype(np.int64), n_x)
        assert set(mine.tolist()) == set((y[:, None] * 1_000_000 + x[None, :]).ravel().tolist())
    assert _cells_within(lat, lon, reach, deg) == sorted(set(cells.tolist()))
    assert (deg != 0.5) or dlon.max() == 180.0  # the key area near a pole: round the globe
    if deg == HELD_DEG:  # each row's own cell is among the cells of its own reach
        own = _held_cells(lat, lon)
        assert all(own[i] in set(cells[query == i].tolist()) for i in range(len(lat)))
