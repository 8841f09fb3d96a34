"""The ``poimatch`` console script: one command per job, the same code as ``jobs/*.py``.

    poimatch generate --rows 20000 --output data/gen.csv
    poimatch ingest --input data/gen.csv
    poimatch train --input data/lake/pois
    poimatch match --input new.csv --output out.csv
    poimatch evaluate --submission out.csv --truth new.csv
    poimatch promote --dry-run
    poimatch explain ID_A ID_B --input new.csv --png why.png
    poimatch blocking-report --input new.csv --set blocking.k_nearest=5
    poimatch serve --port 8004
    poimatch demo                      (what ``make run`` runs)

``jobs/<name>.py`` (``-`` spelled ``_``) stay the ``spark-submit`` entry points; each is a
two-line call of the command's ``main`` here. Every command takes ``--env`` and
``--set SECTION.KEY=VALUE`` and ``--help``. Run outside ``spark-submit``, a command
builds its own local-mode session with the project's jars (:func:`poimatch.session.build_session`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]

#: command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "poimatch.apps.commands.generate",
        "generate labelled synthetic POIs (CSV or Delta)",
    ),
    "ingest": (
        "poimatch.apps.commands.ingest",
        "check a CSV and MERGE it into the Delta POI table",
    ),
    "train": ("poimatch.apps.commands.train", "train, track and register the matcher"),
    "match": ("poimatch.apps.commands.match", "match the POI table (nightly) or an ad-hoc file"),
    "evaluate": ("poimatch.apps.commands.evaluate", "IoU and pair metrics of a submission"),
    "promote": ("poimatch.apps.commands.promote", "the promotion gate: challenger vs champion"),
    "explain": ("poimatch.apps.commands.explain", "each comparison's push on one pair's score"),
    "blocking-report": (
        "poimatch.apps.commands.blocking_report",
        "pairs per blocking pass and per row, before a run",
    ),
    "serve": ("poimatch.apps.service", "the REST service (local-mode Spark)"),
    "demo": ("poimatch.apps.commands.demo", "the whole chain on generated data (make run)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {c.ljust(width)}  {summary}" for c, (_, summary) in COMMANDS.items()]
    return "usage: poimatch COMMAND [options]  (poimatch COMMAND --help)\n\ncommands:\n" + (
        "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``poimatch COMMAND [options]``: run one command (exit status 2 on a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[command][0])
    run: Callable[..., None] = module.main
    if command == "serve":
        run(rest)
    else:
        run(rest, prog=f"poimatch {command}")
