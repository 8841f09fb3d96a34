"""Static checks of what deploys and what researches: no Docker engine, CLI or Spark needed.

deploy/Dockerfile and deploy/databricks.yml cannot be built or validated here, so these
tests read them as text/YAML and check what would break a build or a deployment: files
that do not exist, pins that drifted from requirements.lock, a root user, a research
notebook that could write production tables.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from poimatch.config import load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BUNDLE = DEPLOY / "databricks.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NOTEBOOK = REPO / "notebooks" / "research.ipynb"
LOCK = REPO / "requirements.lock"

# Modules a notebook may import besides poimatch: plumbing, never logic.
NOTEBOOK_ALLOWED_IMPORTS = {"pathlib"}


def _canonical(name: str) -> str:
    """PEP 503 name: ``RapidFuzz`` and ``rapidfuzz`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# ------------------------------------------------------------------------- bundle


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    data = yaml.safe_load(BUNDLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "databricks.yml must be a mapping"
    return data


def _tasks(bundle: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_key, job in bundle["resources"]["jobs"].items():
        for task in job["tasks"]:
            yield job_key, task


def _bundle_path(relative: str) -> Path:
    """A path in the bundle, resolved like the CLI does: relative to databricks.yml."""
    return (DEPLOY / relative).resolve()


def test_bundle_targets_dev_default_and_prod(bundle: dict[str, Any]) -> None:
    assert bundle["bundle"]["name"] == "poimatch"
    targets = bundle["targets"]
    assert set(targets) >= {"dev", "prod"}
    assert targets["dev"]["mode"] == "development"
    assert targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production"
    # mode: production refuses to deploy without an explicit root_path.
    assert targets["prod"]["workspace"]["root_path"]
    defaults = [name for name, t in targets.items() if t.get("default")]
    assert defaults == ["dev"]


def test_bundle_syncs_repository_root(bundle: dict[str, Any]) -> None:
    # The jobs import conf/ and live outside deploy/: the sync root must be the repository.
    roots = {_bundle_path(p) for p in bundle["sync"]["paths"]}
    assert REPO in roots


def test_bundle_python_files_exist_in_synced_tree(bundle: dict[str, Any]) -> None:
    files = {}
    for job_key, task in _tasks(bundle):
        if "spark_python_task" not in task:
            continue
        relative = task["spark_python_task"]["python_file"]
        assert not Path(relative).is_absolute(), f"{job_key}: use a path relative to deploy/"
        path = _bundle_path(relative)
        assert path.is_file(), f"{job_key}: {relative} -> {path} does not exist"
        assert _inside(path, REPO), f"{job_key}: {relative} leaves the repository"
        files[job_key] = path.relative_to(REPO).as_posix()
    assert files == {
        "poimatch_train": "jobs/train.py",
        "poimatch_nightly_match": "jobs/match.py",
    }


def test_bundle_job_parameters(bundle: dict[str, Any]) -> None:
    jobs = bundle["resources"]["jobs"]
    train = jobs["poimatch_train"]["tasks"][0]["spark_python_task"]["parameters"]
    assert train[:4] == ["--env", "prod", "--input", "${var.storage_root}/pois"]
    match = jobs["poimatch_nightly_match"]["tasks"][0]["spark_python_task"]["parameters"]
    assert match[:2] == ["--env", "prod"]
    for params in (train, match):
        assert all(isinstance(p, str) for p in params)
        sets = {params[i + 1] for i, p in enumerate(params) if p == "--set"}
        # Each target's own tables and model, never the values baked into conf/prod.yaml.
        assert "storage.root=${var.storage_root}" in sets
        assert "model.name=${var.model_name}" in sets
    schedule = jobs["poimatch_nightly_match"]["schedule"]
    assert schedule["quartz_cron_expression"] == "0 0 2 * * ?"
    assert schedule["timezone_id"] == "UTC"
    assert "schedule" not in jobs["poimatch_train"]


def test_bundle_variables_are_defined(bundle: dict[str, Any]) -> None:
    text = BUNDLE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{var\.([A-Za-z0-9_]+)\}", text))
    defined = set(bundle["variables"])
    assert used, "expected ${var.*} references"
    assert used <= defined, f"undefined variables: {sorted(used - defined)}"
    assert bundle["variables"]["model_name"]["default"] == "poimatch-xgb"
    for target in bundle["targets"].values():
        assert set(target.get("variables", {})) <= defined


def test_bundle_dev_never_uses_production_names(bundle: dict[str, Any]) -> None:
    prod = {k: v["default"] for k, v in bundle["variables"].items() if "default" in v}
    prod |= bundle["targets"]["prod"].get("variables", {})
    dev = prod | bundle["targets"]["dev"].get("variables", {})
    for key in ("model_name", "storage_root", "experiment"):
        assert dev[key] != prod[key], f"dev shares {key}={prod[key]!r} with prod"


def test_bundle_job_clusters(bundle: dict[str, Any]) -> None:
    variables = bundle["variables"]
    assert re.fullmatch(
        r"1[67]\.\d+\.x-cpu-ml-scala2\.1[23]", variables["spark_version"]["default"]
    )
    for job_key, job in bundle["resources"]["jobs"].items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for task in job["tasks"]:
            cluster = clusters[task["job_cluster_key"]]
            assert cluster["spark_version"] == "${var.spark_version}", job_key
            assert cluster["node_type_id"] == "${var.node_type_id}", job_key
            assert cluster["num_workers"] == 2, job_key
            env = cluster["spark_env_vars"]
            assert env["GX_ANALYTICS_ENABLED"] == "false", job_key
            assert env["POIMATCH_CONF_DIR"] == "${workspace.file_path}/conf", job_key


def test_bundle_libraries_pinned_as_in_lock(bundle: dict[str, Any]) -> None:
    pins = _lock_pins()
    artifact_dirs = {_bundle_path(a["path"]) for a in bundle["artifacts"].values()}
    assert artifact_dirs == {REPO}, "the wheel is built from the repository root"
    for job_key, task in _tasks(bundle):
        libraries = task["libraries"]
        wheels = [lib["whl"] for lib in libraries if "whl" in lib]
        assert wheels, f"{job_key}: no wheel"
        for wheel in wheels:
            assert _bundle_path(wheel).parent == REPO / "dist", f"{job_key}: {wheel}"
        packages = [lib["pypi"]["package"] for lib in libraries if "pypi" in lib]
        names = set()
        for spec in packages:
            name, sep, version = spec.partition("==")
            assert sep, f"{job_key}: {spec} is not pinned with =="
            assert pins.get(_canonical(name)) == version, (
                f"{job_key}: {spec} but requirements.lock has {pins.get(_canonical(name))}"
            )
            names.add(_canonical(name))
        assert names >= {"rapidfuzz", "anyascii"}, job_key


# --------------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        line = buffer + line
        buffer = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not buffer, "Dockerfile ends inside a continuation line"
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        assert stages, "the first instruction must be FROM"
        stages[-1].append((keyword, args))
    return stages


def _words(args: str) -> list[str]:
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list)
        return [str(w) for w in words]
    return shlex.split(args)


@pytest.fixture(scope="module")
def docker_stages() -> list[list[tuple[str, str]]]:
    return _stages(_instructions(DOCKERFILE.read_text(encoding="utf-8")))


def test_dockerfile_base_images_pinned_by_tag(
    docker_stages: list[list[tuple[str, str]]],
) -> None:
    for stage in docker_stages:
        image = _words(stage[0][1])[0]
        if "@sha256:" in image:
            continue
        name, sep, tag = image.rpartition(":")
        assert sep, f"FROM {image}: no tag"
        assert "/" not in tag, f"FROM {image}: no tag"
        assert tag != "latest", f"FROM {image}: pin a tag, not latest"
        assert name == "python", f"FROM {image}: the official Python image expected"
        assert tag.startswith("3.11"), f"FROM {image}: Python 3.11 expected"


def test_dockerfile_runs_as_non_root(docker_stages: list[list[tuple[str, str]]]) -> None:
    users = [args for keyword, args in docker_stages[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0"), f"USER {users[-1]}"


def test_dockerfile_copy_sources_exist(docker_stages: list[list[tuple[str, str]]]) -> None:
    copied = set()
    for stage in docker_stages:
        for keyword, args in stage:
            if keyword not in ("COPY", "ADD"):
                continue
            words = _words(args)
            flags = [w for w in words if w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue  # from another stage, not from the build context
            paths = [w for w in words if not w.startswith("--")]
            assert len(paths) >= 2, f"{keyword} {args}"
            for source in paths[:-1]:
                assert (REPO / source).exists(), f"{keyword} {source}: not in the repository"
                copied.add(source.rstrip("/"))
    expected = {
        "pyproject.toml",
        "requirements.lock",
        "lib",
        "jobs",
        "conf",
        "deploy/jvm/pom.xml",
        "scripts",
        "spark-submit.sh",
    }
    assert expected <= copied, f"not copied: {sorted(expected - copied)}"


def test_dockerfile_installs_with_lock_non_editable(
    docker_stages: list[list[tuple[str, str]]],
) -> None:
    runs = [args for stage in docker_stages for keyword, args in stage if keyword == "RUN"]
    installs = [
        command.strip()
        for run in runs
        for command in run.split("&&")
        if "pip install" in command and "requirements.lock" in command
    ]
    assert installs, "no pip install with requirements.lock"
    for command in installs:
        words = shlex.split(command)
        assert words[0] == "/opt/poimatch/.venv/bin/pip", command
        assert "-c" in words, command
        assert words[words.index("-c") + 1] == "requirements.lock", command
        assert not {"-e", "--editable"} & set(words), command
        # the package itself with the `local` extra: the image brings its own Spark
        assert words[-1] == ".[local]", command
    assert any("python -m venv /opt/poimatch/.venv" in run for run in runs)


def test_dockerfile_java_17_in_runtime(docker_stages: list[list[tuple[str, str]]]) -> None:
    def jdk_packages(stage: list[tuple[str, str]]) -> set[str]:
        text = " ".join(args for keyword, args in stage if keyword == "RUN")
        return set(re.findall(r"openjdk-\d+-j\w+(?:-headless)?", text))

    assert jdk_packages(docker_stages[-1]) == {"openjdk-17-jre-headless"}
    for stage in docker_stages:
        assert jdk_packages(stage) <= {"openjdk-17-jre-headless"}


def test_dockerfile_resolves_jars_like_setup(docker_stages: list[list[tuple[str, str]]]) -> None:
    def mvn_words(text: str) -> list[str]:
        joined = re.sub(r"\\\n\s*", " ", text)
        match = re.search(r"^\s*(?:RUN\s+)?(mvn [^\n&]*)", joined, flags=re.MULTILINE)
        assert match, "no mvn command"
        # The output folder differs (the checkout vs /opt/poimatch); the rest must not.
        return [w for w in shlex.split(match.group(1)) if not w.startswith("-DoutputDirectory")]

    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    docker = DOCKERFILE.read_text(encoding="utf-8")
    assert mvn_words(docker) == mvn_words(setup)
    assert "-DoutputDirectory=/opt/poimatch/.jars" in docker


def test_dockerfile_entrypoint_env_and_workdir(
    docker_stages: list[list[tuple[str, str]]],
) -> None:
    final = docker_stages[-1]
    last = dict(final)  # the last one of each instruction wins, as in Docker
    assert json.loads(last["ENTRYPOINT"]) == ["./spark-submit.sh"]
    assert json.loads(last["CMD"]) == ["jobs/match.py"]
    assert last["WORKDIR"] == "/opt/poimatch"
    env: dict[str, str] = {}
    for keyword, args in final:
        if keyword == "ENV":
            env |= dict(w.split("=", 1) for w in shlex.split(args))
    assert env["POIMATCH_ENV"] == "prod"
    assert env["GX_ANALYTICS_ENABLED"] == "false"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".git", ".venv", ".jars", "data", "mlruns", "mlartifacts", "mlflow.db"}
    assert required <= patterns, f"missing: {sorted(required - patterns)}"
    assert any("__pycache__" in p for p in patterns)
    # Nothing the Dockerfile copies may be excluded.
    for needed in ("README.md", "lib", "jobs", "conf", "scripts", "spark-submit.sh"):
        assert needed not in patterns, needed


# ------------------------------------------------------------- scripts, Makefile


@pytest.mark.parametrize("script", ["spark-submit.sh", "scripts/setup.sh", ".ci/run"])
def test_shell_scripts_parse(script: str) -> None:
    bash = shutil.which("bash")
    assert bash, "bash not found"
    result = subprocess.run(
        [bash, "-n", str(REPO / script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_makefile_targets() -> None:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/ -]+?)\s*:(?![=:])", line)
        if match and not line.startswith(("\t", "#")):
            targets.update(match.group(1).split())
    assert {"setup", "run", "test", "check"} <= targets


# -------------------------------------------------------------- research notebook


@pytest.fixture(scope="module")
def notebook() -> dict[str, Any]:
    data = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _code_cells(notebook: dict[str, Any]) -> list[ast.Module]:
    trees = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"]
            trees.append(ast.parse("".join(source) if isinstance(source, list) else source))
    return trees


def test_notebook_is_nbformat_4_without_outputs(notebook: dict[str, Any]) -> None:
    assert notebook["nbformat"] == 4
    assert isinstance(notebook["nbformat_minor"], int)
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert set(kinds) <= {"code", "markdown", "raw"}
    assert "markdown" in kinds
    assert "code" in kinds
    for cell in notebook["cells"]:
        assert isinstance(cell["source"], list | str)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], "clear the outputs before committing"
            assert cell["execution_count"] is None


def test_notebook_imports_only_the_library(notebook: dict[str, Any]) -> None:
    imported: list[tuple[str, str | None]] = []
    for tree in _code_cells(notebook):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module
                assert node.level == 0
                imported += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [(alias.name, None) for alias in node.names]
    library = [(m, n) for m, n in imported if m.split(".")[0] == "poimatch"]
    others = {m.split(".")[0] for m, _ in imported} - {"poimatch"}
    assert library, "the notebook should use the library"
    extra = others - NOTEBOOK_ALLOWED_IMPORTS
    assert not extra, f"imports beyond the library: {sorted(extra)}"
    for module_name, name in library:
        module = importlib.import_module(module_name)
        if name is not None:
            assert name != "*", "no star imports"
            assert hasattr(module, name), f"{module_name} has no {name}"
    used = {n for m, n in library}
    assert {"load_settings", "build_session", "generate_pois", "load_pois", "train_model"} <= used


def test_notebook_holds_no_logic(notebook: dict[str, Any]) -> None:
    logic = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While)
    for tree in _code_cells(notebook):
        found = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, logic)]
        assert not found, f"logic in the notebook ({found}): move it into lib/poimatch"


def test_notebook_cannot_touch_production(notebook: dict[str, Any]) -> None:
    calls = [
        node
        for tree in _code_cells(notebook)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "load_settings"
    ]
    assert len(calls) == 1, "load the settings exactly once"
    args = [ast.literal_eval(a) for a in calls[0].args]
    assert not calls[0].keywords
    env, overrides = args
    keys = {o.split("=", 1)[0] for o in overrides}
    assert {"storage.root", "model.name", "tracking.experiment"} <= keys
    research = load_settings(env, overrides)
    for prod_env in ("local", "prod"):
        prod = load_settings(prod_env)
        assert research.storage.root != prod.storage.root
        assert research.model.name != prod.model.name
        assert research.tracking.experiment != prod.tracking.experiment
        # Neither tree inside the other: no table path of one is a table path of the other.
        ours, theirs = Path(research.storage.root), Path(prod.storage.root)
        assert not _inside(ours, theirs)
        assert not _inside(theirs, ours)
