"""Promotion gate: promote @challenger to @champion only if it measurably wins.

    ./spark-submit.sh jobs/promote.py [--dry-run] [--eval-table PATH] [--eval-version N]
    ./spark-submit.sh jobs/promote.py --rollback        (champion back to @previous)

Both models match the fixed evaluation table (Delta, at a pinned version: the latest
unless --eval-version is given; the version used is printed and logged). The decision,
both scores and the reasons go to MLflow. Exit code 0 for either verdict; 2 for an
error (no challenger, no evaluation table, research environment).
"""

from poimatch.commands.promote import main

if __name__ == "__main__":
    main()
