"""Recovery benchmark: how long a job takes to finish after its whole worker is killed.

Starts its own stack (a private redis-server on a free port, one Celery worker, one
uvicorn API, a temporary data dir; see tests/integration/stack.py) with the DEFAULT lease
settings (``NNKGEO_LEASE_S`` unset: 30 s, renewed every 10 s, the reaper sweeping every
10 s). Then, ``--kills`` times:

  1. submit a job that runs several seconds (random points, a new seed each time, so
     that no run is a cache hit) and wait until it reports its first progress in the
     core (a second or two after its claim, so its lease has nearly 30 s left: close
     to the worst case);
  2. SIGKILL the worker's whole process group (main process and pool child at once, as
     a lost host), and start a new worker at once;
  3. time the job from the kill to ``succeeded``, from the new worker answering
     ``/readyz`` to ``succeeded``, and from the kill to the claim of attempt 2 (the
     reaper's requeue, read from the job record).

It prints each kill's figures, then the median, min, max and interquartile range of
each, and the load average before and after (the machine may be shared).

    .venv/bin/python bench/bench_recovery.py --kills 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Recovery:
    """One kill's timings, in seconds (monotonic clock of this process)."""

    kill_to_succeeded_s: float
    up_to_succeeded_s: float
    kill_to_claim_s: float
    kill_to_up_s: float
    attempts: int

    @property
    def claim_to_succeeded_s(self) -> float:
        """The rerun: attempt 2's claim to success (cold imports of the new worker's child)."""
        return self.kill_to_succeeded_s - self.kill_to_claim_s


def loadavg() -> str:
    """The three load averages, as /proc/loadavg gives them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def spread(values: list[float]) -> dict[str, float]:
    """Median, extremes and interquartile range of `values`."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": q3 - q1,
    }


def start_stack(root: Path, extra: dict[str, str]) -> Any:
    """A stack with the default lease settings: nothing but the log level is set."""
    from tests.integration.stack import ServiceStack

    if shutil.which("redis-server") is None:
        # ServiceStack would fall back to a shared Redis and flush a database of it.
        raise SystemExit("redis-server is not on PATH; the benchmark needs a private one")
    stack = ServiceStack(root=root, settings={"NNKGEO_LOG_LEVEL": "INFO", **extra})
    stack.start()
    return stack


def upload_points(client: Any, seed: int, n: int, dim: int) -> str:
    from tests.integration.helpers import upload_array

    points = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return upload_array(client, points)


def one_kill(
    stack: Any, client: Any, store: Any, *, seed: int, args: argparse.Namespace
) -> Recovery:
    """Submit a job, kill its worker mid-job, start another; the recovery's timings."""
    from tests.integration.helpers import job_body, submit, wait_for_status
    from tests.integration.stack import wait_until

    dataset = upload_points(client, seed, args.points, args.dim)
    response = submit(client, job_body(dataset, name=f"recovery-{seed}", k=args.k))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_for_status(client, job_id, ("running",), timeout_s=120, interval_s=0.05)
    # Past the claim ("starting") and the input load: the core reports its own stages.
    wait_until(
        lambda: (
            client.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"]
            not in ("queued", "starting")
        ),
        timeout_s=60,
        interval_s=0.05,
        what="the job's first progress",
    )

    stack.kill_worker()
    killed = time.monotonic()
    stack.restart_worker()  # starts one and waits until /readyz names it
    up = time.monotonic()

    def claimed_again() -> bool:
        record = store.get_job("alpha", job_id)
        return record is not None and record.attempts >= 2

    wait_until(claimed_again, timeout_s=args.timeout_s, interval_s=0.05, what="attempt 2")
    claimed = time.monotonic()
    final = wait_for_status(client, job_id, timeout_s=args.timeout_s, interval_s=0.05)
    done = time.monotonic()
    if final["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {final['status']}: {final}")
    record = store.get_job("alpha", job_id)
    return Recovery(
        kill_to_succeeded_s=done - killed,
        up_to_succeeded_s=done - up,
        kill_to_claim_s=claimed - killed,
        kill_to_up_s=up - killed,
        attempts=record.attempts if record is not None else -1,
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="worker kills to time")
    parser.add_argument("--points", type=int, default=12_000, help="points of each job")
    parser.add_argument("--dim", type=int, default=64, help="dimensions of each job")
    parser.add_argument("--k", type=int, default=50, help="neighbours of each job")
    parser.add_argument("--timeout-s", type=float, default=180, help="bound of each wait")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the stack's processes (e.g. NNKGEO_LEASE_S=10)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the finally block stops the stack.
    signal.signal(signal.SIGTERM, _interrupt)
    from jobstate.settings import Settings
    from jobstate.store import Store

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python: {platform.python_version()}")
    print(f"job: {args.points} x {args.dim} float32, k={args.k}; kills: {args.kills}")
    if args.env:
        print(f"stack_env: {' '.join(args.env)}")
    load_before = loadavg()
    print(f"loadavg_before: {load_before}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="nnkgeo-bench-recovery-"))
    stack = None
    recoveries: list[Recovery] = []
    try:
        started = time.monotonic()
        stack = start_stack(tmp / "stack", dict(item.split("=", 1) for item in args.env))
        print(f"stack up in {time.monotonic() - started:.1f} s at {stack.base_url}", flush=True)
        store = Store.from_settings(Settings(redis_url=stack.redis_url))
        with stack.client("alpha") as client:
            for kill in range(args.kills):
                recovery = one_kill(stack, client, store, seed=1000 + kill, args=args)
                recoveries.append(recovery)
                print(
                    f"kill {kill + 1}: kill->succeeded {recovery.kill_to_succeeded_s:.1f} s, "
                    f"worker up->succeeded {recovery.up_to_succeeded_s:.1f} s, "
                    f"kill->attempt 2 {recovery.kill_to_claim_s:.1f} s, "
                    f"kill->worker up {recovery.kill_to_up_s:.1f} s, "
                    f"load1 {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        store.close()
    except BaseException:
        if stack is not None:
            for managed in (stack.api, stack.worker):
                if managed is not None:
                    print(f"--- {managed.name} log ---\n{managed.log_tail()}", file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = loadavg()
    print(f"loadavg_after: {load_after}")
    summary: dict[str, Any] = {"loadavg_before": load_before, "loadavg_after": load_after}
    names = (
        "kill_to_succeeded_s",
        "up_to_succeeded_s",
        "kill_to_claim_s",
        "claim_to_succeeded_s",
        "kill_to_up_s",
    )
    for name in names:
        figures = spread([getattr(r, name) for r in recoveries])
        summary[name] = figures
        print(
            f"{name}: median {figures['median']:.1f} s, min {figures['min']:.1f}, "
            f"max {figures['max']:.1f}, IQR {figures['iqr']:.1f} (n={len(recoveries)})"
        )
    if args.json:
        summary["kills"] = [asdict(r) for r in recoveries]
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
