"""Data contracts, checked with great_expectations (GX 1.x) on Spark DataFrames.

Two contracts:

* **input** — the rules a POI row must meet to be ingested. Each :class:`Rule` is
  expressed twice, from one definition: as a Spark SQL predicate (``violated``, used by
  :func:`add_rejection_reasons` to tag each row with why it is rejected) and as a GX
  expectation (used by :func:`validate_input` to report on a whole frame). The two
  agree: the GX unexpected count of a rule equals the number of rows whose ``reason``
  names that rule.
* **output** — what a match result must be before it is written
  (:func:`validate_output`): one row per input id, ``matches`` starting with the id.

Typical use in the ingest job::

    typed = add_typed_coordinates(raw)          # transform: no Spark action
    checked = add_rejection_reasons(typed)      # transform: no Spark action
    report = validate_input(checked)            # validator: runs Spark jobs
    require(validate_input(checked.where(F.col(REASON).isNull())))

Validators run Spark actions (GX computes its metrics with Spark). A frame that is
not cached already is persisted (memory and disk) for the time of the validation and
released afterwards, so the metrics do not recompute its lineage; cache a frame
yourself if it is written after being validated. The one exception is a small match
run's output, which the small plan holds on the driver anyway: :func:`validate_output`
also takes pandas frames and runs the same suite through GX's pandas engine (two
Spark jobs to collect instead of sixteen to compute the metrics; the outcomes are the
same, tested).

Each suite is a GX Expectation Suite, bound to a data source's whole-frame batch (the
Spark source's, or the pandas source's for pandas frames) by a Validation Definition
and run by a Checkpoint (the output suite's row count is a suite parameter given per
run). Where they live:

* ``store=None`` (the default; ad-hoc runs, tests): an *ephemeral* context, in memory,
  no files, nothing kept;
* ``store=<folder>`` (ingest and the POI table's match, ``storage.validations``): a
  file GX project at that folder; every result is stored in its validation results
  store and the Checkpoint's ``UpdateDataDocsAction`` rebuilds its Data Docs site
  (:func:`data_docs_index`); :attr:`ContractResult.data_docs` names the result's page.

Analytics are switched off before GX is imported, and its progress bars and info
logging are silenced.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

# Before great_expectations is imported: never send usage statistics, and keep its
# import-time and info logging out of the jobs' logs (unless a level was chosen).
os.environ["GX_ANALYTICS_ENABLED"] = "False"
_GX_LOGGER = logging.getLogger("great_expectations")
if _GX_LOGGER.level == logging.NOTSET:
    _GX_LOGGER.setLevel(logging.WARNING)

import pandas as pd  # noqa: E402
from pyspark import StorageLevel  # noqa: E402
from pyspark.sql import Column, DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from poimatch.columns import cached_column  # noqa: E402
from poimatch.schema import (  # noqa: E402
    ID,
    LATITUDE,
    LONGITUDE,
    MATCHES,
    NAME,
    OUTPUT_FIRST_MATCH,
    OUTPUT_ID_FOUND,
    RAW_LATITUDE,
    RAW_LONGITUDE,
    REASON,
)

if TYPE_CHECKING:
    from poimatch.io.gx_api import (
        AbstractDataContext,
        BatchDefinition,
        Expectation,
        PassThroughCondition,
        ValidationAction,
    )


def _gx() -> ModuleType:
    """:mod:`poimatch.io.gx_api`, for the rules' expectation factories (a lambda cannot hold
    an import). GX is imported on the first validation, not with this module (see
    there); functions import ``gx_api`` themselves, typed."""
    from poimatch.io import gx_api

    return gx_api


__all__ = [
    "INPUT_REQUIRED_COLUMNS",
    "MAX_NAME_CHARS",
    "INPUT_RULES",
    "INPUT_SUITE",
    "OUTPUT_SUITE",
    "ContractError",
    "ContractResult",
    "ExpectationOutcome",
    "Rule",
    "add_rejection_reasons",
    "add_typed_coordinates",
    "data_docs_index",
    "require",
    "validate_input",
    "validate_output",
]

INPUT_SUITE = "poimatch.input"
OUTPUT_SUITE = "poimatch.output"

#: Columns a typed input frame must have (others are allowed and ignored).
INPUT_REQUIRED_COLUMNS: tuple[str, ...] = (
    ID,
    NAME,
    LATITUDE,
    LONGITUDE,
    RAW_LATITUDE,
    RAW_LONGITUDE,
)

# Java regexes (Spark's RLIKE). (?U) makes \s match Unicode white space (e.g. NBSP).
_BLANK_RE = r"(?U)^\s*$"
_EDGE_SPACE_RE = r"(?U)^\s+|\s+$"
_ANY_SPACE_RE = r"(?U)\s"
# A plain decimal number: no NaN/Infinity, no hex floats, no 'd'/'f' suffixes.
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_LAT_RANGE = (-90.0, 90.0)
_LON_RANGE = (-180.0, 180.0)
#: Longest name accepted, in characters. Names are compared pair by pair with
#: quadratic string measures (Levenshtein, partial ratio): a 100,000-character name
#: would cost seconds per pair; no real place has a name this long.
MAX_NAME_CHARS = 1000
_POSITION = "poimatch_position"  # meta key: an expectation's place in its suite
_EXAMPLES = 5  # unexpected values GX samples per failed expectation (for describe())


# --- rules ---------------------------------------------------------------------------


def _q(column: str) -> str:
    """A column name quoted for Spark SQL."""
    return "`" + column.replace("`", "``") + "`"


def _sql_string(text: str) -> str:
    """A Spark SQL string literal (default parser: backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _missing_sql(column: str) -> str:
    return f"({_q(column)} IS NULL OR {_q(column)} RLIKE {_sql_string(_BLANK_RE)})"


def _out_of_range_sql(column: str, low: float, high: float) -> str:
    return f"({_q(column)} IS NOT NULL AND ({_q(column)} < {low} OR {_q(column)} > {high}))"


@dataclass(frozen=True)
class Rule:
    """One row-level input rule, as a GX expectation and as a Spark predicate.

    Attributes:
        reason: the rejection reason written in ``reason`` (e.g. ``"missing_id"``).
        make: builds the GX expectation that checks the same thing on a typed frame
            (``expectation``, a property: GX is imported on first use).
        condition: Spark SQL boolean expression, true when a row violates the rule;
            the one definition both ``violated`` and (where it needs one) the
            expectation's row condition are built from.
        violated: (property) ``condition`` as a Spark Column, built on access since a
            Column needs an active SparkContext. It may hold a window function
            (``duplicate_id``): use it in ``select``/``withColumn``, not in ``where``.
    """

    reason: str
    make: Callable[[], Expectation] = field(compare=False, repr=False)
    condition: str = field(compare=False)

    @property
    def expectation(self) -> Expectation:
        """A new GX expectation checking the rule (GX is imported on the first call)."""
        return self.make()

    @property
    def violated(self) -> Column:
        """Spark boolean column, true when the row violates the rule (never null).

        Built on access, because a Column needs an active SparkContext.
        """
        return F.coalesce(F.expr(self.condition), F.lit(False))


def _spark_filter(condition: str) -> PassThroughCondition:
    """A GX row condition that hands ``condition`` to Spark's ``DataFrame.filter``.

    GX's public Condition objects cannot express RLIKE, and the string form with
    ``condition_parser="spark"`` is deprecated (it warns on every copy): this is the
    object that string form is converted to.
    """
    from poimatch.io import gx_api as g

    return g.PassThroughCondition(pass_through_filter=condition)


def _rule_meta(reason: str, column: str) -> dict[str, Any]:
    return {"reason": reason, "column": column}


def _missing_rule(reason: str, column: str) -> Rule:
    condition = _missing_sql(column)
    return Rule(
        reason=reason,
        # Null *or* blank: no single column-map expectation counts both (they all skip
        # nulls or only count nulls), so the rows are selected by a row condition.
        make=lambda: _gx().ExpectTableRowCountToEqual(
            value=0,
            row_condition=_spark_filter(condition),
            meta=_rule_meta(reason, column),
        ),
        condition=condition,
    )


def _non_numeric_rule(reason: str, column: str) -> Rule:
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectColumnValuesToNotBeNull(
            column=column, meta=_rule_meta(reason, column)
        ),
        condition=f"{_q(column)} IS NULL",
    )


