"""The research notebooks: Databricks source format, library-only, research-only, and they run.

Static checks read ``notebooks/0*.py`` as text/AST. Unit tests check
``poimatch.research`` on hand-made inputs. The end-to-end tests (``slow``) run the three
notebooks as scripts, one after the other in one fresh interpreter (one JVM, as notebooks
attached to one cluster share its session), each on a small generated sample with its
parameters in ``POIMATCH_NB_*`` variables and the research storage root, MLflow store and
output folder under ``tmp_path``, then check what they produced against the data they
were given.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib.image
import pandas as pd
import pytest
from conftest import TEST_JVM_OPTIONS
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from poimatch import research
from poimatch import schema as S
from poimatch.config import ConfigError, load_settings
from poimatch.isolation import IsolationError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NAMES = ("01_data_profile", "02_experiment", "03_error_analysis")
HEADER = "# Databricks notebook source"
SEPARATOR = re.compile(r"^# COMMAND ----------$", re.MULTILINE)
# Modules a notebook may import besides poimatch: plumbing, never logic.
ALLOWED_IMPORTS = {"poimatch", "pathlib", "os"}
ROWS = 1500
TIMEOUT_S = 900


def _source(name: str) -> str:
    return (NOTEBOOK_DIR / f"{name}.py").read_text(encoding="utf-8")


def _cells(text: str) -> list[str]:
    return [cell.strip() for cell in SEPARATOR.split(text.removeprefix(HEADER))]


def _is_markdown(cell: str) -> bool:
    return cell.startswith("# MAGIC")


def _code(name: str) -> ast.Module:
    return ast.parse(_source(name))


def _research_calls(tree: ast.Module, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "research"
        and node.func.attr == function
    ]


# ------------------------------------------------------------------------ static checks


def test_the_three_notebooks_replace_the_ipynb() -> None:
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("0*.py")) == list(NAMES)
    assert not list(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("name", NAMES)
def test_databricks_source_format(name: str) -> None:
    text = _source(name)
    assert text.splitlines()[0] == HEADER
    cells = _cells(text)
    assert len(cells) >= 4, "cells are separated by '# COMMAND ----------'"
    assert all(cells), "no empty cells"
    markdown = [c for c in cells if _is_markdown(c)]
    code = [c for c in cells if not _is_markdown(c)]
    assert markdown
    assert code
    assert _is_markdown(cells[0]), "the notebook opens with its description"
    for cell in markdown:
        lines = cell.splitlines()
        assert lines[0] == "# MAGIC %md"
        assert all(line.startswith("# MAGIC") for line in lines), cell[:80]
    for cell in code:
        ast.parse(cell)  # every code cell stands alone


@pytest.mark.parametrize("name", NAMES)
def test_imports_only_the_library(name: str) -> None:
    imported: set[str] = set()
    for node in ast.walk(_code(name)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0
            assert node.module
            imported.add(node.module.split(".")[0])
            assert all(alias.name != "*" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    assert imported <= ALLOWED_IMPORTS, f"imports beyond the library: {imported - ALLOWED_IMPORTS}"
    assert "from poimatch import research" in _source(name)


@pytest.mark.parametrize("name", NAMES)
def test_holds_no_logic(name: str) -> None:
    logic = (
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Lambda,
        ast.For,
        ast.While,
        ast.If,
        ast.Try,
        ast.With,
        ast.comprehension,
        ast.Subscript,
    )
    allowed_subscripts = 0
    found = []
    for node in ast.walk(_code(name)):
        if isinstance(node, ast.Subscript):
            # only parameter look-ups: p["rows"]
            ok = isinstance(node.value, ast.Name) and node.value.id == "p"
            allowed_subscripts += ok
            if ok:
                continue
        if isinstance(node, logic):
            found.append(type(node).__name__)
    assert not found, f"logic in the notebook ({found}): move it into poimatch.research"
    assert allowed_subscripts


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_the_research_environment(name: str) -> None:
    tree = _code(name)
    starts = _research_calls(tree, "start")
    assert len(starts) == 1, "start the research session exactly once"
    args = starts[0].args
    assert args
    assert isinstance(args[0], ast.Constant)
    assert args[0].value == "research"
    assert all(k.arg != "env" for k in starts[0].keywords)
    called = {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    # the session, settings and guard come only through research.start
    assert not called & {"load_settings", "build_session", "enforce", "write_delta"}


@pytest.mark.parametrize("name", NAMES)
def test_calls_existing_library_names_and_documents_its_parameters(name: str) -> None:
    tree = _code(name)
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "research"
    }
    missing = sorted(u for u in used if not hasattr(research, u))
    assert not missing, f"poimatch.research has no {missing}"
    (call,) = _research_calls(tree, "params")
    assert isinstance(call.args[0], ast.Dict)
    keys = [k.value for k in call.args[0].keys if isinstance(k, ast.Constant)]
    markdown = "\n".join(c for c in _cells(_source(name)) if _is_markdown(c))
    undocumented = [k for k in keys if f"`{k}`" not in markdown]
    assert not undocumented, f"parameters missing from the notebook's table: {undocumented}"


# --------------------------------------------------------------------------- unit tests


def test_override_list() -> None:
    assert research.override_list(" a.b=1; c.d=x \n\n e.f=[1, 2];") == [
        "a.b=1",
        "c.d=x",
        "e.f=[1, 2]",
    ]
    assert research.override_list(["a.b=1", " "]) == ["a.b=1"]
    assert research.override_list("") == []


def test_params_from_environment_with_the_defaults_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POIMATCH_NB_ROWS", " 1500 ")
    monkeypatch.setenv("POIMATCH_NB_RATE", "0.5")
    monkeypatch.setenv("POIMATCH_NB_FAST", "yes")
    monkeypatch.delenv("POIMATCH_NB_DATA", raising=False)
    got = research.params({"rows": 3000, "rate": 1.0, "fast": False, "data": "x.csv"})
    assert got == {"rows": 1500, "rate": 0.5, "fast": True, "data": "x.csv"}
    assert isinstance(got["rows"], int)
    monkeypatch.setenv("POIMATCH_NB_ROWS", "many")
    with pytest.raises(ValueError, match="parameter rows: expected int, got 'many'"):
        research.params({"rows": 3000})


def test_params_read_databricks_widgets(monkeypatch: pytest.MonkeyPatch) -> None:
    created: dict[str, str] = {}
    current = {"rows": "250"}

    def text(name: str, default: str) -> None:
        created[name] = default

    def get(name: str) -> str:
        return current.get(name, created[name])

    fake = SimpleNamespace(widgets=SimpleNamespace(text=text, get=get))
    monkeypatch.setattr(sys.modules["__main__"], "dbutils", fake, raising=False)
    monkeypatch.setenv("POIMATCH_NB_ROWS", "999")  # widgets win on Databricks
    assert research.params({"rows": 3000, "data": ""}) == {"rows": 250, "data": ""}
    assert created == {"rows": "3000", "data": ""}


def test_show_uses_display_for_tables_and_prints_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.DataFrame({"metric": ["rows"], "value": [6.0]})
    research.show(frame, title="overview")
    out = capsys.readouterr().out
    assert "== overview" in out
    assert "rows" in out
    shown: list[Any] = []
    monkeypatch.setattr(sys.modules["__main__"], "display", shown.append, raising=False)
    research.show(frame)
    research.show({"rows": 6})
    assert shown == [frame]
    assert "{'rows': 6}" in capsys.readouterr().out


def test_start_refuses_a_production_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_session(*_: object) -> None:
        raise AssertionError("no session may be built for production settings")

    monkeypatch.setattr("poimatch.research.notebook.build_session", no_session)
    with pytest.raises(IsolationError, match="research environment"):
        research.start("local")
    with pytest.raises(IsolationError, match="research environment"):
        research.start("research", overrides="lifecycle.role=production")


def test_with_overrides_validates_and_stays_research() -> None:
    base = load_settings("research")
    variant = research.with_overrides(base, "blocking.k_nearest=5; storage.root=data/research/x")
    assert variant.blocking.k_nearest == 5
    assert base.blocking.k_nearest == 10
    assert variant.storage.root == str(REPO / "data" / "research" / "x")
    assert variant.model.name == base.model.name
    with pytest.raises(ConfigError, match="research settings must stay apart"):
        research.with_overrides(base, "model.name=poimatch-xgb")
    with pytest.raises(ConfigError, match=r"blocking\.k_nearest"):
        research.with_overrides(base, "blocking.k_nearest=0")
    with pytest.raises(IsolationError):
        research.with_overrides(base, "lifecycle.role=production")


def _six_rows(spark: SparkSession) -> Any:
    # P1: a, b (0.001° north of a: 111.19 m), c (on a); P2: d, e (0.01° north: 1111.95 m);
    # f has no place. Blank strings count as missing.
    none = None
    rows = [
        ("a", "A", 0.0, 0.0, "1 Main St", none, none, none, "US", none, none, none, none, "P1"),
        ("b", "B", 0.001, 0.0, "  ", none, none, none, "US", none, none, none, none, "P1"),
        ("c", "C", 0.0, 0.0, none, none, none, none, "", none, none, none, none, "P1"),
        ("d", "D", 10.0, 10.0, none, "X", none, none, "DE", none, none, none, none, "P2"),
        ("e", "E", 10.01, 10.0, none, "X", none, none, "DE", none, none, none, none, "P2"),
        ("f", "F", 5.0, 5.0, none, none, none, none, "DE", none, none, none, none, none),
    ]
    return spark.createDataFrame(rows, schema=S.poi_table_schema())


def test_profile_counts_a_hand_made_frame(spark: SparkSession, tmp_path: Path) -> None:
    prof = research.profile(_six_rows(spark), bins_per_decade=1)
    overview = dict(zip(prof.overview["metric"], prof.overview["value"], strict=True))
    assert overview["rows"] == 6
    assert overview["labelled_rows"] == 5
    assert overview["places"] == 2
    assert overview["rows_per_place_mean"] == pytest.approx(2.5)
    assert overview["duplicate_pairs"] == 4  # 3 in P1, 1 in P2
    assert overview["duplicate_distance_max_m"] == pytest.approx(1111.95, abs=0.1)
    assert overview["duplicate_share_over_100m"] == pytest.approx(0.75)
    assert overview["duplicate_share_over_1km"] == pytest.approx(0.25)

    missing = prof.missing.set_index("column")["missing"].to_dict()
    assert missing[S.ID] == 0
    assert missing[S.ADDRESS] == 5  # one real address; "  " is blank
    assert missing[S.CITY] == 4
    assert missing[S.COUNTRY] == 1
    assert missing[S.POI] == 1
    assert missing[S.LATITUDE] == 0
    assert list(prof.missing["column"]) == [*S.INPUT_COLUMNS, S.POI]

    countries = prof.countries.set_index("country")
    assert list(prof.countries["country"]) == ["DE", "US", "(missing)"]
    assert countries.loc["DE", "rows"] == 3
    assert countries.loc["DE", "places"] == 1  # f has no place
    assert countries.loc["US", "rows"] == 2
    assert countries.loc["(missing)", "places"] == 1

    assert prof.rows_per_place[["rows_per_place", "places"]].values.tolist() == [[2, 1], [3, 1]]
    assert prof.rows_per_place["share"].tolist() == [0.5, 0.5]
    # 0 m counts as 1 m: [1, 10) holds a-c; [100, 1000) a-b and b-c; [1000, 10000) d-e
    assert prof.distances[["low_m", "high_m", "pairs"]].values.tolist() == [
        [1.0, 10.0, 1],
        [100.0, 1000.0, 2],
        [1000.0, 10000.0, 1],
    ]

    paths = research.plot_profile(prof, tmp_path)
    assert set(paths) == {
        "missing_values",
        "places_per_country",
        "duplicate_distances",
        "rows_per_place",
    }
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_without_labels_has_no_place_figures(spark: SparkSession, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    unlabelled = _six_rows(spark).withColumn(S.POI, F.lit(None).cast("string"))
    prof = research.profile(unlabelled)
    assert prof.rows_per_place.empty
    assert prof.distances.empty
    assert prof.countries["places"].sum() == 0
    assert len(research.plot_profile(prof, tmp_path)) == 4


# ------------------------------------------------------------------------ end to end


def _settings_overrides(tmp: Path, name: str) -> str:
    return ";".join(
        [
            "spark.master=local[2]",
            "spark.shuffle_partitions=1",
            "spark.driver_memory=2g",
            # a short-lived JVM on small data: C1-only JIT and the serial GC cost far less
            # CPU (01: 30 s -> 18 s, 02: 176 s -> 138 s on the development box)
            f"spark.extra={{spark.driver.extraJavaOptions: '{TEST_JVM_OPTIONS}'}}",
            f"storage.root={tmp / 'lake'}",
            f"generator.output={tmp / 'data' / name / 'pois.csv'}",
            f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"tracking.artifact_root={tmp / 'artifacts'}",
            "model.n_estimators=40",
            "model.num_workers=1",
            # two region folds and one thinned copy, as in conf/ci.yaml
            "model.folds=2",
            "model.sample_rates=[1.0,0.3]",
        ]
    )


# One interpreter runs the three notebooks one after the other, as notebooks attached to
# one cluster share its SparkSession: one JVM instead of three (the three alone on this
# box: 173 -> 130 CPU-seconds, 146 -> 114 s). Each notebook still runs as a script
# (``runpy.run_path(..., run_name="__main__")``) with its own ``POIMATCH_NB_*`` values;
# 03 analyses the baseline model that 02 registered. A line ``== <name>`` opens each
# notebook's part of the log.
RUNNER = """
import json, os, runpy, sys
from pathlib import Path
import pandas as pd

