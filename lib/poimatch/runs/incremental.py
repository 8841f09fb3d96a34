"""Incremental nightly match: redo only the rows and pairs a change can reach.

Every stage but blocking is a function of one row or one pair: normalization and the
name statistics (frozen in the model) of a row, the features and the score of a pair.
Blocking is not: a row's candidates are its k nearest rows and its nearest rows
sharing a key, so a row arriving or leaving changes the lists of the rows around it.
An incremental run keeps, beside the matches table, each row's normalized values with
the distance of its k-th nearest spatial candidate, and each candidate pair with the
passes each of its two rows found it by and its score. From the rows that changed
since (new, changed or deleted) it finds the rows whose lists they can reach
(:func:`poimatch.stages.blocking.rows_near_changes`, and the rows whose lists held a row
that left), recomputes those rows' lists alone
(:func:`poimatch.stages.blocking.directed_candidates`, reading only the cells and keys
they need), scores only the pairs that are new or touch a changed row, and groups the
whole table's scored pairs as a full run does. The output equals a full run's on the
same table exactly (``tests/test_incremental.py``).

What changed comes from Delta's change data feed of the POI table (the ingest turns it
on, :data:`poimatch.io.ingest.CHANGE_FEED`): the points state's commit names the table
version it was computed from, and the run reads the ids the feed recorded after it, a
read of the changed rows alone. When the feed cannot say (not recorded for a version
since, the state from another table or from before the state named its version, or
``matching.change_feed`` off) the run compares a hash of every row's values with the
state's, and says why.

State lives next to the matches table: ``<matches>_state_points`` and
``<matches>_state_pairs`` (Delta), each tagged with a key of what produced it
(:func:`state_key`): the source code of the modules that shape normalization, blocking
and the pair features, the versions of the libraries they call, the model's matching
spec with its frozen name statistics, and the model itself (its booster's bytes: the
scores are kept). State under another key is ignored and the run starts over, so a
code or model change can never mix old and new results. The two tables are written one
after the other, the pairs' commit naming the points version it goes with: a run that
stopped between the two writes leaves torn state, which the next run ignores too (it
is then a full run that writes the state anew), rather than reusing pairs that do not
hold the rows the points state already knows.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from importlib.resources import files

from pyspark import StorageLevel
from pyspark.errors import AnalysisException, IllegalArgumentException
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.tables import (
    delta_head,
    delta_version,
    is_delta_table,
    read_changes,
    read_delta,
    write_delta,
)
from poimatch.stages.blocking import (
    BITS,
    FINE_LEVELS,
    KTH,
    LEVEL,
    OTHER,
    directed_candidates,
    kth_distances,
    level_hint,
    pass_label,
    pass_names,
    rows_near_changes,
)
from poimatch.stages.candidates import featured_pairs
from poimatch.stages.grouping import LOCAL_MAX_EDGES
from poimatch.stages.namestats import add_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH, Plan, Steps
from poimatch.stages.scoring import MatchModel, booster_parts, group_scored, score_pairs
from poimatch.stages.spec import MatchingSpec

__all__ = [
    "STATE_LIBRARIES",
    "STATE_SOURCES",
    "BY_FEED",
    "BY_HASH",
    "ChangeSource",
    "IncrementalResult",
    "match_incremental",
    "model_fingerprint",
    "row_hash",
    "state_key",
    "state_paths",
]

_HASH = "_row_hash"
_CODE = "_code_version"
_BITS_L, _BITS_R = "_bits_l", "_bits_r"
#: changed ids up to this many are broadcast to cut the tables they select from
_BROADCAST_IDS = 1_000_000
_PAIR_STATE = [S.ID_L, S.ID_R, _BITS_L, _BITS_R, S.SCORE]
#: the pairs state's commit names the version of the points state it goes with
#: (``userMetadata``): the two tables are written one after the other, so a run that
#: stopped between the two writes leaves a pairs commit naming an older points version,
#: and the next run ignores the torn state instead of mixing the two
_POINTS_VERSION = "poimatch.state_points_version="
#: the points state's commit names the POI table and version its rows were read from
#: (``<version>:<table>``): the next run reads the change data feed after that version
_SOURCE_VERSION = "poimatch.state_source="
#: how a run found what changed
BY_FEED = "change data feed"
BY_HASH = "row hashes"


@dataclass(frozen=True)
class ChangeSource:
    """The Delta table an incremental run matches (``table``: a path or a catalog
    name) at the version it reads."""

    table: str
    version: int

    def note(self) -> str:
        """The points state's commit note naming this source."""
        return f"{_SOURCE_VERSION}{self.version}:{self.table}"


