"""Generate synthetic POIs (with point_of_interest labels) as CSV or a Delta table.

./spark-submit.sh jobs/generate.py --rows 1000000 --seed 7 --output data/gen.csv
python jobs/generate.py --rows 20000 --output data/lake/generated --format delta

The console script runs the same command: ``poimatch generate [options]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from poimatch.apps.cli import job_parser, job_settings
from poimatch.config import resolve_path
from poimatch.sample.generator import generate_pois, write_pois_csv
from poimatch.schema import POI


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--rows", type=int, default=None, help="rows (default: generator.rows)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: generator.seed)")
    parser.add_argument("--output", default=None, help="file or table (default: generator.output)")
    parser.add_argument("--format", choices=("csv", "delta"), default="csv")
    args = parser.parse_args(argv)
    settings = job_settings(args)
    rows = args.rows or settings.generator.rows
    seed = settings.generator.seed if args.seed is None else args.seed
    output = resolve_path(args.output, Path.cwd()) if args.output else settings.generator.output
    started = time.perf_counter()
    pois = generate_pois(rows, seed=seed)
    generated = time.perf_counter() - started
    if args.format == "csv":
        write_pois_csv(pois, output)
    else:
        from poimatch.session import build_session

        spark = build_session(settings.spark)
        spark.createDataFrame(pois).write.format("delta").mode("overwrite").save(output)
    total = time.perf_counter() - started
    places = pois[POI].nunique()
    print(f"generated rows={len(pois)} places={places} seed={seed} output={output}")
    print(f"generate_seconds={generated:.1f} total_seconds={total:.1f}")
