"""Job-level runs with their I/O: load validated POIs, match and write, evaluate.

The commands (:mod:`poimatch.apps.commands`, through :class:`poimatch.matcher.Matcher`)
call these; each returns a typed result whose ``lines()`` the command prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import Settings
from poimatch.io import contracts, triage
from poimatch.io.ingest import (
    accepted_rows,
    check_rows,
    poi_layout,
    rejected_rows,
    upsert_quarantine,
)
from poimatch.io.lookup import pin_lookup, write_lookup
from poimatch.io.tables import (
    InputError,
    delta_version,
    input_fingerprint,
    is_delta_table,
    read_delta,
    read_matches,
    read_poi_csv,
    read_poi_input,
    write_delta,
    write_single_csv,
)
from poimatch.io.triage import alone_rows, rejected_report, with_status
from poimatch.lifecycle.evaluation import (
    IouReport,
    PairMetrics,
    iou,
    matches_to_pairs,
    pair_metrics,
    truth_pairs,
)
from poimatch.lifecycle.tracking import configure_tracking, default_model_uri, load_matcher
from poimatch.runs.against import KNOWN_GROUPS, KNOWN_IDS, match_against
from poimatch.runs.incremental import ChangeSource, IncrementalResult, match_incremental
from poimatch.runs.workflows import match_pois
from poimatch.stages.grouping import group_id_changes, stable_group_ids
from poimatch.stages.plan import BATCH, Plan, Steps, name_jobs, small_plan_conf

ABOVE_THRESHOLD = "above_threshold"

__all__ = [
    "AGAINST_TABLES",
    "AgainstReport",
    "Evaluation",
    "GroupIdChanges",
    "LoadedPois",
    "MatchInput",
    "MatchReport",
    "load_match_input",
    "load_pois",
    "rejected_table_path",
    "run_match",
    "run_match_against",
    "run_evaluate",
]


@dataclass(frozen=True)
class LoadedPois:
    """POIs ready to match or train on (:func:`load_pois`) and what reading them did.

    ``source`` is ``delta:PATH`` or ``csv:PATH``; for a CSV, ``rows`` read, ``accepted``
    and the ``quarantine`` table the rest went to (``None``: nothing was quarantined).
    A Delta table is read as it is: its counts are ``None`` (not counted).
    """

    pois: DataFrame
    source: str
    rows: int | None = None
    accepted: int | None = None
    quarantine: str | None = None

    def lines(self) -> list[str]:
        """Printable figures."""
        if self.rows is None or self.accepted is None:
            return [f"input={self.source}"]
        lines = [
            f"input={self.source} rows={self.rows} accepted={self.accepted} "
            f"quarantined={self.rows - self.accepted}"
        ]
        return lines + ([f"quarantine={self.quarantine}"] if self.quarantine else [])


def load_pois(
    spark: SparkSession, path: str, *, quarantine_path: str, require_labels: bool = False
) -> LoadedPois:
    """POIs ready to match or train on, from a Delta table or a CSV.

    A Delta table is read as it is (the ingest validated it). A CSV is validated like
    the ingest: rejected rows are merged into the quarantine table with their reason,
    and the accepted rows are returned (cached).
    """
    if is_delta_table(spark, path):
        return LoadedPois(
            read_poi_input(spark, path, require_labels=require_labels), f"delta:{path}"
        )
    csv = read_poi_csv(spark, path)
    if require_labels and not csv.has_poi:
        raise ValueError(f"{path}: no {S.POI} column; training needs labelled rows")
    checked = check_rows(csv.frame).persist(StorageLevel.MEMORY_AND_DISK)
    accepted = accepted_rows(checked).persist(StorageLevel.MEMORY_AND_DISK)
    n_total, n_ok = checked.count(), accepted.count()
    if n_total > n_ok:
        upsert_quarantine(spark, rejected_rows(checked), quarantine_path)
    if n_ok == 0:
        raise ValueError(f"{path}: no valid rows (all {n_total} quarantined in {quarantine_path})")
    # the typed POI layout, without the ingest's bookkeeping columns
    return LoadedPois(
        accepted.select(*[f.name for f in S.poi_table_schema().fields]),
        f"csv:{path}",
        rows=n_total,
        accepted=n_ok,
        quarantine=quarantine_path if n_total > n_ok else None,
    )


@dataclass(frozen=True)
class MatchInput:
    """The rows of a match run, each with its ``status`` (see :mod:`poimatch.io.triage`).

    ``pois`` are the ``matched`` rows in the typed POI layout; ``triaged`` every input
    row with ``reason`` and ``status`` (cached: call :meth:`release` when done);
    ``output_ids`` the ids the output must hold exactly once.
    """

    source: str
    pois: DataFrame
    triaged: DataFrame
    output_ids: DataFrame
    counts: dict[str, int]

    def lines(self) -> list[str]:
        """Printable figures."""
        counts = " ".join(f"{k}={self.counts.get(k, 0)}" for k in triage.STATUSES)
        return [f"input={self.source} rows={sum(self.counts.values())} {counts}"]

    def release(self) -> None:
        """Unpersist the cached rows."""
        self.triaged.unpersist()


def load_match_input(spark: SparkSession, path: str, *, version: int | None = None) -> MatchInput:
    """Every row of a CSV or Delta table (at ``version`` when given: a run reads the
    version it names), checked by the input rules and triaged.

    Unlike :func:`load_pois` nothing is quarantined and nothing is dropped: rows
    breaking a rule are returned with their ``status`` and ``reason`` for the output
    and the rejected-rows report. Reading has no side effect on any table.

    Raises:
        poimatch.io.tables.InputError: the file cannot be used at all, or has no data rows.
    """
    if version is not None or is_delta_table(spark, path):
        raw = read_delta(spark, path, version=version)
        raw = raw.withColumn(S.INPUT_ORDER, F.monotonically_increasing_id())
        label = f"delta:{path}"
    else:
        raw = read_poi_csv(spark, path).frame
        label = f"csv:{path}"
    triaged = triage.add_status(check_rows(raw)).persist(StorageLevel.MEMORY_AND_DISK)
    counts = {
        str(r[S.STATUS]): int(r["count"]) for r in triaged.groupBy(S.STATUS).count().collect()
    }
    if not counts:
        triaged.unpersist()
        raise InputError(f"{path}: no data rows (a header and nothing else)")
    pois = poi_layout(triaged.where(F.col(S.STATUS) == triage.MATCHED))
    return MatchInput(label, pois, triaged, triage.output_ids(triaged), counts)


def _rejected_csv_path(output_csv: str) -> str:
    """``OUT.rejected.csv`` beside ``OUT.csv`` (or ``OUT.rejected.csv`` for ``OUT``)."""
    path = Path(output_csv)
    stem = path.name[: -len(".csv")] if path.name.lower().endswith(".csv") else path.name
    return str(path.with_name(f"{stem}.rejected.csv"))


def rejected_table_path(table: str) -> str:
    """Where the rejected-rows report of the Delta output table ``table`` is written."""
    return f"{table.rstrip('/')}_rejected"


def _input_tables(settings: Settings) -> set[str]:
    storage = settings.storage
    return {
        storage.table_path(storage.pois_table),
        storage.table_path(storage.quarantine_table),
        storage.table_path(storage.lookup_table),
        storage.table_path(settings.lifecycle.eval_table),
    }


def _output_table(settings: Settings, input_path: str | None, table: str | None) -> str | None:
    """The Delta table a match run writes: where the user asked, never by accident.

    The POI table's run (no input) updates ``matches`` unless ``table`` says otherwise;
    an ad-hoc input writes a table only when ``table`` names one.
    """
    storage = settings.storage
    if table is not None:
        if table.rstrip("/") in _input_tables(settings):
            raise ValueError(f"--table {table}: that is an input table; name a matches table")
        return table
    if input_path is None:
        return storage.table_path(storage.matches_table)
    return None


@dataclass(frozen=True)
class GroupIdChanges:
    """Rows whose ``group_id`` differs from the output table's previous version."""

    changed: int
    both: int  # rows in both runs
    previous_version: int

    @property
    def share(self) -> float:
        """``changed / both`` (0 when no row is in both)."""
        return self.changed / max(self.both, 1)


