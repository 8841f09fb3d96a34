"""Promotion gate: promote @challenger to @champion only if it measurably wins.

    ./spark-submit.sh jobs/promote.py [--dry-run] [--eval-table PATH] [--eval-version N]
    ./spark-submit.sh jobs/promote.py --rollback        (champion back to @previous)

Both models match the fixed evaluation table (Delta, at a pinned version: the latest
unless --eval-version is given; the version used is printed and logged). The decision,
both scores and the reasons go to MLflow. Exit code 0 for either verdict; 2 for an
error (no challenger, no evaluation table, research environment).

The console script runs the same command: ``poimatch promote [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow.exceptions import MlflowException

from poimatch.apps.cli import fail, guarded_settings, job_parser, start_job
from poimatch.io.tables import InputError
from poimatch.isolation import IsolationError
from poimatch.matcher import Matcher


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument("--dry-run", action="store_true", help="measure and log; move nothing")
    parser.add_argument(
        "--eval-table", default=None, help="Delta path (default: lifecycle.eval_table)"
    )
    parser.add_argument("--eval-version", type=int, default=None, help="pinned Delta version")
    parser.add_argument("--rollback", action="store_true", help="point @champion back at @previous")
    args = parser.parse_args(argv)
    if args.rollback:
        # two registry calls and a tracking run: no Spark session (through spark-submit.sh
        # 17-20 s wall and 23-27 CPU-s with one, 11 s and 13 CPU-s without; `poimatch
        # promote --rollback` 6 s)
        matcher = Matcher(guarded_settings(args))  # builds no session for a rollback
        try:
            demoted, restored = matcher.rollback()
        except (IsolationError, ValueError, MlflowException) as exc:
            fail(str(exc))
            return
        print(f"rollback: champion v{demoted} -> v{restored} (previous=v{demoted})")
        return
    settings, spark = start_job(args)
    try:
        decision = Matcher(settings, spark).promote(
            eval_table=args.eval_table,
            eval_version=args.eval_version,
            dry_run=args.dry_run,
        )
    except (InputError, IsolationError, ValueError, MlflowException) as exc:
        fail(str(exc))
        return
    for line in decision.lines():
        print(line)
