"""Matching uploads against the POI table through its lookup table.

A generated table is matched (batch plan) and its lookup table written; uploads are
trivially edited copies of table rows (new ids), rows far from anything, and a row
carrying an id the table also has. Each copy must find its original id and group; the
lookup must read only the files of the cells it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.lookup import known_rows, pin_lookup, write_lookup
from poimatch.runs.against import KNOWN_GROUPS, KNOWN_IDS, match_against
from poimatch.runs.workflows import FitOutcome, match_with_model
from poimatch.sample.generator import generate_pois
from poimatch.stages.plan import BATCH

COLUMNS = [f.name for f in S.poi_table_schema().fields]


def _frame(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    frame = frame.copy()
    frame[S.LATITUDE] = frame[S.LATITUDE].astype(float)
    frame[S.LONGITUDE] = frame[S.LONGITUDE].astype(float)
    for column in (S.SOURCE, S.POI):
        if column not in frame.columns:
            frame[column] = None
    return spark.createDataFrame(frame[COLUMNS], schema=S.poi_table_schema())


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
    return {"table": table, "path": path, "known": known, "groups": groups}


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