def _range_rule(reason: str, column: str, low: float, high: float) -> Rule:
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectColumnValuesToBeBetween(
            column=column, min_value=low, max_value=high, meta=_rule_meta(reason, column)
        ),
        condition=_out_of_range_sql(column, low, high),
    )


def _whitespace_rule(reason: str, column: str) -> Rule:
    # An id is one token of the space-separated `matches` list: a space (or any white
    # space) inside it would make the output unreadable. Missing ids are missing_id's.
    condition = f"(NOT {_missing_sql(column)} AND {_q(column)} RLIKE {_sql_string(_ANY_SPACE_RE)})"
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectTableRowCountToEqual(
            value=0,
            row_condition=_spark_filter(condition),
            meta=_rule_meta(reason, column),
        ),
        condition=condition,
    )


def _too_long_rule(reason: str, column: str, most: int) -> Rule:
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectColumnValueLengthsToBeBetween(
            column=column, max_value=most, meta=_rule_meta(reason, column)
        ),
        condition=f"char_length({_q(column)}) > {most}",
    )


def _zero_point_rule(reason: str, lat: str, lon: str) -> Rule:
    # 0,0 ("null island") is what geocoders return when they fail, not a place
    condition = f"({_q(lat)} = 0 AND {_q(lon)} = 0)"
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectTableRowCountToEqual(
            value=0,
            row_condition=_spark_filter(condition),
            meta=_rule_meta(reason, f"{lat},{lon}"),
        ),
        condition=condition,
    )


