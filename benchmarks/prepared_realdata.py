"""Prepared queries on real data no model saw: Geo-ER tables matched with and without them.

    .venv/bin/python benchmarks/prepared_realdata.py

The ``make run`` champion (trained on generated rows only), the small plan with the
service's SQL settings (and its compiled pair query: ``service.compiled_pairs``). The
prepared queries are first built on 300 Toronto rows; then
Pittsburgh, Edinburgh thinned to a tenth, and Pittsburgh plus 200 exact copies (new ids)
are matched without and with them. Prints rows, candidates, IoU against
``point_of_interest``, seconds, whether the two outputs are identical, and how many
copies found their original. Needs ``../shared/data/geoer_osm_fsq``.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.apps.service import SERVICE_SQL_CONF, ModelStore
from poimatch.config import load_settings
from poimatch.io.tables import read_poi_input
from poimatch.lifecycle.tracking import configure_tracking
from poimatch.runs.workflows import match_with_model
from poimatch.session import build_session
from poimatch.stages.plan import SMALL

GEOER = Path(__file__).resolve().parents[2] / "shared/data/geoer_osm_fsq/geoer_osm_fsq.csv"


def _iou(matches: pd.DataFrame, labels: pd.DataFrame) -> float:
    place = dict(zip(labels[S.ID], labels[S.POI], strict=True))
    members: dict[str, set[str]] = {}
    for row_id, poi in place.items():
        members.setdefault(poi, set()).add(row_id)
    total = 0.0
    for row_id, listed in zip(matches[S.ID], matches[S.MATCHES], strict=True):
        predicted, true = set(listed.split()), members[place[row_id]]
        total += len(predicted & true) / len(predicted | true)
    return total / len(matches)


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = load_settings("local", [])
    spark = build_session(settings.spark)
    for key, value in SERVICE_SQL_CONF.items():
        spark.conf.set(key, value)
    configure_tracking(settings.tracking)
    store = ModelStore(f"models:/{settings.model.name}@champion")
    store.refresh()
    model = store.current
    assert model is not None, "no champion: run make run first"
    geo = read_poi_input(spark, str(GEOER)).cache()
    pit = geo.where(F.col(S.ID).contains("_pit_"))
    thinned = geo.where(F.col(S.ID).contains("_edi_") & (F.abs(F.hash(S.ID)) % 10 == 0))
    copies = pit.limit(200).withColumn(S.ID, F.concat(F.col(S.ID), F.lit("_copy")))
    first = geo.where(F.col(S.ID).contains("_tor_")).limit(300)
    # the small plan as the service runs it (its pair query compiled or not, by its setting)
    match = partial(
        match_with_model,
        model=model.model,
        spec=model.spec,
        plan=SMALL,
        compiled_pairs=settings.service.compiled_pairs,
    )
    match(first, reuse_plan=True)
    tables: list[tuple[str, DataFrame]] = [
        ("pit", pit),
        ("edi thinned 1/10", thinned),
        ("pit + 200 exact copies", pit.unionByName(copies)),
    ]
    for name, table in tables:
        labels = table.select(S.ID, S.POI).toPandas()
        out = {}
        for reuse in (False, True):
            started = time.perf_counter()
            result = match(table, reuse_plan=reuse)
            frame = result.matches.select(S.ID, S.MATCHES).toPandas()
            out[reuse] = frame.sort_values(S.ID).reset_index(drop=True)
            print(
                f"{name}: reuse_plan={reuse} rows={len(frame)} candidates={result.candidates} "
                f"iou={_iou(frame, labels):.4f} seconds={time.perf_counter() - started:.1f}",
                flush=True,
            )
        print(f"{name}: identical={out[True].equals(out[False])}")
        if "copies" in name:
            listed = out[True].set_index(S.ID)[S.MATCHES]
            found = sum(
                1 for i in listed.index if i.endswith("_copy") and i[:-5] in listed[i].split()
            )
            print(f"{name}: copies matched with their original {found}/200")
    spark.stop()


if __name__ == "__main__":
    main()
