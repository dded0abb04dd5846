"""Confinement against the real kernel: each test runs a child Python that confines itself.

Nothing is mocked. A child loads ``confine.py`` by file path (importing it as
``workers.models.sandbox.confine`` would run ``workers/models/__init__``, whose numpy and
pyarrow start threads, and :func:`restrict_filesystem` rightly refuses to run then), applies
the layers a test names, tries things, and prints what happened as JSON. Every test that
expects a refusal has a twin without confinement where the same attempt succeeds, so a
broken test cannot pass for a working sandbox. Children run under a 4 GiB address-space
limit and a timeout, so no test can take the host down.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.models.sandbox import confine

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "workers" / "models" / "sandbox" / "confine.py"
SECRET = "nnkgeo-secret-4f1c9a"
LAYERS_ALL = ("limits", "landlock", "seccomp")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or confine.landlock_abi() < 4,
    reason="needs Linux with Landlock ABI 4 or later",
)

# Loads the module by path, applies args["layers"] in the order the real child uses, then
# runs the test's body, which fills `results`.
PRELUDE = """
import ctypes, importlib.util, json, os, socket, sys, sysconfig
args = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("confine", args["module"])
confine = sys.modules["confine"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confine)
libc = ctypes.CDLL(None, use_errno=True)
results = {}

def attempt(action):
    try:
        value = action()
    except Exception as exc:
        return type(exc).__name__
    return "ok" if value is None else "ok:" + str(value)

def read(path):
    with open(path) as handle:
        return handle.read()

def write(path):
    with open(path, "w") as handle:
        handle.write("written by the child")

names = ("stdlib", "platstdlib", "purelib", "platlib")
python_paths = sorted({sysconfig.get_paths()[name] for name in names})
if "limits" in args["layers"]:
    confine.limit_resources(
        address_space_bytes=args.get("address_space", 1 << 30), cpu_seconds=args.get("cpu", 20)
    )
if "landlock" in args["layers"]:
    confine.restrict_filesystem(
        read_only=python_paths + args.get("read_only", []), read_write=args.get("read_write", [])
    )
if "seccomp" in args["layers"]:
    confine.deny_network_and_tracing()
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_child(body: str, *, layers: tuple[str, ...], **args: object) -> dict[str, str]:
    """Run PRELUDE + body in a fresh interpreter and return its JSON results."""
    done = spawn_child(body, layers=layers, **args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def spawn_child(
    body: str, *, layers: tuple[str, ...], **args: object
) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(results))\n"
    argv = [
        sys.executable,
        "-c",
        code,
        json.dumps({"module": str(MODULE), "layers": layers, **args}),
    ]
    # A bare environment: nothing of the test process's may leak to the child this way.
    env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
        preexec_fn=_limit_memory, close_fds=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "readable.txt").write_text("readable")
    (tmp_path / "scratch").mkdir()
    names = {"secret": "secret.txt", "readable": "allowed/readable.txt"}
    names |= {"scratch": "scratch", "escaped": "escaped.txt"}
    return {key: str(tmp_path / name) for key, name in names.items()}


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A bystander process holding SECRET in its environment."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={"NNKGEO_SENTINEL": SECRET, "PATH": os.defpath},
    )
    yield process
    process.kill()
    process.wait()


FILES_BODY = """
results["read_secret"] = attempt(lambda: read(args["secret"]))
results["read_readable"] = attempt(lambda: read(args["readable"]))
results["write_readable"] = attempt(lambda: write(args["readable"]))
results["write_outside"] = attempt(lambda: write(args["escaped"]))
results["write_scratch"] = attempt(lambda: write(os.path.join(args["scratch"], "out.txt")))
results["read_scratch"] = attempt(lambda: read(os.path.join(args["scratch"], "out.txt")))
"""


def _files_args(files: dict[str, str]) -> dict[str, object]:
    # A path that does not exist (/lib64 on some distributions) is skipped, not an error.
    read_only = [files["readable"], "/nonexistent/lib64"]
    return {**files, "read_only": read_only, "read_write": [files["scratch"]]}


def test_files_outside_the_allowed_paths_are_refused(files: dict[str, str]) -> None:
    done = spawn_child(FILES_BODY, layers=LAYERS_ALL, **_files_args(files))
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == {
        "read_secret": "PermissionError",
        "read_readable": "ok:readable",
        "write_readable": "PermissionError",
        "write_outside": "PermissionError",
        "write_scratch": "ok",
        "read_scratch": "ok:written by the child",
    }
    assert not os.path.exists(files["escaped"])
    assert Path(files["readable"]).read_text() == "readable"


