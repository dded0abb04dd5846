"""numpy's BLAS on one thread for a while, without forking.

The exact search (:mod:`workers.geometry.gram_search`) multiplies its tiles on its own
threads, each product on one BLAS thread. threadpoolctl would do that, but on first use
it finds libc with ``ctypes.util.find_library``, which runs ``ldconfig`` in a child
process: a fork that a worker holding OpenMP and BLAS thread pools has no need of. So
the OpenBLAS that numpy loaded is found in ``/proc/self/maps`` and set directly.
Where there is none (another BLAS, another OS) the products keep BLAS's own threads:
slower with the search's threads on top, never different (a product's value does not
depend on how BLAS splits it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# OpenBLAS's setters and getters under the names its builds export: plain, 64-bit
# integer (suffix 64_), and scipy-openblas (numpy's wheels: prefix scipy_, suffix 64_).
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _numpy_openblas() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """The setter and getter of the OpenBLAS numpy loaded, or None."""
    import numpy

    numpy_site = Path(numpy.__file__).resolve().parent.parent
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    loaded = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    # numpy's own first (its wheels bundle it next to the package), then any other.
    for path in sorted(loaded, key=lambda name: not name.startswith(str(numpy_site))):
        try:
            library = ctypes.CDLL(path)  # already loaded: the same handle, no new load
        except OSError:
            continue
        for setter, getter in _SYMBOLS:
            if hasattr(library, setter) and hasattr(library, getter):
                set_threads, get_threads = getattr(library, setter), getattr(library, getter)
                set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
                get_threads.argtypes, get_threads.restype = [], ctypes.c_int
                return set_threads, get_threads
    return None


@contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """Run numpy's OpenBLAS on one thread inside the block; yields whether it could."""
    functions = _numpy_openblas()
    if functions is None:
        yield False
        return
    set_threads, get_threads = functions
    previous = get_threads()
    set_threads(1)
    try:
        yield True
    finally:
        set_threads(previous)
