"""The main job: the whole chain on built-in generated sample data.

make run            (same as ./spark-submit.sh jobs/main.py --env local)
"""

from __future__ import annotations

import time
from pathlib import Path

from poimatch.cli import job_parser, start_job
from poimatch.generator import generate_pois, write_pois_csv
from poimatch.ingest import ingest_file


def main() -> None:
    parser = job_parser(__doc__ or "")
    args = parser.parse_args()
    settings, spark = start_job(args)
    gen, storage = settings.generator, settings.storage
    started = time.perf_counter()
    sample = Path(gen.output)
    if not sample.is_file():
        write_pois_csv(generate_pois(gen.rows, seed=gen.seed), sample)
    print(f"[generate] rows={gen.rows} seed={gen.seed} file={sample}")
    report = ingest_file(
        spark,
        str(sample),
        pois_path=storage.table_path(storage.pois_table),
        quarantine_path=storage.table_path(storage.quarantine_table),
    )
    for line in report.lines():
        print(f"[ingest] {line}")
    print(f"[main] seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
