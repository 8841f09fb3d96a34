"""Shared command-line plumbing for the thin job entry points in ``jobs/``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pyspark.sql import SparkSession

from poimatch.config import ConfigError, Settings, load_settings
from poimatch.isolation import enforce
from poimatch.session import build_session

__all__ = ["fail", "guarded_settings", "job_parser", "job_settings", "start_job"]


def job_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every job shares (``--env``, ``--set``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--env", default=None, help="configuration overlay: local, ci, prod (default $POIMATCH_ENV)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration value (repeatable)",
    )
    return parser


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error for the user and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def job_settings(args: argparse.Namespace) -> Settings:
    """Set up logging and load the configuration once (``--env``, ``--set``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("py4j", "great_expectations", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides: Sequence[str] = args.overrides
    try:
        return load_settings(args.env, overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def guarded_settings(args: argparse.Namespace) -> Settings:
    """:func:`job_settings`, with the production guard armed for research settings
    (:func:`poimatch.isolation.enforce`): for a command that needs no Spark session."""
    settings = job_settings(args)
    enforce(settings)
    return settings


def start_job(args: argparse.Namespace) -> tuple[Settings, SparkSession]:
    """Load the configuration once and build the session for a job."""
    settings = guarded_settings(args)
    return settings, build_session(settings.spark)
