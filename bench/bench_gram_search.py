"""The exact in-sample search alone: nnkgeo's tiled Gram search against faiss's flat index.

Both search every point of an embeddings file for its nearest others in one process,
timed in turn ``--repeats`` times (the ratio of each turn compares the two under the
same load; the median of those ratios is quoted): :func:`gram_search` for k + 9 results
(what :func:`exact_candidates` asks for), and faiss ``IndexFlatIP`` for k + 10 (the
same, the point itself included) in blocks of 4,096 queries. Also printed: the search
without its starting thresholds (each row from -inf), which shows what they save. The
load average is printed: figures taken above 0.5 are not a quiet-machine measure.

    python bench/bench_gram_search.py /tmp/nnkgeo-engine-targets/50k/embeddings.npy --k 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.geometry import gram_search

_QUERY_BLOCK = 4_096
_TIE_SLACK = 8


def _faiss_search(vectors: np.ndarray, width: int) -> None:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    for start in range(0, vectors.shape[0], _QUERY_BLOCK):
        index.search(vectors[start : start + _QUERY_BLOCK], width + 1)


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    vectors = np.ascontiguousarray(np.load(args.embeddings), dtype=np.float32)
    faiss.normalize_L2(vectors)
    width = args.k + 1 + _TIE_SLACK
    print(f"N={vectors.shape[0]} d={vectors.shape[1]} k={args.k} width={width}")
    load_before = os.getloadavg()[0]
    gram_search.warm_up()

    def unseeded() -> None:
        bounds = np.full(vectors.shape[0], -np.inf, dtype=np.float32)
        with mock.patch.object(gram_search, "_starting_thresholds", return_value=bounds):
            gram_search.gram_search(vectors, width, metric="cosine")

    ours, reference, plain = [], [], []
    for _ in range(args.repeats):
        ours.append(_timed(lambda: gram_search.gram_search(vectors, width, metric="cosine")))
        reference.append(_timed(lambda: _faiss_search(vectors, width)))
        plain.append(_timed(unseeded))
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    print(f"gram_search: {statistics.median(ours):.3f} s (median of {args.repeats})")
    print(f"  without starting thresholds: {statistics.median(plain):.3f} s")
    print(f"faiss IndexFlatIP: {statistics.median(reference):.3f} s")
    print(
        f"ratio gram/faiss: {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    load_after = os.getloadavg()[0]
    quiet = "a quiet-machine figure" if load_before < 0.5 else "NOT a quiet-machine figure"
    print(f"load average before {load_before:.2f}, after {load_after:.2f}: {quiet}")


if __name__ == "__main__":
    main()