folder, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
for name, values in plan.items():
    if name == "03_error_analysis":  # the baseline model 02 registered
        experiment = Path(plan["02_experiment"]["OUTPUT"])
        runs = pd.read_csv(experiment / "experiment_runs.csv")
        values["MODEL"] = str(runs.set_index("variant").loc["baseline", "model_uri"])
    for key in [k for k in os.environ if k.startswith("POIMATCH_NB_")]:
        del os.environ[key]
    os.environ.update({f"POIMATCH_NB_{k}": v for k, v in values.items()})
    print(f"== {name}", flush=True)
    runpy.run_path(str(folder / f"{name}.py"), run_name="__main__")
    print(flush=True)
"""


def _run_notebooks(tmp: Path) -> dict[str, str]:
    """Run the three notebooks in one interpreter; each one's part of the log."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POIMATCH_NB_", "MLFLOW_", "PYSPARK_GATEWAY"))
        and k not in ("POIMATCH_ENV", "POIMATCH_CONF_DIR")
    }
    env["GX_ANALYTICS_ENABLED"] = "false"
    params = {
        "01_data_profile": {"SEED": "41"},
        "02_experiment": {"SEED": "42", "VARIANT": "blocking.k_nearest=5"},
        "03_error_analysis": {"SEED": "43", "TOP": "12"},
    }
    plan = {  # run in this order (NAMES)
        name: {
            "ROWS": str(ROWS),
            "OUTPUT": str(tmp / "out" / name),
            "SET": _settings_overrides(tmp, name),
            **params[name],
        }
        for name in NAMES
    }
    log = tmp / "notebooks.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(  # nosec B603: this interpreter, a fixed script
            [sys.executable, "-c", RUNNER, str(NOTEBOOK_DIR), json.dumps(plan)],
            cwd=tmp,  # spark-warehouse / derby files stay out of the repository
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the JVM goes with it
        )
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the notebooks did not finish in {TIMEOUT_S} s")
    text = log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"a notebook failed (exit {code}):\n{text[-4000:]}"
    parts = re.split(r"^== (0\d_\w+)$", text, flags=re.MULTILINE)
    logs = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(logs) == list(NAMES), list(logs)
    return logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run 01, 02, then 03 on the baseline model 02 registered."""
    tmp = tmp_path_factory.mktemp("notebooks")
    started = time.perf_counter()
    logs = _run_notebooks(tmp)
    registered = pd.read_csv(tmp / "out" / "02_experiment" / "experiment_runs.csv")
    baseline_uri = str(registered.set_index("variant").loc["baseline", "model_uri"])
    print(f"notebooks ran in {time.perf_counter() - started:.0f} s")
    return {"tmp": tmp, "logs": logs, "baseline_uri": baseline_uri}


def _out(runs: dict[str, Any], name: str) -> Path:
    folder: Path = runs["tmp"] / "out" / name
    return folder


def _data(runs: dict[str, Any], name: str, seed: int) -> pd.DataFrame:
    path = runs["tmp"] / "data" / name / f"pois_seed{seed}_rows{ROWS}.csv"
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _check_png(path: Path) -> None:
    assert path.is_file(), f"missing {path.name}"
    assert path.stat().st_size > 8_000, f"{path.name} looks empty"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height >= 250
    assert width >= 400
    assert image.std() > 0.05, f"{path.name} is blank"


def _pairs(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


@pytest.mark.slow
def test_profile_notebook_plots_the_data_it_was_given(runs: dict[str, Any]) -> None:
    out = _out(runs, "01_data_profile")
    for name in ("missing_values", "places_per_country", "duplicate_distances", "rows_per_place"):
        _check_png(out / f"{name}.png")
    truth = _data(runs, "01_data_profile", 41)
    overview = pd.read_csv(out / "profile_overview.csv").set_index("metric")["value"]
    sizes = truth.groupby(S.POI).size()
    assert overview["rows"] == ROWS == len(truth)
    assert overview["places"] == len(sizes)
    assert overview["duplicate_pairs"] == _pairs(sizes)

    missing = pd.read_csv(out / "profile_missing.csv").set_index("column")["missing"]
    for column in S.INPUT_COLUMNS:
        assert missing[column] == (truth[column].str.strip() == "").sum(), column

    countries = pd.read_csv(out / "profile_countries.csv", keep_default_na=False)
    country = truth[S.COUNTRY].str.strip().replace("", "(missing)")
    expected = truth.groupby(country)[S.POI].nunique().sort_index()
    assert countries.set_index("country")["places"].sort_index().to_dict() == expected.to_dict()
    assert countries["rows"].sum() == ROWS

    per_place = pd.read_csv(out / "profile_rows_per_place.csv")
    assert per_place.set_index("rows_per_place")["places"].to_dict() == (
        sizes.value_counts().sort_index().to_dict()
    )
    distances = pd.read_csv(out / "profile_duplicate_distances.csv")
    assert distances["pairs"].sum() == _pairs(sizes)
    assert (distances["high_m"] > distances["low_m"]).all()


@pytest.mark.slow
def test_experiment_notebook_tracks_baseline_and_variant(runs: dict[str, Any]) -> None:
    tmp: Path = runs["tmp"]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("poimatch-research")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    by_variant = {r.data.tags.get("poimatch.variant"): r for r in found}
    assert set(by_variant) == {"baseline", "variant"}
    baseline, variant = by_variant["baseline"], by_variant["variant"]
    assert baseline.data.tags["poimatch.comparison"] == variant.data.tags["poimatch.comparison"]
    for run in (baseline, variant):
        metrics, params = run.data.metrics, run.data.params
        for metric in ("iou", "pair_precision", "pair_recall", "candidate_pair_recall"):
            assert 0.0 <= metrics[metric] <= 1.0, metric
        assert metrics["iou"] > 0.8  # far above nothing, even with 40 trees on 1500 rows
        assert metrics["candidates_per_row"] > 1.0
        # the notebook ran in the research environment, on tmp storage
        assert params["env"] == "research"
        assert params["lifecycle.role"] == "research"
        assert params["storage.root"] == str(tmp / "lake")
        assert params["model.name"] == "poimatch-xgb-research"
    assert baseline.data.params["blocking.k_nearest"] == "10"
    assert variant.data.params["blocking.k_nearest"] == "5"
    assert variant.data.tags["poimatch.overrides"] == "blocking.k_nearest=5"
    # fewer spatial neighbours can only remove candidates
    assert variant.data.metrics["candidates_per_row"] < baseline.data.metrics["candidates_per_row"]
    assert baseline.data.params["data.train_input"] == variant.data.params["data.train_input"]

    # research registered its own model only, and never named a champion
    names = {m.name for m in client.search_registered_models()}
    assert names == {"poimatch-xgb-research"}
    model = client.get_registered_model("poimatch-xgb-research")
    assert set(model.aliases) == {"challenger"}
    challenger = client.get_model_version_by_alias("poimatch-xgb-research", "challenger")
    assert challenger.run_id == variant.info.run_id  # the newest version
    versions = client.search_model_versions("name = 'poimatch-xgb-research'")
    assert {v.run_id for v in versions} == {baseline.info.run_id, variant.info.run_id}

    out = _out(runs, "02_experiment")
    _check_png(out / "experiment_comparison.png")
    registered = pd.read_csv(out / "experiment_runs.csv").set_index("variant")
    version = {v.run_id: v.version for v in versions}
    for run in (baseline, variant):
        uri = registered.loc[run.data.tags["poimatch.variant"], "model_uri"]
        assert uri == f"models:/poimatch-xgb-research/{version[run.info.run_id]}"
    table = pd.read_csv(out / "experiment_comparison.csv")
    assert list(table["variant"]) == ["baseline", "variant"]
    assert list(table["run_id"]) == [baseline.info.run_id, variant.info.run_id]
    assert table["iou"].tolist() == pytest.approx(
        [baseline.data.metrics["iou"], variant.data.metrics["iou"]]
    )
    assert table["blocking.k_nearest"].tolist() == [10, 5]  # the parameter that differs


@pytest.mark.slow
def test_error_analysis_notebook_lists_real_errors(runs: dict[str, Any]) -> None:
    out = _out(runs, "03_error_analysis")
    assert runs["baseline_uri"].startswith("models:/poimatch-xgb-research/")
    assert runs["baseline_uri"] in runs["logs"]["03_error_analysis"]
    for name in ("error_scores", "error_drivers"):
        _check_png(out / f"{name}.png")
    errors = pd.read_csv(out / "error_analysis.csv", dtype={"id_l": str, "id_r": str})
    assert tuple(errors.columns) == research.ERROR_COLUMNS
    summary = pd.read_csv(out / "error_summary.csv").set_index("metric")["value"]
    truth = _data(runs, "03_error_analysis", 43)
    place = truth.set_index(S.ID)[S.POI]
    assert summary["rows"] == ROWS
    assert summary["true_pairs"] == _pairs(truth.groupby(S.POI).size())
    assert (
        summary["true_pairs_blocked"] + summary["true_pairs_never_blocked"]
        == (summary["true_pairs"])
    )
    threshold = summary["threshold"]
    assert 0.0 < threshold < 1.0
    # the threshold is the analysed model's own (chosen on validation when 02 trained it)
    uri = f"sqlite:///{runs['tmp'] / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = runs["baseline_uri"].rsplit("/", 1)[1]
    trained = client.get_model_version("poimatch-xgb-research", version)
    assert threshold == pytest.approx(client.get_run(trained.run_id).data.metrics["threshold"])
    top = 12

    kinds = {
        k: errors[errors["kind"] == k] for k in ("false_match", "missed_match", "never_blocked")
    }
    assert set(errors["kind"]) <= set(kinds)
    false, missed, never = kinds["false_match"], kinds["missed_match"], kinds["never_blocked"]
    assert len(false) == min(top, summary["false_matches"])
    assert len(missed) == min(top, summary["true_pairs_blocked"])
    assert len(never) == min(top, summary["true_pairs_never_blocked"])
    assert len(missed) > 0

    # against the input data itself, not the notebook's own columns
    assert (false["id_l"].map(place) != false["id_r"].map(place)).all()
    assert (missed["id_l"].map(place) == missed["id_r"].map(place)).all()
    assert (never["id_l"].map(place) == never["id_r"].map(place)).all()
    assert (false["id_l"] < false["id_r"]).all()

    assert (false["score"] >= threshold).all()
    assert false["score"].is_monotonic_decreasing
    assert missed["score"].is_monotonic_increasing
    assert never["score"].isna().all()
    assert never["distance_m"].is_monotonic_decreasing
    if len(false) and summary["missed_blocked_true_pairs"] > 0:
        assert missed["score"].iloc[0] < false["score"].iloc[0]
    assert false["drivers"].str.contains(r"\(\+").all()
    assert missed["drivers"].str.contains(r"\(-").all()

    # per-pair contributions (with the bias) add up to the booster's raw score, and the
    # calibrated score never falls as the raw score rises
    contributions = pd.read_csv(out / "error_contributions.csv", dtype={"id_l": str, "id_r": str})
    margin = contributions.groupby(["kind", "id_l", "id_r"])["contribution"].sum()
    assert len(margin) == len(false) + len(missed)
    for _, row in pd.concat([false, missed]).iterrows():
        total = margin[(row["kind"], row["id_l"], row["id_r"])]
        assert 1.0 / (1.0 + math.exp(-total)) == pytest.approx(row["raw_score"], abs=1e-4)
        assert total == pytest.approx(row["margin"], abs=1e-6)
    by_raw = pd.concat([false, missed]).sort_values("raw_score")
    assert by_raw["score"].is_monotonic_increasing