def _duplicate_rule(reason: str, column: str) -> Rule:
    # Every copy of an id that occurs more than once (we cannot tell which one is
    # right). Missing ids are left to missing_id, on both sides.
    present = f"NOT {_missing_sql(column)}"
    return Rule(
        reason=reason,
        make=lambda: _gx().ExpectColumnValuesToBeUnique(
            column=column,
            row_condition=_spark_filter(present),
            meta=_rule_meta(reason, column),
        ),
        condition=f"({present} AND count(1) OVER (PARTITION BY {_q(column)}) > 1)",
    )


#: The input rules, in the order their reasons are listed in ``reason``.
INPUT_RULES: tuple[Rule, ...] = (
    _missing_rule("missing_id", ID),
    _whitespace_rule("whitespace_in_id", ID),
    _missing_rule("missing_name", NAME),
    _too_long_rule("name_too_long", NAME, MAX_NAME_CHARS),
    _duplicate_rule("duplicate_id", ID),
    _non_numeric_rule("non_numeric_latitude", LATITUDE),
    _range_rule("latitude_out_of_range", LATITUDE, *_LAT_RANGE),
    _non_numeric_rule("non_numeric_longitude", LONGITUDE),
    _range_rule("longitude_out_of_range", LONGITUDE, *_LON_RANGE),
    _zero_point_rule("zero_coordinates", LATITUDE, LONGITUDE),
)


# --- transforms (no Spark actions) ---------------------------------------------------


def _to_double(raw: Column) -> Column:
    """Trimmed decimal text as double; anything else (NaN, Infinity, 'abc') is null."""
    text = F.regexp_replace(raw.cast("string"), _EDGE_SPACE_RE, "")
    return F.when(text.rlike(_NUMBER_RE), text.try_cast("double"))


def add_typed_coordinates(raw: DataFrame) -> DataFrame:
    """Cast ``latitude``/``longitude`` to double, keeping the text in ``raw_*`` columns.

    Args:
        raw: frame with (at least) ``latitude`` and ``longitude`` as strings.

    Returns:
        The same rows and columns with ``latitude``/``longitude`` as doubles (null when
        the text is not a plain decimal number after trimming white space: ``"abc"``,
        ``""``, ``"NaN"``, ``"Infinity"`` all give null) plus ``raw_latitude`` and
        ``raw_longitude`` holding the original text.

    Example:
        ``" 12.5 "`` gives ``12.5``; ``"1e2"`` gives ``100.0``; ``"12,5"`` gives null.
    """
    return raw.withColumns(
        {
            RAW_LATITUDE: F.col(LATITUDE).cast("string"),
            RAW_LONGITUDE: F.col(LONGITUDE).cast("string"),
            LATITUDE: _to_double(F.col(LATITUDE)),
            LONGITUDE: _to_double(F.col(LONGITUDE)),
        }
    )


