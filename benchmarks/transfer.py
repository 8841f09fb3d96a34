"""Transfer report: match quality on cities, densities and copies the model never saw.

    .venv/bin/python benchmarks/transfer.py --out benchmarks/results/transfer.json

For each Geo-ER city (``../shared/data/geoer_osm_fsq``), the matcher is trained on the
other three cities (plus, with ``--generated-rows``, the project's generated data,
less any generated row within 150 km of the held-out city; by default Geo-ER alone,
which transferred better: see the README) exactly as
``jobs/train.py`` trains: :func:`poimatch.runs.workflows.training_set` and
:func:`~poimatch.runs.workflows.fit_matcher` (thinned copies of each table, region folds,
calibration, threshold chosen out of fold). The held-out city is then matched as
``jobs/match.py`` matches (:func:`~poimatch.runs.workflows.match_with_model`):

* whole, and thinned to ``--thin`` shares of its places (all rows of a kept place);
* each with ``--copies`` of its rows copied with only the id changed, and as many
  copied with trivial edits (name case, "Street"/"St."-style address spellings,
  phone punctuation, 10 m of jitter): the share of copies matched to their original
  is the exact- and edited-duplicate recall; pair precision is then measured on the
  real rows' pairs only.

Every setting also reports each-row-alone IoU and the course project's baseline
(``benchmarks/baseline.py``) trained on the same tables. Last, generated data: train
on one seed, match another (with copies injected the same way). Geo-ER rows get a
``source`` column from their id prefix (``O_`` OpenStreetMap, ``F_`` Foursquare): its
labels cover only pairs across the two sources (``model.label_scope``).

Nothing is registered in MLflow; nothing is written but ``--out`` (JSON and Markdown).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from baseline import Baseline
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from poimatch import schema as S
from poimatch.apps.cli import job_parser, start_job
from poimatch.config import Settings
from poimatch.lifecycle.evaluation import iou, matches_to_pairs, pair_metrics, truth_pairs
from poimatch.runs.workflows import FitOutcome, fit_matcher, match_with_model, training_set
from poimatch.sample.generator import generate_pois

_DEFAULT_GEOER = Path(__file__).resolve().parents[1].parent / "shared/data/geoer_osm_fsq"
_COLUMNS = [f.name for f in S.poi_table_schema().fields]
_EXACT, _EDITED = "~x", "~e"
_COPY_SOURCE = "copies"
_ADDRESS_SWAPS = [
    (r"\bStreet\b", "St."),
    (r"\bSt\.?(?=\s|$|,)", "Street"),
    (r"\bAvenue\b", "Ave."),
    (r"\bAve\.?(?=\s|$|,)", "Avenue"),
    (r"\bRoad\b", "Rd."),
    (r"\bRd\.?(?=\s|$|,)", "Road"),
    (r"\bWest\b", "W."),
    (r"\bEast\b", "E."),
    (r"\bNorth\b", "N."),
    (r"\bSouth\b", "S."),
    (r"\bDrive\b", "Dr."),
    (r"\bBoulevard\b", "Blvd."),
]


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    """The POI table's columns, '' as missing, coordinates as floats."""
    out = frame.reindex(columns=_COLUMNS).astype(object)
    out = out.where(out.notna() & (out != ""), None)
    out[S.LATITUDE] = out[S.LATITUDE].astype(float)
    out[S.LONGITUDE] = out[S.LONGITUDE].astype(float)
    return out


