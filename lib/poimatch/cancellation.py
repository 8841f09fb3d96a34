"""Cooperative cancellation at stage boundaries.

A caller that may abandon work (the REST service after a timeout) runs it inside
:func:`cancel_scope` with a :class:`threading.Event`; the pipeline calls
:func:`check_cancelled` between its stages (and grouping between its rounds), which
raises :class:`CancelledError` once the event is set. Spark job-group cancellation stops
the Spark job that is running; this stops what comes after it, including the
driver-side steps (pandas, SciPy) that no Spark cancellation reaches.

Outside a scope :func:`check_cancelled` does nothing, so batch jobs are unaffected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CancelledError", "cancel_scope", "check_cancelled"]

_local = threading.local()


class CancelledError(RuntimeError):
    """The work was abandoned by its caller; raised at the next stage boundary."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"cancelled before {stage}")
        self.stage = stage


@contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Make ``event`` the cancellation flag of this thread for the block."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = previous


def check_cancelled(stage: str) -> None:
    """Raise :class:`CancelledError` if this thread's flag is set (a stage boundary)."""
    event: threading.Event | None = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise CancelledError(stage)
