"""The package's layout holds: the stages depend on nothing above them, production code
never imports the research helpers or the sample generator, and every stage module
imports without starting Spark. Read from the source (``ast``) and a fresh interpreter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import run_probe

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lib" / "poimatch"

#: per subpackage, the subpackages (and top-level modules) its modules must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "stages": ("runs", "apps", "lifecycle", "io", "research", "sample", "matcher"),
    "io": ("runs", "apps", "lifecycle", "research", "sample", "matcher"),
    "lifecycle": ("runs", "apps", "research", "sample", "matcher"),
    "runs": ("apps", "research", "sample", "matcher"),
}
#: modules that may use the generator (they make sample data) or are research
SAMPLE_USERS = ("research", "sample", "apps/commands/generate.py", "apps/commands/demo.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``poimatch`` modules (or names) a file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("poimatch"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("poimatch")
        ):
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_subpackages_exist_along_the_data_path() -> None:
    for sub in ("stages", "runs", "lifecycle", "io", "apps", "research", "sample"):
        assert (PACKAGE / sub / "__init__.py").is_file(), sub
    stages = {p.stem for p in (PACKAGE / "stages").glob("*.py")}
    assert {"normalize", "blocking", "features", "scoring", "grouping", "plan"} <= stages


@pytest.mark.parametrize("sub", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(sub: str) -> None:
    wrong = []
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in FORBIDDEN[sub]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, wrong


def test_production_code_never_imports_the_generator_or_the_research_helpers() -> None:
    wrong = []
    for path in _sources():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(SAMPLE_USERS) or rel == "__init__.py":  # __init__: lazy names
            continue
        for name in _imports(path):
            if name.startswith(("poimatch.sample", "poimatch.research")):
                wrong.append(f"{rel} imports {name}")
    assert not wrong, wrong


def test_the_layout_check_sees_a_wrong_import(tmp_path: Path) -> None:
    # the checks above read imports like this one
    bad = tmp_path / "bad.py"
    bad.write_text("from poimatch.runs.batch import run_match\nimport poimatch.sample.generator\n")
    assert _imports(bad) == {"poimatch.runs.batch.run_match", "poimatch.sample.generator"}


def test_stage_modules_and_the_service_import_without_spark_or_the_generator() -> None:
    """A fresh interpreter imports every stage module, the facade, the service and every
    command but ``generate`` and ``demo``: no JVM is started, no generator or research
    module is loaded."""
    stage_modules = sorted(_module_name(p) for p in (PACKAGE / "stages").glob("*.py"))
    probe = (
        "import importlib, sys\n"
        f"for name in {stage_modules!r}: importlib.import_module(name)\n"
        "import poimatch.matcher, poimatch.apps.service\n"
        "from poimatch.apps.commands import COMMANDS\n"
        "for key, (module, _) in COMMANDS.items():\n"
        "    if key not in ('generate', 'demo'): importlib.import_module(module)\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._gateway is None, 'a JVM was started'\n"
        "assert SparkContext._active_spark_context is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('poimatch.sample', "
        "'poimatch.research')))\n"
        "assert not loaded, loaded\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('poimatch.stages.'))))\n"
    )
    done = run_probe(probe)
    assert set(done.stdout.split()) == set(stage_modules) - {"poimatch.stages"}