@dataclass(frozen=True)
class IncrementalResult:
    """Matches of the whole table plus how much of the last run was reused."""

    matches: DataFrame
    scored: DataFrame
    rows: int
    changed_rows: int
    candidates: int
    new_pairs: int
    used_state: bool
    plan: str
    seconds: float
    points: DataFrame | None = None  # the normalized points (materialized)
    affected_rows: int = -1  # rows whose candidate lists were redone
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    #: why state beside the matches table was not used (None: there was none, or it was)
    state_ignored: str | None = None
    #: how the changed rows were found (``change data feed, versions a-b`` or ``row
    #: hashes (why not the feed)``; None: a full run, nothing to compare)
    changes_from: str | None = None

    def lines(self) -> list[str]:
        """Printable figures for the job."""
        if self.used_state:
            state = "reused"
        elif self.state_ignored is not None:
            state = f"ignored (full run): {self.state_ignored}"
        else:
            state = "none (full run)"
        return [
            f"incremental state={state}",
            *([f"incremental changes={self.changes_from}"] if self.changes_from else []),
            f"plan={self.plan}",
            f"rows={self.rows} changed_rows={self.changed_rows} "
            f"redone_rows={self.affected_rows} "
            f"candidates={self.candidates} new_pairs={self.new_pairs}",
            "incremental_seconds=" + ",".join(f"{k}:{v}" for k, v in self.steps.items()),
        ]


#: Modules of this package whose code shapes the saved normalized rows and pair features.
STATE_SOURCES: tuple[str, ...] = (
    "stages/normalize.py",
    "stages/features.py",
    "stages/comparisons.py",
    "stages/namestats.py",
    "stages/blocking.py",
    # the input rules decide which of the table's rows are matched: the change data
    # feed names the rows that changed, not those a changed rule now reads otherwise
    "io/contracts.py",
    "io/ingest.py",
    "io/triage.py",
)
#: Libraries those modules call to compute them (folding, string similarities, Spark).
STATE_LIBRARIES: tuple[str, ...] = ("anyascii", "rapidfuzz", "pyspark", "pandas")


def _source_bytes(name: str) -> bytes:
    """The source of one of this package's modules, as installed."""
    return files("poimatch").joinpath(*name.split("/")).read_bytes()


def _library_version(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "absent"


def model_fingerprint(model: MatchModel) -> str:
    """SHA-256 of a model's booster (its feature columns and trees); any other
    pipeline's uid (a new object: never reused across processes)."""
    parts = booster_parts(model)
    if parts is None:
        # a BoosterModel always has its parts
        assert isinstance(model, PipelineModel)  # nosec B101
        return f"uid:{model.uid}"
    columns, booster = parts
    digest = hashlib.sha256(json.dumps(columns).encode())
    digest.update(bytes(booster.save_raw("ubj")))
    return digest.hexdigest()


def state_key(spec: MatchingSpec, model: MatchModel | None = None) -> str:
    """SHA-256 of what produced a run's saved per-row and per-pair results.

    The bytes of :data:`STATE_SOURCES`, the versions of :data:`STATE_LIBRARIES` and of
    Python's Unicode database (NFKC folding), the model's matching spec and its frozen
    name statistics (the pair features read them), and the model
    (:func:`model_fingerprint`: the saved scores are its). Any change gives another key.
    """
    digest = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        digest.update(label.encode() + b"\0" + hashlib.sha256(data).digest())

    for name in STATE_SOURCES:
        part(f"source:{name}", _source_bytes(name))
    for name in STATE_LIBRARIES:
        part(f"library:{name}", _library_version(name).encode())
    part("unicode", unicodedata.unidata_version.encode())
    part("spec", json.dumps(spec.to_dict(), sort_keys=True).encode())
    stats = spec.name_stats.to_dict() if spec.name_stats is not None else None
    part("name_stats", json.dumps(stats, sort_keys=True, ensure_ascii=False).encode())
    if model is not None:
        part("model", model_fingerprint(model).encode())
    return digest.hexdigest()


def row_hash() -> Column:
    """SHA-256 of a POI's input values (null-safe): equal hashes, equal rows."""
    values = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in S.INPUT_COLUMNS]
    return F.sha2(F.concat_ws("\u0001", *values), 256)


