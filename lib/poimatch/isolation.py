"""Run-time guard that keeps research away from production.

The configuration already refuses research settings that name production's storage
root, experiment or model (:class:`poimatch.config.Settings`). This guard covers what
configuration cannot: a path given on a command line or in a notebook cell. Once
:func:`enforce` has seen research settings, every Delta write in this process checks
its target with :func:`check_write`, and the registry refuses to move the production
model's aliases (:func:`check_alias`). The guard is process-wide and can only be
tightened, never lifted: a research session stays a research session.
"""

from __future__ import annotations

import threading

from poimatch.config import Settings

__all__ = ["IsolationError", "check_alias", "check_write", "enforce", "protected_roots"]

_lock = threading.Lock()
_roots: set[str] = set()
_models: set[str] = set()


class IsolationError(PermissionError):
    """A research run tried to change production (a table or the champion alias)."""


def _norm(path: str) -> str:
    return path.rstrip("/") + "/"


def enforce(settings: Settings) -> None:
    """Protect production from this process when ``settings`` are research settings."""
    life = settings.lifecycle
    if life.role != "research":
        return
    with _lock:
        _roots.add(_norm(life.production_storage_root))
        _models.add(life.production_model_name)


def protected_roots() -> tuple[str, ...]:
    """The storage roots this process may not write (empty outside research)."""
    with _lock:
        return tuple(sorted(r.rstrip("/") for r in _roots))


def check_write(path: str) -> None:
    """Raise :class:`IsolationError` if ``path`` lies under a protected production root."""
    target = _norm(path.removeprefix("file:"))
    with _lock:
        hit = next((r for r in _roots if target.startswith(r)), None)
    if hit is not None:
        raise IsolationError(
            f"research run may not write production table {path} (under {hit.rstrip('/')})"
        )


def check_alias(model_name: str, alias: str) -> None:
    """Raise :class:`IsolationError` if a research run would move a production alias."""
    with _lock:
        protected = model_name in _models
    if protected:
        raise IsolationError(
            f"research run may not set alias {alias!r} of production model {model_name}"
        )
