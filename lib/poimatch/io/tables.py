"""Named readers and writers: the only library code that performs I/O.

Input files are read as strings so that a bad value is kept and quarantined, never
coerced to null by the reader. The checks that make a whole file unusable (no file,
empty, missing required columns, bytes that are not UTF-8) raise :class:`InputError`
with a message that names the problem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.isolation import check_write

__all__ = [
    "InputError",
    "CsvInput",
    "read_poi_csv",
    "read_poi_input",
    "is_delta_table",
    "is_table_name",
    "read_delta",
    "read_changes",
    "delta_head",
    "delta_version",
    "write_delta",
    "input_fingerprint",
    "read_matches",
    "write_single_csv",
]

_BOM = "\ufeff"
_CORRUPT = S.CORRUPT_RECORD


class InputError(ValueError):
    """An input file cannot be used at all; the message names the problem."""


@dataclass(frozen=True)
class CsvInput:
    """A raw input read: all layout columns as strings, plus what the reader saw."""

    frame: DataFrame
    has_poi: bool
    missing_optional: tuple[str, ...]
    ignored_columns: tuple[str, ...]


# catalog.schema.table (Unity Catalog's three-level namespace; locally spark_catalog's),
# each part an identifier or a back-quoted name
_PART = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[^`/]+`)"
_TABLE_NAME = re.compile(rf"^{_PART}\.{_PART}\.{_PART}$")


def is_table_name(ref: str) -> bool:
    """True when ``ref`` names a catalog table (``catalog.schema.table``, three parts,
    no ``/``) rather than a path; a path that exists, or ends in ``.csv``, is a path."""
    if not _TABLE_NAME.match(ref) or ref.lower().endswith(".csv"):
        return False
    return not os.path.exists(ref)


def _delta_handle(spark: SparkSession, ref: str) -> DeltaTable:
    return DeltaTable.forName(spark, ref) if is_table_name(ref) else DeltaTable.forPath(spark, ref)


def is_delta_table(spark: SparkSession, ref: str) -> bool:
    """True when ``ref`` (a path, or a ``catalog.schema.table`` name) is a Delta table."""
    if is_table_name(ref):
        if not spark.catalog.tableExists(ref):
            return False
        try:
            DeltaTable.forName(spark, ref)
        except Exception:  # a catalog table of another format
            return False
        return True
    return DeltaTable.isDeltaTable(spark, ref)


def delta_version(spark: SparkSession, ref: str) -> int:
    """Current version of the Delta table ``ref`` (a path or a catalog name)."""
    return delta_head(spark, ref)[0]


def delta_head(spark: SparkSession, ref: str) -> tuple[int, str | None]:
    """The current version of the Delta table ``ref`` and its commit's ``userMetadata``
    (None when it has none), read together from its history."""
    row = _delta_handle(spark, ref).history(1).select("version", "userMetadata").first()
    if row is None:
        raise InputError(f"{ref}: Delta table has no history")
    return int(row[0]), row[1]


def read_delta(spark: SparkSession, ref: str, *, version: int | None = None) -> DataFrame:
    """The Delta table ``ref`` (a path or a ``catalog.schema.table`` name), at
    ``version`` when given (time travel), else its current version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.table(ref) if is_table_name(ref) else reader.load(ref)


def read_changes(spark: SparkSession, ref: str, *, start: int, end: int) -> DataFrame:
    """The rows Delta's change data feed recorded for the table ``ref`` over versions
    ``start`` to ``end`` (both included): the table's columns with ``_change_type``
    (``insert``, ``update_preimage``, ``update_postimage``, ``delete``),
    ``_commit_version`` and ``_commit_timestamp``.

    Raises:
        pyspark.errors.AnalysisException: the feed was not recorded for a version of
            the range (``DELTA_MISSING_CHANGE_DATA``), or the range is past the table.
    """
    reader = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
        .option("endingVersion", end)
    )
    return reader.table(ref) if is_table_name(ref) else reader.load(ref)


def _header(spark: SparkSession, path: str) -> list[str]:
    first = spark.read.text(path).limit(1).collect()
    if not first or not str(first[0][0]).strip(_BOM + " \t\r"):
        raise InputError(f"{path}: the file is empty (no header line)")
    return list(spark.read.option("header", "true").csv(path).columns)


def _check_utf8(spark: SparkSession, path: str) -> None:
    # The text source keeps each line's raw bytes; Spark's is_valid_utf8 checks them
    # where they are, so a file of any size is checked without leaving the cluster.
    bad = (
        spark.read.text(path)
        .where(~F.is_valid_utf8(F.col("value")))
        .select(F.make_valid_utf8(F.col("value")).alias("value"))
        .limit(1)
        .collect()
    )
    if bad:
        snippet = str(bad[0]["value"])[:80]
        raise InputError(
            f"{path}: bytes that are not valid UTF-8 (first bad line starts {snippet!r}); "
            "re-encode the file as UTF-8"
        )


