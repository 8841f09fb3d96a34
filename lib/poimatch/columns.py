"""Column expressions built once per Spark context and reused by every plan.

Building a Spark column expression from Python is a round trip to the JVM per
operator (``F.col``, ``+``, ``F.when``...), about 0.1 ms each here. The blocking and
feature stages build the same few thousand operators for every table they plan, which
costs seconds per plan whatever the table's size: for a 10-row upload it was most of
the request (README, "REST service figures"). Column expressions are immutable
values that name their inputs by column name, not by DataFrame, so one built for a
plan is valid for the next: :func:`cached_column` keeps them, per Spark context (a
new context, e.g. after a restart, gets new ones).
"""

from __future__ import annotations

import functools
import string
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.classic.column import _to_java_column, _to_seq

__all__ = [
    "build_case_tables",
    "cached_column",
    "lower_case",
    "named_columns",
    "select_built",
    "select_named",
    "upper_case",
]

R = TypeVar("R")
_MAX_ENTRIES = 4096


def _key_part(value: Any) -> Any:
    # an argument Column is keyed by its expression text (one JVM call, against the
    # dozens its expression builder would make); other arguments by value
    if isinstance(value, Column):
        return ("column", str(value))
    return value


def cached_column(fn: Callable[..., R]) -> Callable[..., R]:
    """Memoize a pure builder of column expressions (positional arguments only).

    The builder must depend only on its arguments (column names, numbers, Column
    expressions over column names), never on a DataFrame.
    """
    cache: dict[Any, R] = {}
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args: Any) -> R:
        context = SparkContext._active_spark_context
        key = (id(context), tuple(_key_part(a) for a in args))
        with lock:
            if key in cache:
                return cache[key]
        value = fn(*args)
        with lock:
            if len(cache) >= _MAX_ENTRIES:
                cache.clear()
            cache[key] = value
        return value

    return wrapper


@cached_column
def _named(names: tuple[str, ...]) -> list[Column]:
    return [F.col(name) for name in names]


def named_columns(names: Iterable[str]) -> list[Column]:
    """``F.col(name)`` for each of ``names``, built once per Spark context.

    ``df.select("a", "b", ...)`` builds a JVM column per name on every call; a stage that
    selects the same few dozen names for every plan pays that per request.
    """
    return _named(tuple(names))


def select_built(df: DataFrame, build: Callable[..., list[Column]], *args: Any) -> DataFrame:
    """``df.select(*build(*args))``, the JVM sequence of the columns kept per Spark context.

    ``build`` is a :func:`cached_column` builder (or any pure one). Passing a list of N
    columns to the JVM is N + 2 py4j round trips (a Java list filled an element at a
    time, then a Scala sequence), each also a JVM object py4j frees later with a round
    trip of its own: for the same selection of a few dozen columns in every request, a
    sequence built once is one."""
    seq = _column_seq(build, *args)
    return DataFrame(df._jdf.select(seq), df.sparkSession)


def select_named(df: DataFrame, names: Iterable[str]) -> DataFrame:
    """``df.select(*names)`` (:func:`select_built` of :func:`named_columns`)."""
    return select_built(df, _named, tuple(names))


@cached_column
def _column_seq(build: Callable[..., list[Column]], *args: Any) -> Any:
    context = SparkContext._active_spark_context
    if context is None:
        raise RuntimeError("no active Spark context to build a column sequence in")
    return _to_seq(context, build(*args), _to_java_column)


_LOWER, _UPPER = string.ascii_lowercase, string.ascii_uppercase


def _case_mapped(col: Column, *, upper: bool) -> Column:
    ascii_only = F.octet_length(col) == F.length(col)  # as many bytes as characters
    if upper:
        return F.when(ascii_only, F.translate(col, _LOWER, _UPPER)).otherwise(F.upper(col))
    return F.when(ascii_only, F.translate(col, _UPPER, _LOWER)).otherwise(F.lower(col))


def lower_case(col: Column) -> Column:
    """``F.lower(col)``, the same value for every string, without Spark's case tables for
    ASCII ones.

    Spark 4 maps case through ICU, and the first mapping in a JVM builds a table of every
    code point's title case (``CollationAwareUTF8String``'s static initializer): 1.1-1.2 s
    of one core, measured here, paid by the first query of every driver that lowercases
    anything (the service's warm-up, each job, each test module's session). An ASCII
    value (as many bytes as characters) is mapped by ``translate`` (A-Z to a-z: what ICU
    does to it); any other goes through ``F.lower``, so the table is built only when a
    non-ASCII value arrives. Null stays null.
    """
    return _case_mapped(col, upper=False)


def upper_case(col: Column) -> Column:
    """``F.upper(col)``, the same value for every string (see :func:`lower_case`)."""
    return _case_mapped(col, upper=True)


def build_case_tables(spark: SparkSession) -> None:
    """Build Spark's case tables in ``spark``'s JVM now (see :func:`lower_case`), with one
    JVM call and no Spark job: for a caller that would rather pay their 1.1 s of one core
    in a thread of its own than in the first query that meets a non-ASCII value (the
    service: beside its imports, while its warm-up's example has one)."""
    jvm = spark.sparkContext._jvm
    if jvm is None:
        raise RuntimeError("no JVM behind this session")
    text = jvm.org.apache.spark.unsafe.types.UTF8String.fromString("\u00c9")
    jvm.org.apache.spark.sql.catalyst.util.CollationAwareUTF8String.toLowerCase(text)