def _spark(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    return spark.createDataFrame(_clean(frame), schema=S.poi_table_schema())


def _read_geoer(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "geoer_osm_fsq.csv", dtype=str, keep_default_na=False)
    frame[S.SOURCE] = frame[S.ID].str.split("_").str[0]
    frame["_city"] = frame[S.ID].str.split("_").str[1]
    return frame


def _thin(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    if share >= 1.0:
        return frame
    places = frame[S.POI].drop_duplicates().sort_values().to_numpy()
    rng = np.random.default_rng(seed)
    kept = set(rng.choice(places, size=max(1, round(share * len(places))), replace=False))
    return frame[frame[S.POI].isin(kept)]


def _edit(row: pd.Series, rng: np.random.Generator) -> pd.Series:
    """Trivial edits: name case, address spelling, phone punctuation, 10 m jitter."""
    out = row.copy()
    name = str(row[S.NAME])
    out[S.NAME] = name.upper() if name != name.upper() else name.title()
    address = row[S.ADDRESS]
    if isinstance(address, str) and address:
        for pattern, repl in _ADDRESS_SWAPS:
            swapped = re.sub(pattern, repl, address, count=1)
            if swapped != address:
                address = swapped
                break
        else:
            address = address.lower() if address != address.lower() else address.upper()
        out[S.ADDRESS] = address
    phone = row[S.PHONE]
    if isinstance(phone, str) and phone:
        digits = re.sub(r"\D", "", phone)
        out[S.PHONE] = "-".join(digits[i : i + 3] for i in range(0, len(digits), 3))
    angle = rng.uniform(0, 2 * np.pi)
    lat = float(row[S.LATITUDE])
    out[S.LATITUDE] = lat + 10.0 * np.sin(angle) / 111_320.0
    out[S.LONGITUDE] = float(row[S.LONGITUDE]) + 10.0 * np.cos(angle) / (
        111_320.0 * np.cos(np.radians(lat))
    )
    return out


def _inject(frame: pd.DataFrame, copies: int, seed: int) -> pd.DataFrame:
    """``frame`` plus exact copies of ``copies`` rows and edited copies of as many others."""
    rng = np.random.default_rng(seed)
    n = min(2 * copies, len(frame))
    picked = frame.iloc[rng.choice(len(frame), size=n, replace=False)]
    exact = picked.iloc[: n // 2].copy()
    exact[S.ID] = exact[S.ID] + _EXACT
    edited = picked.iloc[n // 2 :].apply(_edit, axis=1, rng=rng)
    edited[S.ID] = edited[S.ID] + _EDITED
    copies_ = pd.concat([exact, edited], ignore_index=True)
    if S.SOURCE in copies_.columns:  # a copy arrives from a source of its own
        copies_[S.SOURCE] = _COPY_SOURCE
    return pd.concat([frame, copies_], ignore_index=True)


def _copy_recall(matches: pd.DataFrame, suffix: str) -> float:
    copies = matches[matches[S.ID].str.endswith(suffix)]
    if copies.empty:
        return float("nan")
    found = [
        str(i)[: -len(suffix)] in str(m).split()
        for i, m in zip(copies[S.ID], copies[S.MATCHES], strict=False)
    ]
    return float(np.mean(found))


def _run(spark: SparkSession, fit: FitOutcome, truth: DataFrame, link: bool) -> dict[str, Any]:
    result = match_with_model(truth, model=fit.model, spec=fit.spec, link_only=link)
    report = iou(result.matches, truth)
    pairs = pair_metrics(matches_to_pairs(result.matches), truth_pairs(truth))
    return {
        "iou": report.iou,
        "pair_precision": pairs.precision,
        "pair_recall": pairs.recall,
        "candidates_per_row": result.per_row,
    }


def _evaluate(
    spark: SparkSession,
    fit: FitOutcome,
    base: Baseline,
    frame: pd.DataFrame,
    *,
    copies: int,
    seed: int,
    link: bool,
) -> dict[str, Any]:
    """One setting: clean runs (IoU, pairs, row alone, baseline) and a run with copies.

    With ``link`` (two sources whose labels cover only pairs across them) the main
    figures come from a link-only run; the figures of a run that deduplicates every
    row against every other are kept beside them (``*_dedupe``). Copies come from a
    source of their own (an exact duplicate arriving from elsewhere), so a link-only
    run compares them with every real row.
    """
    started = time.perf_counter()
    truth = _spark(spark, frame).cache()
    out: dict[str, Any] = {"rows": len(frame), "link_only": link}
    dedupe = _run(spark, fit, truth, link=False)
    out.update(_run(spark, fit, truth, link=True) if link else dedupe)
    out.update({f"{k}_dedupe": v for k, v in dedupe.items()})
    out["row_alone_iou"] = iou(truth.select(S.ID, F.col(S.ID).alias(S.MATCHES)), truth).iou
    base_matches = spark.createDataFrame(base.match(_clean(frame)))
    out["baseline_iou"] = iou(base_matches, truth).iou
    if copies:
        injected = _inject(frame, copies, seed)
        truth_x = _spark(spark, injected).cache()
        res_x = match_with_model(truth_x, model=fit.model, spec=fit.spec, link_only=link)
        matches_x = res_x.matches.select(S.ID, S.MATCHES).toPandas()
        real = truth_x.where(~F.col(S.ID).contains("~"))
        real_pred = matches_to_pairs(res_x.matches).where(
            ~F.col(S.ID_L).contains("~") & ~F.col(S.ID_R).contains("~")
        )
        real_pairs = pair_metrics(real_pred, truth_pairs(real))
        out.update(
            {
                "exact_copy_recall": _copy_recall(matches_x, _EXACT),
                "edited_copy_recall": _copy_recall(matches_x, _EDITED),
                "copies": int(min(2 * copies, len(frame)) // 2),
                "pair_precision_with_copies": real_pairs.precision,
            }
        )
        truth_x.unpersist()
    truth.unpersist()
    out["seconds"] = time.perf_counter() - started
    return out


def _fit(spark: SparkSession, tables: list[pd.DataFrame], settings: Settings) -> FitOutcome:
    data = training_set([_spark(spark, t) for t in tables], settings=settings)
    return fit_matcher(data, settings=settings)


def _far_from(frame: pd.DataFrame, centre: tuple[float, float], km: float) -> pd.DataFrame:
    lat, lon = np.radians(centre[0]), np.radians(centre[1])
    rl = np.radians(frame[S.LATITUDE].astype(float).to_numpy())
    ro = np.radians(frame[S.LONGITUDE].astype(float).to_numpy())
    a = np.sin((rl - lat) / 2) ** 2 + np.cos(lat) * np.cos(rl) * np.sin((ro - lon) / 2) ** 2
    dist = 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return frame[dist > km]


def _row(label: str, setting: str, r: dict[str, Any]) -> str:
    def f(key: str) -> str:
        value = r.get(key)
        return "–" if value is None or np.isnan(value) else f"{value:.4f}"

    return (
        f"| {label} | {setting} | {r['rows']} | **{f('iou')}** | {f('iou_dedupe')} | "
        f"{f('row_alone_iou')} | {f('baseline_iou')} | {f('pair_precision')} | "
        f"{f('pair_recall')} | "
        f"{f('exact_copy_recall')} | {f('edited_copy_recall')} | "
        f"{f('pair_precision_with_copies')} |"
    )


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}; total {results['total_seconds']:.0f} s.",
        "",
        "| held out | setting | rows | IoU | IoU, dedupe run | each row alone | baseline | "
        "pair precision | pair recall | exact-copy recall | edited-copy recall | "
        "pair precision with copies |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for city, block in results["cities"].items():
        for setting, r in block["settings"].items():
            lines.append(_row(city, setting, r))
    if results.get("generated"):
        lines.append(_row("generated", "seed B", results["generated"]))
    full = [b["settings"]["full"]["iou"] for b in results["cities"].values()]
    if full:
        lines += ["", f"Leave-one-city-out mean IoU (whole cities): **{np.mean(full):.4f}**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = job_parser(__doc__ or "")
    parser.add_argument("--geoer", default=str(_DEFAULT_GEOER))
    parser.add_argument("--cities", default="pit,edi,sin,tor")
    parser.add_argument("--thin", default="0.2,0.05", help="shares of places kept")
    parser.add_argument("--copies", type=int, default=200, help="exact (and edited) copies")
    parser.add_argument(
        "--generated-rows",
        type=int,
        default=0,
        help="generated rows added to each city's training tables (0: Geo-ER alone)",
    )
    parser.add_argument(
        "--generated-train-rows", type=int, default=20000, help="last section: seed A rows"
    )
    parser.add_argument(
        "--generated-test-rows", type=int, default=20000, help="last section: seed B rows (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--no-link",
        dest="link",
        action="store_false",
        help="report Geo-ER's dedupe runs as the main figures (default: link-only runs)",
    )
    parser.add_argument("--out", default=None, help="JSON path; a .md is written beside it")
    args = parser.parse_args()
    settings, spark = start_job(args)
    started = time.perf_counter()
    geoer = _read_geoer(Path(args.geoer))
    generated = generate_pois(args.generated_rows, seed=101) if args.generated_rows else None
    thin = [float(s) for s in args.thin.split(",") if s]
    results: dict[str, Any] = {
        "command": "benchmarks/transfer.py " + " ".join(a for a in __import__("sys").argv[1:] if a),
        "machine": "2 cores, 24 GiB, Spark local mode",
        "settings": settings.model.model_dump(mode="json"),
        "cities": {},
    }
    for city in [c for c in args.cities.split(",") if c]:
        t0 = time.perf_counter()
        held = geoer[geoer["_city"] == city]
        train = [geoer[geoer["_city"] != city]]
        if generated is not None:
            centre = (
                held[S.LATITUDE].astype(float).median(),
                held[S.LONGITUDE].astype(float).median(),
            )
            train.append(_far_from(generated, centre, 150.0))
        fit = _fit(spark, train, settings)
        base = Baseline().fit(_clean(pd.concat(train, ignore_index=True)))
        fit_seconds = time.perf_counter() - t0
        block: dict[str, Any] = {
            "threshold": fit.spec.threshold,
            "mode": fit.spec.grouping_mode,
            "label_scope": fit.spec.training.get("label_scope"),
            "oof_iou": fit.metrics["iou"],
            "fit_seconds": fit_seconds,
            "settings": {},
        }
        for share in [1.0, *thin]:
            name = "full" if share >= 1.0 else f"thinned {share:.0%}"
            frame = _thin(held, share, args.seed)
            r = _evaluate(
                spark, fit, base, frame, copies=args.copies, seed=args.seed, link=args.link
            )
            block["settings"][name] = r
            print(f"city={city} {_row(city, name, r)}", flush=True)
        results["cities"][city] = block
        print(
            f"city={city} threshold={fit.spec.threshold:.3f} mode={fit.spec.grouping_mode} "
            f"scope={block['label_scope']} oof_iou={fit.metrics['iou']:.4f} "
            f"fit_seconds={fit_seconds:.0f} seconds={time.perf_counter() - t0:.0f}",
            flush=True,
        )
    if args.generated_test_rows and args.generated_train_rows:
        seed_a = generate_pois(args.generated_train_rows, seed=101)
        fit = _fit(spark, [seed_a], settings)
        base = Baseline().fit(_clean(seed_a))
        test = generate_pois(args.generated_test_rows, seed=202)
        results["generated"] = _evaluate(
            spark, fit, base, test, copies=args.copies, seed=args.seed, link=False
        )
        print(f"generated {_row('generated', 'seed B', results['generated'])}", flush=True)
    results["total_seconds"] = time.perf_counter() - started
    md = _markdown(results)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=float))
        out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
