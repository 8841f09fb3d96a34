"""Generate synthetic POIs (with point_of_interest labels) as CSV or a Delta table.

./spark-submit.sh jobs/generate.py --rows 1000000 --seed 7 --output data/gen.csv
python jobs/generate.py --rows 20000 --output data/lake/generated --format delta
"""

from poimatch.commands.generate import main

if __name__ == "__main__":
    main()
