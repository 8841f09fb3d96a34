"""Train the matcher on labelled POIs, track it in MLflow and register it.

    ./spark-submit.sh jobs/train.py --help       (or: poimatch train --help)

The spark-submit entry point of ``poimatch train``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.train`.
"""

from poimatch.apps.commands.train import main

if __name__ == "__main__":
    main()
