"""Service benchmark: cached-report latency, tiny-job overhead, upload memory.

Starts its own stack (a private redis-server on a free port, one Celery worker, one
uvicorn API, a temporary data dir; see tests/integration/stack.py) and measures the
three "How fast" figures of issue 3:

  1. GET /v1/jobs/{id}/report on a cache hit, driven from another process: open-loop at
     a fixed arrival rate (target p99 <= 20 ms at 200 req/s on 2 cores), then
     closed-loop for the maximum throughput.
  2. A tiny job end to end (100 x 8 float32 + labels, k=5): POST /v1/jobs to `succeeded`
     seen by polling every 5 ms, median over distinct data (target < 300 ms), beside the
     in-process `workers.geometry.analyze` time of the same data and the cache-hit submit.
  3. The API process RSS while a 1 GiB npy is streamed up (target growth < 100 MiB).

Before each measurement it waits (up to --quiet-wait-s) for the 1-minute load average
to fall below --quiet-load, and prints the load average beside the figures.

    .venv/bin/python bench/bench_service.py
    .venv/bin/python bench/bench_service.py --rate 200 --duration 20 --jobs 20 --upload-gib 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIB = 1 << 20
TINY_N, TINY_D, TINY_K, TINY_CLASSES = 100, 8, 5, 5


# Helpers ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def code_version() -> str:
    """The commit measured, and which files under service/ and workers/ differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "workers", "api_schemas"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def load1() -> float:
    return os.getloadavg()[0]


def _busy_and_steal_s() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq, t.steal


def busy_cores(sample_s: float) -> float:
    """Cores busy machine-wide over the next `sample_s` seconds."""
    busy0, _ = _busy_and_steal_s()
    time.sleep(sample_s)
    return (_busy_and_steal_s()[0] - busy0) / sample_s


def wait_quiet(args: argparse.Namespace, what: str) -> float:
    """Wait until the machine is quiet; return the 1-minute load average then.

    Quiet: load1 below --quiet-load and, over a 2 s sample, fewer than --quiet-busy
    cores busy (load1 lags by a minute; the sample catches a job that just started).
    Gives up after --quiet-wait-s and measures anyway, saying so.
    """
    deadline = time.monotonic() + args.quiet_wait_s
    announced = False
    while True:
        load = load1()
        busy = busy_cores(2.0) if load < args.quiet_load else float("nan")
        if busy < args.quiet_busy:
            return load
        if time.monotonic() >= deadline:
            print(
                f"  [{what}] never quiet; measuring at load1 {load:.2f}"
                + (f", {busy:.2f} cores busy" if busy == busy else ""),
                flush=True,
            )
            return load
        if not announced:
            print(
                f"  [{what}] waiting for load1 < {args.quiet_load} and < {args.quiet_busy} "
                f"busy cores (load1 now {load:.2f}) ...",
                flush=True,
            )
            announced = True
        time.sleep(3)


class CpuWindow:
    """CPU used machine-wide, by this benchmark's processes, and by everything else.

    Ours: this process (with the load generator once it was waited for), the API, the
    worker and its pool children, and Redis. Others = machine busy - ours: what other
    users of the machine took while we measured. Steal is time the hypervisor gave away.
    """

    def __init__(self, stack: Any) -> None:
        self.pids = [os.getpid()] + [
            managed.process.pid
            for managed in (stack.api, stack.worker, stack.redis_process)
            if managed is not None
        ]

    def _ours_s(self) -> float:
        import psutil

        processes: dict[int, psutil.Process] = {}
        for pid in self.pids:  # the stack's processes are this one's children: dedupe
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    processes[process.pid] = process
        total = 0.0
        for process in processes.values():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
                if process.pid == os.getpid():  # children already waited for
                    total += times.children_user + times.children_system
        return total

    def __enter__(self) -> CpuWindow:
        self.load_start = load1()
        self.wall0 = time.perf_counter()
        self.busy0, self.steal0 = _busy_and_steal_s()
        self.ours0 = self._ours_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall0
        busy, steal = _busy_and_steal_s()
        self.load_end = load1()
        self.busy = (busy - self.busy0) / wall
        self.ours = (self._ours_s() - self.ours0) / wall
        self.others = max(0.0, self.busy - self.ours)
        self.steal = (steal - self.steal0) / wall

    def summary(self) -> dict[str, float]:
        return {
            "load1_start": self.load_start,
            "load1_end": self.load_end,
            "busy_cores": self.busy,
            "our_cores": self.ours,
            "other_cores": self.others,
            "steal_cores": self.steal,
        }

    def describe(self) -> str:
        return (
            f"load1 {self.load_start:.2f} -> {self.load_end:.2f}; cores busy {self.busy:.2f} "
            f"of {os.cpu_count()}: ours {self.ours:.2f}, others {self.others:.2f}, "
            f"steal {self.steal:.2f}"
        )


