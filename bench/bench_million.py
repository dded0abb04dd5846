"""A million points on a CPU: `nnkgeo analyze` against a bare faiss IVF-Flat, time and peak RSS.

Issue 13's target: 1M x 128, k=30, ``--knn approximate``, 1,000 classes; the whole
``nnkgeo analyze`` process at most 2.5x a bare faiss IVF-Flat build + search of the same
data (nlist = 4 sqrt(N), nprobe 8, k = 30) and at most 4 GiB peak RSS.

The data are seeded clustered gaussians (one cluster per class, float32), written once to
``embeddings.npy`` and ``labels.npy`` (the formats ``nnkgeo analyze`` reads). Then, in
turn, each as a whole process from start to exit, imports and loading included:

- ``nnkgeo analyze embeddings.npy --labels labels.npy --k 30 --knn approximate``;
- ``bench/bare_faiss.py --index ivf``: load, normalise (the cosine kernel's metric), train
  an IVF-Flat index on a seeded sample of 39 points per list (faiss's minimum), add
  everything, search every point for k + 1 neighbours with nprobe 8, keep them.

Wall time and peak RSS come from ``os.wait4`` on each child (its ``ru_maxrss``); the
driver itself stays small (it never holds the data), because Linux carries a parent's
high-water mark into a child across fork and exec. The load average is printed before and
after each run: the machine may be shared.

``--stages`` instead analyses in one child that samples its own RSS every 20 ms and
prints the peak of each stage (load, knn, solve, metrics, report): where the memory goes.

    python bench/bench_million.py                      # 1M x 128, both processes
    python bench/bench_million.py --n 200000           # while iterating
    python bench/bench_million.py --n 200000 --stages  # peak RSS per stage
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent

_STAGES = textwrap.dedent(
    """
    import json, sys, threading, time
    started = time.perf_counter()
    stage = ["import"]
    peaks = {}

    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS:"))

    def sample():
        while True:
            peaks[stage[0]] = max(peaks.get(stage[0], 0), rss())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    import numpy as np
    from api_schemas import AnalysisParams
    from workers.geometry import EmbeddingSet, analyze
    directory, k = sys.argv[1], int(sys.argv[2])
    stage[0] = "load"
    points = np.load(f"{directory}/embeddings.npy")
    labels = np.load(f"{directory}/labels.npy")

    def progress(name, fraction):
        now = name.split(":")[-1]
        # One set: the metrics stage spans 0.85..1 of the job, and reports at 0 (graphs),
        # 0.3 (intrinsic dimension) and 0.6 (label metrics) of its share.
        if now == "metrics":
            now = "graphs" if fraction < 0.89 else "intrinsic_dim" if fraction < 0.93 else (
                "labels" if fraction < 0.999 else "metrics_end")
        if now != stage[0]:
            peaks[stage[0]] = max(peaks.get(stage[0], 0), rss())
            stage[0] = now

    result = analyze(
        [EmbeddingSet(name="bench", embeddings=points, labels=labels)],
        params=AnalysisParams(k=k, knn="approximate", device="cpu"),
        progress=progress,
    )
    peaks[stage[0]] = max(peaks.get(stage[0], 0), rss())
    stage[0] = "report"
    text = result.report.model_dump_json(indent=2)
    peaks["report"] = max(peaks.get("report", 0), rss())
    with open("/proc/self/status") as status:
        hwm = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
    timings = result.report.sets[0].timings
    print(json.dumps({"peaks": peaks, "hwm": hwm, "timings": timings.model_dump(),
                      "total_s": time.perf_counter() - started}))
    """
)


@dataclass(frozen=True)
class ProcessRun:
    """One whole child process: its wall time, peak RSS and the load around it."""

    name: str
    wall_s: float
    peak_rss_bytes: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    output_tail: str


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_process(name: str, command: list[str], *, env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``command`` to exit; wall time from spawn to reaping, peak RSS from wait4."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall_s = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        tail = output.read().decode(errors="replace")[-2000:]
    if child.returncode != 0:
        raise RuntimeError(f"{name} exited {child.returncode}:\n{tail}")
    return ProcessRun(
        name=name,
        wall_s=wall_s,
        # ru_maxrss is in KiB on Linux.
        peak_rss_bytes=usage.ru_maxrss * 1024,
        load_before=load_before,
        load_after=os.getloadavg(),
        output_tail=tail.strip(),
    )


def make_data(directory: Path, *, n: int, d: int, classes: int, seed: int) -> None:
    """Write ``embeddings.npy`` (n x d float32) and ``labels.npy`` in a child process."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "make_embeddings.py"),
            str(directory),
            f"--n={n}",
            f"--d={d}",
            f"--classes={classes}",
            f"--seed={seed}",
        ],
        check=True,
    )


