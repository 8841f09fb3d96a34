"""Notebook plumbing: parameters (Databricks widgets or ``POIMATCH_NB_*`` variables),
a research session with the production guard armed, overrides, output folders, display."""

from __future__ import annotations

import builtins
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from pydantic import ValidationError
from pyspark.sql import DataFrame, SparkSession

from poimatch.config import (
    _PATH_KEYS,
    ConfigError,
    Settings,
    _apply_override,
    _format_errors,
    load_settings,
    project_root,
    resolve_path,
)
from poimatch.isolation import IsolationError, enforce
from poimatch.session import build_session

RESEARCH_ENV = "research"
DEFAULT_OUTPUT = "data/research/notebooks"
PARAM_PREFIX = "POIMATCH_NB_"

ParamValue = str | int | float | bool

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_DPI = 110


def notebook_global(name: str) -> Any | None:
    """A name the notebook host defines (``dbutils``, ``display``), or ``None``.

    Databricks puts ``dbutils`` and ``display`` into the notebook's namespace (the
    IPython user namespace / ``__main__``); Jupyter puts ``display`` into builtins.
    A plain ``python notebooks/x.py`` run has neither.
    """
    main = sys.modules.get("__main__")
    value = getattr(main, name, None) if main is not None else None
    if value is not None:
        return value
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        value = shell.user_ns.get(name)
        if value is not None:
            return value
    return getattr(builtins, name, None)


def _coerce(name: str, raw: str, default: ParamValue) -> ParamValue:
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"parameter {name}: expected {kind}, got {raw!r}") from None
    return raw


def params(defaults: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """The notebook's parameters: widgets on Databricks, ``POIMATCH_NB_<NAME>`` locally.

    Args:
        defaults: parameter name → default; the default's type (str, int, float, bool)
            is the parameter's type, and values are converted to it.

    Returns:
        name → value. On Databricks a text widget is created per parameter (with the
        default) and its current value read; elsewhere the environment variable
        ``POIMATCH_NB_<NAME upper-cased>`` wins over the default when set.

    Raises:
        ValueError: a value cannot be converted (the parameter is named).

    Example:
        >>> import os
        >>> os.environ["POIMATCH_NB_ROWS"] = "1500"
        >>> params({"rows": 3000, "data": ""})
        {'rows': 1500, 'data': ''}
    """
    dbutils = notebook_global("dbutils")
    out: dict[str, ParamValue] = {}
    for name, default in defaults.items():
        raw: str | None
        if dbutils is not None:
            dbutils.widgets.text(name, str(default))
            raw = str(dbutils.widgets.get(name))
        else:
            raw = os.environ.get(PARAM_PREFIX + name.upper())
        out[name] = default if raw is None else _coerce(name, raw, default)
    return out


def override_list(overrides: str | Sequence[str]) -> list[str]:
    """``"a.b=1; c.d=x"`` (``;`` or new lines) or a sequence → ``["a.b=1", "c.d=x"]``.

    Example:
        >>> override_list("model.n_estimators=60; blocking.k_nearest=5\\n")
        ['model.n_estimators=60', 'blocking.k_nearest=5']
    """
    items = re.split(r"[;\n]", overrides) if isinstance(overrides, str) else list(overrides)
    return [item.strip() for item in items if item.strip()]


def require_research(settings: Settings) -> None:
    if settings.lifecycle.role != RESEARCH_ENV:
        raise IsolationError(
            f"notebooks run in a research environment; {settings.env!r} has role "
            f"{settings.lifecycle.role!r} (use env 'research', conf/research.yaml)"
        )


def start(
    env: str = RESEARCH_ENV, overrides: str | Sequence[str] = ()
) -> tuple[Settings, SparkSession]:
    """Load research settings, arm the production guard and build (or adopt) the session.

    Args:
        env: the configuration overlay; it must have ``lifecycle.role: research``.
        overrides: ``section.key=value`` strings (or one ``;``-separated string).

    Returns:
        ``(settings, spark)``; an active session (Databricks, a notebook kernel) is
        adopted as it is by :func:`poimatch.session.build_session`.

    Raises:
        IsolationError: the settings are not research settings.
        ConfigError: bad configuration (the key is named).
    """
    settings = load_settings(env, override_list(overrides))
    require_research(settings)
    enforce(settings)
    return settings, build_session(settings.spark)


def with_overrides(settings: Settings, overrides: str | Sequence[str]) -> Settings:
    """``settings`` with more ``section.key=value`` overrides, validated again.

    Relative local paths are resolved against the project root, as in
    :func:`poimatch.config.load_settings`; research settings stay research settings.

    Raises:
        ConfigError: an unknown key, a bad value, or research settings that would
            reach production.
    """
    data = settings.model_dump(mode="json")
    for override in override_list(overrides):
        _apply_override(data, override)
    root = project_root()
    for section, key in _PATH_KEYS:
        value = data.get(section, {}).get(key)
        if isinstance(value, str):
            data[section][key] = resolve_path(value, root)
    try:
        derived = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    if settings.lifecycle.role == RESEARCH_ENV:
        require_research(derived)
    return derived


def output_folder(path: str = DEFAULT_OUTPUT) -> Path:
    """The folder for a notebook's PNGs and CSVs (relative to the project root), created."""
    folder = Path(resolve_path(path or DEFAULT_OUTPUT, project_root()))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def show(obj: Any, *, title: str | None = None, max_rows: int = 40) -> None:
    """Show a table, figure or value: ``display`` where the host has it, else print.

    Tables (pandas or Spark) and figures go to the host's ``display`` (Databricks,
    Jupyter); without one, tables are printed (a Spark frame's first ``max_rows``
    rows) and figures skipped (the plot functions save them as PNGs). Anything else
    (a dict of parameters, a list of lines) is printed.
    """
    display = notebook_global("display")
    if title:
        print(f"\n== {title}")
    displayable = isinstance(obj, DataFrame | pd.DataFrame | Figure)
    if display is not None and displayable:
        display(obj)
        return
    if isinstance(obj, DataFrame):
        obj = obj.limit(max_rows).toPandas()
    if isinstance(obj, pd.DataFrame):
        with pd.option_context("display.width", 250, "display.max_colwidth", 100):
            print(obj.to_string(max_rows=max_rows, index=False))
    elif not isinstance(obj, Figure):
        print(obj)


def save_figure(fig: Figure, folder: Path, name: str) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png``, display it where possible, close it."""
    fig.tight_layout()
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=_DPI)
    display = notebook_global("display")
    if display is not None:
        display(fig)
    plt.close(fig)
    return path


def save_table(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    """Write ``frame`` as ``<folder>/<name>.csv`` (no index) and return the path."""
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def empty_note(ax: Any, text: str) -> None:
    """A blank plot panel that says why it is blank."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
