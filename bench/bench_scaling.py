"""Scaling benchmark: one large job through the service on 1, 2 and 3 worker processes.

Each configuration gets a fresh deployment (redis-server, uvicorn, Celery workers with
``-c 1``, as in the integration tests), the same random-cluster embeddings (N x d,
``bench_engine.clustered_embeddings``) and one job (k, exact, cosine). It prints the
wall time from submit to ``succeeded``, the workers' CPU seconds, and the load average
before and after, then the ratios

  (a) sharding cost: sharded on 1 worker / unsharded on 1 worker (target <= 1.1)
  (b) speed-up of 2 and 3 workers over 1 (expect ~2 on 2 cores, no more with 3)

The workers run one thread each (NNKGEO_WORKER_THREADS=1), so that a worker process is
one core's worth of work; ``unsharded-1x-all-cores`` is one worker using every core,
the default deployment, for reference.

    python bench/bench_scaling.py --n 200000 --d 128 --k 30 --out scaling.json
    python bench/bench_scaling.py --n 20000 --d 32 --configs sharded-2x unsharded-1x
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine import clustered_embeddings  # noqa: E402
from bench.make_embeddings import write_embeddings  # noqa: E402


@dataclass(frozen=True)
class Configuration:
    name: str
    workers: int
    sharded: bool
    threads_per_worker: int  # 0 = every core


CONFIGURATIONS = {
    c.name: c
    for c in (
        Configuration("unsharded-1x", workers=1, sharded=False, threads_per_worker=1),
        Configuration("sharded-1x", workers=1, sharded=True, threads_per_worker=1),
        Configuration("sharded-2x", workers=2, sharded=True, threads_per_worker=1),
        Configuration("sharded-3x", workers=3, sharded=True, threads_per_worker=1),
        Configuration("unsharded-1x-all-cores", workers=1, sharded=False, threads_per_worker=0),
    )
}


@dataclass(frozen=True)
class Measurement:
    configuration: str
    blocks: int
    wall_s: float
    job_s: float
    worker_cpu_s: float
    load_before: float
    load_after: float


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _wait_for_quiet(threshold: float, max_wait_s: float) -> float:
    """Wait (a while at most) for other work on the machine to calm down; the 1-min load."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def _process_tree_cpu_s(pid: int) -> float:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total
    return 0.0


@contextlib.contextmanager
def _deployment(root: Path, configuration: Configuration, *, shard_rows: int) -> Iterator[Any]:
    """Redis, the API and `configuration.workers` workers; stopped on exit."""
    from tests.integration.stack import ServiceStack

    settings = {
        "NNKGEO_WORKER_THREADS": str(configuration.threads_per_worker),
        "NNKGEO_SHARD_MIN_POINTS": "50000" if configuration.sharded else str(2**40),
        "NNKGEO_SHARD_ROWS": str(shard_rows),
        "NNKGEO_LOG_LEVEL": "WARNING",
    }
    stack = ServiceStack(root, settings=settings)
    workers = []
    try:
        stack.start()
        workers.append(stack.worker)
        for _ in range(configuration.workers - 1):
            node = stack.start_worker()
            workers.append(stack.worker)
            stack.wait_ready(worker=node)
        yield stack, workers
    finally:
        for worker in workers[1:]:
            if worker is not None:
                worker.stop()
        stack.worker = workers[0] if workers else stack.worker
        stack.stop()


