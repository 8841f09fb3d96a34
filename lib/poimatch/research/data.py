"""Data for a notebook: a CSV or Delta path, or a generated labelled sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from poimatch.config import (
    Settings,
)
from poimatch.io.tables import input_fingerprint
from poimatch.isolation import check_write
from poimatch.runs.batch import load_pois
from poimatch.sample.generator import generate_pois, write_pois_csv


@dataclass(frozen=True)
class Sample:
    """POIs for a notebook: the typed frame, where it came from and its fingerprint."""

    pois: DataFrame
    source: str
    fingerprint: str
    lines: tuple[str, ...]


def load_sample(
    spark: SparkSession,
    settings: Settings,
    *,
    data: str = "",
    rows: int = 3000,
    seed: int = 42,
    labelled: bool = True,
) -> Sample:
    """POIs from ``data`` (CSV or Delta path), or a generated labelled sample.

    A CSV is validated like the ingest (:func:`poimatch.runs.batch.load_pois`): bad rows go
    to the research quarantine table. Without ``data``, ``rows`` POIs are generated
    with ``seed`` and written next to ``generator.output`` (a research path).

    Args:
        labelled: require ``point_of_interest`` (training, error analysis).
    """
    storage = settings.storage
    if data:
        source = data
    else:
        out = Path(settings.generator.output)
        source = str(out.with_name(f"{out.stem}_seed{seed}_rows{rows}{out.suffix or '.csv'}"))
        check_write(source)
        write_pois_csv(generate_pois(rows, seed=seed), source)
    loaded = load_pois(
        spark,
        source,
        quarantine_path=storage.table_path(storage.quarantine_table),
        require_labels=labelled,
    )
    return Sample(loaded.pois, source, input_fingerprint(spark, source), tuple(loaded.lines()))
