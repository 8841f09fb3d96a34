"""Incremental nightly match: redo only the Python work of rows and pairs that changed.

The two Python UDF stages are pure functions of their input rows: normalization of
one POI, and the string similarities (rapidfuzz) of one pair. An incremental run
keeps their outputs from the last run in two state tables, keyed by a hash of each
row's values, and recomputes them only for new or changed rows and for pairs that
touch one. Everything that depends on the table as a whole (name statistics,
blocking, scores, connected components) is recomputed natively
for the whole table, so the result equals a full run on the same table exactly, and
group ids (the smallest id of a group) only change for groups that gained, lost or
changed a member.

State lives next to the matches table: ``<matches>_state_points`` and
``<matches>_state_pairs`` (Delta), each tagged with a key of what produced it
(:func:`state_key`): the source code of the modules that shape normalization and the
pair features, the versions of the libraries they call, and the model's matching spec
with its frozen name statistics. State under another key is ignored and the run
starts over, so a code change can never mix old and new results (the package version
alone would not do: it stayed 0.1.0 while normalization changed).
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from importlib.resources import files

from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.tables import is_delta_table, read_delta, write_delta
from poimatch.stages.blocking import FINE_LEVELS, add_pair_sides, candidate_pairs
from poimatch.stages.features import FEATURE_COLUMNS, add_pair_features
from poimatch.stages.grouping import LOCAL_MAX_EDGES
from poimatch.stages.namestats import add_name_stats
from poimatch.stages.normalize import add_normalized_columns
from poimatch.stages.plan import BATCH, Plan
from poimatch.stages.scoring import score_and_group
from poimatch.stages.spec import MatchingSpec

__all__ = [
    "STATE_LIBRARIES",
    "STATE_SOURCES",
    "IncrementalResult",
    "match_incremental",
    "row_hash",
    "state_key",
    "state_paths",
]

_HASH = "_row_hash"
_HASH_L, _HASH_R = "_row_hash_l", "_row_hash_r"
_CODE = "_code_version"
_PAIR_KEYS = [S.ID_L, S.ID_R, _HASH_L, _HASH_R]
_NEW = "_new_pair"


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

    def lines(self) -> list[str]:
        """Printable figures for the job."""
        return [
            f"incremental state={'reused' if self.used_state else 'none (full run)'}",
            f"plan={self.plan}",
            f"rows={self.rows} changed_rows={self.changed_rows} "
            f"candidates={self.candidates} new_pairs={self.new_pairs}",
        ]


#: Modules of this package whose code shapes the saved normalized rows and pair features.
STATE_SOURCES: tuple[str, ...] = (
    "stages/normalize.py",
    "stages/features.py",
    "stages/comparisons.py",
    "stages/namestats.py",
    "stages/blocking.py",
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


def state_key(spec: MatchingSpec) -> str:
    """SHA-256 of what produced a run's saved per-row and per-pair results.

    The bytes of :data:`STATE_SOURCES`, the versions of :data:`STATE_LIBRARIES` and of
    Python's Unicode database (NFKC folding), the model's matching spec and its frozen
    name statistics (the pair features read them). Any change gives another key.
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
    return digest.hexdigest()


def row_hash() -> Column:
    """SHA-256 of a POI's input values (null-safe): equal hashes, equal rows."""
    values = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in S.INPUT_COLUMNS]
    return F.sha2(F.concat_ws("\u0001", *values), 256)


def state_paths(matches_path: str) -> tuple[str, str]:
    """Where the state of the matches table at ``matches_path`` lives."""
    return f"{matches_path}_state_points", f"{matches_path}_state_pairs"


def _read_state(spark: SparkSession, path: str, version: str) -> DataFrame | None:
    if not is_delta_table(spark, path):
        return None
    frame = read_delta(spark, path)
    first = frame.select(_CODE).limit(1).collect()
    if not first or first[0][0] != version:
        return None  # produced by other code, libraries or model: start over
    return frame.drop(_CODE)


