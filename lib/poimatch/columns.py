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
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.classic.column import _to_java_column, _to_seq

__all__ = ["cached_column", "named_columns", "select_built", "select_named"]

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
