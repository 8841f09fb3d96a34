"""Ingest a POI CSV into the Delta POI table; bad rows go to quarantine with a reason.

./spark-submit.sh jobs/ingest.py --input data/sample/pois.csv
./spark-submit.sh jobs/ingest.py --input labelled.csv --table eval   (promotion gate's table)
"""

from poimatch.commands.ingest import main

if __name__ == "__main__":
    main()
