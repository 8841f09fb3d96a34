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
from pyspark.sql import Column
from pyspark.sql import functions as F

__all__ = ["cached_column", "named_columns"]

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
