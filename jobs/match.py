"""Match POIs with a registered model: the nightly batch and ad-hoc runs.

    ./spark-submit.sh jobs/match.py --input IN.csv --output OUT.csv [--model URI]
    ./spark-submit.sh jobs/match.py --input IN.csv --table PATH   (a Delta output)
    ./spark-submit.sh jobs/match.py [--incremental]      (nightly: the POI table)
    ./spark-submit.sh jobs/match.py --input NEW.csv --against pois --output OUT.csv

Without --input the POI table is matched and the Delta ``matches`` table updated.
With --input (a CSV or a Delta table) only what --output (CSV ``id,matches``) and
--table (Delta ``id,group_id,matches,status,reason``) name is written: no production
table, not even the quarantine. Rows are checked by the ingest's rules; every input
id is in the output exactly once (a row breaking a rule alone, with its reason), and
every row that was not matched is listed in ``OUT.rejected.csv`` beside --output (and
``<table>_rejected`` beside a Delta output). The default model is
``models:/<model.name>@champion``. ``--incremental`` reuses the last incremental
run's per-row and per-pair UDF results (state tables beside the output table) and
recomputes only what changed; the output equals a full run's. The nightly run also
writes the lookup table (``storage.lookup_table``: the matched rows laid out by cell).
``--against pois`` matches the input with itself and with the POI table through that
lookup table (read at its current version, printed), and writes ``--output``
(``id,matches,known_ids,known_groups``) only.
"""

from poimatch.commands.match import main

if __name__ == "__main__":
    main()