@dataclass(frozen=True)
class MatchReport:
    """What a match run (:func:`run_match`) read, did and wrote.

    ``counts``: input rows per status (:data:`poimatch.io.triage.STATUSES`); ``plan``:
    ``small`` or ``batch`` (an incremental run also fills ``incremental``); ``written``:
    what was written where, in order (``matches_table``, ``rejected_table``,
    ``lookup_table``, ``output``, ``rejected_output``, ``pairs_table``); ``groups`` and
    ``largest_group`` over the output (every input id); ``group_ids_changed`` against
    the output table's previous version, when there was one.
    """

    source: str
    counts: Mapping[str, int]
    model_uri: str
    plan: str
    candidates: int
    candidates_per_row: float
    seconds: float
    groups: int
    largest_group: int
    written: Mapping[str, str] = field(default_factory=dict)
    data_docs: tuple[str, ...] = ()
    group_ids_changed: GroupIdChanges | None = None
    incremental: IncrementalResult | None = None

    @property
    def rows(self) -> int:
        """Input rows, whatever their status."""
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """Printable figures (``key=value``), in the order the run produced them."""
        counts = " ".join(f"{k}={self.counts.get(k, 0)}" for k in triage.STATUSES)
        lines = [f"input={self.source} rows={self.rows} {counts}"]
        lines += self.incremental.lines() if self.incremental else [f"plan={self.plan}"]
        lines += [
            f"model={self.model_uri}",
            f"candidates={self.candidates} candidates_per_row={self.candidates_per_row:.2f}",
        ]
        written = self.written
        tables = ("matches_table", "rejected_table")
        files = ("lookup_table", "output", "rejected_output")
        lines += [f"{k}={written[k]}" for k in tables if k in written]
        lines += [f"data_docs={page}" for page in self.data_docs]
        lines += [f"{k}={written[k]}" for k in files if k in written]
        lines.append(f"groups={self.groups} largest_group={self.largest_group}")
        if (ch := self.group_ids_changed) is not None:
            lines.append(
                f"group_ids_changed={ch.changed} of {ch.both} rows in both runs "
                f"({ch.share:.4f}; previous version {ch.previous_version})"
            )
        if "pairs_table" in written:
            lines.append(f"pairs_table={written['pairs_table']}")
        lines.append(f"match_seconds={self.seconds:.1f}")
        return lines


