"""Validated ingest of POI files into Delta: accepted rows upserted, the rest quarantined.

Stages: :func:`check_rows` (pure transform: typed coordinates and a ``reason`` per
row), then :func:`upsert_pois` (MERGE by id, so a re-run changes nothing) and
:func:`upsert_quarantine` (MERGE by row hash, so a re-run adds nothing). Nothing is
dropped: every input row ends in exactly one of the two tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.columns import cached_column
from poimatch.io import contracts
from poimatch.io.tables import delta_version, read_poi_csv
from poimatch.isolation import check_write

__all__ = [
    "IngestReport",
    "check_rows",
    "accepted_rows",
    "poi_layout",
    "rejected_rows",
    "upsert_pois",
    "upsert_quarantine",
    "ingest_file",
    "MALFORMED_ROW",
    "CHANGE_FEED",
]

MALFORMED_ROW = "malformed_csv_row"
_CORRUPT = S.CORRUPT_RECORD
_ROW_HASH = "row_hash"
_UPDATED_AT = "updated_at"
_QUARANTINED_AT = "quarantined_at"
_DATA_COLUMNS: tuple[str, ...] = (*S.INPUT_COLUMNS, S.SOURCE, S.POI)


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did, printed by the job and returned to callers."""

    source: str
    rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    inserted: int
    updated: int
    unchanged: int
    pois_version: int
    quarantine_version: int
    contract: contracts.ContractResult
    notes: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        """Human-readable summary, one fact a line."""
        out = [
            f"source={self.source}",
            f"rows={self.rows} accepted={self.accepted} quarantined={self.quarantined}",
        ]
        out += [f"quarantined[{r}]={n}" for r, n in sorted(self.reasons.items())]
        out.append(
            f"merge: inserted={self.inserted} updated={self.updated} unchanged={self.unchanged}"
        )
        out.append(f"pois_version={self.pois_version} quarantine_version={self.quarantine_version}")
        out += list(self.notes)
        out += [f"data_docs={page}" for page in self.contract.data_docs]
        return out


def check_rows(raw: DataFrame) -> DataFrame:
    """Typed coordinates plus ``reason`` (null when valid) for every raw row.

    A row the CSV parser could not split gets ``malformed_csv_row`` first; the
    contract rules (see :mod:`poimatch.io.contracts`) add theirs.
    """
    if _CORRUPT not in raw.columns:
        raw = raw.withColumn(_CORRUPT, F.lit(None).cast(T.StringType()))
    checked = raw.transform(contracts.add_typed_coordinates).transform(
        contracts.add_rejection_reasons
    )
    malformed = F.col(_CORRUPT).isNotNull()
    reason = F.when(
        malformed,
        F.concat_ws(",", F.lit(MALFORMED_ROW), F.col(S.REASON)),
    ).otherwise(F.col(S.REASON))
    return checked.withColumn(S.REASON, reason)


def poi_layout(rows: DataFrame, *, extra: tuple[str, ...] = ()) -> DataFrame:
    """``rows`` in the POI table's typed layout (absent columns as nulls), plus ``extra``."""
    present = frozenset(rows.columns)
    names = tuple(f.name for f in S.poi_table_schema().fields if f.name in present)
    return rows.select(*_layout_columns(names, extra))


@cached_column
def _layout_columns(present: tuple[str, ...], extra: tuple[str, ...]) -> list[Column]:
    fields = S.poi_table_schema().fields
    return [
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in fields if f.name in present],
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in fields if f.name not in present],
        *[F.col(c) for c in extra],
    ]


def accepted_rows(checked: DataFrame) -> DataFrame:
    """Valid rows in the POI table's layout."""
    return poi_layout(checked.where(F.col(S.REASON).isNull()), extra=(S.SOURCE_FILE,))


