"""Typed configuration, read once at the edge of a job.

``conf/base.yaml`` holds the defaults; ``conf/<env>.yaml`` overlays what differs per
environment; ``--set section.key=value`` overrides either from the command line. The
result is a frozen, validated :class:`Settings`: an unknown key or a bad value raises
:class:`ConfigError` naming the key (``spark.shuffle_partitions: ...``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from poimatch.stages.comparisons import Comparison

__all__ = [
    "ConfigError",
    "Settings",
    "SparkSettings",
    "StorageSettings",
    "BlockingSettings",
    "GeneratorSettings",
    "GroupingSettings",
    "MatchingSettings",
    "ModelSettings",
    "TrackingSettings",
    "LifecycleSettings",
    "ServiceSettings",
    "load_settings",
    "project_root",
    "resolve_path",
]

ENV_VAR = "POIMATCH_ENV"
CONF_DIR_VAR = "POIMATCH_CONF_DIR"
DEFAULT_ENV = "local"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Frozen):
    """How the SparkSession is built (see :func:`poimatch.session.build_session`)."""

    app_name: str = "poimatch"
    master: str = "local[*]"
    driver_memory: str = Field(default="6g", pattern=r"^\d+[kmgt]?$")
    shuffle_partitions: int = Field(default=8, ge=1, le=100_000)
    jars_dir: str = ".jars"
    ui_enabled: bool = False
    log_level: str = Field(default="WARN", pattern=r"^(ALL|DEBUG|INFO|WARN|ERROR|FATAL|OFF)$")
    extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _spark_keys_only(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not k.startswith("spark.")]
        if bad:
            raise ValueError(f"keys must start with 'spark.': {bad}")
        return value


class StorageSettings(_Frozen):
    """Where the Delta tables live."""

    root: str = "data/lake"
    pois_table: str = Field(default="pois", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    quarantine_table: str = Field(default="pois_quarantine", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    matches_table: str = Field(default="matches", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # the matched POI table laid out by cell (poimatch.io.lookup), written by the nightly
    # match of the POI table; read by `?against=pois` and `jobs/match.py --against pois`
    lookup_table: str = Field(default="pois_lookup", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    lookup_rows_per_file: int = Field(default=50_000, ge=1000)
    # the great_expectations project (stored validation results, Data Docs) of the runs
    # that write these tables: ingest and the POI table's match; null = nothing kept
    validations: str | None = Field(default="_validations", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def table_path(self, table: str) -> str:
        """Location of a Delta table under the storage root."""
        return f"{self.root.rstrip('/')}/{table}"

    def validations_path(self) -> str | None:
        """The GX project folder under the storage root (``None``: results not kept)."""
        return self.table_path(self.validations) if self.validations else None


class GeneratorSettings(_Frozen):
    """Built-in sample data for the main job."""

    rows: int = Field(default=20_000, ge=1, le=1_000_000_000)
    seed: int = Field(default=42, ge=0)
    output: str = "data/sample/pois.csv"


class BlockingSettings(_Frozen):
    """Candidate generation: a spatial k-nearest pass plus exact-key passes."""

    cell_m: float = Field(default=300.0, gt=0)
    k_nearest: int = Field(default=10, ge=1, le=200)
    key_passes: tuple[str, ...] = ("name", "phone", "url")
    key_cell_m: float = Field(default=25_000.0, gt=0)
    k_key: int = Field(default=4, ge=1, le=100)
    max_key_group: int = Field(default=100, ge=2)

    @field_validator("key_passes")
    @classmethod
    def _known_passes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if p not in ("name", "phone", "url", "name_prefix")]
        if bad:
            raise ValueError(f"unknown pass(es) {bad}; known: name, phone, url, name_prefix")
        return value


class ModelSettings(_Frozen):
    """The classifier, how it is trained, and its registry entry."""

    name: str = Field(default="poimatch-xgb", pattern=r"^[A-Za-z0-9_.-]+$")
    num_workers: int = Field(default=1, ge=1)
    max_depth: int = Field(default=8, ge=1, le=20)
    n_estimators: int = Field(default=200, ge=1)
    learning_rate: float = Field(default=0.08, gt=0, le=1)
    subsample: float = Field(default=0.9, gt=0, le=1)
    colsample_bytree: float = Field(default=0.9, gt=0, le=1)
    # None: poimatch.stages.features.DEFAULT_FEATURES plus every added comparison; else names of
    # built-in features (features.FEATURE_COLUMNS) and added comparisons
    features: tuple[str, ...] | None = None
    # comparisons added to the built-in ones, each {name, kind, column, scorer, monotone}
    # (poimatch.stages.comparisons; the trained model's spec records their definitions)
    comparisons: tuple[Comparison, ...] = ()
    monotone: bool = True  # XGBoost monotone constraints on the similarity features
    # training tables: the places of each input kept at each of these rates, blocked alone
    sample_rates: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)
    # which candidate pairs the labels speak for: all, or only pairs across sources
    # (`source` column); auto = cross_source when the rows name two or more sources
    label_scope: Literal["auto", "all", "cross_source"] = "auto"
    calibration: Literal["isotonic", "none"] = "isotonic"
    folds: int = Field(default=3, ge=2, le=20)  # region folds: out-of-fold scores
    region_cell_deg: float = Field(default=0.25, gt=0)  # regions: touching occupied cells
    split_cell_deg: float = Field(default=0.05, gt=0)  # fallback fold cells (one region)
    seed: int = 7
    max_sweep_pairs: int = Field(default=3_000_000, ge=1000)
    name_stats_max: int = Field(default=1_000_000, ge=1)  # names / tokens kept with the model

    @field_validator("sample_rates")
    @classmethod
    def _rates(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < r <= 1 for r in value):
            raise ValueError("rates must be in (0, 1], at least one")
        return tuple(sorted(set(value), reverse=True))


class MatchingSettings(_Frozen):
    """What a match run compares (the data's semantics, not the model's)."""

    # true: link sources (rows naming the same `source` are never compared, as in
    # Splink's link_only); false: deduplicate every row against every other
    link_only: bool = False
    # uploads matched against the POI table (--against / ?against=) are held on the
    # driver: at most this many rows
    against_max_rows: int = Field(default=100_000, ge=1)
    # blocking broadcasts each pass's occupied grid cells (gathered on the driver) for
    # tables of at most this many rows; a larger table cuts them with a shuffled join
    broadcast_max_rows: int = Field(default=5_000_000, ge=0)
    # a full match run of at most this many rows runs the small plan (the stages chained
    # into a handful of Spark jobs, no checkpoints: poimatch.stages.plan.Plan); 0: always batch
    small_max_rows: int = Field(default=20_000, ge=0)
    # a match run's output of at most this many rows is collected once and its contract
    # checked on the driver (GX's pandas engine) instead of by GX's Spark jobs (about 30
    # small jobs over the cached output); a small run's output always is; 0: only a
    # small run's. At 100k rows the driver saves 6 s; at 1M the two tie
    driver_check_max_rows: int = Field(default=500_000, ge=0)
    # an incremental run reads the rows changed since its last run from the POI table's
    # change data feed (Delta; the ingest records it); false, or where the feed was not
    # recorded: it compares a hash of every row with its state
    change_feed: bool = True


class GroupingSettings(_Frozen):
    """How matched pairs become groups."""

    mode: str = Field(default="auto", pattern=r"^(auto|components|pairwise)$")
    max_group_size: int = Field(default=25, ge=2)
    max_iterations: int = Field(default=40, ge=1)
    # up to this many matched edges, components are computed on the driver (SciPy)
    local_max_edges: int = Field(default=5_000_000, ge=0)


class TrackingSettings(_Frozen):
    """MLflow: embedded SQLite store by default; $MLFLOW_TRACKING_URI wins."""

    tracking_uri: str = "sqlite:///mlflow.db"
    # the model registry; None = the tracking store (Databricks: "databricks-uc", Models
    # in Unity Catalog, names catalog.schema.model); $MLFLOW_REGISTRY_URI wins
    registry_uri: str | None = None
    artifact_root: str = "mlartifacts"
    experiment: str = "poimatch"


class LifecycleSettings(_Frozen):
    """Who may change production, and the promotion gate's rules.

    ``role: research`` (``conf/research.yaml``) runs in its own storage root, MLflow
    experiment and registered model; the configuration refuses research settings that
    point at the production ones, and :mod:`poimatch.isolation` refuses, at run time,
    any write under the production root and any move of the ``champion`` alias.
    """

    role: Literal["production", "research"] = "production"
    production_storage_root: str = "data/lake"
    production_model_name: str = Field(default="poimatch-xgb", pattern=r"^[A-Za-z0-9_.-]+$")
    production_experiment: str = "poimatch"
    eval_table: str = Field(default="eval", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    promotion_margin: float = Field(default=0.002, ge=0, le=1)
    guard_tolerance: float = Field(default=0.002, ge=0, le=1)


class ServiceSettings(_Frozen):
    """The REST service for ad-hoc CSVs (``python -m poimatch.apps.service``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8004, ge=1, le=65535)
    model_uri: str | None = None  # default: models:/<model.name>@champion
    max_body_bytes: int = Field(default=20_000_000, ge=1024)
    max_rows: int = Field(default=20_000, ge=1)
    queue_size: int = Field(default=8, ge=1)  # requests waiting for Spark beyond the running one
    timeout_seconds: float = Field(default=60.0, gt=0)
    reload_seconds: float = Field(default=10.0, gt=0)  # how often the champion alias is polled
    shuffle_partitions: int = Field(default=1, ge=1)  # small files: one partition per stage
    # uploads of at most this many rows run the small plan (poimatch.stages.plan.Plan):
    # a handful of Spark jobs, no checkpoints; larger ones the batch plan
    small_max_rows: int = Field(default=20_000, ge=0)
    # small plan: the blocking and pair-feature query planned once per model and re-run on
    # each request's rows (poimatch.stages.prepared), instead of planned per request
    reuse_plan: bool = True
    # with reuse_plan: the pair query compiled to Java code once, when first run, instead
    # of interpreted on every request (COMPILED_SQL_CONF; the warm-up match compiles it)
    compiled_pairs: bool = True
    # ?against=pois: the pinned lookup table held on the driver (picked from there, no
    # file read per request) when it has at most this many rows; 0 never (~200 MB and
    # 13-15 s of loading per 1M rows here, in the background after each new version)
    hold_lookup_max_rows: int = Field(default=2_000_000, ge=0)
    # bearer token for /invocations and /admin/*; None: no authentication (never logged)
    token: SecretStr | None = Field(default=None, min_length=16)

    @field_validator("token", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value


class Settings(_Frozen):
    """The whole configuration of one run; log it with the run to reproduce it."""

    env: str = DEFAULT_ENV
    spark: SparkSettings = SparkSettings()
    storage: StorageSettings = StorageSettings()
    generator: GeneratorSettings = GeneratorSettings()
    blocking: BlockingSettings = BlockingSettings()
    model: ModelSettings = ModelSettings()
    matching: MatchingSettings = MatchingSettings()
    grouping: GroupingSettings = GroupingSettings()
    tracking: TrackingSettings = TrackingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    service: ServiceSettings = ServiceSettings()

    @model_validator(mode="after")
    def _research_stays_apart(self) -> Settings:
        life = self.lifecycle
        if life.role != "research":
            return self
        clashes = []
        if _overlaps(self.storage.root, life.production_storage_root):
            clashes.append(
                f"storage.root ({self.storage.root}) overlaps the production root "
                f"({life.production_storage_root})"
            )
        if self.model.name == life.production_model_name:
            clashes.append(f"model.name is the production model ({life.production_model_name})")
        if self.tracking.experiment == life.production_experiment:
            clashes.append(
                f"tracking.experiment is the production experiment ({life.production_experiment})"
            )
        if clashes:
            raise ValueError(
                "research settings must stay apart from production: " + "; ".join(clashes)
            )
        return self

    def flat(self) -> dict[str, str]:
        """Flattened ``section.key -> value`` view, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)

        walk("", self.model_dump())
        return out


def _overlaps(a: str, b: str) -> bool:
    """True when one storage root is the other or lies inside it."""
    pa, pb = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return pa.startswith(pb) or pb.startswith(pa)


def project_root() -> Path:
    """The folder that holds ``conf/`` (the repository root for an editable install)."""
    override = os.environ.get(CONF_DIR_VAR)
    if override:
        return Path(override).resolve().parent
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "conf" / "base.yaml").is_file():
            return parent
    return Path.cwd()


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, dbfs:/, mlflow-artifacts:/ ...


def is_uri(value: str) -> bool:
    """True for ``scheme:...`` locations (two or more letters: not a drive letter)."""
    return bool(_URI.match(value))


def resolve_path(value: str, root: Path) -> str:
    """Resolve a relative local path against ``root``; URIs and absolute paths pass."""
    if is_uri(value) or Path(value).is_absolute():
        return value
    return str((root / value).resolve())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r}: empty key")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    # YAML parsing gives `8` -> int, `true` -> bool, `[a, b]` -> list, like in the files.
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}" if key else msg.removeprefix("Value error, "))
    return "invalid configuration: " + "; ".join(lines)


_PATH_KEYS = (
    ("spark", "jars_dir"),
    ("storage", "root"),
    ("generator", "output"),
    ("tracking", "artifact_root"),
    ("lifecycle", "production_storage_root"),
)


def load_settings(
    env: str | None = None,
    overrides: Iterable[str] = (),
    *,
    conf_dir: str | Path | None = None,
) -> Settings:
    """Load ``base.yaml`` + ``<env>.yaml`` + overrides into frozen :class:`Settings`.

    Args:
        env: environment overlay name; defaults to ``$POIMATCH_ENV`` or ``local``.
        overrides: ``section.key=value`` strings, applied last.
        conf_dir: folder with the YAML files; defaults to ``<project root>/conf``.

    Returns:
        Validated settings with local paths made absolute.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key or a bad value (named).

    Example:
        >>> s = load_settings("ci", ["spark.shuffle_partitions=4"])
        >>> s.spark.shuffle_partitions
        4
    """
    env = env or os.environ.get(ENV_VAR) or DEFAULT_ENV
    if conf_dir is None:
        conf_dir = os.environ.get(CONF_DIR_VAR) or project_root() / "conf"
    conf_path = Path(conf_dir)
    root = conf_path.resolve().parent
    data = _read_yaml(conf_path / "base.yaml")
    env_file = conf_path / f"{env}.yaml"
    if not env_file.is_file():
        known = sorted(p.stem for p in conf_path.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"unknown environment {env!r}: no {env_file} (known: {known})")
    data = _merge(data, _read_yaml(env_file), "")
    for override in overrides:
        _apply_override(data, override)
    data["env"] = env
    for section, key in _PATH_KEYS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str):
            data[section][key] = resolve_path(value, root)
    tracking = data.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("tracking_uri"), str):
        uri = tracking["tracking_uri"]
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            tracking["tracking_uri"] = "sqlite:///" + resolve_path(uri[len("sqlite:///") :], root)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