def run_match(
    spark: SparkSession,
    settings: Settings,
    *,
    input_path: str | None,
    output_csv: str | None,
    model_uri: str | None,
    incremental: bool = False,
    table: str | None = None,
    pairs_table: str | None = None,
) -> MatchReport:
    """Match, check the output contract, write where asked.

    Every input id is in the output exactly once: the rows breaking an input rule are
    there alone, with ``status`` and ``reason`` (:mod:`poimatch.io.triage`), and every row
    that was not matched is listed in a rejected-rows report beside the output
    (``OUT.rejected.csv`` beside ``--output OUT.csv``; ``<table>_rejected`` beside a
    Delta table).

    Writes: matching the POI table (``input_path`` None) updates the Delta ``matches``
    table (or ``table``); an ad-hoc input writes only ``output_csv`` and/or ``table``,
    and never touches a production table (nor the quarantine). With ``incremental``
    the input must be a Delta table: see :mod:`poimatch.runs.incremental`. ``pairs_table``
    (only when named): every scored candidate pair, overwritten each run
    (:func:`scored_pairs_frame`).

    Raises:
        ValueError: an ad-hoc input with nowhere to write, ``--incremental`` without a
            Delta input and table, ``--pairs-table`` with ``--incremental``, or ``table``
            or ``pairs_table`` naming an input table or each other.
    """
    storage = settings.storage
    target = _output_table(settings, input_path, table)
    if pairs_table is not None:
        named = pairs_table.rstrip("/")
        if named in _input_tables(settings) or named == (target or "").rstrip("/"):
            raise ValueError(
                f"--pairs-table {pairs_table}: that is an input or the matches table; "
                "name a table of its own"
            )
        if incremental:
            raise ValueError(
                "--pairs-table needs a full run: an incremental run scores only the "
                "pairs that changed"
            )
    if target is None and not output_csv:
        raise ValueError(
            "an ad-hoc match (--input) writes only what you name: "
            "give --output OUT.csv and/or --table PATH"
        )
    source = input_path or storage.table_path(storage.pois_table)
    delta_input = is_delta_table(spark, source)
    if incremental and (target is None or not delta_input):
        raise ValueError(
            f"--incremental needs a Delta table as input (not {source}) and a Delta "
            "output table (the POI table's run, or --table) to keep its state beside"
        )
    # the run's Spark jobs are named after its steps (input, match, output, write,
    # figures), the matching stages' after themselves (poimatch.stages.plan.name_jobs)
    progress = Steps(log_prefix="step ")
    progress.next("input")
    try:
        # a Delta input is read at the version its commit metadata will name, even when
        # another commit lands while the run reads it
        version = delta_version(spark, source) if delta_input else None
        fingerprint = input_fingerprint(spark, source, version=version)
        data = load_match_input(spark, source, version=version)
    except BaseException:
        name_jobs(None)
        raise
    uri = model_uri or default_model_uri(settings.model.name)
    rows = data.counts.get(triage.MATCHED, 0)
    written: dict[str, str] = {}
    # a small run (no pairs table; an incremental one too) runs with the small
    # plan's SQL settings from here to its last write; then the session's come back
    small = pairs_table is None and Plan.for_rows(rows, settings.matching.small_max_rows).small
    with small_plan_conf(spark, enabled=small):
        try:
            progress.next("match", f"{sum(data.counts.values()):,} rows, {rows:,} to match")
            run = _match_rows(
                spark,
                settings,
                data.pois,
                uri=uri,
                incremental=incremental,
                table=target,
                keep_pairs=pairs_table is not None,
                rows=rows,
                source=(
                    ChangeSource(source, version)
                    if version is not None and settings.matching.change_feed
                    else None
                ),
            )
            matched, points = run.matches, run.points
            progress.next("output", f"{run.candidates:,} candidate pairs, plan {run.plan}")
            output = with_status(matched, data.triaged).unionByName(alone_rows(data.triaged))
            previous = _previous_groups(spark, target)
            if previous is not None:
                prev_rows, prev_version = previous
                output = stable_group_ids(output, prev_rows, run_tag=f"v{prev_version + 1}")
            output = output.persist(StorageLevel.MEMORY_AND_DISK)
            nightly = input_path is None and target == storage.table_path(storage.matches_table)
            # the POI table's own run keeps its contract results and Data Docs; an ad-hoc
            # run writes nothing but what it was asked to. A small run's output, and any
            # of at most matching.driver_check_max_rows rows, is checked on the driver:
            # one Spark job collects it and the input ids, instead of the ~30 small jobs
            # GX's Spark engine runs for its metrics over the cached output
            on_driver = (
                small or sum(data.counts.values()) <= settings.matching.driver_check_max_rows
            )
            checked_output, checked_ids = (
                _collect_output(output, data.output_ids) if on_driver else (output, data.output_ids)
            )
            checked = contracts.validate_output(
                checked_output,
                input_ids=checked_ids,
                store=storage.validations_path() if nightly else None,
                run_name=f"match {fingerprint.rsplit('/', 1)[-1]}",
            )
            contracts.require(checked)
            progress.next("write", "the output contract is met")
            report = rejected_report(data.triaged)
            metadata = f"input={fingerprint} model={uri}"
            if target is not None:
                # the report first: the matches commit is the run's last word
                write_delta(report, rejected_table_path(target), user_metadata=metadata)
                write_delta(
                    output.select(S.ID, S.GROUP_ID, S.MATCHES, S.STATUS, S.REASON),
                    target,
                    user_metadata=metadata,
                )
                written["matches_table"] = target
                written["rejected_table"] = rejected_table_path(target)
            if nightly and points is not None:
                # the POI table's own run: lay its matched rows out by cell for lookups
                lookup = storage.table_path(storage.lookup_table)
                write_lookup(
                    points,
                    output,
                    lookup,
                    rows=sum(data.counts.values()),
                    rows_per_file=storage.lookup_rows_per_file,
                    user_metadata=metadata,
                )
                written["lookup_table"] = lookup
            if output_csv:
                write_single_csv(output.select(S.ID, S.MATCHES).orderBy(S.ID), output_csv)
                rejected_csv = _rejected_csv_path(output_csv)
                write_single_csv(report, rejected_csv)
                written["output"] = output_csv
                written["rejected_output"] = rejected_csv
            progress.next("figures", "wrote " + ", ".join(written.values()))
            n_groups, largest = _group_figures(checked_output)
            changes = None
            if previous is not None:
                both, changed = group_id_changes(output, previous[0])
                changes = GroupIdChanges(changed, both, previous[1])
            if pairs_table is not None and run.scored is not None:
                write_delta(run.scored, pairs_table, user_metadata=metadata)
                written["pairs_table"] = pairs_table
            matched.unpersist()
            output.unpersist()
        finally:
            progress.next(None)
            data.release()
    return MatchReport(
        source=data.source,
        counts=dict(data.counts),
        model_uri=uri,
        plan=run.plan,
        candidates=run.candidates,
        candidates_per_row=run.per_row,
        seconds=run.seconds,
        groups=n_groups,
        largest_group=largest,
        written=written,
        data_docs=tuple(checked.data_docs),
        group_ids_changed=changes,
        incremental=run.incremental,
    )


