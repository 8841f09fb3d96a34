"""The distributed chain guard on a synthetic graph: seconds, Spark jobs and stages.

    .venv/bin/python benchmarks/chain_guard.py --groups 100000 --chains 300

The graph: ``--groups`` groups of 1-4 ids joined in a path by scores 0.6-1.0, and
``--chains`` chains of 8 clusters (4-6 ids each, scores 0.85-1.0) bridged by scores
0.5-0.8, so each chain (32-48 ids) is over the 25-row cap and the guard must split it.
:func:`poimatch.stages.grouping.group_matches` runs on it with every component
distributed (``local_max_edges=0``: what a table of more than ``grouping.local_max_edges``
matched edges takes), threshold 0.5, cap 25, in one ``local`` session. Prints the graph's
size, the seconds, the Spark jobs and stages of the call and its collect, the number of
groups and a digest of the output (to compare two versions of the code: run this file
with ``PYTHONPATH`` on each checkout's ``lib``). Never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import time

import pandas as pd

from poimatch import schema as S
from poimatch.config import load_settings
from poimatch.session import build_session
from poimatch.stages.grouping import group_matches


def graph(groups: int, chains: int, seed: int) -> tuple[list[str], list[tuple[str, str, float]]]:
    """Ids and scored edges of the synthetic graph (see the module's docstring)."""
    rng = random.Random(seed)
    ids: list[str] = []
    edges: list[tuple[str, str, float]] = []
    for g in range(groups):
        members = [f"g{g}-{i}" for i in range(rng.randrange(1, 5))]
        ids += members
        edges += [(a, b, rng.uniform(0.6, 1.0)) for a, b in itertools.pairwise(members)]
    for c in range(chains):
        previous = None
        for k in range(8):
            members = [f"c{c}-{k}-{i}" for i in range(rng.randrange(4, 7))]
            ids += members
            edges += [(a, b, rng.uniform(0.85, 1.0)) for a, b in itertools.pairwise(members)]
            if previous is not None:
                edges.append((previous, members[-1], rng.uniform(0.5, 0.8)))
            previous = members[0]
    return ids, edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--chains", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    ids, edges = graph(args.groups, args.chains, args.seed)
    print(f"ids={len(ids)} edges={len(edges)}", flush=True)
    spark = build_session(load_settings("local", []).spark)
    sc = spark.sparkContext
    id_frame = spark.createDataFrame(pd.DataFrame({S.ID: ids})).cache()
    edge_frame = spark.createDataFrame(
        pd.DataFrame(edges, columns=[S.ID_L, S.ID_R, S.SCORE])
    ).cache()
    id_frame.count()
    edge_frame.count()
    sc.setJobGroup("chain-guard", "benchmarks/chain_guard.py")
    started = time.perf_counter()
    out = group_matches(id_frame, edge_frame, threshold=0.5, max_group_size=25, local_max_edges=0)
    rows = sorted((r[S.ID], r[S.GROUP_ID], r[S.MATCHES]) for r in out.collect())
    seconds = time.perf_counter() - started
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup("chain-guard")
    stages = sum(len(info.stageIds) for j in jobs if (info := tracker.getJobInfo(j)))
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:12]
    groups = len({group for _, group, _ in rows})
    print(f"seconds={seconds:.1f} jobs={len(jobs)} stages={stages} groups={groups} digest={digest}")
    spark.stop()


if __name__ == "__main__":
    main()
