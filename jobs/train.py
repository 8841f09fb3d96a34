"""Train the matcher on labelled POIs, track it in MLflow and register it.

    ./spark-submit.sh jobs/train.py --input TRAIN.csv          (or a Delta table path)
    ./spark-submit.sh jobs/train.py --input A.csv --input B.csv  (tables blocked apart)

Prints the registered model on a line of its own: ``model_uri=models:/<name>/<version>``.
"""

from poimatch.commands.train import main

if __name__ == "__main__":
    main()
