"""The main job: the whole chain on built-in generated sample data.

    make run            (same as ./spark-submit.sh jobs/main.py --env local)

generate (train and test samples, different seeds) → ingest (Delta; the test sample
also becomes the promotion gate's evaluation table) → train
(MLflow, registry) → match the test sample with the model just trained →
evaluate, printing ``iou=<value>``.
"""

from poimatch.commands.demo import main

if __name__ == "__main__":
    main()