def print_metric(name: str, value: str, target: str | None = None) -> None:
    print(f"{name}: {value}" + (f" ({target})" if target else ""), flush=True)


def proc_status_kib(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmRSS of a process, in KiB, from /proc/PID/status."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(rest.split()[0])
    return fields


# The load generator (runs in its own process) -------------------------------------------


async def _open_loop(
    base_url: str, headers: dict[str, str], path: str, rate: float, duration: float, conns: int
) -> dict[str, Any]:
    """Send requests at fixed times, whatever the answers do, over `conns` connections.

    Each connection has its own client and takes the next due request from one queue:
    a request due while every connection is busy waits in that queue, and its latency,
    counted from the time it was due, includes the wait (no coordinated omission).
    One client with a shared pool would queue inside httpcore, whose waiting list
    costs more CPU the longer it gets and collapses the client under overload.
    """
    import httpx

    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=30,
        )
        for _ in range(conns)
    ]
    due: asyncio.Queue[float] = asyncio.Queue()
    from_schedule: list[float] = []
    from_send: list[float] = []
    failures: dict[str, int] = {}
    last_done = 0.0

    async def connection(client: httpx.AsyncClient) -> None:
        nonlocal last_done
        while True:
            scheduled = await due.get()
            sent = time.perf_counter()
            try:
                answer = await client.get(path)
                key = None if answer.status_code == 200 else str(answer.status_code)
            except Exception as error:
                key = type(error).__name__
            done = time.perf_counter()
            last_done = max(last_done, done)
            if key is None:
                from_schedule.append(done - scheduled)
                from_send.append(done - sent)
            else:
                failures[key] = failures.get(key, 0) + 1
            due.task_done()

    try:
        for client in clients:  # open every connection, and warm both ends up
            (await client.get(path)).raise_for_status()
        workers = [asyncio.create_task(connection(client)) for client in clients]
        n = int(rate * duration)
        cpu0 = time.process_time()
        start = time.perf_counter() + 0.05
        max_lag = 0.0
        max_backlog = 0
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            max_backlog = max(max_backlog, due.qsize())
            due.put_nowait(scheduled)
        # Give stragglers a grace period; what is still unanswered then counts as failed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(due.join(), timeout=10)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        unfinished = n - len(from_schedule) - sum(failures.values())
        if unfinished:
            failures["unfinished"] = unfinished
        elapsed = last_done - start
        return {
            "mode": "open",
            "target_rate": rate,
            "connections": conns,
            "requests": n,
            "ok": len(from_schedule),
            "failures": failures,
            "elapsed_s": elapsed,
            "achieved_rps": len(from_schedule) / elapsed if elapsed > 0 else 0.0,
            "latency_s": from_schedule,
            "service_latency_s": from_send,
            "max_dispatch_lag_s": max_lag,
            "max_backlog": max_backlog,
            "client_cpu_s": time.process_time() - cpu0,
        }
    finally:
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)


async def _closed_loop(
    base_url: str, headers: dict[str, str], path: str, duration: float, concurrency: int
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30
    ) as client:
        for _ in range(20):
            (await client.get(path)).raise_for_status()
        latencies: list[float] = []
        failures = 0
        cpu0 = time.process_time()
        start = time.perf_counter()
        stop_at = start + duration

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    answer = await client.get(path)
                    ok = answer.status_code == 200
                except Exception:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {
            "mode": "closed",
            "concurrency": concurrency,
            "ok": len(latencies),
            "failures": failures,
            "elapsed_s": elapsed,
            "achieved_rps": len(latencies) / elapsed,
            "latency_s": latencies,
            "client_cpu_s": time.process_time() - cpu0,
        }


def loadgen_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_service.py loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--mode", choices=["open", "closed"], required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    headers = {"Authorization": f"Bearer {args.key}"}
    if args.mode == "open":
        coro = _open_loop(args.url, headers, args.path, args.rate, args.duration, args.connections)
    else:
        coro = _closed_loop(args.url, headers, args.path, args.duration, args.concurrency)
    json.dump(asyncio.run(coro), sys.stdout)


