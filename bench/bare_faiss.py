"""The reference of the engine benchmarks: a bare faiss kNN search of an embeddings file.

What a user would run instead of nnkgeo to get k neighbours per point, as one whole
process from start to exit (imports and loading included), to be timed against
``nnkgeo analyze`` with ``../shared/tools/alternate``:

    python bench/bare_faiss.py /tmp/b50k/embeddings.npy --k 30                 # IndexFlatIP
    python bench/bare_faiss.py /tmp/b1m/embeddings.npy --k 30 --index ivf      # IVF-Flat

Points are L2-normalised (the cosine kernel's metric, as nnkgeo searches) and every point
is searched for k + 1 neighbours (itself included). IVF-Flat: nlist = 4 sqrt(N), trained
on a seeded sample of 39 points per list (faiss's minimum), nprobe 8: the issue's reference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import faiss
import numpy as np

_QUERY_BLOCK = 16_384
# faiss's own minimum: it warns when trained on fewer than 39 points per list.
_TRAIN_PER_LIST = 39


def build_index(vectors: np.ndarray, *, kind: str, nprobe: int, seed: int) -> faiss.Index:
    """A flat inner-product index, or an IVF-Flat one trained on a seeded sample."""
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(
            n, size=min(n, nlist * _TRAIN_PER_LIST), replace=False
        )
        index.train(vectors[np.sort(sample)])
        index.nprobe = nprobe
    index.add(vectors)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--index", choices=["flat", "ivf"], default="flat")
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    vectors = np.ascontiguousarray(np.load(args.embeddings), dtype=np.float32)
    faiss.normalize_L2(vectors)
    started = time.perf_counter()
    index = build_index(vectors, kind=args.index, nprobe=args.nprobe, seed=args.seed)
    built = time.perf_counter()
    neighbours = np.empty((vectors.shape[0], args.k + 1), dtype=np.int64)
    for start in range(0, vectors.shape[0], _QUERY_BLOCK):
        _, found = index.search(vectors[start : start + _QUERY_BLOCK], args.k + 1)
        neighbours[start : start + found.shape[0]] = found
    searched = time.perf_counter()
    print(f"{args.index}: build {built - started:.1f} s, search {searched - built:.1f} s")


if __name__ == "__main__":
    main()
