"""One Spark request at a time from a bounded queue, with deadlines."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from poimatch.apps.service.uploads import RequestError

log = logging.getLogger("poimatch.apps.service")  # one logger name for the whole service
R = TypeVar("R")


# ----------------------------------------------------------------------------- queue


class SparkQueue:
    """One Spark request at a time; at most ``capacity`` waiting; deadlines enforced."""

    def __init__(self, capacity: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poimatch-spark")
        self._pending = 0
        self._lock = threading.Lock()
        self._on_depth = on_depth or (lambda _: None)

    @property
    def pending(self) -> int:
        """Requests running or waiting."""
        return self._pending

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            depth = self._pending
        self._on_depth(depth)

    async def run(
        self,
        fn: Callable[[], R],
        *,
        timeout: float,
        on_timeout: Callable[[], None],
        retry_after: int,
    ) -> R:
        """Run ``fn`` on the Spark thread; 503 when full, 504 past ``timeout`` seconds.

        The deadline covers waiting and running; a request whose deadline passed
        while it waited is skipped, one that is running is cancelled (``on_timeout``).
        """
        with self._lock:
            if self._pending >= 1 + self.capacity:
                raise RequestError(
                    503,
                    "busy",
                    f"{self._pending} requests are already running or waiting; retry later",
                    headers={"Retry-After": str(retry_after)},
                )
            self._pending += 1
            depth = self._pending
        self._on_depth(depth)
        deadline = time.monotonic() + timeout

        def guarded() -> R:
            if time.monotonic() > deadline:
                raise TimeoutError("deadline passed while waiting")
            return fn()

        future = self._executor.submit(guarded)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            # cancelling talks to the JVM: never block the event loop on it
            threading.Thread(target=on_timeout, name="poimatch-cancel", daemon=True).start()
            raise RequestError(
                504,
                "timeout",
                f"the request took longer than {timeout:g} s (service.timeout_seconds)",
            ) from None

    def background(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the Spark thread after the work queued before it, outside the
        queue's count (the service's own work, e.g. a warm-up: a request arriving
        meanwhile waits for it like for any running request); nothing once shut down."""
        try:
            self._executor.submit(fn)
        except RuntimeError:  # shut down
            log.info("the Spark thread is shut down: background work skipped")

    def shutdown(self) -> None:
        """Stop accepting work; running work finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)
