"""Write seeded clustered embeddings and labels as .npy files, the inputs of the engine benchmarks.

One gaussian cluster per class around a random centre (float32), the shape of a trained
model's embeddings at the scale the benchmarks need:

    python bench/make_embeddings.py /tmp/b50k --n 50000 --d 64 --classes 100
    python bench/make_embeddings.py /tmp/b1m --n 1000000 --d 128 --classes 1000

writes ``embeddings.npy`` and ``labels.npy`` (int64) in the directory, written in blocks
so that the writer never holds more than the array itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

_BLOCK = 100_000


def write_embeddings(directory: Path, *, n: int, d: int, classes: int, seed: int) -> None:
    """Write ``embeddings.npy`` (n x d float32) and ``labels.npy`` (n int64) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 2.0
    labels = rng.integers(0, classes, n)
    embeddings = np.lib.format.open_memmap(
        directory / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, d)
    )
    for start in range(0, n, _BLOCK):
        block = labels[start : start + _BLOCK]
        noise = rng.standard_normal((block.size, d)).astype(np.float32)
        embeddings[start : start + block.size] = centres[block] + noise
    embeddings.flush()
    del embeddings
    np.save(directory / "labels.npy", labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--d", type=int, required=True)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_embeddings(args.directory, n=args.n, d=args.d, classes=args.classes, seed=args.seed)


if __name__ == "__main__":
    main()
