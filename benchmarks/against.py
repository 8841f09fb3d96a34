"""Matching uploads against the POI table: recall on cities the model never saw (Geo-ER).

    .venv/bin/python benchmarks/against.py --env local --out benchmarks/results/against.json

For each Geo-ER city (``../shared/data/geoer_osm_fsq``) the city's rows are the POI
table. It is matched with the model (``--model``, default the champion: ``make run``'s
champion was trained on generated data only, so every Geo-ER city is unseen), and its
lookup table is written under ``--workdir`` (no production table is touched). Then:

* **copies**: ``--rows`` rows of the table, trivially edited (name case, address
  spelling, phone punctuation, 10 m jitter: ``transfer._edit``) under new ids, are
  matched against it (``poimatch.runs.against.match_against``): the share whose answer holds
  the original id (recall) and whose known groups hold the original's group.
* **removed**: ``--rows`` rows with a labelled partner are left out of the table before it
  is matched and laid out, then uploaded (edited) against it: the share of their labelled
  partners found among the known ids (recall), and the share of the known ids found that
  are labelled partners (precision; Geo-ER labels one OSM row against one Foursquare row,
  so a third row of the same place counts against it).

Each upload is matched twice more, against the table held on the driver as the service
holds it (:class:`poimatch.io.lookup.HeldLookup`), once as the batch plans it and once as
the service runs it (``reuse_plan``: prepared queries, the against query compiled as one
partition): ``same answers held`` says whether both answers equal those read from the
files.

Prints a table and writes JSON (``--out``) and Markdown beside it. Never asserts.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import _DEFAULT_GEOER, _edit, _read_geoer, _spark

from poimatch import schema as S
from poimatch.apps.cli import job_parser, start_job
from poimatch.apps.service import SERVICE_SQL_CONF
from poimatch.io.lookup import HeldLookup, KnownTable, pin_lookup, write_lookup
from poimatch.lifecycle.tracking import configure_tracking, default_model_uri, load_matcher
from poimatch.runs.against import KNOWN_GROUPS, KNOWN_IDS, match_against
from poimatch.runs.workflows import match_with_model
from poimatch.stages.plan import BATCH, session_conf
from poimatch.stages.spec import MatchingSpec


def _edited(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame([_edit(r, rng) for _, r in rows.iterrows()])
    out[S.ID] = "up_" + rows[S.ID].to_numpy()
    out[S.POI] = None
    return out


def _lookup(spark: Any, table: pd.DataFrame, model: Any, spec: Any, path: str) -> Any:
    result = match_with_model(_spark(spark, table), model=model, spec=spec, plan=BATCH)
    write_lookup(
        result.points,
        result.matches,
        path,
        rows=len(table),
        rows_per_file=1000,
        user_metadata="benchmarks/against.py",
    )
    groups = result.matches.select(S.ID, S.GROUP_ID).toPandas().set_index(S.ID)[S.GROUP_ID]
    known = pin_lookup(spark, path)
    assert known is not None  # nosec B101
    return known, groups


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--geoer", default=str(_DEFAULT_GEOER))
    parser.add_argument("--cities", default="pit,edi,sin,tor")
    parser.add_argument("--rows", type=int, default=200, help="uploaded rows per city and test")
    parser.add_argument("--model", default=None, help="model URI (default: @champion)")
    parser.add_argument("--workdir", default=None, help="lookup tables (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path; a .md is written beside it")
    args = parser.parse_args()
    settings, spark = start_job(args)
    configure_tracking(settings.tracking)
    uri = args.model or default_model_uri(settings.model.name)
    model, spec, _ = load_matcher(uri)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="poimatch-against-"))
    geoer = _read_geoer(Path(args.geoer))
    results: dict[str, Any] = {
        "command": "benchmarks/against.py " + " ".join(sys.argv[1:]),
        "model": uri,
        "cities": {},
    }
    lines = [
        "| city | table rows | copies: original id found | copies: its group found | "
        "removed: partners found (recall) | removed: known ids that are partners | "
        "seconds per upload | same answers held |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for city in [c for c in args.cities.split(",") if c]:
        table = geoer[geoer[S.ID].str.split("_").str[1] == city].drop(columns=["_city"])
        table = table.reset_index(drop=True)
        # copies of rows present in the table
        known, groups = _lookup(spark, table, model, spec, str(workdir / city / "full"))
        picked = table.sample(min(args.rows, len(table)), random_state=args.seed)
        upload = _edited(picked, args.seed)
        started = time.perf_counter()
        out = match_against(_spark(spark, upload), known, model=model, spec=spec).matches
        copies_s = time.perf_counter() - started
        same = _same_when_held(spark, upload, known=known, model=model, spec=spec, answers=out)
        out = out.set_index(S.ID)
        original = dict(zip(upload[S.ID], picked[S.ID], strict=True))
        found = [i for i in upload[S.ID] if original[i] in str(out.at[i, KNOWN_IDS]).split(" ")]
        group_found = [
            i for i in found if groups[original[i]] in str(out.at[i, KNOWN_GROUPS]).split(" ")
        ]
        # rows removed from the table, re-uploaded: their labelled partners
        poi_size = table.groupby(S.POI)[S.ID].transform("size")
        has_partner = table[poi_size >= 2]
        removed = has_partner.sample(min(args.rows, len(has_partner)), random_state=args.seed + 1)
        # keep one row of every place in the table (a place removed whole has no answer)
        removed = removed.drop_duplicates(S.POI)
        rest = table[~table[S.ID].isin(removed[S.ID])]
        known2, _ = _lookup(spark, rest, model, spec, str(workdir / city / "removed"))
        upload2 = _edited(removed, args.seed + 2)
        started = time.perf_counter()
        out2 = match_against(_spark(spark, upload2), known2, model=model, spec=spec).matches
        removed_s = time.perf_counter() - started
        same = same and _same_when_held(
            spark, upload2, known=known2, model=model, spec=spec, answers=out2
        )
        out2 = out2.set_index(S.ID)
        partners = rest.groupby(S.POI)[S.ID].apply(set).to_dict()
        truth = {
            u: partners.get(p, set()) for u, p in zip(upload2[S.ID], removed[S.POI], strict=True)
        }
        true_found = sum(len(truth[u] & set(str(out2.at[u, KNOWN_IDS]).split())) for u in truth)
        all_true = sum(len(t) for t in truth.values())
        all_known = sum(len(str(out2.at[u, KNOWN_IDS]).split()) for u in truth)
        r = {
            "table_rows": len(table),
            "copies": len(upload),
            "copies_original_found": len(found) / len(upload),
            "copies_group_found": len(group_found) / len(upload),
            "removed": len(upload2),
            "removed_partner_recall": true_found / max(all_true, 1),
            "removed_known_precision": true_found / max(all_known, 1),
            "seconds_copies": copies_s,
            "seconds_removed": removed_s,
            "held_answers_same": same,
        }
        results["cities"][city] = r
        line = (
            f"| {city} | {len(table)} | {r['copies_original_found']:.3f} | "
            f"{r['copies_group_found']:.3f} | {r['removed_partner_recall']:.3f} | "
            f"{r['removed_known_precision']:.3f} | {copies_s:.1f} / {removed_s:.1f} | {same} |"
        )
        lines.append(line)
        print(line, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        out_path.with_suffix(".md").write_text(
            f"`{results['command']}` (model {uri})\n\n{text}\n", encoding="utf-8"
        )


def _same_when_held(
    spark: SparkSession,
    upload: pd.DataFrame,
    *,
    known: KnownTable,
    model: PipelineModel,
    spec: MatchingSpec,
    answers: pd.DataFrame,
) -> bool:
    """Whether the upload gets the same answers from the table held on the driver (as the
    service holds it), planned afresh and as the service runs it (prepared queries), as
    ``answers``, read from the table's files."""
    held = HeldLookup.load(spark, known)
    key = [S.ID]
    expected = answers.sort_values(key, ignore_index=True)
    for reuse in (False, True):
        # the service's session settings for its prepared queries (adaptive execution off:
        # a prepared plan is the plan Spark built, not one re-planned between stages)
        service = {**SERVICE_SQL_CONF, "spark.sql.shuffle.partitions": "1"} if reuse else {}
        with session_conf(spark, service):
            again = match_against(
                _spark(spark, upload), known, model=model, spec=spec, held=held, reuse_plan=reuse
            ).matches
        if not expected.equals(again.sort_values(key, ignore_index=True)):
            return False
    return True


if __name__ == "__main__":
    main()
