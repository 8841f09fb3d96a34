"""The small plan's match lists built on the driver (``grouping._driver_matches``).

    .venv/bin/python benchmarks/driver_matches.py [--ids 27000] [--groups 1500]

What a 1,000-row ``?against=pois`` request over a dense 1M-row table hands it: ~27,000
ids (the uploads and the table rows read near them), most in no group, and a few
thousand in groups of two. Prints the best of ``--repeats`` timings and a SHA-256 of the
output (run it on two checkouts: equal hashes, equal lists). Never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

import pandas as pd

from poimatch import schema as S
from poimatch.stages.grouping import _driver_matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=27_000)
    parser.add_argument("--groups", type=int, default=1_500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(3)
    ids = pd.Series([f"k:{i:07d}" for i in range(args.ids)])
    pairs = []
    for _ in range(args.groups):
        a, b = rng.sample(range(args.ids), 2)
        pairs += [(ids[a], ids[a]), (ids[b], ids[a])]
    labels = pd.DataFrame(pairs, columns=[S.ID, S.GROUP_ID]).drop_duplicates(S.ID)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        out = _driver_matches(ids, labels)
        times.append(time.perf_counter() - started)
    digest = hashlib.sha256(out.to_csv(index=False).encode()).hexdigest()[:16]
    print(f"ids={len(ids)} labelled={len(labels)} best={min(times):.4f} s sha256={digest}")


if __name__ == "__main__":
    main()
