"""Every input row of a match run accounted for: matched, rejected or dropped.

The input rules (:mod:`poimatch.io.contracts`, applied by :func:`poimatch.io.ingest.check_rows`)
give each row a ``reason``. A match run does not drop the rows it cannot match; it
gives each a ``status``:

* ``matched``: the row goes through blocking, scoring and grouping. The first copy of
  a duplicated id is matched like any other row when it breaks no other rule; its
  ``reason`` says ``duplicate_id`` (its later copies were dropped).
* ``rejected``: the row breaks a rule (no coordinates, 0,0, a 2,000-character name...)
  but has a usable id: it is in the output alone (its own group, ``matches`` = its
  id), with the reason.
* ``dropped``: the row cannot be an output row at all: its id is missing, holds white
  space (it would split the space-separated ``matches``), or is a later copy of an id
  already taken. It is only in the rejected-rows report.

So the output holds every usable input id exactly once (:func:`output_ids`), and the
report (:func:`rejected_report`) lists every row that was not matched, and why.
All functions here are pure transforms.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S

__all__ = [
    "DROPPED",
    "MATCHED",
    "REJECTED",
    "STATUSES",
    "add_status",
    "alone_rows",
    "output_ids",
    "rejected_report",
    "with_status",
]

MATCHED = "matched"
REJECTED = "rejected"
DROPPED = "dropped"
STATUSES: tuple[str, ...] = (MATCHED, REJECTED, DROPPED)

#: Reasons that leave a row without an id the output could hold.
_NO_USABLE_ID = ("missing_id", "whitespace_in_id")
_DUPLICATE = "duplicate_id"
_REASONS = "_reasons"


def _reasons() -> Column:
    return F.coalesce(F.split(F.col(S.REASON), ","), F.array().cast("array<string>"))


def _usable_id(reasons: Column) -> Column:
    return ~F.exists(reasons, lambda r: r.isin(*_NO_USABLE_ID))


def add_status(checked: DataFrame) -> DataFrame:
    """Add ``status`` (``matched``, ``rejected``, ``dropped``) to checked rows.

    Args:
        checked: output of :func:`poimatch.io.ingest.check_rows` with ``_input_order``
            (which copy of a duplicated id came first).

    Returns:
        ``checked`` plus ``status``. Among the copies of an id the first (in input
        order) is kept; it is ``matched`` when ``duplicate_id`` is its only reason (or
        it has none) and ``rejected`` otherwise; every later copy, and every row
        without a usable id, is ``dropped``.
    """
    reasons = _reasons()
    first = Window.partitionBy(S.ID).orderBy(F.col(S.INPUT_ORDER))
    others = F.filter(F.col(_REASONS), lambda r: r != _DUPLICATE)
    status = (
        F.when(~_usable_id(F.col(_REASONS)), F.lit(DROPPED))
        .when(F.row_number().over(first) > 1, F.lit(DROPPED))
        .when(F.size(others) > 0, F.lit(REJECTED))
        .otherwise(F.lit(MATCHED))
    )
    return checked.withColumn(_REASONS, reasons).withColumn(S.STATUS, status).drop(_REASONS)


def output_ids(checked: DataFrame) -> DataFrame:
    """``id``: every distinct input id the output must hold exactly once.

    Read from the input rows themselves (not from ``status``), for the output
    contract: every id that is present and free of white space.
    """
    return checked.where(_usable_id(_reasons())).select(S.ID).distinct()


def alone_rows(triaged: DataFrame) -> DataFrame:
    """Output rows of the ``rejected`` rows: each alone, its own group, with its reason."""
    return triaged.where(F.col(S.STATUS) == REJECTED).select(
        F.col(S.ID).cast(T.StringType()).alias(S.ID),
        F.col(S.ID).cast(T.StringType()).alias(S.GROUP_ID),
        F.col(S.ID).cast(T.StringType()).alias(S.MATCHES),
        F.col(S.STATUS),
        F.col(S.REASON),
    )


def with_status(matches: DataFrame, triaged: DataFrame) -> DataFrame:
    """Matched output rows (``id``, ``group_id``, ``matches``) plus ``status`` and the
    reason a matched row may carry (``duplicate_id``: its later copies were dropped)."""
    notes = triaged.where((F.col(S.STATUS) == MATCHED) & F.col(S.REASON).isNotNull()).select(
        S.ID, F.col(S.REASON).alias("_note")
    )
    return (
        matches.select(S.ID, S.GROUP_ID, S.MATCHES)
        # no broadcast hint: the notes are usually a handful of rows, but a table of
        # duplicated ids would gather them all on the driver; Spark's size threshold
        # (and adaptive execution) broadcasts them when they are small
        .join(notes, on=S.ID, how="left")
        .select(
            S.ID,
            S.GROUP_ID,
            S.MATCHES,
            F.lit(MATCHED).alias(S.STATUS),
            F.col("_note").cast(T.StringType()).alias(S.REASON),
        )
    )


def rejected_report(triaged: DataFrame) -> DataFrame:
    """Every row that was not matched, in input order: ``id``, ``status``, ``reason`` and
    the row's values as read (text; ``raw_record`` holds a line the CSV reader could not
    split)."""
    text = [c for c in S.INPUT_COLUMNS if c not in (S.ID, S.LATITUDE, S.LONGITUDE)]
    raw = (
        F.col(S.CORRUPT_RECORD).cast(T.StringType())
        if S.CORRUPT_RECORD in triaged.columns
        else F.lit(None).cast(T.StringType())
    )
    lat = S.RAW_LATITUDE if S.RAW_LATITUDE in triaged.columns else S.LATITUDE
    lon = S.RAW_LONGITUDE if S.RAW_LONGITUDE in triaged.columns else S.LONGITUDE
    return (
        triaged.where(F.col(S.STATUS) != MATCHED)
        .orderBy(S.INPUT_ORDER)
        .select(
            F.col(S.ID).cast(T.StringType()).alias(S.ID),
            F.col(S.STATUS),
            F.col(S.REASON),
            F.col(S.NAME).cast(T.StringType()).alias(S.NAME),
            F.col(lat).cast(T.StringType()).alias(S.LATITUDE),
            F.col(lon).cast(T.StringType()).alias(S.LONGITUDE),
            *[F.col(c).cast(T.StringType()).alias(c) for c in text if c != S.NAME],
            raw.alias(S.RAW_RECORD),
        )
    )