def read_poi_csv(spark: SparkSession, path: str) -> CsvInput:
    """Read a CSV in the input layout (with or without ``point_of_interest``).

    Args:
        spark: the session.
        path: a CSV file or folder of CSV parts.

    Returns:
        :class:`CsvInput` whose frame has every layout column as a string (missing
        optional columns as nulls), ``point_of_interest`` if present,
        ``source_file`` and ``_input_order`` (increasing in file order). Rows the CSV
        parser could not split keep their raw text in ``_corrupt_record``.

    Raises:
        InputError: no such file, empty file, missing required columns, not UTF-8.
    """
    if is_table_name(path):
        raise InputError(f"{path}: no such Delta table in the catalog (nor a file of that name)")
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    header_raw = _header(spark, path)
    header = [h.lstrip(_BOM).strip() for h in header_raw]
    missing = [c for c in S.REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing}; the header has {header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: duplicate column name(s) {dupes} in the header")
    _check_utf8(spark, path)
    schema = T.StructType(
        [T.StructField(h, T.StringType(), True) for h in header]
        + [T.StructField(_CORRUPT, T.StringType(), True)]
    )
    df = (
        spark.read.schema(schema)
        .option("header", "true")
        .option("multiLine", "true")
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .option("encoding", "UTF-8")
        .csv(path)
    )
    has_poi = S.POI in header
    # `source` is optional and kept (null when absent) without a note either way
    wanted = (*S.INPUT_COLUMNS, S.SOURCE) + ((S.POI,) if has_poi else ())
    missing_optional = tuple(c for c in S.INPUT_COLUMNS if c not in header)
    ignored = tuple(h for h in header if h not in wanted)
    cols = [F.col(c) if c in header else F.lit(None).cast(T.StringType()).alias(c) for c in wanted]
    frame = df.select(
        *cols,
        F.col(_CORRUPT),
        F.lit(Path(path).name).alias(S.SOURCE_FILE),
        # taken at the scan, before any shuffle: increasing in file order (a multi-line
        # CSV file is one partition; the parts of a folder come in name order)
        F.monotonically_increasing_id().alias(S.INPUT_ORDER),
    )
    return CsvInput(frame, has_poi, missing_optional, ignored)


def read_poi_input(spark: SparkSession, path: str, *, require_labels: bool = False) -> DataFrame:
    """Read POIs from a Delta table or a CSV file, typed like the POI table.

    A CSV read here is not validated row by row: ingest it first for that. Use this
    to feed train/match/evaluate with either a Delta table or a CSV, as the command
    contract requires.
    """
    df = read_delta(spark, path) if is_delta_table(spark, path) else read_poi_csv(spark, path).frame
    if S.POI not in df.columns:
        if require_labels:
            raise InputError(f"{path}: no {S.POI} column; training needs labelled rows")
        df = df.withColumn(S.POI, F.lit(None).cast(T.StringType()))
    if S.SOURCE not in df.columns:
        df = df.withColumn(S.SOURCE, F.lit(None).cast(T.StringType()))
    return df.select(
        F.col(S.ID).cast(T.StringType()),
        F.col(S.NAME).cast(T.StringType()),
        F.col(S.LATITUDE).cast(T.DoubleType()),
        F.col(S.LONGITUDE).cast(T.DoubleType()),
        *[
            F.col(c).cast(T.StringType())
            for c in S.INPUT_COLUMNS
            if c not in (S.ID, S.NAME, S.LATITUDE, S.LONGITUDE)
        ],
        F.col(S.SOURCE).cast(T.StringType()),
        F.col(S.POI).cast(T.StringType()),
    )


def write_delta(
    df: DataFrame,
    path: str,
    *,
    mode: str = "overwrite",
    partition_by: tuple[str, ...] = (),
    user_metadata: str | None = None,
) -> None:
    """Write ``df`` as a Delta table at ``path``, or as the catalog table it names
    (``catalog.schema.table``: created, or replaced; overwrite replaces data and schema).

    One atomic commit: a job killed during the write leaves the table at its previous
    version. ``user_metadata`` is stored in the commit (see ``DESCRIBE HISTORY``).
    """
    named = is_table_name(path)
    if not named:
        check_write(path)
    writer = df.write.format("delta").mode(mode).option("overwriteSchema", "true")
    if user_metadata:
        writer = writer.option("userMetadata", user_metadata)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if named:
        writer.saveAsTable(path)
    else:
        writer.save(path)


def input_fingerprint(spark: SparkSession, path: str, *, version: int | None = None) -> str:
    """``delta:<path or catalog name>@v<version>`` for a Delta table (``version`` when
    given: the version a run pinned and reads, else the current one),
    ``file:<path>:<size>:<mtime>`` else.

    Logged with every run so that its inputs can be found again.
    """
    if version is not None or is_delta_table(spark, path):
        return f"delta:{path}@v{delta_version(spark, path) if version is None else version}"
    p = Path(path)
    if p.is_file():
        stat = p.stat()
        return f"file:{p.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return f"path:{path}"


def read_matches(spark: SparkSession, path: str) -> DataFrame:
    """A submission (``id,matches``) from CSV or Delta."""
    if is_delta_table(spark, path):
        df = read_delta(spark, path)
    else:
        if is_table_name(path):
            raise InputError(f"{path}: no such Delta table in the catalog")
        if "://" not in path and not os.path.exists(path):
            raise InputError(f"{path}: no such file or folder")
        df = spark.read.option("header", "true").csv(path)
        df = df.toDF(*[c.lstrip(_BOM).strip() for c in df.columns])
    missing = [c for c in S.MATCH_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; it has {df.columns}")
    return df.select(F.col(S.ID).cast(T.StringType()), F.col(S.MATCHES).cast(T.StringType()))


def write_single_csv(df: DataFrame, path: str) -> None:
    """Write ``df`` as one CSV file with a header at ``path`` (local file systems).

    Spark writes a folder of parts; for the output contract (one file) the frame is
    coalesced to one part, which is then moved into place.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.parts"
    df.coalesce(1).write.mode("overwrite").option("header", "true").csv(str(tmp))
    parts = sorted(tmp.glob("part-*.csv"))
    if len(parts) != 1:
        raise RuntimeError(f"expected one CSV part in {tmp}, found {len(parts)}")
    parts[0].replace(target)
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