def add_rejection_reasons(typed: DataFrame) -> DataFrame:
    """Add ``reason``: the comma-separated reasons of every rule a row violates.

    Args:
        typed: output of :func:`add_typed_coordinates`.

    Returns:
        ``typed`` plus ``reason`` (string), null for a valid row, otherwise the
        violated rules' reasons in :data:`INPUT_RULES` order, e.g.
        ``"missing_id,non_numeric_latitude"``. ``duplicate_id`` marks every copy of an
        id that occurs more than once in the frame (computed with a window: no action).
    """
    return typed.withColumn(REASON, _reason_column())


@cached_column
def _reason_column() -> Column:
    reasons = F.concat_ws(",", *[F.when(r.violated, F.lit(r.reason)) for r in INPUT_RULES])
    return F.when(reasons != "", reasons)


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """The outcome of one GX expectation.

    Attributes:
        name: the GX expectation type, e.g. ``"expect_column_values_to_be_unique"``.
        column: the column it is about (``"a,b"`` for a pair), None for the table.
        success: whether it was met.
        unexpected_count: rows that failed it (for a table row count: how far off the
            count is; for a column set: how many required columns are missing).
        element_count: rows it looked at (the batch size for table-level ones).
        detail: a short human note: the rule, examples of bad values, or an error.
    """

    name: str
    column: str | None
    success: bool
    unexpected_count: int
    element_count: int
    detail: str = ""


@dataclass(frozen=True)
class ContractResult:
    """All expectation outcomes of one contract check."""

    suite: str
    success: bool
    outcomes: tuple[ExpectationOutcome, ...]
    #: the Data Docs page of the stored validation result (``file://...``), when the
    #: check ran in a GX project folder (``store=``); otherwise None
    data_docs: tuple[str, ...] = ()

    def failures(self) -> tuple[ExpectationOutcome, ...]:
        """The outcomes that failed, in suite order."""
        return tuple(o for o in self.outcomes if not o.success)

    def describe(self) -> str:
        """Multi-line summary naming each failed expectation, its column and counts."""
        failed = self.failures()
        if self.success and not failed:
            return f"contract {self.suite}: passed ({len(self.outcomes)} expectations met)"
        lines = [f"contract {self.suite}: FAILED {len(failed)} of {len(self.outcomes)}"]
        for o in failed:
            if o.column is None:
                where = ""
            elif "," in o.column:
                where = " on columns " + " and ".join(repr(c) for c in o.column.split(","))
            else:
                where = f" on column {o.column!r}"
            line = f"  - {o.name}{where}: {o.unexpected_count} unexpected of {o.element_count}"
            lines.append(line + (f" ({o.detail})" if o.detail else ""))
        return "\n".join(lines)


class ContractError(ValueError):
    """A contract was not met; ``result`` holds the outcomes, the message describes them."""

    def __init__(self, result: ContractResult) -> None:
        super().__init__(result.describe())
        self.result = result


def require(result: ContractResult) -> None:
    """Raise :class:`ContractError` unless ``result`` succeeded."""
    if not result.success:
        raise ContractError(result)


# --- GX plumbing ---------------------------------------------------------------------

_LOCK = threading.RLock()
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": _EXAMPLES}
_ROWS_PARAMETER = "expected_rows"  # the output suite's row count, given per run


@dataclass
class _Project:
    """One GX data context (ephemeral, or a file project keeping results and Data
    Docs) with the whole-frame batch definitions of its Spark and pandas data sources
    and a Checkpoint per suite and engine."""

    context: Any
    spark: SparkSession
    definition: BatchDefinition[Any]
    pandas_definition: BatchDefinition[Any]
    checkpoints: dict[tuple[str, bool], Any] = field(default_factory=dict)


_PROJECTS: dict[str | None, _Project] = {}