def state_paths(matches_path: str) -> tuple[str, str]:
    """Where the state of the matches table at ``matches_path`` lives."""
    return f"{matches_path}_state_points", f"{matches_path}_state_pairs"


@dataclass(frozen=True)
class _StateTable:
    """One state table as a run found it: its rows (pinned), version and commit note."""

    frame: DataFrame | None  # None: no table, or another key's
    version: int = -1
    note: str | None = None  # the commit's userMetadata
    other_key: bool = False


def _read_state(spark: SparkSession, path: str, version: str) -> _StateTable:
    """The state table at ``path`` at its current version, pinned: the run reads what
    it keeps of it after overwriting it (an unpinned read would see the new state)."""
    if not is_delta_table(spark, path):
        return _StateTable(None)
    pinned, note = delta_head(spark, path)
    frame = read_delta(spark, path, version=pinned)
    first = frame.select(_CODE).limit(1).collect()
    if not first or first[0][0] != version:
        # produced by other code, libraries or model: start over
        return _StateTable(None, pinned, note, other_key=bool(first))
    return _StateTable(frame.drop(_CODE), pinned, note)


def _unusable(points: _StateTable, pairs: _StateTable) -> str | None:
    """Why the two state tables cannot be used together (None: they can, or there is
    none to use)."""
    if points.other_key or pairs.other_key:
        return "produced by other code, libraries or model"
    if points.frame is None and pairs.frame is None:
        return None  # no state yet
    if points.frame is None or pairs.frame is None:
        return "torn (one of the two state tables is missing)"
    note = pairs.note or ""
    if not note.startswith(_POINTS_VERSION):
        return "its pairs state names no points state version (written before they did)"
    named = note.removeprefix(_POINTS_VERSION)
    if named != str(points.version):
        return (
            f"torn (the pairs state names points state version {named}, "
            f"the points state is at version {points.version})"
        )
    return None