#: marks the output's rows in the one collection of a small run's output and input ids
_FROM_OUTPUT = "_from_output"


def _collect_output(output: DataFrame, input_ids: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small run's output (``id``, ``group_id``, ``matches``) and the ids it must hold,
    on the driver in one Spark job (the output contract and the run's figures are then
    computed there): the two frames in one union, told apart by a marker column."""
    rows = output.select(S.ID, S.GROUP_ID, S.MATCHES).withColumn(_FROM_OUTPUT, F.lit(True))
    ids = input_ids.select(S.ID, F.lit(False).alias(_FROM_OUTPUT))
    both = rows.unionByName(ids, allowMissingColumns=True).toPandas()
    mine = both[_FROM_OUTPUT].astype(bool)
    return (
        both.loc[mine, [S.ID, S.GROUP_ID, S.MATCHES]].reset_index(drop=True),
        both.loc[~mine, [S.ID]].reset_index(drop=True),
    )


def _group_figures(output: DataFrame | pd.DataFrame) -> tuple[int, int]:
    """The output's number of groups and largest group size (a missing ``group_id``
    counts as one group, as in Spark's ``groupBy``)."""
    if isinstance(output, pd.DataFrame):
        sizes = output[S.GROUP_ID].value_counts(dropna=False)
        return len(sizes), int(sizes.max()) if len(sizes) else 0
    groups = output.groupBy(S.GROUP_ID).count()
    stats = groups.agg(F.count(F.lit(1)).alias("g"), F.max("count").alias("m")).first()
    if stats is None:
        return 0, 0
    return int(stats["g"]), int(stats["m"] or 0)


def _previous_groups(spark: SparkSession, target: str | None) -> tuple[DataFrame, int] | None:
    """The output table's current ``id``, ``group_id`` and version, before this run
    overwrites it (``None`` when there is none yet): group ids carry over from it."""
    if target is None or not is_delta_table(spark, target):
        return None
    version = delta_version(spark, target)
    rows = read_delta(spark, target, version=version)
    if not {S.ID, S.GROUP_ID} <= set(rows.columns):
        return None
    return rows.select(S.ID, S.GROUP_ID), version


@dataclass(frozen=True)
class _Matched:
    """What :func:`_match_rows` gives: the matched rows' output and its figures."""

    matches: DataFrame
    candidates: int
    seconds: float
    per_row: float
    plan: str
    points: DataFrame | None = None  # their normalized rows (None: there were none)
    scored: DataFrame | None = None  # scored pairs with features (when asked)
    incremental: IncrementalResult | None = None


def _match_rows(
    spark: SparkSession,
    settings: Settings,
    pois: DataFrame,
    *,
    uri: str,
    incremental: bool,
    table: str | None,
    keep_pairs: bool = False,
    rows: int = -1,
    source: ChangeSource | None = None,
) -> _Matched:
    """Match the rows that passed the input rules (``keep_pairs``: keep the scored pairs
    with ``block_pass`` and the features). A full run of at most
    ``matching.small_max_rows`` ``rows`` runs the small plan (the same output, a handful
    of Spark jobs), with its queries prepared once per model and session as the service's
    are (a notebook or test matching small files repeatedly plans them once); the
    scored-pairs table and larger inputs the batch plan. ``source``: the Delta input and
    its version, whose change data feed an incremental run reads."""
    by_size = Plan.for_rows(rows, settings.matching.small_max_rows)
    # every row rejected: nothing to match (``rows`` when the caller counted them, else a
    # one-row probe)
    nothing = rows == 0 if rows >= 0 else pois.limit(1).count() == 0
    if nothing:
        empty = spark.createDataFrame([], f"{S.ID} string, {S.GROUP_ID} string, {S.MATCHES} string")
        return _Matched(empty, 0, 0.0, 0.0, by_size.name)
    if incremental:
        assert table is not None  # nosec B101
        configure_tracking(settings.tracking)
        model, spec, _ = load_matcher(uri)
        inc = match_incremental(
            spark,
            pois,
            model=model,
            spec=spec,
            matches_path=table,
            max_iterations=settings.grouping.max_iterations,
            local_max_edges=settings.grouping.local_max_edges,
            broadcast_max_rows=settings.matching.broadcast_max_rows,
            plan=by_size,
            source=source,
        )
        per_row = 2.0 * inc.candidates / max(inc.rows, 1)
        return _Matched(
            inc.matches, inc.candidates, inc.seconds, per_row, inc.plan, inc.points, incremental=inc
        )
    # the scored-pairs table keeps the features: the batch plan's checkpoint holds them
    plan = BATCH if keep_pairs else by_size
    result = match_pois(
        pois,
        model_uri=uri,
        settings=settings,
        plan=plan,
        keep_pair_features=keep_pairs,
    )
    scored = None
    if keep_pairs and result.threshold is not None:
        scored = scored_pairs_frame(result.scored, threshold=result.threshold)
    return _Matched(
        result.matches,
        result.candidates,
        result.seconds,
        result.per_row,
        plan.name,
        result.points,
        scored,
    )


def scored_pairs_frame(scored: DataFrame, *, threshold: float) -> DataFrame:
    """The scored-pairs table's layout: ``id_l``, ``id_r``, ``block_pass``, ``score``,
    ``above_threshold`` (``score >= threshold``: the pair is an edge of the grouping)
    and the model's features, one row per candidate pair (``id_l < id_r``)."""
    rest = [c for c in scored.columns if c not in (S.ID_L, S.ID_R, S.PASS, S.SCORE)]
    return scored.select(
        S.ID_L,
        S.ID_R,
        S.PASS,
        S.SCORE,
        (F.col(S.SCORE) >= F.lit(threshold)).alias(ABOVE_THRESHOLD),
        *rest,
    )


AGAINST_TABLES: tuple[str, ...] = ("pois",)
"""What ``--against`` / ``?against=`` may name: the POI table (through its lookup table)."""


def lookup_path(settings: Settings, against: str) -> str:
    """The lookup table behind ``against``; ``ValueError`` naming the choices otherwise."""
    if against not in AGAINST_TABLES:
        raise ValueError(
            f"--against {against!r}: only {list(AGAINST_TABLES)} can be matched against "
            "(the POI table, through its lookup table)"
        )
    return settings.storage.table_path(settings.storage.lookup_table)


@dataclass(frozen=True)
class AgainstReport:
    """What a match against the POI table (:func:`run_match_against`) read and wrote.

    ``against``: the lookup table's pinned version (``label``) and its commit metadata;
    ``known_read``, ``candidates`` and ``rows_with_known`` are ``None`` when no row was
    left to match.
    """

    source: str
    counts: Mapping[str, int]
    against: str
    against_metadata: str
    model_uri: str
    output: str
    rejected_output: str
    known_read: int | None = None
    candidates: int | None = None
    rows_with_known: int | None = None

    def lines(self) -> list[str]:
        """Printable figures (``key=value``)."""
        counts = " ".join(f"{k}={self.counts.get(k, 0)}" for k in triage.STATUSES)
        lines = [
            f"input={self.source} rows={sum(self.counts.values())} {counts}",
            f"against={self.against} ({self.against_metadata})",
        ]
        if self.known_read is not None:
            lines.append(
                f"known_rows_read={self.known_read} candidates={self.candidates} "
                f"rows_with_known={self.rows_with_known}"
            )
        return [
            *lines,
            f"model={self.model_uri}",
            f"output={self.output}",
            f"rejected_output={self.rejected_output}",
        ]


def run_match_against(
    spark: SparkSession,
    settings: Settings,
    *,
    input_path: str,
    against: str,
    output_csv: str | None,
    model_uri: str | None,
) -> AgainstReport:
    """Match an ad-hoc input with itself and with the POI table (``--against pois``).

    Writes only ``output_csv`` (``id,matches,known_ids,known_groups``: every input id
    once, its uploaded matches, the table ids it matches and their ``group_id``) and the
    rejected-rows report beside it. The POI table is read through its lookup table
    (:mod:`poimatch.io.lookup`) at the version current when the run starts, named in the
    printed lines.

    Raises:
        ValueError: no ``output_csv``, an unknown ``against``, no lookup table yet, or
            more rows than ``matching.against_max_rows``.
    """
    if not output_csv:
        raise ValueError("--against writes only what you name: give --output OUT.csv")
    path = lookup_path(settings, against)
    known = pin_lookup(spark, path)
    if known is None:
        raise ValueError(
            f"no lookup table at {path}: run the nightly match of the POI table "
            "(jobs/match.py without --input) first"
        )
    data = load_match_input(spark, input_path)
    n_matched = data.counts.get(triage.MATCHED, 0)
    limit = settings.matching.against_max_rows
    if n_matched > limit:
        data.release()
        raise ValueError(
            f"{input_path}: {n_matched} rows to match against the table, more than "
            f"matching.against_max_rows ({limit}); match it as a table instead"
        )
    uri = model_uri or default_model_uri(settings.model.name)
    figures: dict[str, int] = {}
    try:
        columns = [S.ID, S.MATCHES, KNOWN_IDS, KNOWN_GROUPS]
        if n_matched:
            configure_tracking(settings.tracking)
            model, spec, _ = load_matcher(uri)
            result = match_against(
                data.pois,
                known,
                model=model,
                spec=spec,
                max_iterations=settings.grouping.max_iterations,
                local_max_edges=settings.grouping.local_max_edges,
                link_only=settings.matching.link_only,
            )
            matched = result.matches[columns]
            figures = {
                "known_read": result.known_read,
                "candidates": result.candidates,
                "rows_with_known": int((matched[KNOWN_IDS] != "").sum()),
            }
        else:
            matched = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        alone = alone_rows(data.triaged).select(S.ID).toPandas()
        alone[S.MATCHES] = alone[S.ID]
        alone[KNOWN_IDS] = ""
        alone[KNOWN_GROUPS] = ""
        output = pd.concat([matched, alone[columns]], ignore_index=True)
        expected = sorted(str(r[S.ID]) for r in data.output_ids.collect())
        if sorted(output[S.ID]) != expected:
            raise RuntimeError("output contract broken: input ids missing or repeated")
        frame = spark.createDataFrame(
            output.sort_values(S.ID), schema=", ".join(f"{c} string" for c in columns)
        )
        write_single_csv(frame, output_csv)
        rejected_csv = _rejected_csv_path(output_csv)
        write_single_csv(rejected_report(data.triaged), rejected_csv)
    finally:
        data.release()
    return AgainstReport(
        source=data.source,
        counts=dict(data.counts),
        against=known.label(),
        against_metadata=known.metadata,
        model_uri=uri,
        output=output_csv,
        rejected_output=rejected_csv,
        **figures,
    )


@dataclass(frozen=True)
class Evaluation:
    """A submission's IoU (with the truth rows it missed or added) and pair metrics."""

    iou: IouReport
    pairs: PairMetrics

    def lines(self) -> list[str]:
        """Printable figures; ``iou=<value>`` last, on a line of its own."""
        report, pm = self.iou, self.pairs
        return [
            f"rows={report.rows} missing_rows={report.missing_rows} extra_rows={report.extra_rows}",
            f"pair_precision={pm.precision:.4f} pair_recall={pm.recall:.4f} pair_f1={pm.f1:.4f}",
            f"iou={report.iou:.4f}",
        ]


def run_evaluate(spark: SparkSession, submission_path: str, truth_path: str) -> Evaluation:
    """IoU and pairwise metrics of a submission against labelled truth."""
    submission = read_matches(spark, submission_path)
    truth = read_poi_input(spark, truth_path, require_labels=True).where(F.col(S.POI).isNotNull())
    return Evaluation(
        iou(submission, truth), pair_metrics(matches_to_pairs(submission), truth_pairs(truth))
    )
