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

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--input", default=None, help="CSV or Delta table (default: POI table)")
    parser.add_argument(
        "--model", default=None, help="use this model's blocking (default: the configuration's)"
    )
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    try:
        # rows breaking an input rule are counted and never blocked
        run = Matcher(settings, spark).blocking_report(input_path=args.input, model_uri=args.model)
    except (InputError, ValueError) as exc:
        fail(str(exc))
        return
    for line in run.lines():
        print(line)
