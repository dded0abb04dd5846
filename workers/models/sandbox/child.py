"""The sandboxed model process: confine, import, check, load, embed, report.

Spawned by :mod:`workers.models.sandbox.runner` as ``python -I -B child.py`` with the
request as JSON on stdin. In order, it:

1. limits itself: address space (the job's memory budget plus an allowance for torch and
   onnxruntime) and CPU time;
2. confines itself, while it is still one thread (before Landlock ABI 8, threads that
   run before the ruleset escape it, and numpy, torch and onnxruntime start threads at
   import): Landlock lets it read only the model file, the inputs, the Python
   installation, the system libraries and nnkgeo's own packages, and write only its
   scratch directory, with no TCP; a seccomp filter refuses sockets of every family,
   io_uring and ptrace;
3. only then imports numpy, torch and onnxruntime, checks the model against the op
   allow-list again, loads it, reads the layers, and sends frames
   (:mod:`workers.models.sandbox.protocol`) on a private copy of stdout: progress, then
   a result or an error. Whatever the model prints goes to stderr.

Until step 3 it imports nothing but the standard library and ``confine.py`` (by path:
the ``workers.models`` package imports numpy).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import site
import struct
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

_MAX_REQUEST_BYTES = 1 << 20
# Address space torch, onnxruntime and their thread pools map on top of what the model
# allocates (~0.8 GiB measured after importing both and running a Linear layer).
RUNTIME_ADDRESS_SPACE_BYTES = 2 * 1024**3
# Code, never tenant data: the system libraries dlopen may still need, and the few files
# torch and onnxruntime read at import (without /dev/urandom torch fails to import).
_SYSTEM_PATHS = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/dev/urandom",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
)
# nnkgeo's packages the child imports; never the project root, which may hold data.
_CODE_PACKAGES = ("workers", "jobstate", "arrayfiles", "modelcheck", "api_schemas")


def _runtime_dirs() -> list[str]:
    """The directories of the Python installation: its standard library and packages."""
    paths = sysconfig.get_paths()
    candidates = {
        paths["stdlib"],
        paths["platstdlib"],
        paths["purelib"],
        paths["platlib"],
        *site.getsitepackages(),
    }
    return sorted(path for path in candidates if path and Path(path).resolve() != Path("/"))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _load_confine(code_root: str) -> ModuleType:
    path = Path(code_root) / "workers" / "models" / "sandbox" / "confine.py"
    spec = importlib.util.spec_from_file_location("nnkgeo_confine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while they are created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _confine(request: dict[str, Any]) -> None:
    confine = _load_confine(request["code_root"])
    confine.limit_resources(
        address_space_bytes=int(request["memory_bytes"]) + RUNTIME_ADDRESS_SPACE_BYTES,
        cpu_seconds=int(request["cpu_seconds"]),
    )
    if not request["confine"]:
        return
    readable = [*_runtime_dirs(), *(f"{request['code_root']}/{name}" for name in _CODE_PACKAGES)]
    for protected in request["protected_paths"]:
        for directory in readable:
            if _within(Path(protected).resolve(), Path(directory).resolve()):
                raise RuntimeError(
                    f"the protected directory {protected} lies inside {directory}, which a "
                    "model process must be able to read; move the data directory out of it"
                )
    confine.restrict_filesystem(
        read_only=[request["model_path"], request["inputs_path"], *readable, *_SYSTEM_PATHS],
        read_write=[request["scratch"]],
    )
    confine.deny_network_and_tracing()


class _CodePackages(importlib.abc.MetaPathFinder):
    """Finds nnkgeo's packages by name, without listing the project root.

    The root may hold data, so Landlock lets the child read only the packages beneath it;
    Python's own path finder would list the root to look for them, and find nothing.
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        if name not in _CODE_PACKAGES:
            return None
        package = self._root / name
        return importlib.util.spec_from_file_location(
            name, package / "__init__.py", submodule_search_locations=[str(package)]
        )


def _send_header(channel: BinaryIO, header: dict[str, Any]) -> None:
    """A frame without arrays, sent before numpy may be imported."""
    encoded = json.dumps({**header, "arrays": []}).encode()
    channel.write(struct.pack(">Q", len(encoded)) + encoded)
    channel.flush()


def _load(request: dict[str, Any]) -> Any:
    from workers.models import loading

    path, field = request["model_path"], request["model_field"]
    if request["format"] == "torchscript":
        return loading.torchscript_model(loading.load_torchscript(path, field=field))
    if request["format"] == "pt2":
        return loading.exported_model(loading.load_exported(path, field=field), field=field)
    return loading.onnx_model(path, field=field, threads=request["threads"])


def _serve(request: dict[str, Any], channel: BinaryIO) -> None:
    import numpy as np

    from jobstate.errors import InvalidInputError
    from workers.models.extraction import extract_embeddings
    from workers.models.sandbox.protocol import write_frame

    try:
        model = _load(request)
        inputs = np.load(request["inputs_path"], allow_pickle=False)
        extracted = extract_embeddings(
            model,
            inputs,
            layers=request["layers"],
            pooling=request["pooling"],
            batch_size=request["batch_size"],
            device="cpu",
            progress=lambda fraction: write_frame(
                channel, {"kind": "progress", "fraction": fraction}
            ),
            field=request["layers_field"],
        )
    except MemoryError as error:
        write_frame(channel, {"kind": "memory", "message": str(error)[:300]})
        return
    except InvalidInputError as error:
        write_frame(channel, {"kind": "invalid", "field": error.field, "message": error.message})
        return
    taps = [
        {
            "name": tap.name,
            "module": tap.module,
            "where": tap.where,
            "order": tap.order,
            "value": tap.value,
        }
        for tap, _ in extracted
    ]
    write_frame(channel, {"kind": "result", "taps": taps}, [array for _, array in extracted])


def main() -> int:
    # The frames travel on a private copy of stdout; fd 1 itself becomes stderr, so that
    # a model that prints can never forge a frame.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request = json.loads(sys.stdin.buffer.read(_MAX_REQUEST_BYTES))
    try:
        _confine(request)
    except Exception as error:
        _send_header(channel, {"kind": "unconfined", "message": str(error)[:500]})
        return 3
    sys.meta_path.insert(0, _CodePackages(Path(request["code_root"])))

    import torch

    if request["threads"]:
        torch.set_num_threads(int(request["threads"]))
    _serve(request, channel)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