def run_loadgen(stack: Any, key: str, path: str, *extra: str, timeout_s: float) -> dict[str, Any]:
    """Run the load generator in a subprocess; return its JSON result."""
    import psutil

    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "loadgen",
        "--url",
        stack.base_url,
        "--key",
        key,
        "--path",
        path,
        *extra,
    ]
    api = psutil.Process(stack.api.process.pid)
    cpu_before = api.cpu_times()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}):\n{err.decode()}")
    cpu_after = api.cpu_times()
    result = json.loads(out)
    result["server_cpu_s"] = (cpu_after.user + cpu_after.system) - (
        cpu_before.user + cpu_before.system
    )
    return result


# The stack ------------------------------------------------------------------------------


def start_stack(root: Path, *, max_upload_bytes: int, extra: dict[str, str]) -> Any:
    from tests.integration.stack import ServiceStack

    if shutil.which("redis-server") is None:
        # ServiceStack would fall back to a shared Redis and flush a database of it.
        raise SystemExit("redis-server is not on PATH; the benchmark needs a private one")
    stack = ServiceStack(
        root=root,
        settings={
            "NNKGEO_MAX_UPLOAD_BYTES": str(max_upload_bytes),
            "NNKGEO_LOG_LEVEL": "INFO",
            **extra,
        },
    )
    return stack


def upload_array(client: Any, array: np.ndarray) -> str:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    answer = client.post(
        "/v1/datasets",
        params={"format": "npy"},
        content=buffer.getvalue(),
        headers={"Content-Type": "application/octet-stream"},
    )
    answer.raise_for_status()
    return answer.json()["id"]


def job_body(embeddings_id: str, labels_id: str, *, k: int) -> dict[str, Any]:
    return {
        "sets": [
            {
                "name": "s",
                "embeddings": {"dataset": embeddings_id},
                "labels": {"dataset": labels_id},
            }
        ],
        "params": {"k": k},
    }


FINISHED = {"succeeded", "failed", "canceled"}


def submit_and_wait(
    client: Any, body: dict[str, Any], *, poll_s: float, timeout_s: float = 120
) -> dict[str, Any]:
    """POST a job and poll it until it finishes; times measured in this process."""
    started = time.perf_counter()
    answer = client.post("/v1/jobs", json=body)
    posted = time.perf_counter()
    answer.raise_for_status()
    job = answer.json()
    polls = 0
    while job["status"] not in FINISHED:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"job {job['id']} still {job['status']} after {timeout_s} s")
        time.sleep(poll_s)
        job = client.get(f"/v1/jobs/{job['id']}").json()
        polls += 1
    done = time.perf_counter()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
    return {"job": job, "post_s": posted - started, "total_s": done - started, "polls": polls}