def match_incremental(
    spark: SparkSession,
    pois: DataFrame,
    *,
    model: PipelineModel,
    spec: MatchingSpec,
    matches_path: str,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    broadcast_max_rows: int = 5_000_000,
    plan: Plan = BATCH,
) -> IncrementalResult:
    """Match the whole POI table, reusing the UDF outputs of the last incremental run.

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

    Returns:
        :class:`IncrementalResult`; write ``matches``, then call nothing else: the
        state tables are already updated for the next run.
    """
    started = time.perf_counter()
    points_path, pairs_path = state_paths(matches_path)
    version = state_key(spec)
    old_points = _read_state(spark, points_path, version)
    old_pairs = _read_state(spark, pairs_path, version)
    used_state = old_points is not None and old_pairs is not None

    hashed = pois.withColumn(_HASH, row_hash())
    if used_state and old_points is not None:
        keys = hashed.select(S.ID, _HASH)
        kept = old_points.join(keys, on=[S.ID, _HASH], how="left_semi")
        fresh = hashed.join(old_points.select(S.ID, _HASH), on=[S.ID, _HASH], how="left_anti")
        fresh = fresh.transform(add_normalized_columns).localCheckpoint(eager=True)
        changed = fresh.count()
        normalized = kept.unionByName(fresh.select(*kept.columns))
    else:
        normalized = hashed.transform(add_normalized_columns)
        changed = -1
    normalized = normalized.localCheckpoint(eager=True)
    n_rows = normalized.count()
    if changed < 0:
        changed = n_rows
    points = add_name_stats(normalized, spec.stats()).localCheckpoint(eager=True)

    blocking = BlockingSettings.model_validate(spec.blocking)
    # the spatial pass's intermediate results are each read twice: computed once
    pairs = candidate_pairs(
        points,
        settings=blocking,
        materialize=BATCH.materialize,
        broadcast_cells=n_rows <= broadcast_max_rows,
        fine_levels=0 if plan.small else FINE_LEVELS,
    )
    hashes_l = points.select(F.col(S.ID).alias(S.ID_L), F.col(_HASH).alias(_HASH_L))
    hashes_r = points.select(F.col(S.ID).alias(S.ID_R), F.col(_HASH).alias(_HASH_R))
    keyed = pairs.join(hashes_l, on=S.ID_L).join(hashes_r, on=S.ID_R)
    if used_state:
        # read twice below (the pairs whose features are reused, the new ones): without
        # this the whole blocking ran twice (121 s against 78 s for a first run of
        # 3,000 rows in the test session)
        keyed = BATCH.materialize(keyed)
    sided = add_pair_sides(keyed, points)
    feature_cols = [*FEATURE_COLUMNS, *(c.name for c in spec.added)]
    if used_state and old_pairs is not None:
        known = old_pairs.select(*_PAIR_KEYS, *feature_cols)
        reused = sided.join(known, on=_PAIR_KEYS, how="inner")
        new = sided.join(known.select(*_PAIR_KEYS), on=_PAIR_KEYS, how="left_anti")
        computed = new.transform(add_pair_features, spec.added).select(*reused.columns)
        marked = reused.withColumn(_NEW, F.lit(False)).unionByName(
            computed.withColumn(_NEW, F.lit(True))
        )
    else:
        marked = sided.transform(add_pair_features, spec.added).withColumn(_NEW, F.lit(True))
    marked = marked.localCheckpoint(eager=True)
    counts = marked.agg(F.count(F.lit(1)).alias("n"), F.count(F.when(F.col(_NEW), 1)).alias("new"))
    row = counts.first()
    n_pairs, n_new = (int(row["n"]), int(row["new"])) if row is not None else (0, 0)
    base = marked.drop(_NEW)
    scored, grouped = score_and_group(
        points.select(S.ID),
        base,
        model=model,
        spec=spec,
        max_iterations=max_iterations,
        local_max_edges=local_max_edges,
    )

    code = F.lit(version).alias(_CODE)
    write_delta(normalized.select(*normalized.columns, code), points_path)
    write_delta(base.select(*_PAIR_KEYS, *feature_cols, code), pairs_path)
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
        points=normalized,
    )
