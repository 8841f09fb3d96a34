"""The ``poimatch`` console script: the jobs' commands, one entry point, no Spark to start."""

from __future__ import annotations

import ast
import csv
import tomllib
from pathlib import Path

import pytest
from conftest import run_probe

from poimatch.apps import commands

REPO = Path(__file__).resolve().parents[1]


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["poimatch"] == "poimatch.apps.commands:main"


@pytest.mark.parametrize("argv", [[], ["nope"]])
def test_no_or_an_unknown_command_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commands.main(argv)
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert all(name in text for name in commands.COMMANDS)
    if argv:
        assert "unknown command 'nope'" in out.err


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commands.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--env" in capsys.readouterr().out


def test_every_job_calls_its_command() -> None:
    """``jobs/<job>.py`` is the spark-submit entry of the command of that name."""
    names = {"main": "demo", "blocking_report": "blocking-report"}
    jobs = sorted(p for p in (REPO / "jobs").glob("*.py"))
    assert {names.get(p.stem, p.stem) for p in jobs} == set(commands.COMMANDS) - {"serve"}
    for path in jobs:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        module = commands.COMMANDS[names.get(path.stem, path.stem)][0]
        assert [(i.module, [a.name for a in i.names]) for i in imports] == [(module, ["main"])], (
            path.name
        )
        # nothing else: a docstring, the import, the __main__ guard
        assert len(tree.body) == 3, path.name


def test_a_configuration_error_exits_2_before_spark_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["evaluate", "--submission", "x", "--truth", "y", "--set", "nope.key=1"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_generate_runs_through_the_console_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen.csv"
    commands.main(["generate", "--rows", "40", "--seed", "3", "--output", str(out)])
    assert "generated rows=40 places=" in capsys.readouterr().out
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40
    assert len({r["id"] for r in rows}) == 40
    assert 1 < len({r["point_of_interest"] for r in rows}) < len(rows)  # labelled duplicates


def test_commands_that_validate_nothing_do_not_import_great_expectations() -> None:
    """great_expectations (with SciPy and SQLAlchemy, ~5 CPU-seconds) is imported on the
    first validation, not by importing the library: evaluate, explain, a rollback,
    ``--help`` and a configuration error start without it. A fresh interpreter, as the
    suite's own has imported it long since."""
    probe = (
        "import sys\n"
        "import poimatch.runs.batch, poimatch.io.contracts, poimatch.apps.service\n"
        "from poimatch.apps.commands import COMMANDS\n"
        "import importlib\n"
        "for module, _ in COMMANDS.values(): importlib.import_module(module)\n"
        "assert 'great_expectations' not in sys.modules, 'imported great_expectations'\n"
        "from poimatch.io.contracts import INPUT_RULES\n"
        "kinds = {type(rule.expectation).__name__ for rule in INPUT_RULES}\n"
        "assert 'great_expectations' in sys.modules\n"
        "print(sorted(kinds))\n"
    )
    done = run_probe(probe)
    assert "ExpectTableRowCountToEqual" in done.stdout
    assert "ExpectColumnValuesToBeUnique" in done.stdout