def iso_s(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# 1. Cached report under load ------------------------------------------------------------


def clustered(n: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 2.0
    labels = rng.integers(0, classes, n)
    points = centres[labels] + rng.standard_normal((n, d)).astype(np.float32)
    return points.astype(np.float32), labels.astype(np.int64)


def bench_report(stack: Any, key: str, args: argparse.Namespace) -> dict[str, Any]:
    print("\n== 1. GET /v1/jobs/{id}/report on a cache hit, from another process ==")
    with stack.client() as client:
        points, labels = clustered(args.report_n, 32, 10, seed=1)
        # 10% wrong labels, so that the report carries a full list of suspects.
        flip = np.random.default_rng(4).random(len(labels)) < 0.1
        labels[flip] = (labels[flip] + 1) % 10
        body = job_body(upload_array(client, points), upload_array(client, labels), k=30)
        submit_and_wait(client, body, poll_s=0.05)
        cached = client.post("/v1/jobs", json=body).json()
        assert cached["cached"] and cached["status"] == "succeeded", cached
        path = f"/v1/jobs/{cached['id']}/report"
        report = client.get(path)
        report.raise_for_status()
    size = len(report.content)
    print(f"  report of a {args.report_n} x 32 set, k=30: {size} bytes; path {path}")

    wait_quiet(args, "report open-loop")
    with CpuWindow(stack) as open_window:
        opened = run_loadgen(
            stack,
            key,
            path,
            "--mode",
            "open",
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--connections",
            str(args.connections),
            timeout_s=args.duration * 4 + 60,
        )
    lat = opened["latency_s"]
    svc = opened["service_latency_s"]
    print_metric("report_bytes", str(size))
    print_metric(
        "report_open_loop_achieved_rps",
        f"{opened['achieved_rps']:.1f} req/s of {args.rate:.0f} offered, "
        f"{opened['ok']}/{opened['requests']} ok, failures {opened['failures'] or 0}",
    )
    print_metric("report_open_loop_p50", ms(percentile(lat, 50)))
    print_metric("report_open_loop_p90", ms(percentile(lat, 90)))
    p99 = percentile(lat, 99)
    print_metric(
        "report_open_loop_p99",
        ms(p99),
        f"target <= 20 ms at 200 req/s: {p99 / 0.020:.2f}x of target",
    )
    print_metric("report_open_loop_max", ms(max(lat) if lat else float("nan")))
    print_metric(
        "report_open_loop_p99_from_send",
        ms(percentile(svc, 99))
        + f" (max client dispatch lag {ms(opened['max_dispatch_lag_s'])}, "
        + f"max queue depth {opened['max_backlog']}, "
        + f"{opened['connections']} connections)",
    )
    print_metric(
        "report_open_loop_cpu_per_request",
        f"server {opened['server_cpu_s'] / max(opened['ok'], 1) * 1e3:.2f} ms, "
        f"client {opened['client_cpu_s'] / max(opened['ok'], 1) * 1e3:.2f} ms",
    )
    print_metric("report_open_loop_machine", open_window.describe())

    wait_quiet(args, "report closed-loop")
    with CpuWindow(stack) as closed_window:
        closed = run_loadgen(
            stack,
            key,
            path,
            "--mode",
            "closed",
            "--duration",
            str(args.closed_duration),
            "--concurrency",
            str(args.concurrency),
            timeout_s=args.closed_duration * 4 + 60,
        )
    clat = closed["latency_s"]
    print_metric(
        "report_closed_loop_max_rps",
        f"{closed['achieved_rps']:.0f} req/s ({args.concurrency} connections, "
        f"{args.closed_duration:.0f} s, {closed['failures']} failures)",
    )
    print_metric(
        "report_closed_loop_latency",
        f"p50 {ms(percentile(clat, 50))}, p99 {ms(percentile(clat, 99))}",
    )
    server_ms = closed["server_cpu_s"] / max(closed["ok"], 1) * 1e3
    print_metric(
        "report_closed_loop_cpu",
        f"server {closed['server_cpu_s']:.1f} s, client {closed['client_cpu_s']:.1f} s "
        f"over {closed['elapsed_s']:.1f} s; server {server_ms:.2f} ms CPU/request, so one "
        f"busy core would serve about {1e3 / server_ms:.0f} req/s",
    )
    print_metric("report_closed_loop_machine", closed_window.describe())
    return {
        "report_bytes": size,
        "open": {k: v for k, v in opened.items() if not k.endswith("latency_s")}
        | {
            "p50_s": percentile(lat, 50),
            "p90_s": percentile(lat, 90),
            "p99_s": p99,
            "max_s": max(lat) if lat else None,
            "p99_from_send_s": percentile(svc, 99),
            "machine": open_window.summary(),
        },
        "closed": {k: v for k, v in closed.items() if k != "latency_s"}
        | {
            "p50_s": percentile(clat, 50),
            "p99_s": percentile(clat, 99),
            "machine": closed_window.summary(),
        },
    }


# 2. A tiny job end to end ---------------------------------------------------------------


def bench_tiny_jobs(stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== 2. tiny job: {TINY_N} x {TINY_D} float32 + labels, k={TINY_K} ==")
    from api_schemas import AnalysisParams
    from workers.geometry import EmbeddingSet, analyze

    rng = np.random.default_rng(2)
    labels = (np.arange(TINY_N) % TINY_CLASSES).astype(np.int64)
    datas = [rng.standard_normal((TINY_N, TINY_D)).astype(np.float32) for _ in range(args.jobs + 2)]
    params = AnalysisParams(k=TINY_K)
    sets = [EmbeddingSet(name="s", embeddings=x, labels=labels) for x in datas]
    analyze([sets[0]], params=params)  # imports torch and faiss here, before measuring
    with stack.client() as client:
        labels_id = upload_array(client, labels)
        bodies = [job_body(upload_array(client, x), labels_id, k=TINY_K) for x in datas]
        # The first job of a fresh worker child pays its lazy imports (torch, faiss...).
        cold = submit_and_wait(client, bodies[0], poll_s=args.poll_s)
        submit_and_wait(client, bodies[1], poll_s=args.poll_s)
        wait_quiet(args, "tiny jobs")
        with CpuWindow(stack) as window:
            runs = [submit_and_wait(client, b, poll_s=args.poll_s) for b in bodies[2:]]
            hits = []
            for body in bodies[2:]:
                started = time.perf_counter()
                answer = client.post("/v1/jobs", json=body)
                hits.append(time.perf_counter() - started)
                assert answer.json()["cached"], answer.text
            in_process = []
            for embedding_set in sets[2:]:
                started = time.perf_counter()
                analyze([embedding_set], params=params)
                in_process.append(time.perf_counter() - started)

    totals = [r["total_s"] for r in runs]
    posts = [r["post_s"] for r in runs]
    queued = [iso_s(r["job"]["started_at"]) - iso_s(r["job"]["created_at"]) for r in runs]
    running = [iso_s(r["job"]["finished_at"]) - iso_s(r["job"]["started_at"]) for r in runs]
    med = statistics.median
    print_metric(
        "tiny_job_submit_to_succeeded_median",
        ms(med(totals)),
        f"target < 300 ms: {med(totals) / 0.300:.2f}x of target",
    )
    print_metric(
        "tiny_job_submit_to_succeeded_p10_p90",
        f"{ms(percentile(totals, 10))} / {ms(percentile(totals, 90))} "
        f"(min {ms(min(totals))}, max {ms(max(totals))}, n={len(totals)})",
    )
    print_metric("tiny_job_cold_first_job", ms(cold["total_s"]))
    print_metric(
        "tiny_job_breakdown_median",
        f"POST {ms(med(posts))}; created->started (dispatch) {ms(med(queued))}; "
        f"started->finished (worker) {ms(med(running))}; "
        f"polls/job {med([r['polls'] for r in runs]):.0f} at {args.poll_s * 1e3:.0f} ms",
    )
    print_metric("tiny_job_in_process_analyze_median", ms(med(in_process)))
    print_metric("tiny_job_cache_hit_submit_median", ms(med(hits)))
    print_metric("tiny_job_machine", window.describe())
    return {
        "submit_to_succeeded_s": totals,
        "median_s": med(totals),
        "cold_s": cold["total_s"],
        "post_s": med(posts),
        "dispatch_s": med(queued),
        "worker_s": med(running),
        "in_process_analyze_s": med(in_process),
        "cache_hit_submit_s": med(hits),
        "machine": window.summary(),
    }


# 3. Upload memory -----------------------------------------------------------------------


def write_big_npy(path: Path, nbytes: int, d: int = 256) -> int:
    rows = nbytes // (4 * d)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    rng = np.random.default_rng(3)
    block = 65_536
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        array[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    array.flush()
    del array
    return path.stat().st_size


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (t, rss bytes, anon bytes)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(Exception):
                rss = self.process.memory_info().rss
                anon = proc_status_kib(self.pid).get("RssAnon", 0) * 1024
                self.samples.append((time.perf_counter(), rss, anon))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def bench_upload(stack: Any, key: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    nbytes = int(args.upload_gib * (1 << 30))
    print(f"\n== 3. API RSS while uploading a {nbytes / (1 << 30):.2f} GiB npy ==")
    path = tmp / "big.npy"
    try:
        size = write_big_npy(path, nbytes)
        print(f"  wrote {path} ({size} bytes)")
        wait_quiet(args, "upload")
        sampler = RssSampler(stack.api.process.pid, args.rss_interval_s)
        sampler.start()
        time.sleep(1.0)
        body_sent = 0.0

        def chunks() -> Iterator[bytes]:
            nonlocal body_sent
            with path.open("rb") as file:
                while chunk := file.read(args.chunk_mib * MIB):
                    yield chunk
            body_sent = time.perf_counter()

        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=600) as client:
            with CpuWindow(stack) as window:
                started = time.perf_counter()
                answer = client.post(
                    "/v1/datasets",
                    params={"format": "npy"},
                    content=chunks(),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                )
                done = time.perf_counter()
            time.sleep(0.5)
            sampler.stop()
            answer.raise_for_status()
            dataset = answer.json()
            client.delete(f"/v1/datasets/{dataset['id']}").raise_for_status()
    finally:
        path.unlink(missing_ok=True)

    before = [s for s in sampler.samples if s[0] < started]
    during = [s for s in sampler.samples if s[0] >= started]
    baseline_rss = statistics.median(s[1] for s in before)
    baseline_anon = statistics.median(s[2] for s in before)
    peak = max(during, key=lambda s: s[1])
    peak_anon = max(s[2] for s in during)
    growth = peak[1] - baseline_rss
    print_metric(
        "upload_rss_baseline_peak",
        f"{baseline_rss / MIB:.0f} MiB -> {peak[1] / MIB:.0f} MiB "
        f"(at {peak[0] - started:.1f} s of {done - started:.1f} s)",
    )
    print_metric(
        "upload_rss_growth",
        f"{growth / MIB:.0f} MiB",
        f"target < 100 MiB: {growth / (100 * MIB):.2f}x of target",
    )
    print_metric(
        "upload_rss_anon_growth",
        f"{(peak_anon - baseline_anon) / MIB:.0f} MiB "
        f"(RssAnon {baseline_anon / MIB:.0f} -> {peak_anon / MIB:.0f} MiB; the rest of RSS is "
        "file pages mapped by the server)",
    )
    print_metric(
        "upload_throughput",
        f"{size / MIB / (done - started):.0f} MiB/s end to end "
        f"({done - started:.1f} s; body sent in {body_sent - started:.1f} s = "
        f"{size / MIB / (body_sent - started):.0f} MiB/s, then {done - body_sent:.1f} s "
        "of server-side checks before the answer)",
    )
    print_metric(
        "upload_rss_samples",
        f"{len(during)} during the upload, every ~{args.rss_interval_s * 1e3:.0f} ms",
    )
    print_metric("upload_machine", window.describe())
    return {
        "size_bytes": size,
        "baseline_rss": baseline_rss,
        "peak_rss": peak[1],
        "growth_rss": growth,
        "baseline_anon": baseline_anon,
        "peak_anon": peak_anon,
        "total_s": done - started,
        "body_s": body_sent - started,
        "machine": window.summary(),
        "timeline": [(round(t - started, 3), rss, anon) for t, rss, anon in sampler.samples],
    }


# Main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200, help="open-loop arrival rate, req/s")
    parser.add_argument("--duration", type=float, default=20, help="open-loop seconds")
    parser.add_argument("--closed-duration", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop connections")
    parser.add_argument("--report-n", type=int, default=2000, help="points of the cached job")
    parser.add_argument("--jobs", type=int, default=20, help="tiny jobs to time")
    parser.add_argument("--poll-s", type=float, default=0.005)
    parser.add_argument("--upload-gib", type=float, default=1.0)
    parser.add_argument("--chunk-mib", type=int, default=1)
    parser.add_argument("--rss-interval-s", type=float, default=0.02)
    parser.add_argument("--quiet-load", type=float, default=0.8)
    parser.add_argument("--quiet-busy", type=float, default=0.3, help="busy cores, 2 s sample")
    parser.add_argument("--quiet-wait-s", type=float, default=600)
    parser.add_argument("--connections", type=int, default=64, help="open-loop connections")
    parser.add_argument(
        "--only", choices=["report", "tiny", "upload"], action="append", help="run only these"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the stack's processes, e.g. NNKGEO_WORKER_THREADS=1",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["loadgen"]:
        loadgen_main(argv[1:])
        return
    args = parse_args(argv)
    parts = args.only or ["report", "tiny", "upload"]

    # SIGTERM unwinds like Ctrl-C, so that the finally blocks stop the stack.
    signal.signal(signal.SIGTERM, _interrupt)

    print_metric("machine", f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}")
    print_metric("python", platform.python_version())
    print_metric("code", code_version())
    if args.env:
        print_metric("stack_env", " ".join(args.env))
    print_metric("load1_at_start", f"{load1():.2f}")
    from tests.integration.stack import TENANT_KEYS

    tmp = Path(tempfile.mkdtemp(prefix="nnkgeo-bench-service-"))
    stack = None
    results: dict[str, Any] = {"machine": cpu_model(), "cores": os.cpu_count()}
    try:
        extra = dict(item.split("=", 1) for item in args.env)
        stack = start_stack(tmp / "stack", max_upload_bytes=4 << 30, extra=extra)
        started = time.perf_counter()
        stack.start()
        print(f"stack up in {time.perf_counter() - started:.1f} s at {stack.base_url}")
        if "report" in parts:
            results["report"] = bench_report(stack, TENANT_KEYS["alpha"], args)
        if "tiny" in parts:
            results["tiny"] = bench_tiny_jobs(stack, args)
        if "upload" in parts:
            results["upload"] = bench_upload(stack, TENANT_KEYS["alpha"], tmp, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
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


if __name__ == "__main__":
    main(sys.argv[1:])