def rejected_rows(checked: DataFrame) -> DataFrame:
    """Rejected rows with every raw value kept as text, the reason and a row hash."""
    raw_cols = [c for c in _DATA_COLUMNS if c not in (S.LATITUDE, S.LONGITUDE)]
    values: list[Column] = [F.coalesce(F.col(c), F.lit("\u0000")) for c in raw_cols]
    values += [
        F.coalesce(F.col(S.RAW_LATITUDE), F.lit("\u0000")),
        F.coalesce(F.col(S.RAW_LONGITUDE), F.lit("\u0000")),
        F.coalesce(F.col(_CORRUPT), F.lit("\u0000")),
        F.col(S.SOURCE_FILE),
    ]
    with_poi = checked
    for optional in (S.POI, S.SOURCE):
        if optional not in with_poi.columns:
            with_poi = with_poi.withColumn(optional, F.lit(None).cast(T.StringType()))
    return (
        with_poi.where(F.col(S.REASON).isNotNull())
        .select(
            *[F.col(c).cast(T.StringType()).alias(c) for c in raw_cols],
            F.col(S.RAW_LATITUDE).alias(S.LATITUDE),
            F.col(S.RAW_LONGITUDE).alias(S.LONGITUDE),
            F.col(_CORRUPT).alias("raw_record"),
            F.col(S.SOURCE_FILE),
            F.col(S.REASON),
            F.sha2(F.concat_ws("\u0001", *values), 256).alias(_ROW_HASH),
        )
        # Identical rejected lines are stored once with their number of copies.
        .groupBy(_ROW_HASH)
        .agg(
            *[F.first(c, ignorenulls=True).alias(c) for c in (*raw_cols, S.LATITUDE)],
            F.first(S.LONGITUDE, ignorenulls=True).alias(S.LONGITUDE),
            F.first("raw_record", ignorenulls=True).alias("raw_record"),
            F.first(S.SOURCE_FILE).alias(S.SOURCE_FILE),
            F.first(S.REASON).alias(S.REASON),
            F.count(F.lit(1)).alias("copies"),
        )
    )


def _differs(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in columns)


def _merge_metrics(table: DeltaTable) -> dict[str, int]:
    row = table.history(1).select("operation", "operationMetrics").first()
    if row is None or row["operation"] != "MERGE":
        return {}
    return {k: int(v) for k, v in (row["operationMetrics"] or {}).items() if v.isdigit()}


#: the POI table records Delta's change data feed: an incremental match run reads the
#: rows that changed since its last run there (poimatch.runs.incremental)
CHANGE_FEED = "delta.enableChangeDataFeed"


def _record_changes(spark: SparkSession, table: DeltaTable, path: str) -> None:
    """Turn the change data feed on for a POI table created before it was (one
    metadata commit, once); a table whose owner set the property, to either value, is
    left as it is."""
    properties = table.detail().select("properties").first()
    if properties is not None and CHANGE_FEED in (properties[0] or {}):
        return
    quoted = path.replace("`", "``")
    spark.sql(f"ALTER TABLE delta.`{quoted}` SET TBLPROPERTIES ('{CHANGE_FEED}' = 'true')")


def upsert_pois(spark: SparkSession, accepted: DataFrame, path: str) -> dict[str, int]:
    """MERGE accepted rows into the POI table by id; unchanged rows are not rewritten.
    The table records Delta's change data feed (:data:`CHANGE_FEED`).

    Returns Delta's MERGE metrics (``numTargetRowsInserted``, ``...Updated``, ...).
    """
    check_write(path)
    data_cols = tuple(f.name for f in S.poi_table_schema().fields)
    source = accepted.withColumn(_UPDATED_AT, F.current_timestamp())
    (
        DeltaTable.createIfNotExists(spark)
        .location(path)
        .addColumns(S.poi_table_schema())
        .addColumn(S.SOURCE_FILE, T.StringType())
        .addColumn(_UPDATED_AT, T.TimestampType())
        .property(CHANGE_FEED, "true")
        .execute()
    )
    table = DeltaTable.forPath(spark, path)
    _record_changes(spark, table, path)
    (
        table.alias("t")
        .merge(source.alias("s"), f"t.`{S.ID}` = s.`{S.ID}`")
        .withSchemaEvolution()  # a table from before the optional `source` column gains it
        .whenMatchedUpdateAll(condition=_differs(data_cols))
        .whenNotMatchedInsertAll()
        .execute()
    )
    return _merge_metrics(table)


