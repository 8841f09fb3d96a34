"""Explain the model's score of one pair: each comparison's push, in log-odds.

    poimatch explain ID_A ID_B [--input IN.csv] [--model URI] [--png OUT.png] [--top N]

The two rows are read from ``--input`` (a CSV or a Delta table; default: the POI table)
and scored by ``--model`` (default ``models:/<model.name>@champion``). Prints the pair's
calibrated score and verdict at the model's threshold, then a waterfall: the bias and the
``--top`` largest feature contributions (XGBoost ``pred_contribs``) with each feature's
value and the running log-odds; bias plus all contributions is the booster's margin
(``probability = 1 / (1 + exp(-margin))``). ``--png`` also draws it. Rows are read, never
written: nothing else is touched.

The console script runs the same command: ``poimatch explain [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("id_a", help="one row's id")
    parser.add_argument("id_b", help="the other row's id")
    parser.add_argument("--input", default=None, help="CSV or Delta table (default: POI table)")
    parser.add_argument("--model", default=None, help="model URI (default: @champion)")
    parser.add_argument("--png", default=None, help="also draw the waterfall to this PNG")
    parser.add_argument("--top", type=int, default=15, help="contributions shown (default 15)")
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    try:
        explanation = Matcher(settings, spark).explain(
            args.id_a, args.id_b, input_path=args.input, model_uri=args.model
        )
    except (InputError, ValueError) as exc:
        fail(str(exc))
        return
    for line in explanation.lines(top=args.top):
        print(line)
    if args.png:
        print(f"png={explanation.plot(args.png, top=args.top)}")
