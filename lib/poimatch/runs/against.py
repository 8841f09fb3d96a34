"""Match uploaded rows against the POI table as well as against each other.

"Which of these places do we already have, and under which ids?": each uploaded row is
matched with the other uploaded rows and with the rows of the lookup table
(:mod:`poimatch.io.lookup`, the matched POI table laid out by cell) that the blocking could
pair with it, read at one pinned version. The stages are the batch's own, run as the
small plan (:class:`poimatch.stages.plan.Plan`): the uploaded rows are normalized, the
lookup rows near them are read (a few files, by cell), both get the model's name
statistics, and blocking, features, scoring and grouping run over the two together.
Only the uploaded rows look for candidates, in every blocking pass (their k nearest,
their nearest rows sharing a key), so no pair of two table rows is ever formed: the table's
own matches are the nightly run's business, and an uploaded row's answer must not
depend on them.

Ids are kept apart inside the run (an uploaded row may carry an id the table also
has): uploaded ids become ``u:<id>`` and table ids ``k:<id>``, and ``k`` sorting before
``u`` puts the table side first in every mixed pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import pandas as pd
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.config import BlockingSettings
from poimatch.io.lookup import READ_SQL_CONF, HeldLookup, KnownTable, known_rows
from poimatch.stages.candidates import (
    cached_candidates,
    cached_points,
    prepared_candidates,
    prepared_name_stats,
    prepared_points,
)
from poimatch.stages.grouping import LOCAL_MAX_EDGES
from poimatch.stages.namestats import (
    add_name_stats,
    idf_weights,
    name_stats_arrow,
    name_stats_schema,
)
from poimatch.stages.plan import (
    COMPILED_SQL_CONF,
    SMALL,
    counted,
    held_copy,
    held_union,
    row_count,
    selected_frame,
    session_conf,
)
from poimatch.stages.prepared import fits_one_partition, one_partition_scan
from poimatch.stages.scoring import MatchModel, score_and_group
from poimatch.stages.spec import MatchingSpec

__all__ = [
    "AGAINST_ONE_PARTITION_MAX_ROWS",
    "KNOWN_GROUPS",
    "KNOWN_IDS",
    "AgainstResult",
    "match_against",
]

KNOWN_IDS = "known_ids"
KNOWN_GROUPS = "known_groups"
_UP, _KNOWN = "u:", "k:"

#: the service's against query (blocking and pair features over the uploads and the table
#: rows picked near them) runs as one partition, compiled, up to this many rows: 1,000
#: uploads and their 15,081 table rows (a generated 1M-row table) in one task of 1.1 s
#: instead of 26 stages and 3.4 s (AMD EPYC, ``benchmarks/small_requests.py --against``).
#: Above it, one task would hold the request for long: a task stops for a cancelled
#: request only where it reads its input (:data:`poimatch.stages.prepared.ONE_PARTITION_MAX_ROWS`).
AGAINST_ONE_PARTITION_MAX_ROWS = 40_000


@dataclass(frozen=True)
class AgainstResult:
    """Per uploaded row: ``id``, ``matches`` (uploaded ids, its own first), ``known_ids``
    and ``known_groups`` (table ids and their ``group_id``, space-separated), and the
    figures of the run."""

    matches: pd.DataFrame
    table: KnownTable
    known_read: int  # lookup rows read (near an uploaded row)
    candidates: int
    seconds: float


def _split(tokens: list[str], group_of: dict[str, str]) -> tuple[str, str, str]:
    uploaded = [t[len(_UP) :] for t in tokens if t.startswith(_UP)]
    known = sorted(t[len(_KNOWN) :] for t in tokens if t.startswith(_KNOWN))
    groups = sorted({group_of[k] for k in known if k in group_of})
    return " ".join(uploaded), " ".join(known), " ".join(groups)


def match_against(
    pois: DataFrame,
    known: KnownTable,
    *,
    model: MatchModel,
    spec: MatchingSpec,
    max_iterations: int = 40,
    local_max_edges: int = LOCAL_MAX_EDGES,
    link_only: bool = False,
    reuse_plan: bool = False,
    held: HeldLookup | None = None,
) -> AgainstResult:
    """Match the uploaded ``pois`` with each other and with the pinned lookup table.

    Args:
        pois: uploaded rows in the POI table's layout (a small input: they are held on
            the driver, as in the small plan).
        known: the lookup table at the version to read.
        model, spec: the matcher (its blocking settings and name statistics are used).
        max_iterations, local_max_edges: grouping settings.
        link_only, reuse_plan: as in :func:`poimatch.runs.workflows.match_with_model`
            (``reuse_plan``: the uploads' normalization, the table rows' name statistics
            and the blocking and pair-feature query are planned once per model and
            session; the service's warm requests).
        held: ``known`` held on the driver (:func:`poimatch.io.lookup.hold_lookup`): the
            rows near the uploads are picked there, and no file is read.

    Returns:
        :class:`AgainstResult`, one row per uploaded id.
    """
    started = time.perf_counter()
    plan = SMALL
    blocking = BlockingSettings.model_validate(spec.blocking)
    stats = spec.stats()
    uploaded = pois.withColumn(S.ID, F.concat(F.lit(_UP), F.col(S.ID)))
    if reuse_plan:
        # (the prepared query counts its input: the uploads', known to the caller or not)
        uploaded = counted(uploaded, row_count(pois))
        up_points = prepared_points(uploaded, owner=model, stats=stats)
    else:
        up_points = cached_points(uploaded, stats=stats, plan=plan)
    near = selected_frame(
        up_points, [S.LATITUDE, S.LONGITUDE, S.N_NAME, S.N_PHONE, S.N_URL, S.SOURCE]
    )
    up_held, n_up = up_points, len(near)  # (held on the driver: read without a job)
    up_points = up_points.withColumn(S.GROUP_ID, F.lit(None).cast("string"))
    spark = pois.sparkSession
    if held is not None and held.known == known:
        # picked on the driver and given the model's name statistics there, as Arrow: no
        # Spark job, no pandas copy (1,000 uploads bring ~15,000 table rows: that job took
        # 0.3 s, and its rows' copies to pandas and back 0.7 s)
        picked = held.picked(near, blocking, link_only=link_only)
        ids = pc.binary_join_element_wise(_KNOWN, picked.column(S.ID), "")
        picked = picked.set_column(picked.schema.get_field_index(S.ID), S.ID, ids)
        table_points = spark.createDataFrame(
            name_stats_arrow(picked, stats, idf_weights(spark, stats)),
            schema=name_stats_schema(held.schema),
        )
        if fits_one_partition(picked.num_rows):  # as the small plan holds a frame
            table_points = one_partition_scan(table_points)
        read = picked.select([S.ID, S.GROUP_ID]).to_pandas()
        table_ids = held_copy(table_points.select(S.ID), read[[S.ID]])
    else:
        table = known_rows(spark, known, near, blocking, link_only=link_only).withColumn(
            S.ID, F.concat(F.lit(_KNOWN), F.col(S.ID))
        )
        with session_conf(spark, READ_SQL_CONF):  # the read is planned here
            if reuse_plan:
                table_points = prepared_name_stats(table, owner=model, stats=stats)
            else:
                table_points = plan.materialize(add_name_stats(table, stats))
        read = selected_frame(table_points, [S.ID, S.GROUP_ID])
        table_ids = table_points
    group_of = {
        str(i)[len(_KNOWN) :]: str(g) for i, g in zip(read[S.ID], read[S.GROUP_ID], strict=True)
    }
    n_points = n_up + len(read)
    points = counted(up_points.unionByName(table_points, allowMissingColumns=True), n_points)
    # only the uploaded rows look for candidates (a table row's own nearest are the
    # nightly run's business); every pair then holds one
    query = F.col(S.ID).startswith(_UP)
    compiled: dict[str, str] = {}
    if reuse_plan:
        # the uploads and the table rows near them: many for their few uploads (15 per
        # upload in a generated 1M-row table), so compiled, and one partition up to
        # AGAINST_ONE_PARTITION_MAX_ROWS (no shuffle: 26 stages -> 1)
        compiled = COMPILED_SQL_CONF
        candidates = partial(
            prepared_candidates,
            owner=model,
            one_partition=n_points <= AGAINST_ONE_PARTITION_MAX_ROWS,
        )
    else:
        candidates = partial(cached_candidates, plan=plan)
    # (the session's settings while the query is planned and run: its rows are read on
    # the driver by the scoring)
    with session_conf(spark, compiled):
        pairs = candidates(
            points, settings=blocking, link_only=link_only, query=query, added=spec.added
        )
        scored, grouped = score_and_group(
            held_union(up_held, table_ids, [S.ID]),  # on the driver: so is grouping
            pairs,
            model=model,
            spec=spec,
            max_iterations=max_iterations,
            local_max_edges=local_max_edges,
            plan=plan,
        )
    frame = selected_frame(grouped, [S.ID, S.MATCHES])
    frame = frame[frame[S.ID].str.startswith(_UP)]
    split = [_split(str(m).split(" "), group_of) for m in frame[S.MATCHES]]
    out = pd.DataFrame(
        {
            S.ID: [i[len(_UP) :] for i in frame[S.ID]],
            S.MATCHES: [s[0] for s in split],
            KNOWN_IDS: [s[1] for s in split],
            KNOWN_GROUPS: [s[2] for s in split],
        }
    )
    return AgainstResult(
        matches=out.reset_index(drop=True),
        table=known,
        known_read=len(group_of),
        candidates=row_count(scored),
        seconds=time.perf_counter() - started,
    )