def _report(run: ProcessRun) -> str:
    return (
        f"{run.name:>16}: {run.wall_s:7.1f} s, peak RSS {run.peak_rss_bytes / 2**30:.2f} GiB; "
        f"load {run.load_before[0]:.2f} before, {run.load_after[0]:.2f} after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument(
        "--workdir", type=Path, help="keep the data (and reuse it when the shape matches) here"
    )
    parser.add_argument("--skip", choices=["nnkgeo", "faiss"], nargs="*", default=[])
    parser.add_argument("--stages", action="store_true", help="peak RSS per stage instead")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nnkgeo-million-") as scratch:
        directory = args.workdir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        shape_file = directory / "shape.json"
        shape = {k: getattr(args, k) for k in ("n", "d", "classes", "seed")}
        if not shape_file.exists() or json.loads(shape_file.read_text()) != shape:
            make_data(directory, **shape)
            shape_file.write_text(json.dumps(shape))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(
            f"data: {args.n} x {args.d} float32, {args.classes} classes, k={args.k}; "
            f"uptime: {_uptime()}",
            flush=True,
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.stages:
            run = run_process(
                "stages",
                [sys.executable, "-c", _STAGES, str(directory), str(args.k)],
                env=env,
            )
            figures = json.loads(run.output_tail.splitlines()[-1])
            for stage, peak in figures["peaks"].items():
                print(f"{stage:>8}: peak RSS {peak / 2**30:.2f} GiB")
            print(f"VmHWM {figures['hwm'] / 2**30:.2f} GiB; timings {figures['timings']}")
            print(_report(run))
            return

        runs: dict[str, ProcessRun] = {}
        if "nnkgeo" not in args.skip:
            runs["nnkgeo"] = run_process(
                "nnkgeo analyze",
                [
                    str(_BIN / "nnkgeo"),
                    "analyze",
                    str(directory / "embeddings.npy"),
                    "--labels",
                    str(directory / "labels.npy"),
                    "--k",
                    str(args.k),
                    "--knn",
                    "approximate",
                    "--device",
                    "cpu",
                    "--seed",
                    str(args.seed),
                    "--out",
                    str(directory / "report.json"),
                ],
                env=env,
            )
            print(_report(runs["nnkgeo"]), flush=True)
            report = json.loads((directory / "report.json").read_text())["sets"][0]
            print(f"{'':>16}  timings {report['timings']}, recall {report['graph']['knn_recall']}")
        if "faiss" not in args.skip:
            runs["faiss"] = run_process(
                "bare faiss IVF",
                [
                    sys.executable,
                    str(ROOT / "bench" / "bare_faiss.py"),
                    str(directory / "embeddings.npy"),
                    "--index=ivf",
                    f"--k={args.k}",
                    f"--nprobe={args.nprobe}",
                    f"--seed={args.seed}",
                ],
                env=env,
            )
            print(_report(runs["faiss"]))
            print(f"{'':>16}  {runs['faiss'].output_tail.splitlines()[-1]}", flush=True)
        ratio = None
        if len(runs) == 2:
            ratio = runs["nnkgeo"].wall_s / runs["faiss"].wall_s
            print(f"ratio nnkgeo / bare faiss: {ratio:.2f} (target <= 2.5)")
        print(f"uptime: {_uptime()}")
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        **shape,
                        "k": args.k,
                        "nlist": int(4 * math.sqrt(args.n)),
                        "nprobe": args.nprobe,
                        "runs": {name: asdict(run) for name, run in runs.items()},
                        "ratio": ratio,
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