def test_without_confinement_the_same_files_are_open(files: dict[str, str]) -> None:
    results = run_child(FILES_BODY, layers=(), **_files_args(files))
    assert results["read_secret"] == f"ok:{SECRET}"
    assert results["write_readable"] == results["write_outside"] == "ok"
    assert os.path.exists(files["escaped"])


NETWORK_BODY = """
def tcp():
    with socket.create_connection(("127.0.0.1", args["tcp_port"]), timeout=5):
        pass
def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"leak", ("127.0.0.1", args["udp_port"]))
def unix(address):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
results["tcp"] = attempt(tcp)
results["udp"] = attempt(udp)
results["unix_path"] = attempt(lambda: unix(args["unix_path"]))
results["unix_abstract"] = attempt(lambda: unix("\\0" + args["abstract"]))
"""


CHANNELS = ("tcp", "udp", "unix_path", "unix_abstract")
REFUSED = dict.fromkeys(CHANNELS, "PermissionError")


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ((), dict.fromkeys(CHANNELS, "ok")),
        # Landlock alone refuses TCP and abstract unix sockets but, up to ABI 7, neither UDP
        # nor unix sockets bound to a path: that is why seccomp refuses every socket.
        (("landlock",), REFUSED | {"udp": "ok", "unix_path": "ok"}),
        (("seccomp",), REFUSED),
        (LAYERS_ALL, REFUSED),
    ],
    ids=["none", "landlock", "seccomp", "all"],
)
def test_network(layers: tuple[str, ...], expected: dict[str, str]) -> None:
    with (
        tempfile.TemporaryDirectory() as short_dir,  # unix socket paths have 108 bytes at most
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_path,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_abstract,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        unix_path.bind(os.path.join(short_dir, "s"))
        unix_path.listen()
        abstract = f"nnkgeo-test-{os.getpid()}-{time.monotonic_ns()}"
        unix_abstract.bind("\0" + abstract)
        unix_abstract.listen()
        results = run_child(
            NETWORK_BODY, layers=layers, tcp_port=tcp.getsockname()[1],
            udp_port=udp.getsockname()[1], unix_path=os.path.join(short_dir, "s"),
            abstract=abstract, read_write=[short_dir],
        )  # fmt: skip
        assert results == expected
        reached = {}
        for name, sock in (
            ("tcp", tcp),
            ("unix_path", unix_path),
            ("unix_abstract", unix_abstract),
        ):
            sock.setblocking(False)
            try:
                sock.accept()[0].close()
                reached[name] = "ok"
            except BlockingIOError:
                reached[name] = "PermissionError"
        udp.settimeout(0.2)
        try:
            reached["udp"] = "ok" if udp.recv(16) == b"leak" else "garbled"
        except TimeoutError:
            reached["udp"] = "PermissionError"
        assert reached == expected


def test_other_processes_are_out_of_reach(victim: subprocess.Popen[bytes]) -> None:
    body = """
    for name, pid in (("parent", os.getppid()), ("victim", args["victim"])):
        results[name + "_environ"] = attempt(lambda: open(f"/proc/{pid}/environ", "rb").read())
    if args["signal"]:
        results["signal_victim"] = attempt(lambda: os.kill(args["victim"], args["signal"]))
    """
    # Leave /proc out of read_only: with /proc allowed, Linux 6.18 still lets a confined
    # process read other processes' environ and maps (only ptrace-attach access is refused).
    done = spawn_child(body, layers=LAYERS_ALL, victim=victim.pid, signal=signal.SIGTERM)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == dict.fromkeys(
        ("parent_environ", "victim_environ", "signal_victim"), "PermissionError"
    )
    assert victim.poll() is None  # the signal did not get through
    # Unconfined, the same child reads both: the refusals above are the sandbox's.
    unconfined = run_child(body, layers=(), victim=victim.pid, signal=None)
    assert unconfined["parent_environ"].startswith("ok:")
    assert SECRET in unconfined["victim_environ"]


TRACING_BODY = """
def errno_of(call):
    ctypes.set_errno(0)
    return 0 if call() >= 0 else ctypes.get_errno()
syscall, victim = libc.syscall, args["victim"]
syscall.restype = ctypes.c_long
long = ctypes.c_long
params = ctypes.create_string_buffer(120)  # struct io_uring_params
results["ptrace"] = errno_of(lambda: libc.ptrace(long(2), long(victim), None, None))
zero = long(0)
results["process_vm_readv"] = errno_of(
    lambda: syscall(long(args["process_vm_readv"]), long(victim), None, zero, None, zero, zero))
results["io_uring_setup"] = errno_of(lambda: syscall(long(425), long(1), params))
results["pidfd_getfd"] = errno_of(lambda: syscall(long(438), long(-1), long(0), long(0)))
results["socketpair"] = attempt(socket.socketpair)
"""


@pytest.mark.parametrize("layers", [(), ("seccomp",)], ids=["none", "seccomp"])
def test_tracing_and_io_uring(layers: tuple[str, ...], victim: subprocess.Popen[bytes]) -> None:
    process_vm_readv = {"x86_64": 310, "aarch64": 270}[os.uname().machine]
    results = run_child(
        TRACING_BODY, layers=layers, victim=victim.pid, process_vm_readv=process_vm_readv
    )
    socketpair = results.pop("socketpair")
    if layers:
        assert results == dict.fromkeys(results, errno.EACCES)
        assert socketpair == "PermissionError"
    else:
        assert errno.EACCES not in results.values()
        assert socketpair.startswith("ok")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 exists on x86_64 only")
def test_x32_syscalls_kill_the_process() -> None:
    body = "results['getpid'] = libc.syscall(ctypes.c_long(0x40000000 | 39))"
    assert spawn_child(body, layers=()).returncode == 0
    assert spawn_child(body, layers=("seccomp",)).returncode == -signal.SIGSYS


def test_threads_started_before_landlock_are_refused(files: dict[str, str]) -> None:
    body = """
    import threading
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    results["restrict"] = attempt(lambda: confine.restrict_filesystem(read_only=[], read_write=[]))
    stop.set()
    results["read_secret"] = attempt(lambda: read(args["secret"]))
    """
    if confine.landlock_abi() >= 8:
        pytest.skip("Landlock ABI 8 confines every thread (TSYNC)")
    results = run_child(body, layers=(), secret=files["secret"])
    assert results == {"restrict": "ConfinementError", "read_secret": f"ok:{SECRET}"}


def test_threads_started_after_confinement_are_confined(files: dict[str, str]) -> None:
    body = """
    import threading
    def in_thread():
        results["read_secret"] = attempt(lambda: read(args["secret"]))
        results["udp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    """
    results = run_child(body, layers=LAYERS_ALL, secret=files["secret"])
    assert results == {"read_secret": "PermissionError", "udp": "PermissionError"}


def test_seccomp_also_covers_threads_started_before_it() -> None:
    body = """
    import threading
    go = threading.Event()
    def in_thread():
        go.wait()
        results["udp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    thread = threading.Thread(target=in_thread)
    thread.start()
    confine.deny_network_and_tracing()
    go.set()
    thread.join()
    """
    assert run_child(body, layers=()) == {"udp": "PermissionError"}


def test_address_space_limit_turns_a_big_allocation_into_memory_error() -> None:
    body = """
    results["small"] = attempt(lambda: len(bytearray(256 << 20)))
    results["big"] = attempt(lambda: len(bytearray(2 << 30)))
    """
    assert run_child(body, layers=("limits",), address_space=1 << 30) == {
        "small": f"ok:{256 << 20}",
        "big": "MemoryError",
    }


def test_cpu_limit_ends_a_busy_loop_with_sigxcpu() -> None:
    start = time.monotonic()
    done = spawn_child("while True:\n    pass\n", layers=("limits",), cpu=1)
    assert done.returncode == -signal.SIGXCPU
    assert time.monotonic() - start < 15


def test_limits_are_clamped_to_hard_limits_and_cores_are_off() -> None:
    body = """
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    confine.limit_resources(address_space_bytes=8 << 30, cpu_seconds=100)
    results = {name: resource.getrlimit(getattr(resource, name))
               for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_CORE")}
    """
    results = run_child(body, layers=())
    assert results["RLIMIT_AS"] == [3 << 30, 3 << 30]
    assert results["RLIMIT_CORE"] == [0, 0]
    soft, hard = results["RLIMIT_CPU"]
    assert 100 <= soft <= 105 and hard == soft + 5


def test_probe_finds_confinement_enforceable_here() -> None:
    assert confine.landlock_abi() >= 4
    start = time.monotonic()
    support = confine.probe()
    assert support.enforceable, support.describe()
    assert support == confine.SandboxSupport(confine.landlock_abi(), True, ())
    assert time.monotonic() - start < 10  # well under 2 s on an idle machine
    assert support.describe().startswith("sandbox enforceable")


def test_probe_reports_a_failed_child_as_a_problem() -> None:
    support = confine.probe(timeout_s=0.001)
    assert not support.enforceable
    assert "longer than" in support.problems[0]
    assert "NOT enforceable" in support.describe()