def _project(spark: SparkSession, store: str | None) -> _Project:
    """The GX project for ``store`` (a folder; ``None``: in memory, nothing kept), made
    the process's current GX project (GX resolves stores and Data Docs through it).

    Rebuilt if the Spark session changed; a file project is opened where it is, or
    created with its Data Docs site under ``<store>/gx/uncommitted/data_docs``.
    """
    if store is not None and "://" in store and not store.startswith("file://"):
        raise ValueError(
            f"storage.validations: {store} is not a local or mounted folder; great_expectations "
            "keeps its project in files (on Databricks: a /Volumes path)"
        )
    from poimatch.io import gx_api as g

    known = _PROJECTS.get(store)
    if known is None or known.spark is not spark:
        context: AbstractDataContext
        if store is None:
            config = g.DataContextConfig(
                # In-memory stores and no data docs site (the default makes a temp dir path).
                store_backend_defaults=g.InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                analytics_enabled=False,
                progress_bars=g.ProgressBarsConfig(globally=False, metric_calculations=False),
            )
            context = g.gx.get_context(mode="ephemeral", project_config=config)
        else:
            context = g.gx.get_context(mode="file", project_root_dir=store)
            context.variables.progress_bars = g.ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            context.variables.save()
        source = context.data_sources.add_or_update_spark(name="poimatch_spark", persist=False)
        asset = source.add_dataframe_asset(name="frame")
        local = context.data_sources.add_or_update_pandas(name="poimatch_pandas")
        local_asset = local.add_dataframe_asset(name="frame")
        known = _Project(
            context,
            spark,
            asset.add_batch_definition_whole_dataframe("whole"),
            local_asset.add_batch_definition_whole_dataframe("whole"),
        )
        _PROJECTS[store] = known
    g.project_manager.set_project(known.context)
    return known


def _checkpoint(
    project: _Project, name: str, expectations: Sequence[Expectation], *, local: bool = False
) -> Any:
    """The Checkpoint that runs suite ``name`` on a Spark frame, or on a pandas frame
    (``local``): the suite bound to each data source's whole-frame batch by a Validation
    Definition, run by a Checkpoint of the definition's name (``name``, or
    ``name + ".pandas"``); a file project also stores each result and updates its Data
    Docs. Both are made together from one suite object (GX refuses to run a checkpoint
    whose suite was saved again since it was made).

    Made once per in-memory project. A file project's are saved again before every run:
    another process (a spark-submit job on the same validations folder) may have saved
    the suite since, and GX refuses to run a checkpoint whose suite object is older than
    the stored one (``CheckpointRelatedResourcesFreshnessError: ExpectationSuite ... has
    changed since it has last been saved``; found by tests/test_safe_reruns.py).
    """
    stored = _store_of(project) is not None
    known = project.checkpoints.get((name, local))
    if known is not None and not stored:
        return known
    from poimatch.io import gx_api as g

    context = project.context
    suite = g.gx.ExpectationSuite(name=name)
    for position, expectation in enumerate(expectations):
        # A copy, as a suite binds its expectations and the callers' lists may be kept.
        # The position goes in meta: results come back in GX's order, not the suite's.
        meta = {**(expectation.meta or {}), _POSITION: position}
        suite.add_expectation(expectation.copy(update={"meta": meta}, deep=True))
    suite = context.suites.add_or_update(suite)
    actions: list[ValidationAction] = [g.UpdateDataDocsAction(name="data_docs")] if stored else []
    for on_pandas, batches in ((False, project.definition), (True, project.pandas_definition)):
        runs = f"{name}.pandas" if on_pandas else name
        definition = context.validation_definitions.add_or_update(
            g.gx.ValidationDefinition(name=runs, data=batches, suite=suite)
        )
        project.checkpoints[(name, on_pandas)] = context.checkpoints.add_or_update(
            g.gx.Checkpoint(
                name=runs,
                validation_definitions=[definition],
                actions=actions,
                result_format=_RESULT_FORMAT,
            )
        )
    return project.checkpoints[(name, local)]


def _store_of(project: _Project) -> str | None:
    for store, known in _PROJECTS.items():
        if known is project:
            return store
    return None


