"""Match POIs with a registered model: the nightly batch and ad-hoc runs.

    ./spark-submit.sh jobs/match.py --input IN.csv --output OUT.csv [--model URI]
    ./spark-submit.sh jobs/match.py --input IN.csv --table PATH   (a Delta output)
    ./spark-submit.sh jobs/match.py [--incremental]      (nightly: the POI table)
    ./spark-submit.sh jobs/match.py --input NEW.csv --against pois --output OUT.csv
    ./spark-submit.sh jobs/match.py --input IN.csv --output OUT.csv --pairs-table PAIRS

Without --input the POI table is matched and the Delta ``matches`` table updated.
With --input (a CSV or a Delta table) only what --output (CSV ``id,matches``) and
--table (Delta ``id,group_id,matches,status,reason``) name is written: no production
table, not even the quarantine. Rows are checked by the ingest's rules; every input
id is in the output exactly once (a row breaking a rule alone, with its reason), and
every row that was not matched is listed in ``OUT.rejected.csv`` beside --output (and
``<table>_rejected`` beside a Delta output). The default model is
``models:/<model.name>@champion``. ``--incremental`` keeps state tables beside the
output table (per row its normalized values and k-th nearest distances, per pair its
passes and score) and redoes only the rows the changes since its last run can reach and
the pairs that changed; the output equals a full run's. The nightly run also
writes the lookup table (``storage.lookup_table``: the matched rows laid out by cell).
``--against pois`` matches the input with itself and with the POI table through that
lookup table (read at its current version, printed), and writes ``--output``
(``id,matches,known_ids,known_groups``) only. ``--pairs-table PATH`` (a full run, named
by you only) also overwrites a Delta table of every scored candidate pair: ``id_l``,
``id_r``, ``block_pass``, ``score``, ``above_threshold`` and the model's features (what
Splink calls the predictions table; ``poimatch explain`` tells why one pair scored so).
Every table argument (--input, --table, --pairs-table) takes a path or a catalog name
``catalog.schema.table`` (Unity Catalog's; locally ``spark_catalog.<schema>.<table>``),
read and written through the catalog; ``<table>_rejected`` sits beside it either way.

The console script runs the same command: ``poimatch match [options]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from poimatch.apps.cli import fail, job_parser, start_job
from poimatch.io.contracts import ContractError
from poimatch.io.tables import InputError
from poimatch.matcher import Matcher
from poimatch.runs.batch import AGAINST_TABLES, AgainstReport, MatchReport


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    parser = job_parser(__doc__ or "", prog=prog)
    parser.add_argument(
        "--input",
        default=None,
        help="CSV, Delta table path or catalog.schema.table (default: POI table)",
    )
    parser.add_argument("--output", default=None, help="write the output CSV here")
    parser.add_argument(
        "--table",
        default=None,
        help="write the Delta output table here: a path or catalog.schema.table "
        "(default: matches, for the POI table only)",
    )
    parser.add_argument("--model", default=None, help="model URI (default: @champion)")
    parser.add_argument(
        "--pairs-table",
        default=None,
        help="also write every scored candidate pair (with features) to this Delta table "
        "(a path or catalog.schema.table)",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="redo only the rows and pairs the changes since the last incremental run "
        "can reach (Delta input)",
    )
    parser.add_argument(
        "--against",
        default=None,
        help=f"also match the input against this table ({', '.join(AGAINST_TABLES)})",
    )
    args = parser.parse_args(argv)
    settings, spark = start_job(args)
    matcher = Matcher(settings, spark)
    report: MatchReport | AgainstReport
    try:
        if args.against is not None:
            if (
                args.input is None
                or args.incremental
                or args.table is not None
                or args.pairs_table is not None
            ):
                raise ValueError(
                    "--against needs --input and --output "
                    "(no --table, --pairs-table or --incremental)"
                )
            report = matcher.match_against(
                args.input, against=args.against, output_csv=args.output, model_uri=args.model
            )
        else:
            report = matcher.match(
                args.input,
                output_csv=args.output,
                model_uri=args.model,
                incremental=args.incremental,
                table=args.table,
                pairs_table=args.pairs_table,
            )
    except (InputError, ContractError, ValueError) as exc:
        fail(str(exc))
        return
    for line in report.lines():
        print(line)
