"""Static checks of what deploys: no Docker engine, Databricks CLI or Spark needed.

deploy/Dockerfile, deploy/mlflow.Dockerfile, deploy/compose.yaml, deploy/databricks.yml and
.github/workflows/cicd.yml cannot be built, started or run here, so these tests read them
as text/YAML and check what would break a build, a start or a deployment: files and entry
points that do not exist, options a job does not accept, pins that drifted from
requirements.lock, unpinned images or actions, a root user, ports that disagree, services
wired to the wrong host, passwords in plain text, a redeploy that is not conditional. The
two small CI scripts in deploy/ci/ are run for real, against local stand-ins.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from poimatch.config import load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BUNDLE = DEPLOY / "databricks.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
MLFLOW_DOCKERFILE = DEPLOY / "mlflow.Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
WORKFLOW = REPO / ".github" / "workflows" / "cicd.yml"
SERVICE_PATHS = DEPLOY / "ci" / "service_paths.py"
CHAMPION_CHECK = DEPLOY / "ci" / "champion_check.py"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"
SERVICE_MODULE = "poimatch.apps.service"
SERVICE_PORT = 8004


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


def _module_path(module: str) -> Path:
    """``poimatch.apps.service`` -> lib/poimatch/apps/service/__init__.py for a package, else
    lib/poimatch/apps/service.py (the package lives in lib/)."""
    base = REPO / "lib" / Path(*module.split("."))
    package = base / "__init__.py"
    return package if package.is_file() else base.with_suffix(".py")


def _job_options(path: Path) -> tuple[set[str], set[str]]:
    """(accepted, required) ``--options`` of a job, read from its argparse calls.

    A job built on ``poimatch.apps.cli.job_parser`` also accepts that parser's options; a
    ``jobs/*.py`` entry point that imports its ``main`` from ``poimatch.apps.commands.<name>``
    is read there.
    """
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("poimatch.apps.commands.")
            and [a.name for a in node.names] == ["main"]
        ):
            module = str(node.module).split(".")[-1]
            return _job_options(_module_path(f"poimatch.apps.commands.{module}"))
    accepted: set[str] = set()
    required: set[str] = set()
    uses_job_parser = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags = {
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
                if a.value.startswith("--")
            }
            accepted |= flags
            if any(
                k.arg == "required" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            ):
                required |= flags
        elif isinstance(node.func, ast.Name) and node.func.id == "job_parser":
            uses_job_parser = True
    if uses_job_parser:
        accepted |= _job_options(_module_path("poimatch.apps.cli"))[0]
    return accepted, required


def _check_job_call(job: str, argv: list[str]) -> None:
    """The job file exists, accepts every ``--option`` in argv and gets its required ones."""
    accepted, required = _job_options(REPO / job)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    assert given <= accepted, f"{job} does not accept {sorted(given - accepted)}"
    assert required <= given, f"{job} needs {sorted(required - given)}"


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------- bundle

# Resource sections of the bundle -> Databricks' typed models of the bundle schema
# (databricks-bundles: unknown fields, missing required fields and wrong types raise).
_BUNDLE_RESOURCES = {
    "jobs": "databricks.bundles.jobs:Job",
    "registered_models": "databricks.bundles.registered_models:RegisteredModel",
    "volumes": "databricks.bundles.volumes:Volume",
}
_BUNDLE_VAR = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
# Databricks Runtime (ML) -> the Apache Spark line it runs (release notes).
_DBR_SPARK = {"17.3": "4.0", "18.0": "4.1", "18.1": "4.1", "18.2": "4.1", "19.0": "4.2"}


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


def _sets(params: list[str]) -> set[str]:
    return {params[i + 1] for i, p in enumerate(params) if p == "--set"}


def _variables(bundle: dict[str, Any], target: str) -> dict[str, Any]:
    """The target's variable values: its own, else the defaults."""
    values = {k: v.get("default") for k, v in bundle["variables"].items()}
    return values | bundle["targets"][target].get("variables", {})


def _resolved(bundle: dict[str, Any], target: str) -> Any:
    """The bundle with ``${var.*}`` replaced by the target's values (as the CLI does)."""
    values = _variables(bundle, target)

    def sub(node: Any) -> Any:
        if isinstance(node, str):
            return _BUNDLE_VAR.sub(lambda m: str(values[m.group(1)]), node)
        if isinstance(node, list):
            return [sub(x) for x in node]
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        return node

    return sub({k: v for k, v in bundle.items() if k != "variables"})


def _model_class(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


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
    # Production jobs run as a service principal, never as whoever deployed them.
    assert targets["prod"]["run_as"] == {"service_principal_name": "${var.service_principal}"}
    assert "default" not in bundle["variables"]["service_principal"], "prod must name it"
    assert "run_as" not in targets["dev"]


def test_bundle_syncs_repository_root(bundle: dict[str, Any]) -> None:
    # conf/ lives outside deploy/: the sync root must be the repository.
    roots = {_bundle_path(p) for p in bundle["sync"]["paths"]}
    assert REPO in roots


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_bundle_resources_fit_the_databricks_schema(bundle: dict[str, Any], target: str) -> None:
    resolved = _resolved(bundle, target)
    resources = resolved["resources"]
    assert set(resources) <= set(_BUNDLE_RESOURCES), f"unchecked: {set(resources)}"
    for kind, entries in resources.items():
        model = _model_class(_BUNDLE_RESOURCES[kind])
        for key, entry in entries.items():
            try:
                model.from_dict(entry)
            except (TypeError, ValueError) as exc:
                pytest.fail(f"resources.{kind}.{key}: {exc}")
    run_as = resolved["targets"][target].get("run_as")
    if run_as is not None:
        from databricks.bundles.jobs import JobRunAs

        JobRunAs.from_dict(run_as)


def test_the_schema_check_catches_a_misspelt_field(bundle: dict[str, Any]) -> None:
    job = _resolved(bundle, "dev")["resources"]["jobs"]["poimatch_train"]
    job["tasks"][0]["python_wheel_task"]["entry_pont"] = "poimatch"
    with pytest.raises(ValueError, match="entry_pont"):
        _model_class(_BUNDLE_RESOURCES["jobs"]).from_dict(job)


def test_bundle_tasks_run_the_wheels_console_script(bundle: dict[str, Any]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    from poimatch.apps.commands import COMMANDS

    commands = {}
    for job_key, task in _tasks(bundle):
        assert set(task) & {"spark_python_task", "notebook_task"} == set(), job_key
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == project["name"]
        entry = wheel_task["entry_point"]
        assert project["scripts"][entry] == "poimatch.apps.commands:main", entry
        command = wheel_task["parameters"][0]
        assert command in COMMANDS, f"{job_key}: no command {command!r}"
        commands[job_key, task["task_key"]] = command
    assert commands == {
        ("poimatch_train", "train"): "train",
        ("poimatch_train", "promote"): "promote",
        ("poimatch_nightly_match", "match"): "match",
    }


class _StopAfterParsingError(Exception):
    def __init__(self, args: Any) -> None:
        self.args_ = args


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_bundle_parameters_parse_and_configure_per_target(
    bundle: dict[str, Any], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each task's argv goes through its command's real parser and the real configuration
    (``--env databricks`` plus the task's ``--set``), with the target's variables."""
    from poimatch.apps.cli import job_settings
    from poimatch.apps.commands import COMMANDS

    resolved = _resolved(bundle, target)
    catalog, schema = (_variables(bundle, target)[k] for k in ("catalog", "schema"))
    volume = {
        v["name"]: f"/Volumes/{v['catalog_name']}/{v['schema_name']}/{v['name']}"
        for v in resolved["resources"]["volumes"].values()
    }
    (registered,) = resolved["resources"]["registered_models"].values()
    for job in resolved["resources"]["jobs"].values():
        for task in job["tasks"]:
            command, *argv = task["python_wheel_task"]["parameters"]
            module = importlib.import_module(COMMANDS[command][0])

            def parsed(args: Any) -> None:
                raise _StopAfterParsingError(args)

            monkeypatch.setattr(module, "start_job", parsed)
            with pytest.raises(_StopAfterParsingError) as caught:
                module.main(argv, prog=f"poimatch {command}")
            settings = job_settings(caught.value.args_)
            assert settings.env == "databricks"
            # Tables on the target's own volume, the model in its own UC schema.
            assert settings.storage.root == volume["lake"], task["task_key"]
            assert settings.storage.root.startswith(f"/Volumes/{catalog}/{schema}/")
            assert settings.model.name == (
                f"{registered['catalog_name']}.{registered['schema_name']}.{registered['name']}"
            )
            assert settings.tracking.registry_uri == "databricks-uc"
            assert settings.tracking.artifact_root == f"dbfs:{volume['mlartifacts']}"
            if command == "train":
                assert caught.value.args_.input == [
                    settings.storage.table_path(settings.storage.pois_table)
                ]
            life = settings.lifecycle
            production = (life.production_storage_root, life.production_model_name)
            if target == "prod":
                # what isolation guards is what prod writes
                assert production == (settings.storage.root, settings.model.name)
            else:
                assert settings.storage.root != life.production_storage_root
                assert settings.model.name != life.production_model_name
                assert settings.tracking.experiment != life.production_experiment


def test_bundle_promotion_gate_follows_training(bundle: dict[str, Any]) -> None:
    job = bundle["resources"]["jobs"]["poimatch_train"]
    tasks = {task["task_key"]: task for task in job["tasks"]}
    assert list(tasks) == ["train", "promote"]
    promote = tasks["promote"]
    # Runs only after a successful training run, on the same cluster and libraries.
    assert promote["depends_on"] == [{"task_key": "train"}]
    assert "run_if" not in promote, "the default (ALL_SUCCESS) is the gate"
    assert promote["job_cluster_key"] == tasks["train"]["job_cluster_key"]
    assert promote["libraries"] == tasks["train"]["libraries"]
    params = promote["python_wheel_task"]["parameters"]
    # Same model, tables and experiment as the training it judges; never a dry run.
    assert _sets(params) == _sets(tasks["train"]["python_wheel_task"]["parameters"])
    assert "--dry-run" not in params


def test_bundle_schedule(bundle: dict[str, Any]) -> None:
    jobs = bundle["resources"]["jobs"]
    schedule = jobs["poimatch_nightly_match"]["schedule"]
    assert schedule["quartz_cron_expression"] == "0 0 2 * * ?"
    assert schedule["timezone_id"] == "UTC"
    assert "pause_status" not in schedule, "development mode pauses it, production runs it"
    assert "schedule" not in jobs["poimatch_train"]


def test_bundle_variables_are_defined(bundle: dict[str, Any]) -> None:
    text = BUNDLE.read_text(encoding="utf-8")
    used = set(_BUNDLE_VAR.findall(text))
    defined = set(bundle["variables"])
    assert used, "expected ${var.*} references"
    assert used <= defined, f"undefined variables: {sorted(used - defined)}"
    assert defined <= used, f"unused variables: {sorted(defined - used)}"
    for target in bundle["targets"].values():
        assert set(target.get("variables", {})) <= defined


def test_bundle_job_clusters_run_the_tested_spark(bundle: dict[str, Any]) -> None:
    runtime = bundle["variables"]["spark_version"]["default"]
    match = re.fullmatch(r"(\d+\.\d+)\.x-cpu-ml-scala2\.13", runtime)
    assert match, f"{runtime}: not a Databricks Runtime ML version key"
    pyspark = _lock_pins()["pyspark"]
    assert _DBR_SPARK.get(match.group(1)) == ".".join(pyspark.split(".")[:2]), (
        f"{runtime} does not run the Spark line the tests run (pyspark {pyspark})"
    )
    for job_key, job in bundle["resources"]["jobs"].items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for task in job["tasks"]:
            cluster = clusters[task["job_cluster_key"]]
            assert cluster["spark_version"] == "${var.spark_version}", job_key
            assert cluster["node_type_id"] == "${var.node_type_id}", job_key
            assert cluster["data_security_mode"] == "SINGLE_USER", job_key  # UC access
            env = cluster["spark_env_vars"]
            assert env["GX_ANALYTICS_ENABLED"] == "false", job_key
            assert env["POIMATCH_CONF_DIR"] == "${workspace.file_path}/conf", job_key
            assert env["MLFLOW_REGISTRY_URI"] == "databricks-uc", job_key
            assert env["MLFLOW_TRACKING_URI"] == "databricks", job_key


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


# -------------------------------------------------------------------- Dockerfiles

Stage = list[tuple[str, str]]


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


def _stages(instructions: list[tuple[str, str]]) -> list[Stage]:
    stages: list[Stage] = []
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


def _stage_from(stage: Stage) -> tuple[str, str | None]:
    """(base image or stage, this stage's name) from ``FROM base [AS name]``."""
    words = _words(stage[0][1])
    words = [w for w in words if not w.startswith("--platform")]
    if len(words) == 3 and words[1].upper() == "AS":
        return words[0], words[2]
    assert len(words) == 1, f"FROM {stage[0][1]}"
    return words[0], None


def _named_stages(stages: list[Stage]) -> dict[str, Stage]:
    named = {}
    for stage in stages:
        _, name = _stage_from(stage)
        if name is not None:
            named[name] = stage
    return named


def _effective(stages: list[Stage], target: str | None = None) -> Stage:
    """A target's instructions with those of the stages it is built FROM, base first."""
    named = _named_stages(stages)
    stage = named[target] if target is not None else stages[-1]
    chain = [stage]
    while (base := _stage_from(chain[0])[0]) in named:
        chain.insert(0, named[base])
    return [instruction for s in chain for instruction in s]


def _last(stage: Stage, keyword: str) -> str | None:
    values = [args for k, args in stage if k == keyword]
    return values[-1] if values else None


def _healthcheck(args: str) -> tuple[dict[str, str], list[str]]:
    """``HEALTHCHECK [--opt=value ...] CMD [...]`` -> (options, exec-form command)."""
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])", args)
    assert match, f"HEALTHCHECK {args}: expected options then CMD in exec (JSON) form"
    options = dict(o[2:].split("=", 1) for o in match.group(1).split())
    return options, _words(match.group(2))


def _python_c(command: list[str]) -> str:
    """The code of ``python -c CODE``, checked to compile."""
    assert Path(command[0]).name.startswith("python"), command
    assert command[1] == "-c", command
    compile(command[2], "<python -c>", "exec")
    return command[2]


@pytest.fixture(scope="module")
def docker_stages() -> list[Stage]:
    return _stages(_instructions(DOCKERFILE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def mlflow_stages() -> list[Stage]:
    return _stages(_instructions(MLFLOW_DOCKERFILE.read_text(encoding="utf-8")))


def test_dockerfile_targets(docker_stages: list[Stage]) -> None:
    named = _named_stages(docker_stages)
    assert list(named) == ["build", "runtime", "service", "jobs"]
    # The job image stays the default target (a plain `docker build`): it is the last stage.
    assert _stage_from(docker_stages[-1]) == ("runtime", "jobs")
    assert _stage_from(named["service"]) == ("runtime", "service")
    # The targets only choose the process: no layers of their own.
    for target in ("service", "jobs"):
        layers = [k for k, _ in named[target] if k in ("RUN", "COPY", "ADD")]
        assert not layers, f"{target}: {layers}"


def test_dockerfile_base_images_pinned_by_tag(docker_stages: list[Stage]) -> None:
    stage_names = set(_named_stages(docker_stages))
    external = []
    for stage in docker_stages:
        image = _stage_from(stage)[0]
        if image in stage_names:
            continue
        external.append(image)
        if "@sha256:" in image:
            continue
        name, sep, tag = image.rpartition(":")
        assert sep, f"FROM {image}: no tag"
        assert "/" not in tag, f"FROM {image}: no tag"
        assert tag != "latest", f"FROM {image}: pin a tag, not latest"
        assert name == "python", f"FROM {image}: the official Python image expected"
        assert tag.startswith("3.11"), f"FROM {image}: Python 3.11 expected"
    assert len(external) == 2, external


@pytest.mark.parametrize("target", ["service", "jobs"])
def test_dockerfile_runs_as_non_root(docker_stages: list[Stage], target: str) -> None:
    user = _last(_effective(docker_stages, target), "USER")
    assert user, f"{target}: no USER"
    assert user.split(":", 1)[0] not in ("root", "0"), f"{target}: USER {user}"


def test_dockerfile_copy_sources_exist(docker_stages: list[Stage]) -> None:
    copied = set()
    for stage in docker_stages:
        for keyword, args in stage:
            if keyword not in ("COPY", "ADD"):
                continue
            words = _words(args)
            flags = [w for w in words if w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                source_stage = next(f for f in flags if f.startswith("--from="))[7:]
                assert source_stage in _named_stages(docker_stages), args
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


def test_dockerfile_installs_with_lock_non_editable(docker_stages: list[Stage]) -> None:
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


def test_dockerfile_java_17_in_runtime(docker_stages: list[Stage]) -> None:
    def jdk_packages(stage: Stage) -> set[str]:
        text = " ".join(args for keyword, args in stage if keyword == "RUN")
        return set(re.findall(r"openjdk-\d+-j\w+(?:-headless)?", text))

    for target in ("service", "jobs"):
        assert jdk_packages(_effective(docker_stages, target)) == {"openjdk-17-jre-headless"}
    # the build stage may hold a JDK (javac, for the JVM helper); the images run on the JRE
    for stage in docker_stages:
        assert jdk_packages(stage) <= {"openjdk-17-jre-headless", "openjdk-17-jdk-headless"}


def test_dockerfile_builds_the_jvm_helper_like_setup(docker_stages: list[Stage]) -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    docker = DOCKERFILE.read_text(encoding="utf-8")
    assert "scripts/build_jvm.sh" in setup
    assert "scripts/build_jvm.sh /opt/poimatch/.venv /opt/poimatch/.jars" in docker
    build = [args for keyword, args in docker_stages[0] if keyword == "RUN"]
    assert any("openjdk-17-jdk-headless" in args for args in build)
    assert any("build_jvm.sh" in args for args in build)


def test_dockerfile_resolves_jars_like_setup(docker_stages: list[Stage]) -> None:
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


def test_dockerfile_jobs_target_entrypoint_env_and_workdir(docker_stages: list[Stage]) -> None:
    jobs = _effective(docker_stages, "jobs")
    assert _effective(docker_stages) == jobs, "the default target is jobs"
    assert json.loads(_last(jobs, "ENTRYPOINT") or "null") == ["./spark-submit.sh"]
    assert json.loads(_last(jobs, "CMD") or "null") == ["jobs/match.py"]
    assert (REPO / "spark-submit.sh").is_file()
    assert (REPO / "jobs" / "match.py").is_file()
    assert _last(jobs, "WORKDIR") == "/opt/poimatch"
    env: dict[str, str] = {}
    for keyword, args in jobs:
        if keyword == "ENV":
            env |= dict(w.split("=", 1) for w in shlex.split(args))
    assert env["POIMATCH_ENV"] == "prod"
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["POIMATCH_CONF_DIR"] == "/opt/poimatch/conf"
    # A batch job serves nothing: no port, and no health check that would mark it unhealthy.
    assert _last(jobs, "EXPOSE") is None
    assert _last(jobs, "HEALTHCHECK") is None


def test_dockerfile_service_target(docker_stages: list[Stage]) -> None:
    service = _effective(docker_stages, "service")
    entrypoint = json.loads(_last(service, "ENTRYPOINT") or "null")
    assert entrypoint == ["/opt/poimatch/.venv/bin/python", "-m", SERVICE_MODULE]
    # The module the entry point runs is in the image (lib/ is copied and installed).
    assert _module_path(SERVICE_MODULE).is_file(), f"{_module_path(SERVICE_MODULE)} is missing"
    cmd = json.loads(_last(service, "CMD") or "null")
    assert cmd == ["--host", "0.0.0.0", "--port", str(SERVICE_PORT)]
    assert (_last(service, "EXPOSE") or "").split() == [str(SERVICE_PORT)]
    assert _last(service, "WORKDIR") == "/opt/poimatch"
    assert (_last(service, "USER") or "").startswith("10001")


def test_dockerfile_service_healthcheck_uses_health(docker_stages: list[Stage]) -> None:
    args = _last(_effective(docker_stages, "service"), "HEALTHCHECK")
    assert args, "the service target has no HEALTHCHECK"
    options, command = _healthcheck(args)
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    # No curl in slim images: the venv's Python, which the image certainly has.
    assert command[0] == "/opt/poimatch/.venv/bin/python"
    code = _python_c(command)
    assert "urllib.request" in code
    urls = re.findall(r"http://[^'\"]+", code)
    assert urls == [f"http://127.0.0.1:{SERVICE_PORT}/health"]
    assert not {"curl", "wget"} & set(" ".join(command).split())


def test_service_port_is_the_configured_default() -> None:
    # The image, compose and CI use 8004: the service's own default must agree.
    assert load_settings("prod").service.port == SERVICE_PORT


def test_service_module_accepts_the_image_options(docker_stages: list[Stage]) -> None:
    # `python -m poimatch.apps.service [--env ENV] [--host H] [--port 8004]`: the options the
    # image and compose pass are ones the module's argparse accepts.
    path = _module_path(SERVICE_MODULE)
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    relative = path.relative_to(REPO).as_posix()
    cmd = json.loads(_last(_effective(docker_stages, "service"), "CMD") or "[]")
    _check_job_call(relative, cmd)
    compose_command = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["service"]
    _check_job_call(relative, _argv(compose_command["command"]))
    assert {"--env", "--host", "--port"} <= _job_options(path)[0]
    # python -m runs a package's __main__.py, a module's __main__ guard
    runner = path.with_name("__main__.py") if path.name == "__init__.py" else path
    assert runner.is_file(), f"{SERVICE_MODULE} cannot be run with python -m (no __main__.py)"
    tree = ast.parse(runner.read_text(encoding="utf-8"))
    main_guard = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.If)
        and "__main__" in ast.unparse(n.test)
        and "main()" in ast.unparse(n)
    ]
    assert main_guard, f"{SERVICE_MODULE} cannot be run with python -m (no __main__ guard)"


def test_mlflow_dockerfile(mlflow_stages: list[Stage]) -> None:
    assert len(mlflow_stages) == 1
    stage = mlflow_stages[0]
    image = _stage_from(stage)[0]
    # The server is the MLflow the clients use (requirements.lock), by tag, never latest.
    assert image == f"ghcr.io/mlflow/mlflow:v{_lock_pins()['mlflow']}"
    runs = " && ".join(args for keyword, args in stage if keyword == "RUN")
    installs = [c.strip() for c in runs.split("&&") if "pip install" in c]
    assert len(installs) == 1, installs
    packages = {
        _canonical(w.split("==")[0]): w.split("==")[1]
        for w in shlex.split(installs[0])
        if "==" in w
    }
    assert set(packages) == {"psycopg2-binary", "boto3"}
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in packages.values()), packages
    assert not [k for k, _ in stage if k in ("COPY", "ADD")], "the build context is deploy/"
    # ... so none of it (deploy/.env least of all) is sent to the builder.
    ignore = MLFLOW_DOCKERFILE.with_name(MLFLOW_DOCKERFILE.name + ".dockerignore")
    patterns = [line for line in ignore.read_text(encoding="utf-8").splitlines() if line]
    assert [p for p in patterns if not p.startswith("#")] == ["*"]
    user = _last(stage, "USER")
    assert user
    assert user.split(":", 1)[0] not in ("root", "0")
    health = _last(stage, "HEALTHCHECK")
    assert health
    _, command = _healthcheck(health)
    assert re.findall(r"http://[^'\"]+", _python_c(command)) == ["http://127.0.0.1:5000/health"]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_pins_agree_with_lock(dockerfile: Path) -> None:
    # Any `name==version` a Dockerfile installs that requirements.lock also pins must be
    # the same version; and every package installed by name is pinned.
    pins = _lock_pins()
    stages = _stages(_instructions(dockerfile.read_text(encoding="utf-8")))
    runs = [args for stage in stages for keyword, args in stage if keyword == "RUN"]
    seen = 0
    for command in (c.strip() for run in runs for c in run.split("&&")):
        words = shlex.split(command)
        if "pip" not in Path(words[0]).name or "install" not in words:
            continue
        operands = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
        for word in operands:
            if word in ("requirements.lock", ".[local]"):
                continue  # the constraint file itself, and the package under it
            name, sep, version = word.partition("==")
            assert sep, f"{dockerfile.name}: {word} is not pinned with =="
            locked = pins.get(_canonical(name))
            assert locked in (None, version), f"{dockerfile.name}: {word}, lock has {locked}"
            seen += 1
    assert seen, f"{dockerfile.name}: no pinned pip install found"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".git", ".venv", ".jars", "data", "mlruns", "mlartifacts", "mlflow.db"}
    assert required <= patterns, f"missing: {sorted(required - patterns)}"
    assert any("__pycache__" in p for p in patterns)
    # deploy/compose.yaml's secrets never reach an image.
    assert {"deploy/.env", "**/.env"} <= patterns
    # Nothing the Dockerfile copies may be excluded.
    for needed in ("README.md", "lib", "jobs", "conf", "scripts", "spark-submit.sh", "deploy"):
        assert needed not in patterns, needed