def data_docs_index(store: str) -> Path:
    """The Data Docs site's front page of the GX project at ``store``."""
    return Path(store) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def _describe_values(values: Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in list(values)[:_EXAMPLES])


def _outcome(result: Any, batch_rows: int) -> ExpectationOutcome:
    """One GX ExpectationValidationResult as an :class:`ExpectationOutcome`."""
    config = result.expectation_config
    kwargs: Mapping[str, Any] = config.kwargs
    meta: Mapping[str, Any] = config.meta or {}
    res: Mapping[str, Any] = result.result or {}
    success = bool(result.success)
    column: str | None = kwargs.get("column") or meta.get("column")
    if column is None and "column_A" in kwargs:
        column = f"{kwargs['column_A']},{kwargs['column_B']}"

    notes: list[str] = []
    if meta.get("reason"):
        notes.append(f"rule {meta['reason']}")
    if meta.get("note"):
        notes.append(str(meta["note"]))
    if "unexpected_count" in res:
        unexpected = int(res["unexpected_count"] or 0)
        elements = int(res.get("element_count") or 0)
        examples = [v for v in res.get("partial_unexpected_list") or () if v is not None]
        if not success and examples:
            notes.append(f"e.g. {_describe_values(examples)}")
    elif config.type == "expect_table_row_count_to_equal" and "observed_value" in res:
        observed = int(res["observed_value"])
        if kwargs.get("row_condition"):  # counts the rows that break a rule
            unexpected, elements = observed, batch_rows
        else:
            unexpected, elements = abs(observed - int(kwargs["value"])), observed
            notes.append(f"observed {observed} rows, expected {kwargs['value']}")
    elif config.type == "expect_table_columns_to_match_set":
        missing = res.get("details", {}).get("mismatched", {}).get("missing", [])
        unexpected, elements = len(missing), len(kwargs.get("column_set") or ())
        if missing:
            notes.append(f"missing columns: {_describe_values(missing)}")
    else:
        unexpected, elements = (0 if success else 1), batch_rows
        if not success and "observed_value" in res:
            notes.append(f"observed {res['observed_value']!r}")
    info = result.exception_info or {}
    if info.get("raised_exception"):
        notes.append(f"error: {str(info.get('exception_message')).splitlines()[0]}")
    else:  # GX keys exception info by metric when a metric failed
        for value in info.values():
            if isinstance(value, Mapping) and value.get("raised_exception"):
                notes.append(f"error: {str(value.get('exception_message')).splitlines()[0]}")
                break
    return ExpectationOutcome(
        name=str(config.type),
        column=column,
        success=success,
        unexpected_count=unexpected,
        element_count=elements,
        detail="; ".join(notes),
    )


@contextmanager
def _cached(frame: DataFrame) -> Iterator[DataFrame]:
    """``frame`` persisted (memory and disk) for the block, unless it is cached already.

    GX computes its metrics in several Spark jobs; without this each would recompute
    the frame's whole lineage.
    """
    if frame.is_cached:
        yield frame
        return
    persisted = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        yield persisted
    finally:
        persisted.unpersist()


def _run_suite(
    frame: DataFrame | pd.DataFrame,
    name: str,
    expectations: Sequence[Expectation],
    *,
    store: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> tuple[tuple[ExpectationOutcome, ...], str | None]:
    """Run the Checkpoint of suite ``name`` on ``frame`` (Spark or pandas): its
    outcomes, in the order of ``expectations`` (GX reorders its results), and the Data
    Docs page of the stored result (``store`` given) or ``None``."""
    from poimatch.io import gx_api as g

    local = isinstance(frame, pd.DataFrame)
    with _LOCK:
        spark = frame.sparkSession if isinstance(frame, DataFrame) else None
        spark = spark or SparkSession.getActiveSession()
        if spark is None:
            raise RuntimeError("no active Spark session to check a frame with")
        project = _project(spark, store)
        checkpoint = _checkpoint(project, name, expectations, local=local)
        run = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=dict(parameters or {}),
            # GX files results by run name: no path separators in it
            run_id=g.RunIdentifier(
                run_name=(run_name or name).replace("/", "_").replace("\\", "_")
            ),
        )
        (identifier, validation), *_ = run.run_results.items()
        page = None
        if store is not None:
            urls = project.context.get_docs_sites_urls(resource_identifier=identifier)
            page = next((u["site_url"] for u in urls if u.get("site_url")), None)
    ordered = sorted(validation.results, key=_position)
    batch_rows = max(
        (int((r.result or {}).get("element_count") or 0) for r in ordered if not _conditioned(r)),
        default=0,
    )
    return tuple(_outcome(r, batch_rows) for r in ordered), page