def _upload(client: Any, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    response = client.post(
        "/v1/datasets?format=npy",
        content=buffer.getvalue(),
        headers={"Content-Type": "application/octet-stream"},
    )
    response.raise_for_status()
    return response.json()["id"]


def measure(
    configuration: Configuration,
    points: np.ndarray,
    labels: np.ndarray,
    *,
    k: int,
    knn: str,
    shard_rows: int,
    quiet_load: float,
    quiet_wait_s: float,
) -> Measurement:
    from datetime import datetime

    with (
        tempfile.TemporaryDirectory(prefix="nnkgeo-scaling-") as root,
        _deployment(Path(root), configuration, shard_rows=shard_rows) as (stack, workers),
        stack.client("alpha") as client,
    ):
        embeddings_id, labels_id = _upload(client, points), _upload(client, labels)
        body = {
            "sets": [
                {
                    "name": "bench",
                    "embeddings": {"dataset": embeddings_id},
                    "labels": {"dataset": labels_id},
                }
            ],
            "params": {"k": k, "knn": knn, "kernel": "cosine", "device": "cpu"},
        }
        load_before = _wait_for_quiet(quiet_load, quiet_wait_s)
        cpu_before = sum(_process_tree_cpu_s(w.process.pid) for w in workers)
        started = time.perf_counter()
        response = client.post("/v1/jobs", json=body)
        response.raise_for_status()
        job_id = response.json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(0.25)
        wall_s = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"{configuration.name}: job ended {job['status']}: {job}")
        cpu_s = sum(_process_tree_cpu_s(w.process.pid) for w in workers) - cpu_before
        from jobstate.settings import Settings
        from jobstate.store import Store

        run = Store.from_settings(Settings(redis_url=stack.redis_url)).get_run("alpha", job_id, 1)
        job_s = (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        ).total_seconds()
        return Measurement(
            configuration=configuration.name,
            blocks=run.plan.total_blocks if run else 1,
            wall_s=wall_s,
            job_s=job_s,
            worker_cpu_s=cpu_s,
            load_before=load_before,
            load_after=os.getloadavg()[0],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn", choices=["exact", "approximate", "auto"], default="exact")
    parser.add_argument(
        "--classes",
        type=int,
        help="one gaussian cluster per class (bench/make_embeddings.py), as at 1M x 1,000 classes",
    )
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=32_768,
        help="NNKGEO_SHARD_ROWS (the default gives 200k points 6 blocks: 1, 2 or 3 per worker)",
    )
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS)
    )
    parser.add_argument(
        "--quiet-load", type=float, default=1.0, help="wait for this 1-min load before a run"
    )
    parser.add_argument("--quiet-wait-s", type=float, default=120)
    parser.add_argument("--out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args()

    if args.classes is None:
        points, labels = clustered_embeddings(args.n, args.d, seed=args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="nnkgeo-scaling-data-") as data:
            write_embeddings(Path(data), n=args.n, d=args.d, classes=args.classes, seed=args.seed)
            points = np.load(Path(data) / "embeddings.npy")
            labels = np.load(Path(data) / "labels.npy")
    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.n} x {args.d}, k={args.k}, {args.knn}, cosine, blocks of {args.shard_rows} rows",
        flush=True,
    )
    measurements: dict[str, Measurement] = {}
    for name in args.configs:
        result = measure(
            CONFIGURATIONS[name],
            points,
            labels,
            k=args.k,
            knn=args.knn,
            shard_rows=args.shard_rows,
            quiet_load=args.quiet_load,
            quiet_wait_s=args.quiet_wait_s,
        )
        measurements[name] = result
        print(
            f"{name:>24}: {result.wall_s:7.1f} s submit-to-succeeded "
            f"(job {result.job_s:.1f} s, {result.blocks} blocks, "
            f"workers' CPU {result.worker_cpu_s:.0f} s); "
            f"load {result.load_before:.2f} before, {result.load_after:.2f} after",
            flush=True,
        )

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator in measurements and denominator in measurements:
            return measurements[numerator].wall_s / measurements[denominator].wall_s
        return None

    ratios = {
        "sharding_cost (sharded-1x / unsharded-1x, target <= 1.1)": ratio(
            "sharded-1x", "unsharded-1x"
        ),
        "speedup 2 workers (sharded-1x / sharded-2x)": ratio("sharded-1x", "sharded-2x"),
        "speedup 3 workers (sharded-1x / sharded-3x)": ratio("sharded-1x", "sharded-3x"),
        "speedup 2 workers over the unsharded job (unsharded-1x / sharded-2x)": ratio(
            "unsharded-1x", "sharded-2x"
        ),
    }
    for label, value in ratios.items():
        if value is not None:
            print(f"{label}: {value:.2f}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "machine": _cpu_model(),
                    "cores": os.cpu_count(),
                    "n": args.n,
                    "d": args.d,
                    "k": args.k,
                    "shard_rows": args.shard_rows,
                    "measurements": [asdict(m) for m in measurements.values()],
                    "ratios": ratios,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