# ------------------------------------------------------------------------ compose

_VAR = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, ${V}, ${V:-default}, ${V-default}, ${V:?err}."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        operator, argument = match.group(3), match.group(4)
        value = env.get(name)
        unset = (not value) if operator and operator.startswith(":") else value is None
        if operator and operator.endswith("-"):
            return argument if unset else str(value)
        if operator and operator.endswith("?"):
            if unset:
                raise KeyError(f"{name}: {argument}")
            return str(value)
        return value or ""

    return _VAR.sub(substitute, text)


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    return node


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {raw!r} is not KEY=VALUE"
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "compose.yaml must be a mapping"
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return _env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose --env-file deploy/.env.example` would read it."""
    resolved = _resolve(compose_raw, env_example)
    assert isinstance(resolved, dict)
    return resolved


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment: use the mapping form"
    return {k: str(v) for k, v in env.items()}


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} not in {argv}"
    return argv[argv.index(name) + 1]


def _container_port(spec: str) -> int:
    """``[host_ip:]host_port:container_port`` -> container_port."""
    return int(str(spec).rsplit(":", 1)[-1].split("/", 1)[0])


def test_compose_services_and_volumes(compose: dict[str, Any]) -> None:
    assert set(compose) <= {"name", "services", "volumes", "networks", "secrets", "configs"}
    assert "version" not in compose, "the version key is obsolete"
    assert compose["name"] == "poimatch"
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "mlflow-init",
        "service",
        "jobs",
    }
    assert services["jobs"]["profiles"] == ["jobs"], "jobs run on demand, never on `up`"
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "no", None), name


def test_compose_images_pinned(compose: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    expected_external = {
        "postgres": r"postgres:\d+\.\d+(-\w+)?",
        "minio": r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
        "minio-init": r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
    }
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: name and tag its image"
        _, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if name in expected_external:
            assert "build" not in service
            assert re.fullmatch(expected_external[name], image), f"{name}: {image}"
    services = compose["services"]
    assert services["mlflow"]["image"] == f"poimatch-mlflow:{_lock_pins()['mlflow']}"
    # The poimatch images default to the package version when POIMATCH_TAG is unset.
    for name in ("service", "jobs"):
        raw_image = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"][name]["image"]
        assert _interpolate(raw_image, {}).endswith(f":{version}"), raw_image
    assert services["mlflow-init"]["image"] == services["mlflow"]["image"]
    assert services["service"]["image"] == f"poimatch-service:{version}"
    assert services["jobs"]["image"] == f"poimatch:{version}"


def test_compose_builds_exist(compose: dict[str, Any], docker_stages: list[Stage]) -> None:
    targets = set(_named_stages(docker_stages))
    builds = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        if "target" in build:
            assert build["target"] in targets, f"{name}: no stage {build['target']}"
        builds[name] = (context, dockerfile, build.get("target"))
    assert builds == {
        "mlflow": (DEPLOY, MLFLOW_DOCKERFILE, None),
        "mlflow-init": (DEPLOY, MLFLOW_DOCKERFILE, None),
        "service": (REPO, DOCKERFILE, "service"),
        "jobs": (REPO, DOCKERFILE, "jobs"),
    }


def test_compose_service_uses_compose_tracking_server(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mlflow_argv = _argv(services["mlflow"]["command"])
    assert mlflow_argv[:2] == ["mlflow", "server"]
    mlflow_port = int(_option(mlflow_argv, "--port"))
    assert _option(mlflow_argv, "--host") == "0.0.0.0"
    expected = f"http://mlflow:{mlflow_port}"
    for name in ("service", "jobs", "mlflow-init"):
        env = _env(services[name])
        assert env["MLFLOW_TRACKING_URI"] == expected, name
        # Artifacts come through the tracking server: no S3 credentials in the clients.
        assert not {k for k in env if k.startswith("AWS_") or k.startswith("MLFLOW_S3")}, name
    for name in ("service", "jobs"):
        assert _env(services[name])["POIMATCH_ENV"] == "prod", name
        depends = services[name]["depends_on"]
        assert depends["mlflow"]["condition"] == "service_healthy", name
        assert depends["mlflow-init"]["condition"] == "service_completed_successfully", name


def test_compose_mlflow_backed_by_postgres_and_s3(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mlflow = services["mlflow"]
    env = _env(mlflow)
    postgres = _env(services["postgres"])
    backend = urlsplit(env["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme == "postgresql+psycopg2", "the driver the mlflow image installs"
    assert backend.hostname == "postgres"
    assert (backend.port or 5432) == 5432
    assert backend.username == postgres["POSTGRES_USER"]
    assert backend.password == postgres["POSTGRES_PASSWORD"]
    assert backend.path == "/" + postgres["POSTGRES_DB"]
    # S3 = MinIO, with MinIO's credentials, into the bucket minio-init creates.
    argv = _argv(mlflow["command"])
    assert "--serve-artifacts" in argv
    assert "--no-serve-artifacts" not in argv
    destination = urlsplit(_option(argv, "--artifacts-destination"))
    assert destination.scheme == "s3"
    minio = _env(services["minio"])
    init = services["minio-init"]
    assert destination.netloc == _env(init)["MLFLOW_BUCKET"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert _argv(services["minio"]["command"])[:2] == ["server", "/data"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert _env(init)["MINIO_ROOT_USER"] == minio["MINIO_ROOT_USER"]
    script = " ".join(_argv(init.get("entrypoint")) + _argv(init.get("command")))
    assert "http://minio:9000" in script
    assert re.search(r"mc mb --ignore-existing \S*\$\{MLFLOW_BUCKET\}", script), script
    assert set(mlflow["depends_on"]) == {"postgres", "minio", "minio-init"}
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    # The server answers the name the other containers use for it (DNS-rebinding check).
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow:5000" in allowed
    assert "*" not in allowed


def test_compose_creates_the_jobs_experiment(compose: dict[str, Any]) -> None:
    init = compose["services"]["mlflow-init"]
    assert _env(init)["POIMATCH_EXPERIMENT"] == load_settings("prod").tracking.experiment
    code = _python_c(_argv(init["command"]))
    assert "get_experiment_by_name" in code
    assert "create_experiment" in code
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"


def test_compose_service_port_8004(compose: dict[str, Any], docker_stages: list[Stage]) -> None:
    service = compose["services"]["service"]
    argv = _argv(service["command"])
    assert _option(argv, "--port") == str(SERVICE_PORT)
    assert _option(argv, "--host") == "0.0.0.0"
    assert _option(argv, "--env") == "prod"
    assert [_container_port(p) for p in service["ports"]] == [SERVICE_PORT]
    assert [p.split(":")[-2] for p in service["ports"]] == [str(SERVICE_PORT)]
    exposed = _last(_effective(docker_stages, "service"), "EXPOSE")
    assert exposed == str(SERVICE_PORT)
    # Published on the host's loopback by default; MLflow and the MinIO console too.
    for name in ("service", "mlflow", "minio"):
        for spec in compose["services"][name].get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name}: {spec}"
    assert "ports" not in compose["services"]["postgres"]


def test_compose_healthchecks_back_every_condition(
    compose: dict[str, Any], docker_stages: list[Stage], mlflow_stages: list[Stage]
) -> None:
    services = compose["services"]
    image_healthchecks = {
        "service": _last(_effective(docker_stages, "service"), "HEALTHCHECK"),
        "mlflow": _last(mlflow_stages[0], "HEALTHCHECK"),
    }
    for name in ("postgres", "minio", "mlflow", "service"):
        assert services[name].get("healthcheck") or image_healthchecks.get(name), name
    for name in ("postgres", "minio", "mlflow"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    _python_c(services["mlflow"]["healthcheck"]["test"][1:])
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                target = services[dependency]
                assert target.get("healthcheck") or image_healthchecks.get(dependency), (
                    f"{name} waits for {dependency} to be healthy, which has no health check"
                )
            else:
                assert condition == "service_completed_successfully", f"{name}: {condition}"
                assert services[dependency].get("restart") == "no", f"{dependency} is one-shot"


def test_compose_secrets_come_from_the_env_file(
    compose_raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    secret_vars = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER"}
    for name, service in compose_raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                # Only a required reference: compose stops when the variable is missing.
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key}"
    backend = compose_raw["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert "${POSTGRES_PASSWORD:?" in backend
    # Every variable compose reads is documented in .env.example ...
    used = {m.group(2) or m.group(5) for m in _VAR.finditer(text) if not m.group(1)}
    assert used <= set(env_example), f"not in .env.example: {sorted(used - set(env_example))}"
    # ... whose passwords are obvious placeholders, never a real one.
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert env_example[key].startswith("change-me"), key
    assert len(env_example["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter passwords"
    # Without the env file, compose refuses to start rather than use a default password.
    without = {k: v for k, v in env_example.items() if k not in secret_vars}
    for variable in sorted(secret_vars):
        env = without | {v: env_example[v] for v in secret_vars - {variable}}
        with pytest.raises(KeyError, match=variable):
            _resolve(compose_raw, env)


def test_compose_entry_points_exist(compose: dict[str, Any], docker_stages: list[Stage]) -> None:
    services = compose["services"]
    # The service runs the image's entry point: python -m poimatch.apps.service.
    assert "entrypoint" not in services["service"]
    entrypoint = json.loads(_last(_effective(docker_stages, "service"), "ENTRYPOINT") or "[]")
    assert entrypoint[-1] == SERVICE_MODULE
    assert _module_path(SERVICE_MODULE).is_file()
    # The jobs service runs ./spark-submit.sh JOB: its default job exists and takes no options.
    jobs_cmd = json.loads(_last(_effective(docker_stages, "jobs"), "CMD") or "[]")
    assert "command" not in services["jobs"]
    _check_job_call(jobs_cmd[0], jobs_cmd[1:])


def test_compose_config_with_docker() -> None:
    """`docker compose config` where a Compose v2 client exists (no engine needed)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False, timeout=60
    )
    if version.returncode != 0:
        pytest.skip("docker client without the compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------- workflow


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "cicd.yml must be a mapping"
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _shell(run: str) -> str:
    """A run script with its line continuations joined."""
    return re.sub(r"\\\n\s*", " ", run)


def test_workflow_triggers(workflow: dict[str, Any]) -> None:
    on = workflow["on"]
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on
    assert on["workflow_dispatch"]["inputs"]["redeploy"]["type"] == "boolean"
    assert on["workflow_dispatch"]["inputs"]["redeploy"]["default"] is False
    assert on["repository_dispatch"]["types"] == ["champion-changed"]
    assert len(on["schedule"]) == 1
    assert len(on["schedule"][0]["cron"].split()) == 5
    assert workflow["permissions"] == {"contents": "read"}


def test_workflow_actions_pinned_by_commit() -> None:
    lines = [line for line in WORKFLOW.read_text(encoding="utf-8").splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        assert re.search(r"uses:\s*[\w.-]+/[\w.-]+@[0-9a-f]{40}\s+#\s*v\d+\.\d+\.\d+\s*$", line), (
            f"pin by full commit with the version in a comment: {line.strip()}"
        )
        assert "docker://" not in line


def test_workflow_lints_tests_and_builds(
    workflow: dict[str, Any], docker_stages: list[Stage]
) -> None:
    jobs = workflow["jobs"]
    assert "make check" in _runs(jobs["lint"])
    assert "make test" in _runs(jobs["test"])
    for name in ("lint", "test"):
        assert "make setup" in _runs(jobs[name]), name
        setups = {
            s["uses"].split("@")[0]: s.get("with", {}) for s in jobs[name]["steps"] if "uses" in s
        }
        assert setups["actions/setup-python"]["python-version"] == "3.11"
        assert setups["actions/setup-java"]["java-version"] == "17"
    builds = [_shell(r) for r in _runs(jobs["image"]) if "docker build" in r]
    targets = set(_named_stages(docker_stages))
    built = set()
    for run in builds:
        words = shlex.split(run)
        dockerfile = words[words.index("-f") + 1]
        assert (REPO / dockerfile).is_file(), dockerfile
        assert (REPO / words[-1]).is_dir(), f"build context {words[-1]}"
        if "--target" in words:
            assert words[words.index("--target") + 1] in targets
            built.add((dockerfile, words[words.index("--target") + 1]))
        else:
            built.add((dockerfile, None))
    assert built == {
        ("deploy/Dockerfile", "jobs"),
        ("deploy/Dockerfile", "service"),
        ("deploy/mlflow.Dockerfile", None),
    }
    compose_checks = [r for r in _runs(jobs["image"]) if "config" in r and "compose" in r]
    assert compose_checks == [
        "docker compose -f deploy/compose.yaml --env-file deploy/.env.example config --quiet"
    ]


def test_workflow_smoke_job_call_is_valid(workflow: dict[str, Any]) -> None:
    smoke = _shell(" ".join(_runs(workflow["jobs"]["image"])))
    calls = re.findall(r"(jobs/\w+\.py)((?:\s+--?[\w-]+(?:\s+[^\s-][^\s]*)?)*)", smoke)
    assert calls, "the image smoke test runs no job"
    for job, argv in calls:
        _check_job_call(job, shlex.split(argv))


def test_workflow_referenced_files_exist() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    referenced = set(re.findall(r"(?<![\w/.])((?:deploy|jobs|scripts|\.ci)/[\w./-]+)", text))
    referenced = {r.rstrip(".") for r in referenced}
    assert {"deploy/ci/service_paths.py", "deploy/ci/champion_check.py"} <= referenced
    allowed_missing = {"deploy/.env"}  # created on the deploy host from deploy/.env.example
    for path in sorted(referenced - allowed_missing):
        assert (REPO / path).exists(), f"{WORKFLOW.name} references {path}, which does not exist"


def test_workflow_redeploy_only_on_service_or_champion_change(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    # The paths filter: deploy/ci/service_paths.py against the push's previous commit.
    changes = jobs["changes"]
    assert changes["if"] == "github.event_name == 'push'"
    assert changes["outputs"]["service"] == "${{ steps.filter.outputs.service }}"
    filter_step = next(s for s in changes["steps"] if s.get("id") == "filter")
    assert "python3 deploy/ci/service_paths.py --since" in filter_step["run"]
    assert filter_step["env"]["BEFORE"] == "${{ github.event.before }}"
    checkout = changes["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0, "the previous commit must be in the clone"
    # The champion check: registry alias vs the service's /version.
    champion = jobs["champion"]
    assert champion["outputs"]["changed"] == "${{ steps.check.outputs.changed }}"
    check_step = next(s for s in champion["steps"] if s.get("id") == "check")
    assert "deploy/ci/champion_check.py" in check_step["run"]
    assert "--service-url http://service:8004" in _shell(check_step["run"])
    # The deploy job: after the checks, main only, and only on one of the two changes.
    deploy = jobs["deploy"]
    assert set(deploy["needs"]) == {"lint", "test", "image", "changes", "champion"}
    condition = " ".join(deploy["if"].split())
    for needed in (
        "vars.DEPLOY_ENABLED == 'true'",
        "github.ref == 'refs/heads/main'",
        "github.event_name != 'pull_request'",
        "needs.test.result != 'failure'",
        "needs.changes.outputs.service == 'true'",
        "needs.champion.outputs.changed == 'true'",
    ):
        assert needed in condition, needed
    assert deploy["environment"] == "production"
    # Every step that touches the running service is itself conditional on a change.
    compose_steps = [s for s in deploy["steps"] if " up -d " in s.get("run", "")]
    assert len(compose_steps) == 2
    code, restart = compose_steps
    assert "needs.changes.outputs.service == 'true'" in code["if"]
    assert " ".join(restart["if"].split()).startswith("needs.champion.outputs.changed == 'true'")
    # Then it checks that the new container serves the champion, waiting for the model.
    last = _shell(deploy["steps"][-1]["run"])
    assert deploy["steps"].index(restart) < len(deploy["steps"]) - 1
    assert "deploy/ci/champion_check.py" in last
    assert re.search(r"--wait \d+", last)


def test_workflow_redeploy_commands(workflow: dict[str, Any], compose: dict[str, Any]) -> None:
    steps = [s for s in workflow["jobs"]["deploy"]["steps"] if " up -d " in s.get("run", "")]
    base = "docker compose -f deploy/compose.yaml --env-file deploy/.env up -d --no-deps"
    code, restart = (_shell(s["run"]) for s in steps)
    assert f"{base} --build --wait service" in code
    assert "git checkout --quiet --detach $GITHUB_SHA" in code
    assert f"{base} --force-recreate --wait service" in restart
    assert "git " not in restart, "a champion change redeploys the running code, not main"
    assert "service" in compose["services"]
    for step in steps:
        assert step["run"].lstrip().splitlines()[-1].strip().endswith('service"')


def test_workflow_has_no_placeholders_or_inline_secrets(workflow: dict[str, Any]) -> None:
    for job_name, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), f"{job_name}: set timeout-minutes"
        for step in job["steps"]:
            run = step.get("run", "")
            assert "${{" not in run, f"{job_name}: pass values through env, not into run"
            assert not re.search(r"<[A-Za-z_ -]+>|TODO|FIXME|CHANGEME|example\.com", run), run
    secrets = set(re.findall(r"secrets\.(\w+)", WORKFLOW.read_text(encoding="utf-8")))
    assert secrets == {"DEPLOY_HOST", "DEPLOY_USER", "DEPLOY_SSH_KEY", "DEPLOY_KNOWN_HOSTS"}
    setup = (DEPLOY / "ci" / "ssh_setup.sh").read_text(encoding="utf-8")
    for name in secrets:
        assert name in setup, f"ssh_setup.sh does not read {name}"
    assert "StrictHostKeyChecking yes" in setup


def test_ci_shell_scripts_parse() -> None:
    bash = shutil.which("bash")
    assert bash, "bash not found"
    result = subprocess.run(
        [bash, "-n", str(DEPLOY / "ci" / "ssh_setup.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------- deploy/ci/service_paths.py


@pytest.fixture(scope="module")
def service_paths() -> ModuleType:
    return _load_script(SERVICE_PATHS)


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_service_paths_follow_imports(service_paths: ModuleType, tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lib/poimatch/__init__.py": "",
            "lib/poimatch/apps/__init__.py": "",
            "lib/poimatch/apps/service.py": (
                "import json\n"
                "from poimatch.config import load\n"
                "from poimatch.stages import tracking\n"
                "from .. import schema\n"
                "import poimatch.sub.deep\n"
            ),
            "lib/poimatch/config.py": "from poimatch.io import read\n",
            "lib/poimatch/io.py": "",
            "lib/poimatch/stages/__init__.py": "",
            "lib/poimatch/stages/tracking.py": "from .pipeline import Spec\n",
            "lib/poimatch/stages/pipeline.py": "",
            "lib/poimatch/schema.py": "",
            "lib/poimatch/sub/__init__.py": "",
            "lib/poimatch/sub/deep.py": "from .. import helpers\n",
            "lib/poimatch/helpers.py": "",
            "lib/poimatch/gen/generator.py": "from importlib import resources\nresources.files\n",
            "lib/poimatch/gen/gazetteer.json": "{}",
        },
    )
    modules = service_paths.service_modules(tmp_path)
    assert modules == sorted(
        f"lib/poimatch/{name}"
        for name in (
            "__init__.py",
            "apps/__init__.py",
            "apps/service.py",
            "config.py",
            "helpers.py",
            "io.py",
            "schema.py",
            "stages/__init__.py",
            "stages/pipeline.py",
            "stages/tracking.py",
            "sub/__init__.py",
            "sub/deep.py",
        )
    )
    watched = service_paths.watched_paths(tmp_path)
    changed = [
        "lib/poimatch/gen/generator.py",  # not imported by the service
        "lib/poimatch/gen/gazetteer.json",  # read by generator only
        "README.md",
        "jobs/train.py",
        "conf/prod.yaml",
        "lib/poimatch/sub/deep.py",
        "deploy/compose.yaml",
        "requirements.lock",
    ]
    assert service_paths.touched(changed, watched) == [
        "conf/prod.yaml",
        "lib/poimatch/sub/deep.py",
        "deploy/compose.yaml",
        "requirements.lock",
    ]
    assert service_paths.touched(["lib/poimatch/gen/generator.py", "notebooks/x.py"], watched) == []
    # Package data follows a module that reads it through importlib.resources.
    (tmp_path / "lib/poimatch/helpers.py").write_text("import poimatch.gen.generator\n")
    assert "lib/poimatch/gen/gazetteer.json" in service_paths.watched_paths(tmp_path)


def test_service_paths_of_the_repository(service_paths: ModuleType) -> None:
    modules = service_paths.service_modules(REPO)
    assert "lib/poimatch/apps/service/__init__.py" in modules
    assert "lib/poimatch/apps/service/__main__.py" in modules
    assert "lib/poimatch/apps/service/engine.py" in modules
    assert "lib/poimatch/__init__.py" in modules
    for path in modules:
        assert (REPO / path).exists(), path
    watched = service_paths.watched_paths(REPO)
    for static in ("conf/", "deploy/", "pyproject.toml", "requirements.lock", ".dockerignore"):
        assert static in watched
    assert "jobs/" not in watched
    assert not any(p.startswith(("jobs/", "notebooks/", "tests/")) for p in watched)


@pytest.mark.parametrize("before", ["", "0" * 40])
def test_service_paths_without_a_previous_commit(before: str) -> None:
    # A new branch or a first push: nothing to compare with, so redeploy (the safe side).
    result = subprocess.run(
        [sys.executable, str(SERVICE_PATHS), "--since", before],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["service=true"]


# ------------------------------------------------- deploy/ci/champion_check.py


class _StandIn(BaseHTTPRequestHandler):
    """The MLflow alias API and the service's /version, as far as champion_check reads them."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/2.0/mlflow/registered-models/alias":
            model = query.get("name")
            if model == "poimatch-xgb" and query.get("alias") == "champion":
                self._reply(200, {"model_version": {"name": model, "version": "3"}})
            elif model == "no-alias":
                message = "Registered model alias champion not found."
                self._reply(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": message})
            elif model == "broken":
                self._reply(500, {"error_code": "INTERNAL_ERROR", "message": "boom"})
            else:
                self._reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"})
        elif url.path == "/loading/version":
            # The real service answers 503 (and no model_version) until a model is loaded.
            self._reply(503, {"package_version": "0.1.0"})
        elif url.path in ("/v2/version", "/v3/version", "/vnum/version", "/none/version"):
            version = {"/v2": "2", "/v3": "3", "/vnum": 3, "/none": None}[url.path[:-8]]
            self._reply(200, {"model_version": version, "version": "0.1.0"})
        else:
            self._reply(404, {"detail": "Not Found"})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _champion_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHAMPION_CHECK), "--timeout", "5", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("model", "service", "expected"),
    [
        ("poimatch-xgb", "/v2", ["champion=3", "deployed=2", "changed=true"]),
        ("poimatch-xgb", "/v3", ["champion=3", "deployed=3", "changed=false"]),
        ("poimatch-xgb", "/vnum", ["champion=3", "deployed=3", "changed=false"]),
        ("poimatch-xgb", "/none", ["champion=3", "deployed=", "changed=true"]),
        ("poimatch-xgb", "down", ["champion=3", "deployed=", "changed=true"]),
        ("poimatch-xgb", "/loading", ["champion=3", "deployed=", "changed=true"]),
        ("no-alias", "/v2", ["champion=", "deployed=2", "changed=false"]),
        ("missing", "/v2", ["champion=", "deployed=2", "changed=false"]),
    ],
)
def test_champion_check_outputs(
    stand_in: str, model: str, service: str, expected: list[str]
) -> None:
    service_url = f"http://127.0.0.1:{_closed_port()}" if service == "down" else stand_in + service
    result = _champion_check(
        "--tracking-uri", stand_in, "--service-url", service_url, "--model", model
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_champion_check_waits_for_the_service(stand_in: str) -> None:
    # After a redeploy: success as soon as the service serves the champion ...
    started = time.monotonic()
    served = _champion_check(
        "--tracking-uri", stand_in, "--service-url", stand_in + "/v3", "--wait", "60"
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.splitlines()[-1] == "changed=false"
    assert time.monotonic() - started < 30, "it waited although the service was up to date"
    # ... and status 3 when it still serves another version when the time is up.
    stale = _champion_check(
        "--tracking-uri", stand_in, "--service-url", stand_in + "/v2", "--wait", "1"
    )
    assert stale.returncode == 3
    assert stale.stdout.splitlines() == ["champion=3", "deployed=2", "changed=true"]
    assert "did not load version 3" in stale.stderr


@pytest.mark.parametrize("registry", ["broken", "down"])
def test_champion_check_fails_without_a_registry_answer(stand_in: str, registry: str) -> None:
    # No decision without the registry: exit 1, so the workflow's champion job fails and
    # nothing is redeployed on a guess.
    tracking = f"http://127.0.0.1:{_closed_port()}" if registry == "down" else stand_in
    model = "broken" if registry == "broken" else "poimatch-xgb"
    result = _champion_check(
        "--tracking-uri", tracking, "--service-url", stand_in + "/v3", "--model", model
    )
    assert result.returncode == 1
    assert "changed=" not in result.stdout
    assert "error: registry" in result.stderr


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