def match_incremental(
    spark: SparkSession,
    pois: DataFrame,
    *,
    model: MatchModel,
    spec: MatchingSpec,
    matches_path: str,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    broadcast_max_rows: int = 5_000_000,
    plan: Plan = BATCH,
    source: ChangeSource | None = None,
) -> IncrementalResult:
    """Match the whole POI table, redoing only what its changes since the last
    incremental run can reach.

    Args:
        spark: the session.
        pois: the whole POI table (typed), at the version being matched.
        model: the fitted pipeline; ``spec`` its matching spec.
        matches_path: the matches table; the state tables sit beside it.
        max_iterations: connected-components round limit.
        local_max_edges: graphs up to this many edges are grouped on the driver.
        broadcast_max_rows: blocking broadcasts occupied cells up to this many rows.
        plan: the small plan (a table of at most ``matching.small_max_rows`` rows)
            blocks on the coarse grid alone, which gives the same pairs; every stage is
            still checkpointed, as the state tables are written from them.
        source: the Delta table ``pois`` was read from, at its version: the changed
            rows are read from its change data feed where it recorded them since the
            last run (None: found by row hashes).

    Returns:
        :class:`IncrementalResult`; write ``matches``, then call nothing else: the
        state tables are already updated for the next run.
    """
    started = time.perf_counter()
    steps = Steps(log_prefix="incremental ", jobs_prefix="incremental ")
    step = steps.next
    step("rows")
    points_path, pairs_path = state_paths(matches_path)
    version = state_key(spec, model)
    found_points = _read_state(spark, points_path, version)
    found_pairs = _read_state(spark, pairs_path, version)
    ignored = _unusable(found_points, found_pairs)
    old_points, old_pairs = (
        (None, None) if ignored is not None else (found_points.frame, found_pairs.frame)
    )
    used_state = old_points is not None and old_pairs is not None
    blocking = BlockingSettings.model_validate(spec.blocking)
    fine = 0 if plan.small else FINE_LEVELS
    stats = spec.stats()
    hashed = pois.withColumn(_HASH, row_hash())
    keys = hashed.select(S.ID, _HASH)
    changes_from = None
    if used_state and old_points is not None and old_pairs is not None:
        fed, changes_from = _fed_changes(spark, source, found_points.note)
        if fed is not None:
            # the ids the feed names: those in the table now are new or changed, those
            # in the state leave (changed or deleted); an id it names whose row did not
            # change is redone to the same values
            named = _maybe_broadcast(fed, fed.count() <= _BROADCAST_IDS)
            fresh_ids = BATCH.materialize(
                keys.select(F.col(S.ID).alias(S.ID)).join(named, S.ID, "left_semi")
            )
            gone_ids = BATCH.materialize(
                old_points.select(F.col(S.ID).alias(S.ID)).join(named, S.ID, "left_semi")
            )
        else:
            # what changed, from the ids and hashes alone (no wide row is shuffled): new
            # or changed rows, and the rows whose old values leave (changed or deleted)
            old_keys = old_points.select(S.ID, _HASH)
            # (ids re-aliased: a checkpoint keeps its source's attributes, and a join of
            # the table with a checkpoint of itself cannot be resolved)
            fresh_ids = BATCH.materialize(
                keys.join(old_keys, on=[S.ID, _HASH], how="left_anti").select(
                    F.col(S.ID).alias(S.ID)
                )
            )
            gone_ids = BATCH.materialize(
                old_keys.join(keys, on=[S.ID, _HASH], how="left_anti").select(
                    F.col(S.ID).alias(S.ID)
                )
            )
        few = fresh_ids.count() + gone_ids.count() <= _BROADCAST_IDS
        fresh = hashed.join(_maybe_broadcast(fresh_ids, few), on=S.ID, how="left_semi")
        leaving = BATCH.materialize(
            old_points.join(_maybe_broadcast(gone_ids, few), on=S.ID, how="left_semi")
        )
        # the old rows that stay (their id and hash are in the table): read, not copied
        kept = old_points.join(_maybe_broadcast(gone_ids, few), on=S.ID, how="left_anti")
    else:
        kept, fresh, leaving = None, hashed, None
    fresh = BATCH.materialize(add_name_stats(fresh.transform(add_normalized_columns), stats))
    changed = fresh.count()
    columns = list(fresh.columns)
    points = fresh if kept is None else kept.select(*columns).unionByName(fresh)
    n_rows = changed if kept is None else kept.count() + changed

    rows_done = f"{changed:,} new or changed of {n_rows:,} rows"
    if changes_from is not None:
        rows_done += f" (by {changes_from})"
    affected, n_affected = None, n_rows
    if kept is not None and leaving is not None and old_pairs is not None:
        step("reach", rows_done)
        affected = BATCH.materialize(
            _affected_rows(kept, fresh, leaving, old_pairs, blocking=blocking, fine=fine)
        )
        n_affected = affected.count()
        step("blocking", f"{n_affected:,} rows' candidate lists to redo")
    else:
        step("blocking", rows_done)
    query = affected
    if affected is not None and kept is not None:
        # the rows that stay start on the grid level of their last k-th nearest distance
        hints = kept.select(S.ID, level_hint(F.col(KTH), blocking.cell_m, fine).alias(LEVEL))
        query = affected.join(hints, on=S.ID, how="left")
    directed = BATCH.materialize(
        directed_candidates(
            points,
            settings=blocking,
            query_ids=query,
            materialize=BATCH.materialize,
            fine_levels=fine,
            broadcast_cells=n_rows <= broadcast_max_rows,
        )
    )
    found = _canonical_sides(directed)
    fresh_ids = fresh.select(S.ID)
    if affected is None or old_pairs is None or leaving is None:
        pairs, kept_pairs = found, None
    else:
        # materialized: a union of unions here trips Spark's constraint propagation
        # (NoSuchElementException: key not found: id)
        redone = BATCH.materialize(affected.unionByName(leaving.select(S.ID)).distinct())
        pairs, kept_pairs = _merge_pairs(old_pairs, found, redone, fresh_ids)
    pairs = BATCH.materialize(pairs)
    step("scoring", f"the candidate lists of {n_affected:,} rows")
    names = pass_names(blocking)
    to_score = pairs.where(F.col(S.SCORE).isNull()).select(
        S.ID_L, S.ID_R, pass_label(F.col(_BITS_L).bitwiseOR(F.col(_BITS_R)), names).alias(S.PASS)
    )
    featured = featured_pairs(to_score, points, plan=BATCH, added=spec.added)
    new_scores = BATCH.materialize(
        score_pairs(model, featured, spec.calibration).select(S.ID_L, S.ID_R, S.SCORE)
    )
    n_new = new_scores.count()
    step("grouping", f"{n_new:,} new or changed pairs scored")
    scored_new = pairs.drop(S.SCORE).join(new_scores, on=[S.ID_L, S.ID_R], how="inner")
    redone_pairs = BATCH.materialize(
        pairs.where(F.col(S.SCORE).isNotNull()).unionByName(scored_new)
    )
    n_pairs = redone_pairs.count()
    state_pairs = redone_pairs
    if kept_pairs is not None:
        # the last run's pairs that stay: read from its state (a filter), not copied
        n_pairs += kept_pairs.count()
        state_pairs = kept_pairs.unionByName(redone_pairs)
    scored = state_pairs.select(S.ID_L, S.ID_R, S.SCORE)
    grouped = group_scored(
        points.select(S.ID),
        scored,
        spec=spec,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    grouped.count()
    step("state", f"{n_rows:,} rows grouped over {n_pairs:,} candidate pairs")

    kth = kth_distances(directed, blocking)
    code = F.lit(version).alias(_CODE)
    if kept is not None and affected is not None:
        kth = kept.select(S.ID, KTH).join(affected, on=S.ID, how="left_anti").unionByName(kth)
    with_kth = points.join(kth, on=S.ID, how="left")
    # the points first, then the pairs naming the points version they go with
    write_delta(
        with_kth.select(*columns, KTH, code),
        points_path,
        user_metadata=source.note() if source is not None else None,
    )
    points_version = delta_version(spark, points_path)
    write_delta(
        state_pairs.select(*_PAIR_STATE, code),
        pairs_path,
        user_metadata=f"{_POINTS_VERSION}{points_version}",
    )
    step(None, f"points state version {points_version}")
    return IncrementalResult(
        matches=grouped,
        scored=scored,
        rows=n_rows,
        changed_rows=changed,
        candidates=n_pairs,
        new_pairs=n_new,
        used_state=used_state,
        plan=plan.name,
        seconds=time.perf_counter() - started,
        points=points,
        affected_rows=n_affected,
        steps=steps.seconds,
        state_ignored=ignored,
        changes_from=changes_from,
    )


def _fed_changes(
    spark: SparkSession, source: ChangeSource | None, note: str | None
) -> tuple[DataFrame | None, str]:
    """The distinct ids Delta's change data feed recorded for ``source`` since the
    version the points state's commit ``note`` names (materialized), with how they were
    found; ``(None, why not)`` when the feed cannot tell and row hashes must."""
    if source is None:
        return None, f"{BY_HASH} (no change data feed asked for: matching.change_feed)"
    if not note or not note.startswith(_SOURCE_VERSION):
        return None, f"{BY_HASH} (the state names no table version, written before it did)"
    since, _, table = note.removeprefix(_SOURCE_VERSION).partition(":")
    start, end = int(since) + 1 if since.isdigit() else -1, source.version
    if table != source.table or not 0 < start <= end + 1:
        return None, f"{BY_HASH} (the state was computed from {table} version {since})"
    if start > end:  # the table has not changed since
        empty = spark.createDataFrame([], f"{S.ID} string")
        return empty, f"{BY_FEED}, no version since {since}"
    try:
        fed = read_changes(spark, source.table, start=start, end=end)
        ids = BATCH.materialize(fed.select(F.col(S.ID).alias(S.ID)).distinct())
    except (AnalysisException, IllegalArgumentException) as exc:
        reason = str(exc).split("\n", 1)[0]
        return None, f"{BY_HASH} (the change data feed of versions {start}-{end}: {reason})"
    return ids, f"{BY_FEED}, versions {start}-{end}"


def _maybe_broadcast(ids: DataFrame, few: bool) -> DataFrame:
    return F.broadcast(ids) if few else ids


def _affected_rows(
    kept: DataFrame,
    fresh: DataFrame,
    leaving: DataFrame,
    old_pairs: DataFrame,
    *,
    blocking: BlockingSettings,
    fine: int,
) -> DataFrame:
    """Ids of the rows whose candidate lists must be redone: the new and changed rows,
    the rows whose lists held a row that left (its old values), and the rows an
    arriving or leaving row can reach (:func:`rows_near_changes`)."""
    gone = F.broadcast(leaving.select(F.col(S.ID).alias("_held")))
    # one scan of the last run's pairs, each side's list read as (holder, held, passes)
    sides = F.array(
        *[
            F.struct(
                F.col(holder).alias(S.ID), F.col(other).alias("_held"), F.col(bits).alias("_b")
            )
            for holder, other, bits in ((S.ID_L, S.ID_R, _BITS_L), (S.ID_R, S.ID_L, _BITS_R))
        ]
    )
    held = (
        old_pairs.select(F.inline(sides))
        .where(F.col("_b") != 0)
        .join(gone, on="_held", how="left_semi")
        .select(S.ID)
    )
    near = rows_near_changes(kept, fresh, leaving, settings=blocking, fine_levels=fine)
    ids = fresh.select(S.ID).unionByName(held).unionByName(near).distinct()
    # only a deleted row can hold a list and be gone from the table (a changed row is
    # fresh): cut them, not join the whole table's ids
    deleted = leaving.select(S.ID).join(fresh.select(S.ID), on=S.ID, how="left_anti")
    return ids.join(F.broadcast(deleted), on=S.ID, how="left_anti")


def _canonical_sides(directed: DataFrame) -> DataFrame:
    """Directed candidates -> one row per pair (``id_l < id_r``) with the passes each
    side found the other by (``_bits_l``: ``id_l``'s list) and a null ``score``."""
    left_first = F.col(S.ID) < F.col(OTHER)
    zero = F.lit(0).cast(T.LongType())
    return (
        directed.select(
            F.least(S.ID, OTHER).alias(S.ID_L),
            F.greatest(S.ID, OTHER).alias(S.ID_R),
            F.when(left_first, F.col(BITS)).otherwise(zero).alias(_BITS_L),
            F.when(left_first, zero).otherwise(F.col(BITS)).alias(_BITS_R),
        )
        .groupBy(S.ID_L, S.ID_R)
        .agg(F.bit_or(_BITS_L).alias(_BITS_L), F.bit_or(_BITS_R).alias(_BITS_R))
        .withColumn(S.SCORE, F.lit(None).cast(T.DoubleType()))
    )


def _merge_pairs(
    old_pairs: DataFrame, found: DataFrame, redone: DataFrame, fresh_ids: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """The last run's pairs updated with the redone rows' lists: ``(touched, kept)``.

    ``kept``: pairs neither of whose rows was redone (lists, score unchanged).
    ``touched``: the other pairs, the redone sides' passes replaced by ``found``
    (those rows' new lists), a pair dropped when no side finds it any more; the old
    score kept unless a side is new or changed (null: to score).
    """
    flag_l = redone.select(F.col(S.ID).alias(S.ID_L), F.lit(True).alias("_redo_l"))
    flag_r = redone.select(F.col(S.ID).alias(S.ID_R), F.lit(True).alias("_redo_r"))
    flagged = old_pairs.join(F.broadcast(flag_l), on=S.ID_L, how="left").join(
        F.broadcast(flag_r), on=S.ID_R, how="left"
    )
    redo_l, redo_r = F.col("_redo_l").isNotNull(), F.col("_redo_r").isNotNull()
    kept = flagged.where(~redo_l & ~redo_r).select(*_PAIR_STATE)
    zero = F.lit(0).cast(T.LongType())
    fresh_l = fresh_ids.select(F.col(S.ID).alias(S.ID_L), F.lit(True).alias("_new_l"))
    fresh_r = fresh_ids.select(F.col(S.ID).alias(S.ID_R), F.lit(True).alias("_new_r"))
    touched = (
        flagged.where(redo_l | redo_r)
        .select(
            S.ID_L,
            S.ID_R,
            F.when(redo_l, zero).otherwise(F.col(_BITS_L)).alias(_BITS_L),
            F.when(redo_r, zero).otherwise(F.col(_BITS_R)).alias(_BITS_R),
            S.SCORE,
        )
        .join(F.broadcast(fresh_l), on=S.ID_L, how="left")
        .join(F.broadcast(fresh_r), on=S.ID_R, how="left")
        .withColumn(
            S.SCORE,
            F.when(F.col("_new_l").isNull() & F.col("_new_r").isNull(), F.col(S.SCORE)),
        )
        .select(*_PAIR_STATE)
    )
    merged = (
        touched.unionByName(found)
        .groupBy(S.ID_L, S.ID_R)
        .agg(
            F.bit_or(_BITS_L).alias(_BITS_L),
            F.bit_or(_BITS_R).alias(_BITS_R),
            F.max(S.SCORE).alias(S.SCORE),
        )
        .where((F.col(_BITS_L) != 0) | (F.col(_BITS_R) != 0))
    )
    return merged, kept