def upsert_quarantine(spark: SparkSession, rejected: DataFrame, path: str) -> dict[str, int]:
    """MERGE rejected rows into the quarantine table by row hash (a re-run adds nothing)."""
    check_write(path)
    source = rejected.withColumn(_QUARANTINED_AT, F.current_timestamp())
    if not DeltaTable.isDeltaTable(spark, path):
        source.limit(0).write.format("delta").save(path)
    table = DeltaTable.forPath(spark, path)
    (
        table.alias("t")
        .merge(source.alias("s"), f"t.{_ROW_HASH} = s.{_ROW_HASH}")
        .withSchemaEvolution()
        .whenNotMatchedInsertAll()
        .execute()
    )
    return _merge_metrics(table)


def ingest_file(
    spark: SparkSession,
    path: str,
    *,
    pois_path: str,
    quarantine_path: str,
    validations: str | None = None,
) -> IngestReport:
    """Read, validate (great_expectations), upsert and quarantine one input file.

    Args:
        spark: the session.
        path: CSV in the input layout, with or without ``point_of_interest``.
        pois_path: Delta location of the POI table.
        quarantine_path: Delta location of the quarantine table.
        validations: a great_expectations project folder (``storage.validations``):
            both contract checks are stored there and its Data Docs updated.

    Returns:
        :class:`IngestReport` with counts per reason and the MERGE outcome.

    Raises:
        poimatch.io.tables.InputError: the file cannot be used at all (named problem).
        poimatch.io.contracts.ContractError: accepted rows failed the input contract.
    """
    check_write(pois_path)
    check_write(quarantine_path)
    if validations is not None:
        check_write(validations)
    csv = read_poi_csv(spark, path)
    checked = check_rows(csv.frame).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        reason_counts = (
            checked.select(F.explode_outer(F.split(F.col(S.REASON), ",")).alias(S.REASON))
            .groupBy(S.REASON)
            .count()
            .collect()
        )
        reasons = {str(r[S.REASON]): int(r["count"]) for r in reason_counts if r[S.REASON]}
        sizes = checked.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(F.col(S.REASON).isNull(), 1)).alias("ok"),
        ).first()
        total, n_accepted = (int(sizes["rows"]), int(sizes["ok"])) if sizes else (0, 0)
        accepted = accepted_rows(checked)
        # Report the contract on the whole file, then require it on what we keep.
        name = Path(path).name
        contract = contracts.validate_input(
            checked, store=validations, run_name=f"ingest {name}: every row"
        )
        contracts.require(
            contracts.validate_input(
                checked.where(F.col(S.REASON).isNull()),
                store=validations,
                run_name=f"ingest {name}: accepted rows",
            )
        )
        poi_metrics = upsert_pois(spark, accepted, pois_path)
        rejected = rejected_rows(checked)
        upsert_quarantine(spark, rejected, quarantine_path)
    finally:
        checked.unpersist()
    inserted = poi_metrics.get("numTargetRowsInserted", 0)
    updated = poi_metrics.get("numTargetRowsUpdated", 0)
    notes = []
    if csv.missing_optional:
        notes.append(
            f"note: optional column(s) absent, stored as empty: {list(csv.missing_optional)}"
        )
    if csv.ignored_columns:
        notes.append(f"note: column(s) not in the layout, ignored: {list(csv.ignored_columns)}")
    return IngestReport(
        source=path,
        rows=total,
        accepted=n_accepted,
        quarantined=total - n_accepted,
        reasons=reasons,
        inserted=inserted,
        updated=updated,
        unchanged=n_accepted - inserted - updated,
        pois_version=delta_version(spark, pois_path),
        quarantine_version=delta_version(spark, quarantine_path),
        contract=contract,
        notes=tuple(notes),
    )
