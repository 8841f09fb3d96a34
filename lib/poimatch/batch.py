"""Job-level runs with their I/O: load validated POIs, match and write, evaluate.

The jobs in ``jobs/`` (and the REST service) call these; they return printable lines.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import contracts
from poimatch import schema as S
from poimatch.config import Settings
from poimatch.evaluation import iou, matches_to_pairs, pair_metrics, truth_pairs
from poimatch.incremental import match_incremental
from poimatch.ingest import accepted_rows, check_rows, rejected_rows, upsert_quarantine
from poimatch.io import (
    input_fingerprint,
    is_delta_table,
    read_matches,
    read_poi_csv,
    read_poi_input,
    write_delta,
    write_single_csv,
)
from poimatch.tracking import configure_tracking, default_model_uri, load_matcher
from poimatch.workflows import match_pois

__all__ = ["load_pois", "run_match", "run_evaluate"]


def load_pois(
    spark: SparkSession, path: str, *, quarantine_path: str, require_labels: bool = False
) -> tuple[DataFrame, list[str]]:
    """POIs ready to match or train on, from a Delta table or a CSV.

    A Delta table is read as it is (the ingest validated it). A CSV is validated like
    the ingest: rejected rows are merged into the quarantine table with their reason,
    and the accepted rows are returned (cached).
    """
    if is_delta_table(spark, path):
        return read_poi_input(spark, path, require_labels=require_labels), [f"input=delta:{path}"]
    csv = read_poi_csv(spark, path)
    if require_labels and not csv.has_poi:
        raise ValueError(f"{path}: no {S.POI} column; training needs labelled rows")
    checked = check_rows(csv.frame).persist(StorageLevel.MEMORY_AND_DISK)
    accepted = accepted_rows(checked).persist(StorageLevel.MEMORY_AND_DISK)
    n_total, n_ok = checked.count(), accepted.count()
    lines = [f"input=csv:{path} rows={n_total} accepted={n_ok} quarantined={n_total - n_ok}"]
    if n_total > n_ok:
        upsert_quarantine(spark, rejected_rows(checked), quarantine_path)
        lines.append(f"quarantine={quarantine_path}")
    if n_ok == 0:
        raise ValueError(f"{path}: no valid rows (all {n_total} quarantined in {quarantine_path})")
    # the typed POI layout, without the ingest's bookkeeping columns
    return accepted.select(*[f.name for f in S.poi_table_schema().fields]), lines


def run_match(
    spark: SparkSession,
    settings: Settings,
    *,
    input_path: str | None,
    output_csv: str | None,
    model_uri: str | None,
    incremental: bool = False,
) -> list[str]:
    """Match, check the output contract, write Delta ``matches`` (and the CSV).

    With ``incremental`` the input must be a Delta table (the POI table by default):
    see :mod:`poimatch.incremental`.
    """
    storage = settings.storage
    source = input_path or storage.table_path(storage.pois_table)
    fingerprint = input_fingerprint(spark, source)  # the version read just below
    pois, lines = load_pois(
        spark, source, quarantine_path=storage.table_path(storage.quarantine_table)
    )
    uri = model_uri or default_model_uri(settings.model.name)
    table = storage.table_path(storage.matches_table)
    if incremental:
        if not is_delta_table(spark, source):
            raise ValueError(f"--incremental needs a Delta table as input, not {source}")
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
        )
        matches, n_pairs, seconds = inc.matches, inc.candidates, inc.seconds
        lines += inc.lines()
        per_row = 2.0 * n_pairs / max(inc.rows, 1)
    else:
        result = match_pois(pois, model_uri=uri, settings=settings)
        matches, n_pairs, seconds, per_row = (
            result.matches,
            result.candidates,
            result.seconds,
            result.per_row,
        )
    contracts.require(contracts.validate_output(matches, input_ids=pois.select(S.ID)))
    write_delta(
        matches.select(S.ID, S.GROUP_ID, S.MATCHES),
        table,
        user_metadata=f"input={fingerprint} model={uri}",
    )
    lines += [
        f"model={uri}",
        f"candidates={n_pairs} candidates_per_row={per_row:.2f}",
        f"matches_table={table}",
    ]
    if output_csv:
        write_single_csv(matches.select(S.ID, S.MATCHES).orderBy(S.ID), output_csv)
        lines.append(f"output={output_csv}")
    groups = matches.groupBy(S.GROUP_ID).count()
    stats = groups.agg(F.count(F.lit(1)).alias("g"), F.max("count").alias("m")).first()
    if stats is not None:
        lines.append(f"groups={stats['g']} largest_group={stats['m']}")
    lines.append(f"match_seconds={seconds:.1f}")
    matches.unpersist()
    return lines


def run_evaluate(spark: SparkSession, submission_path: str, truth_path: str) -> list[str]:
    """IoU and pairwise metrics of a submission against labelled truth."""
    submission = read_matches(spark, submission_path)
    truth = read_poi_input(spark, truth_path, require_labels=True).where(F.col(S.POI).isNotNull())
    report = iou(submission, truth)
    pm = pair_metrics(matches_to_pairs(submission), truth_pairs(truth))
    return [
        f"rows={report.rows} missing_rows={report.missing_rows} extra_rows={report.extra_rows}",
        f"pair_precision={pm.precision:.4f} pair_recall={pm.recall:.4f} pair_f1={pm.f1:.4f}",
        f"iou={report.iou:.4f}",
    ]
