"""The main job: the whole chain on built-in generated sample data.

    ./spark-submit.sh jobs/main.py --help       (or: poimatch demo --help)

The spark-submit entry point of ``poimatch demo``: the command, its options and what it
writes are in :mod:`poimatch.apps.commands.demo`.
"""

from poimatch.apps.commands.demo import main

if __name__ == "__main__":
    main()