def _position(result: Any) -> int:
    return int(result.expectation_config.meta[_POSITION])


def _conditioned(result: Any) -> bool:
    return bool(result.expectation_config.kwargs.get("row_condition"))


def _result(
    name: str, outcomes: Sequence[ExpectationOutcome], pages: Sequence[str | None] = ()
) -> ContractResult:
    return ContractResult(
        suite=name,
        success=all(o.success for o in outcomes),
        outcomes=tuple(outcomes),
        data_docs=tuple(p for p in pages if p),
    )


# --- validators (run Spark actions) --------------------------------------------------


def _input_expectations() -> list[Expectation]:
    """The input suite: required columns, double coordinates, then every rule."""
    from poimatch.io import gx_api as g

    structure: list[Expectation] = [
        g.ExpectTableColumnsToMatchSet(column_set=list(INPUT_REQUIRED_COLUMNS), exact_match=False),
        g.ExpectColumnValuesToBeOfType(column=LATITUDE, type_="DoubleType"),
        g.ExpectColumnValuesToBeOfType(column=LONGITUDE, type_="DoubleType"),
    ]
    return structure + [rule.expectation for rule in INPUT_RULES]


def validate_input(
    typed: DataFrame, *, store: str | None = None, run_name: str | None = None
) -> ContractResult:
    """Check a typed input frame against the input contract (runs Spark jobs).

    Args:
        typed: output of :func:`add_typed_coordinates` (extra columns, such as
            ``reason``, are allowed).
        store: a GX project folder: the result is stored there and its Data Docs
            updated (``None``: checked in memory, nothing written).
        run_name: the GX run name the stored result is filed under.

    Returns:
        :class:`ContractResult` of suite ``poimatch.input``: the required columns are
        present, the coordinates are doubles, and one outcome per :data:`INPUT_RULES`
        entry whose ``unexpected_count`` is the number of rows breaking that rule.
    """
    with _cached(typed) as frame:
        outcomes, page = _run_suite(
            frame, INPUT_SUITE, _input_expectations(), store=store, run_name=run_name
        )
    return _result(INPUT_SUITE, outcomes, [page])


def _output_expectations() -> list[Expectation]:
    """The output suite: columns, ids, matches starting with the id, the row count (a
    suite parameter: the suite is one stored definition, each run gives the number of
    distinct input ids it must equal)."""
    from poimatch.io import gx_api as g

    return [
        g.ExpectTableColumnsToMatchSet(column_set=[ID, MATCHES], exact_match=False),
        g.ExpectColumnValuesToNotBeNull(column=ID),
        g.ExpectColumnValuesToBeUnique(column=ID),
        g.ExpectColumnValuesToNotBeNull(column=MATCHES),
        g.ExpectColumnPairValuesToBeEqual(
            column_A=ID,
            column_B=OUTPUT_FIRST_MATCH,
            meta={"note": f"first id in {MATCHES} must be the row's {ID}"},
        ),
        g.ExpectTableRowCountToEqual(
            value={"$PARAMETER": _ROWS_PARAMETER},
            meta={"note": "one row per distinct input id"},
        ),
    ]


def _coverage_expectations() -> list[Expectation]:
    """Input ids left-joined to the output's: a null output id is a missing id."""
    from poimatch.io import gx_api as g

    return [
        g.ExpectColumnPairValuesToBeEqual(
            column_A=ID,
            column_B=OUTPUT_ID_FOUND,
            meta={"note": "input ids missing from the output"},
        )
    ]


