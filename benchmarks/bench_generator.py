"""Synthetic POI generator figures: rows, seconds, rows/s, and the profile it produced.

    .venv/bin/python benchmarks/bench_generator.py --rows 1000000 --out /tmp/gen1m.csv
    .venv/bin/python benchmarks/bench_generator.py --rows 200000 --seed 7

Prints measured figures only; it never asserts on timings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from poimatch.sample.generator import GeneratorProfile, generate_pois, write_pois_csv
from poimatch.schema import COUNTRY, LATITUDE, LONGITUDE, POI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="CSV path (default: a temporary file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "pois.csv"
        started = time.perf_counter()
        frame = generate_pois(args.rows, seed=args.seed)
        generated = time.perf_counter()
        write_pois_csv(frame, out)
        written = time.perf_counter()
        size_mb = out.stat().st_size / 1e6

    gen_s = generated - started
    write_s = written - generated
    total_s = written - started
    print(
        f"rows={len(frame)} generate_seconds={gen_s:.1f} write_seconds={write_s:.1f} "
        f"total_seconds={total_s:.1f} rows_per_second={len(frame) / max(total_s, 1e-9):,.0f} "
        f"csv_mb={size_mb:.0f}"
    )

    sizes = frame.groupby(POI).size()
    print(
        f"places={sizes.size} records_per_place={sizes.mean():.3f} "
        f"share_single={(sizes == 1).mean():.3f} max_group={sizes.max()} "
        f"countries={frame[COUNTRY].nunique()}"
    )
    print("non-empty share per column (measured / target):")
    for column, target in GeneratorProfile().non_empty_shares().items():
        values = frame[column]
        if column in (LATITUDE, LONGITUDE):
            share = float(values.notna().mean())
        else:
            share = float((values.notna() & (values.astype(str).str.strip() != "")).mean())
        print(f"  {column:<12} {share:.4f} / {target:.2f}")


if __name__ == "__main__":
    main()
