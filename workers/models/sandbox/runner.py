"""The worker's side of the model sandbox: spawn, feed, watch, read back, clean up.

An uploaded model (TorchScript, torch.export or ONNX) is code. The worker never loads
one itself: each run is a freshly spawned Python process (``fork`` + ``exec``, so none
of the worker's memory, connections or secrets come along), with only the file
descriptors of its three pipes, an environment built from an allow-list, and its own
scratch directory. The child confines itself before it reads the model
(:mod:`workers.models.sandbox.child`); this side enforces the wall-clock deadline,
bounds everything it reads back (:mod:`workers.models.sandbox.protocol`), and turns
each way the child can end into an error that names the model's reference.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from jobstate.errors import InvalidInputError, NNKGeoError
from workers.models.sandbox.protocol import FrameError, read_frame

__all__ = [
    "ModelLimitError",
    "SandboxPolicy",
    "SandboxUnavailableError",
    "SandboxedModel",
    "sandbox_support",
]

ModelFormat = Literal["torchscript", "pt2", "onnx"]
_CHILD_SCRIPT = Path(__file__).with_name("child.py")
_CODE_ROOT = Path(__file__).resolve().parents[3]
# Variables a model process may see: none holds a secret. OPENBLAS_* are set on some
# hosts because older OpenBLAS builds compute wrong results on their processors.
_PASSED_VARIABLES = ("LD_LIBRARY_PATH", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_STDERR_LINES = 40
_KILL_GRACE_S = 5.0


class ModelLimitError(InvalidInputError):
    """The model ran past its memory, CPU-time or wall-clock limit."""


class SandboxUnavailableError(NNKGeoError):
    """This worker cannot confine a model process, and the operator did not allow it."""


@dataclass(frozen=True)
class SandboxPolicy:
    """The limits and confinement of one model run.

    Attributes
    ----------
    memory_bytes : int
        Address space the model may map beyond its runtime (torch, onnxruntime).
    cpu_seconds : int
        CPU time summed over its threads (RLIMIT_CPU: SIGXCPU, then SIGKILL).
    wall_seconds : float
        Killed after this long, whatever it is doing (a model blocked in a syscall
        uses no CPU).
    threads : int or None
        Intra-op threads of torch and onnxruntime; None = one per core.
    confine : bool
        Landlock and seccomp. False only where the operator set
        NNKGEO_UNSAFE_ALLOW_UNSANDBOXED_MODELS on a host that cannot enforce them.
    protected_paths : tuple of Path
        Directories that must stay unreadable (the blob store, the data roots): the
        child refuses to run if its read-only runtime directories contain one.
    scratch_root : Path or None
        Where the per-run scratch directory is made; None = the system's temp dir.
    unavailable : str or None
        Why this worker refuses to run uploaded models at all (the sandbox cannot be
        enforced here); None when it runs them.
    """

    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float
    threads: int | None = None
    confine: bool = True
    protected_paths: tuple[Path, ...] = ()
    scratch_root: Path | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class SandboxedModel:
    """An uploaded model that is only ever run in a sandboxed child process.

    Has the signature of :func:`workers.models.extraction.extract_embeddings` (less the
    model) as :meth:`extract`, so that :func:`workers.models.embed.embed_sets` takes it
    in place of a loaded model.
    """

    format: ModelFormat
    path: Path
    policy: SandboxPolicy
    field: str = "model"

    def extract(
        self,
        inputs: np.ndarray,
        *,
        layers: str | Sequence[str],
        pooling: str = "avg",
        batch_size: int = 256,
        device: str = "cpu",
        progress: Callable[[float], None] | None = None,
        field: str = "layers",
    ) -> list[tuple[Any, np.ndarray]]:
        """Embeddings of ``inputs`` at each selected layer, computed in the sandbox.

        ``device`` is ignored: the sandbox runs on the CPU (it opens no device files).

        Raises
        ------
        InvalidInputError
            As the child reported it (a refused op, an unknown layer, a model failure),
            with its field under this model's reference.
        ModelLimitError
            Memory, CPU time or the wall-clock deadline ran out.
        SandboxUnavailableError
            The child could not confine itself.
        """
        del device
        if self.policy.unavailable is not None:
            raise SandboxUnavailableError(self.policy.unavailable)
        request = {
            "format": self.format,
            "model_field": self.field,
            "layers": layers if isinstance(layers, str) else list(layers),
            "layers_field": field,
            "pooling": pooling,
            "batch_size": int(batch_size),
            "n_points": int(inputs.shape[0]),
        }
        return _run_child(self, request, inputs, progress)


def _child_environment(scratch: Path, threads: int | None) -> dict[str, str]:
    environment = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if threads:
        environment.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    environment.update({name: os.environ[name] for name in _PASSED_VARIABLES if name in os.environ})
    return environment


def _spawn(scratch: Path, policy: SandboxPolicy) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-B", str(_CHILD_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        cwd=scratch,
        env=_child_environment(scratch, policy.threads),
        # Its own process group: a kill takes whatever it may have started too.
        start_new_session=True,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_KILL_GRACE_S)


def _pump_frames(stream: BinaryIO, frames: queue.Queue[Any], max_array_bytes: int) -> None:
    try:
        while True:
            frame = read_frame(stream, max_array_bytes=max_array_bytes)
            frames.put(frame)
            if frame is None:
                return
    except (FrameError, OSError, ValueError) as error:
        frames.put(error)


def _drain_stderr(stream: BinaryIO, lines: collections.deque[str]) -> None:
    for raw in iter(lambda: stream.readline(4096), b""):
        lines.append(raw.decode(errors="replace").rstrip()[:300])


def _death_error(model: SandboxedModel, returncode: int, stderr: str) -> InvalidInputError:
    """The error for a child that ended without a result frame."""
    policy = model.policy
    if returncode < 0:
        number = -returncode
        if number == signal.SIGXCPU or number == signal.SIGKILL:
            return ModelLimitError(
                model.field,
                f"the model used more than its CPU-time limit of {policy.cpu_seconds} s "
                "(NNKGEO_MODEL_CPU_SECONDS) and was stopped",
            )
        if number == signal.SIGSYS:
            return InvalidInputError(
                model.field, "the model made a system call the sandbox forbids, and was stopped"
            )
        name = signal.Signals(number).name if number in signal.Signals else str(number)
        return ModelLimitError(
            model.field,
            f"the model's process died of {name}; the usual cause is its memory limit of "
            f"{policy.memory_bytes} bytes (NNKGEO_WORKER_MEMORY_BYTES)",
        )
    detail = f": {stderr.splitlines()[-1]}" if stderr.strip() else ""
    return InvalidInputError(
        model.field, f"the model's process exited with status {returncode} and no result{detail}"
    )


def _result_from(
    model: SandboxedModel, header: dict[str, Any], arrays: list[np.ndarray], n_points: int
) -> list[tuple[Any, np.ndarray]]:
    from workers.models.extraction import LayerTap

    taps = header.get("taps")
    if not isinstance(taps, list) or len(taps) != len(arrays) or not taps:
        raise InvalidInputError(model.field, "the model's process sent a malformed result")
    extracted = []
    for described, array in zip(taps, arrays, strict=True):
        if array.ndim != 2 or array.shape[0] != n_points or not isinstance(described, dict):
            raise InvalidInputError(model.field, "the model's process sent a malformed result")
        try:
            tap = LayerTap(**described)
        except TypeError:
            raise InvalidInputError(
                model.field, "the model's process sent a malformed result"
            ) from None
        extracted.append((tap, array))
    return extracted


def _error_from(model: SandboxedModel, header: dict[str, Any]) -> Exception:
    kind = header.get("kind")
    message = str(header.get("message", ""))[:1000]
    if kind == "memory":
        return ModelLimitError(
            model.field,
            f"the model ran out of its memory limit of {model.policy.memory_bytes} bytes "
            f"(NNKGEO_WORKER_MEMORY_BYTES): {message}",
        )
    if kind == "unconfined":
        return SandboxUnavailableError(f"the model sandbox could not be set up: {message}")
    field = str(header.get("field") or model.field)[:200]
    return InvalidInputError(field, message or "the model was refused")


def _run_child(
    model: SandboxedModel,
    request: dict[str, Any],
    inputs: np.ndarray,
    progress: Callable[[float], None] | None,
) -> list[tuple[Any, np.ndarray]]:
    policy = model.policy
    scratch = Path(tempfile.mkdtemp(prefix="nnkgeo-sandbox-", dir=policy.scratch_root))
    process: subprocess.Popen[bytes] | None = None
    try:
        inputs_path = scratch / "inputs.npy"
        np.save(inputs_path, np.ascontiguousarray(inputs))
        request.update(
            {
                "model_path": str(model.path.resolve()),
                "inputs_path": str(inputs_path),
                "scratch": str(scratch),
                "code_root": str(_CODE_ROOT),
                "memory_bytes": policy.memory_bytes,
                "cpu_seconds": policy.cpu_seconds,
                "threads": policy.threads,
                "confine": policy.confine,
                "protected_paths": [str(path) for path in policy.protected_paths],
            }
        )
        process = _spawn(scratch, policy)
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
        frames: queue.Queue[Any] = queue.Queue()
        stderr_lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        threading.Thread(
            target=_pump_frames,
            args=(process.stdout, frames, policy.memory_bytes),
            daemon=True,
        ).start()
        threading.Thread(
            target=_drain_stderr, args=(process.stderr, stderr_lines), daemon=True
        ).start()
        deadline = time.monotonic() + policy.wall_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(process)
                raise ModelLimitError(
                    model.field,
                    f"the model ran longer than its {policy.wall_seconds:.0f} s limit "
                    "(NNKGEO_TASK_SOFT_TIME_LIMIT_S) and was stopped",
                )
            try:
                frame = frames.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if isinstance(frame, Exception):
                _kill(process)
                raise InvalidInputError(
                    model.field, f"the model's process sent a malformed result: {frame}"
                )
            if frame is None:
                process.wait(timeout=_KILL_GRACE_S)
                raise _death_error(model, process.returncode, "\n".join(stderr_lines))
            header, arrays = frame
            kind = header.get("kind")
            if kind == "progress":
                if progress is not None:
                    progress(min(1.0, max(0.0, float(header.get("fraction", 0.0)))))
                continue
            if kind == "result":
                return _result_from(model, header, arrays, request["n_points"])
            raise _error_from(model, header)
    finally:
        if process is not None:
            _kill(process)
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class SandboxStatus:
    """Whether this worker may run uploaded models, and why not when it may not."""

    enforceable: bool
    allowed: bool
    description: str


@lru_cache(maxsize=4)
def sandbox_support(*, min_landlock_abi: int, allow_unsandboxed: bool) -> SandboxStatus:
    """Probe once per process whether the sandbox can be enforced here.

    Landlock below ``min_landlock_abi`` (4 is the first that confines TCP) or no seccomp
    makes it unenforceable; the worker then refuses uploaded models unless
    ``allow_unsandboxed`` (NNKGEO_UNSAFE_ALLOW_UNSANDBOXED_MODELS).
    """
    from workers.models.sandbox.confine import probe

    support = probe()
    problems = list(support.problems)
    if support.landlock_abi < min_landlock_abi:
        problems.append(
            f"Landlock ABI {support.landlock_abi} is below the {min_landlock_abi} required "
            "(NNKGEO_SANDBOX_MIN_LANDLOCK_ABI)"
        )
    if not support.seccomp:
        problems.append("seccomp filters are unavailable")
    enforceable = support.enforceable and not problems
    description = (
        f"model sandbox enforceable ({support.describe()})"
        if enforceable
        else "model sandbox NOT enforceable: " + "; ".join(problems)
    )
    return SandboxStatus(
        enforceable=enforceable, allowed=enforceable or allow_unsandboxed, description=description
    )
