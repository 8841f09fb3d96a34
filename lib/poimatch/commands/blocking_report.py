"""Pairs per blocking pass and candidates per row of a table, before any run.

    poimatch blocking-report [--input IN.csv | TABLE] [--model URI] [--set blocking.k_nearest=5]

Blocks the input exactly as a match run would and prints what that gives: each pass's
pairs (all, only this pass, cumulative in pass order), the distinct pairs and pairs per
row, candidates per row (median, p90, p99, max, rows with none) and, on labelled input,
the share of true pairs blocking keeps (the recall ceiling of any model). The blocking
settings are the configuration's (try others with ``--set blocking.KEY=VALUE``) or, with
``--model``, those the model was trained with (what its match runs use). Rows are read,
never written; no model is scored.

The console script runs the same command: ``poimatch blocking-report [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.batch import load_match_input
from poimatch.blocking_report import blocking_report
from poimatch.cli import fail, job_parser, start_job
from poimatch.config import BlockingSettings
from poimatch.io import InputError
from poimatch.tracking import configure_tracking, load_matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--input", default=None, help="CSV or Delta table (default: POI table)")
    parser.add_argument(
        "--model", default=None, help="use this model's blocking (default: the configuration's)"
    )
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    storage = settings.storage
    source = args.input or storage.table_path(storage.pois_table)
    blocking = settings.blocking
    try:
        if args.model:
            configure_tracking(settings.tracking)
            _, spec, _ = load_matcher(args.model)
            blocking = BlockingSettings.model_validate(spec.blocking)
        data = load_match_input(spark, source)
        try:
            # rows breaking an input rule are counted here and never blocked
            for line in data.lines():
                print(line)
            report = blocking_report(data.pois, blocking)
        finally:
            data.release()
    except (InputError, ValueError) as exc:
        fail(str(exc))
        return
    print(f"blocking={args.model or 'configuration'} {blocking.model_dump_json()}")
    for line in report.lines():
        print(line)
