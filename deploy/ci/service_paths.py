"""Which files the REST service is made of, and whether a push changed any of them.

    python3 deploy/ci/service_paths.py                   # the watched paths, one a line
    python3 deploy/ci/service_paths.py --since BEFORE    # service=true|false (GitHub output)

The watched paths are the service package (``lib/poimatch/apps/service/``, every module of
it, ``__main__`` included) and every ``poimatch`` module it imports,
directly or not (read from the source with ``ast``, so the list follows the code), plus
what else goes into the service's image and configuration: ``conf/``, ``deploy/``,
``pyproject.toml``, ``requirements.lock`` and ``.dockerignore``. ``--since`` compares
``BEFORE..HEAD`` with ``git diff --name-only``; when that is impossible (no BEFORE, a new
branch, a rewritten history) it answers ``service=true``: redeploying is the safe side.
The CI/CD workflow (.github/workflows/cicd.yml) redeploys on ``service=true``.
Standard library only: it runs on a bare runner before any setup.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "poimatch"
SERVICE = f"{PACKAGE}.apps.service"  # a module or a package (with __main__.py)
# Besides the service's own modules: what builds its image or configures it.
STATIC = ("conf/", "deploy/", "pyproject.toml", "requirements.lock", ".dockerignore")
NO_COMMIT = "0" * 40


def _module_file(root: Path, module: str) -> Path | None:
    """``poimatch.x.y`` -> ``lib/poimatch/x/y.py`` (or its ``__init__.py``), if it exists."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root / "lib" / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """The ``poimatch`` modules one file imports (absolute or relative, any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package_parts) - (node.level - 1)
                base = ".".join(package_parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from poimatch import schema` imports the module poimatch.schema.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    modules: set[str] = set()
    for name in found:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        # Importing poimatch.a.b runs poimatch/__init__.py and poimatch/a/__init__.py too.
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return modules


def service_modules(root: Path = REPO) -> list[str]:
    """Repository paths of the service module and every poimatch module it imports."""
    start = _module_file(root, SERVICE)
    if start is None:
        raise FileNotFoundError(f"the module {SERVICE} does not exist under {root / 'lib'}")
    seen: dict[str, Path] = {}
    todo = [(SERVICE, start)]
    # `python -m` imports the packages above the module first
    parts = SERVICE.split(".")
    for i in range(1, len(parts)):
        package = _module_file(root, ".".join(parts[:i]))
        if package is not None:
            todo.append((".".join(parts[:i]), package))
    main = start.with_name("__main__.py")
    if start.name == "__init__.py" and main.is_file():  # what `python -m` runs
        todo.append((f"{SERVICE}.__main__", main))
    while todo:
        module, path = todo.pop()
        if module in seen:
            continue
        seen[module] = path
        for name in _imported_modules(path, module):
            target = _module_file(root, name)
            if target is not None and name not in seen:
                todo.append((name, target))
    paths = {p.relative_to(root).as_posix() for p in seen.values()}
    # Package data read through importlib.resources travels with the modules that read it:
    # the files beside such a module that are not Python.
    for p in seen.values():
        if "resources.files" in p.read_text(encoding="utf-8"):
            paths.update(
                f.relative_to(root).as_posix()
                for f in p.parent.iterdir()
                if f.is_file() and f.suffix != ".py"
            )
    return sorted(paths)


def watched_paths(root: Path = REPO) -> list[str]:
    """Files (exact) and folders (ending in ``/``) whose change redeploys the service."""
    return service_modules(root) + list(STATIC)


def touched(changed: Iterable[str], watched: Iterable[str]) -> list[str]:
    """The changed repository paths that fall under a watched file or folder."""
    rules = list(watched)
    hits = []
    for line in changed:
        name = line.strip()
        if name and any(name == w or (w.endswith("/") and name.startswith(w)) for w in rules):
            hits.append(name)
    return hits


def _changed_since(before: str, root: Path) -> list[str] | None:
    if not before or before == NO_COMMIT:
        return None
    result = subprocess.run(
        ["git", "diff", "--name-only", before, "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"git diff {before}..HEAD failed: {result.stderr.strip()}", file=sys.stderr)
        return None
    return result.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--since", default=None, help="commit to compare HEAD with")
    args = parser.parse_args(argv)
    changed = None if args.since is None else _changed_since(args.since, REPO)
    if args.since is not None and changed is None:
        print("no comparable previous commit: treating the service as changed", file=sys.stderr)
        print("service=true")
        return 0
    try:
        watched = watched_paths(REPO)
    except (FileNotFoundError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if changed is None:
        print("\n".join(watched))
        return 0
    hits = touched(changed, watched)
    for name in hits:
        print(f"changed: {name}", file=sys.stderr)
    print(f"service={'true' if hits else 'false'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