def _run_output_suites(
    checked: DataFrame | pd.DataFrame,
    joined: DataFrame | pd.DataFrame | None,
    *,
    n_ids: int,
    store: str | None,
    run_name: str | None,
) -> ContractResult:
    """The output suite on ``checked`` (the output with its first match) and, when
    given, the coverage suite on ``joined`` (input ids left-joined to the output's)."""
    found, page = _run_suite(
        checked,
        OUTPUT_SUITE,
        _output_expectations(),
        store=store,
        parameters={_ROWS_PARAMETER: n_ids},
        run_name=run_name,
    )
    outcomes, pages = list(found), [page]
    if joined is not None:
        more, page = _run_suite(
            joined,
            f"{OUTPUT_SUITE}.coverage",
            _coverage_expectations(),
            store=store,
            run_name=run_name,
        )
        outcomes += more
        pages.append(page)
    return _result(OUTPUT_SUITE, outcomes, pages)


def validate_output(
    matches: DataFrame | pd.DataFrame,
    *,
    input_ids: DataFrame | pd.DataFrame,
    store: str | None = None,
    run_name: str | None = None,
) -> ContractResult:
    """Check a match result before it is written (runs Spark jobs for Spark frames).

    Args:
        matches: one row per POI with ``id`` and ``matches`` (space-separated ids,
            starting with the row's own id); other columns (``group_id``) allowed.
            A pandas frame (a small run's output, already on the driver) is checked
            with GX's pandas engine: the same suite, no Spark job.
        input_ids: the POIs that were matched (an ``id`` column; other columns
            ignored); Spark or pandas, as ``matches``.
        store: a GX project folder: the results are stored there and its Data Docs
            updated (``None``: checked in memory, nothing written).
        run_name: the GX run name the stored results are filed under.

    Returns:
        :class:`ContractResult` of suite ``poimatch.output``: ``id`` not null and
        unique; ``matches`` not null and its first token equal to ``id``; as many rows
        as distinct input ids; and no input id missing from the output.
    """
    if isinstance(matches, pd.DataFrame) or isinstance(input_ids, pd.DataFrame):
        if not (isinstance(matches, pd.DataFrame) and isinstance(input_ids, pd.DataFrame)):
            raise TypeError("validate_output: give matches and input_ids both as Spark or pandas")
        return _validate_output_frame(matches, input_ids, store=store, run_name=run_name)
    distinct_ids = input_ids.select(ID).where(F.col(ID).isNotNull()).distinct()
    with _cached(matches) as output, _cached(distinct_ids) as ids:
        n_ids = ids.count()
        checked = output
        if MATCHES in output.columns:
            first = F.split(F.col(MATCHES), " ", 2).getItem(0)
            checked = output.withColumn(OUTPUT_FIRST_MATCH, first)
        if ID not in output.columns:
            return _run_output_suites(checked, None, n_ids=n_ids, store=store, run_name=run_name)
        present = output.select(ID).distinct().withColumn(OUTPUT_ID_FOUND, F.col(ID))
        with _cached(ids.join(present, on=ID, how="left")) as joined:
            return _run_output_suites(checked, joined, n_ids=n_ids, store=store, run_name=run_name)


def _validate_output_frame(
    output: pd.DataFrame, input_ids: pd.DataFrame, *, store: str | None, run_name: str | None
) -> ContractResult:
    """:func:`validate_output` of pandas frames: the same two suites, GX's pandas engine."""
    ids = input_ids[[ID]].dropna().drop_duplicates()
    checked = output
    if MATCHES in output.columns:
        # as Spark's split(matches, ' ', 2)[0]: the text before the first space
        first = output[MATCHES].map(lambda v: v.split(" ", 1)[0] if isinstance(v, str) else None)
        checked = output.assign(**{OUTPUT_FIRST_MATCH: first})
    joined = None
    if ID in output.columns:
        present = output[[ID]].dropna().drop_duplicates()
        present = present.assign(**{OUTPUT_ID_FOUND: present[ID]})
        joined = ids.merge(present, on=ID, how="left")
        # a missing id as null (as Spark's join gives it), not pandas' NaN
        joined[OUTPUT_ID_FOUND] = [
            v if isinstance(v, str) else None for v in joined[OUTPUT_ID_FOUND]
        ]
    return _run_output_suites(checked, joined, n_ids=len(ids), store=store, run_name=run_name)
