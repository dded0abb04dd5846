"""Linux confinement of a child process that runs untrusted model code.

The child calls, on itself and in this order: :func:`limit_resources`,
:func:`restrict_filesystem` (Landlock: files, TCP, abstract unix sockets, signals) and
:func:`deny_network_and_tracing` (seccomp: sockets, io_uring, ptrace). None of them can be
undone. :func:`probe` checks, in a throwaway child, that they work on this kernel.

Only ctypes and the standard library are used, and importing this file starts no thread.
Load it by path (``importlib.util.spec_from_file_location``, as :func:`probe` does) rather
than as ``workers.models.sandbox.confine``: the ``workers.models`` package imports numpy and
pyarrow, which start threads, and before Landlock ABI 8 threads running before
:func:`restrict_filesystem` would escape it (so it refuses to run then).
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import platform
import resource
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

_PR_SET_NO_NEW_PRIVS = 38
# Same numbers on x86_64 and aarch64 (syscalls added after 5.1 share one table).
_NR_CREATE_RULESET, _NR_ADD_RULE, _NR_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RESTRICT_SELF_TSYNC = 1 << 3  # ABI 8: restrict every thread, not just the caller.

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
# The only rights Landlock accepts in a rule whose path is a file, not a directory.
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_FS_READ_ONLY = _FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE
_NET_BIND_CONNECT_TCP = 0b11
_SCOPE_ABSTRACT_UNIX_SIGNAL = 0b11

_SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 1, 1
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_X32_SYSCALL_BIT = 0x40000000


# machine: (seccomp_data.arch, __NR_seccomp, refused syscalls: socket, socketpair, ptrace,
# process_vm_readv, process_vm_writev, io_uring_setup (its ops open sockets without
# socket(2)), pidfd_getfd (would take a socket from another process)).
_ARCHES = {
    "x86_64": (0xC000003E, 317, (41, 53, 101, 310, 311, 425, 438)),
    "aarch64": (0xC00000B7, 277, (198, 199, 117, 270, 271, 425, 438)),
}


class ConfinementError(RuntimeError):
    """The kernel refused, or cannot provide, a confinement this module was asked for."""


def _syscall(name: str, nr: int, *args: object) -> int:
    # Every integer is passed as a long: syscall(2) is variadic, and a bare Python int would
    # go as a 32-bit int with undefined upper bits.
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"{name} failed: {os.strerror(err)} (errno {err})")
    return ret


def _set_no_new_privs() -> None:
    # Required for unprivileged Landlock and seccomp, and it keeps execve of a setuid
    # binary from shedding either; idempotent.
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")


def landlock_abi() -> int:
    """Return the kernel's Landlock ABI version.

    Returns
    -------
    int
        The version (1 for Linux 5.13, 4 adds TCP, 6 adds scopes, ...), or 0 when the
        kernel lacks Landlock or it is disabled at boot.
    """
    ret = _libc.syscall(
        ctypes.c_long(_NR_CREATE_RULESET), None, ctypes.c_long(0),
        ctypes.c_long(_CREATE_RULESET_VERSION),
    )  # fmt: skip
    return max(int(ret), 0)  # ENOSYS, EOPNOTSUPP: no Landlock to use


def _handled_fs(abi: int) -> int:
    rights = _FS_ABI1
    rights |= _FS_REFER if abi >= 2 else 0
    rights |= _FS_TRUNCATE if abi >= 3 else 0
    return rights | (_FS_IOCTL_DEV if abi >= 5 else 0)


def _add_path_rule(ruleset_fd: int, path: str | os.PathLike[str], rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return  # e.g. /lib64 on distributions without it: nothing to allow
    except OSError as exc:
        raise ConfinementError(f"cannot open {os.fspath(path)!r} for a rule: {exc}") from exc
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE_RIGHTS  # EINVAL otherwise
        # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd.
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        _syscall(
            f"landlock_add_rule({os.fspath(path)!r})", _NR_ADD_RULE, ctypes.c_long(ruleset_fd),
            ctypes.c_long(_RULE_PATH_BENEATH), attr, ctypes.c_long(0),
        )  # fmt: skip
    finally:
        os.close(fd)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError as exc:
        raise ConfinementError(f"cannot count this process's threads: {exc}") from exc


def restrict_filesystem(
    *,
    read_only: Sequence[str | os.PathLike[str]],
    read_write: Sequence[str | os.PathLike[str]],
) -> None:
    """Confine this process, for good, to the given files with Landlock.

    Every access right the running ABI knows is handled, so anything not allowed below is
    refused: other files, TCP bind and connect (ABI 4+, no port is allowed), and (ABI 6+)
    abstract unix sockets and signals to processes outside the sandbox. Threads started
    later inherit the confinement.

    Parameters
    ----------
    read_only : sequence of path-like
        Directories (read, list, execute beneath them) and files (read, execute). Not
        ``/proc`` as a whole: with it readable, Linux 6.18 still lets a confined process
        read other processes' ``environ`` and ``maps``; ``/proc/cpuinfo`` alone is fine.
    read_write : sequence of path-like
        Directories where everything is allowed beneath them, and files (device nodes,
        say) that may be read, written, truncated and, from ABI 5, sent ioctls.
        Paths of either list that do not exist are skipped.

    Raises
    ------
    ConfinementError
        Landlock is unavailable, a syscall failed, or other threads already run while the
        kernel (ABI < 8) can confine only the calling thread: they would stay unconfined.
        So confine before importing numpy, pyarrow, torch or onnxruntime (all of which
        start threads); threads started afterwards are confined.
    """
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError("Landlock is not available in this kernel (or disabled at boot)")
    flags = _RESTRICT_SELF_TSYNC if abi >= 8 else 0
    # Without TSYNC, threads already running would stay outside the domain for good.
    if not flags and _thread_count() > 1:
        raise ConfinementError(
            f"other threads already run, and Landlock ABI {abi} < 8 confines only the "
            "calling thread: confine before anything starts a thread"
        )
    handled = _handled_fs(abi)
    net = _NET_BIND_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SIGNAL if abi >= 6 else 0
    # The kernel rejects a size that includes fields its ABI does not know.
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, net, scoped), 24)
    ruleset_fd = _syscall(
        "landlock_create_ruleset", _NR_CREATE_RULESET, attr, ctypes.c_long(size), ctypes.c_long(0)
    )
    try:
        for path in read_only:
            _add_path_rule(ruleset_fd, path, _FS_READ_ONLY)
        for path in read_write:
            _add_path_rule(ruleset_fd, path, handled)
        _set_no_new_privs()
        _syscall(
            "landlock_restrict_self", _NR_RESTRICT_SELF, ctypes.c_long(ruleset_fd),
            ctypes.c_long(flags),
        )  # fmt: skip
    finally:
        os.close(ruleset_fd)


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def deny_network_and_tracing() -> None:
    """Install a seccomp filter on every thread of this process, for good.

    ``socket``, ``socketpair`` and ``io_uring_setup`` fail with ``EACCES``: a model has no
    use for any socket, and Landlock (up to ABI 7 at least) does not cover unix sockets
    bound to a path, UDP or raw sockets. ``ptrace``, ``process_vm_readv``,
    ``process_vm_writev`` and ``pidfd_getfd`` fail the same way. A syscall made through a
    foreign ABI (i386, x32) kills the process, since the filter's numbers would not apply.

    Raises
    ------
    ConfinementError
        Unknown architecture, or the kernel refused the filter.
    """
    machine = platform.machine()
    if machine not in _ARCHES or struct.calcsize("P") != 8:
        raise ConfinementError(f"no seccomp filter for architecture {machine!r}")
    audit_arch, nr_seccomp, denied = _ARCHES[machine]
    program = [
        _bpf(_LD_W_ABS, 4),  # seccomp_data.arch
        _bpf(_JEQ_K, audit_arch, jt=1),
        _bpf(_RET_K, _RET_KILL_PROCESS),
        _bpf(_LD_W_ABS, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 numbers (bit 30 set) would dodge the table below
        program += [_bpf(_JGE_K, _X32_SYSCALL_BIT, jf=1), _bpf(_RET_K, _RET_KILL_PROCESS)]
    for nr in denied:
        program += [_bpf(_JEQ_K, nr, jf=1), _bpf(_RET_K, _RET_ERRNO | errno.EACCES)]
    program.append(_bpf(_RET_K, _RET_ALLOW))
    code = ctypes.create_string_buffer(b"".join(program))
    fprog = _SockFprog(len(program), ctypes.cast(code, ctypes.c_void_p))
    _set_no_new_privs()
    # seccomp(2) rather than prctl(PR_SET_SECCOMP): only it has TSYNC, which puts the filter
    # on the threads torch or onnxruntime already started, not just on the caller.
    ret = _syscall(
        "seccomp(SET_MODE_FILTER)", nr_seccomp, ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog),
    )  # fmt: skip
    if ret:
        raise ConfinementError(f"seccomp could not synchronise thread {ret}")


def _set_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        # Raising a hard limit needs CAP_SYS_RESOURCE; never try.
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (OSError, ValueError) as exc:
        raise ConfinementError(f"setrlimit({which}, {(soft, hard)}) failed: {exc}") from exc


def limit_resources(*, address_space_bytes: int | None, cpu_seconds: int | None) -> None:
    """Cap this process's memory and CPU time, and turn off core dumps.

    Parameters
    ----------
    address_space_bytes : int or None
        ``RLIMIT_AS``, soft and hard; allocations past it fail (``MemoryError``). Note that
        CUDA reserves far more address space than it uses. None leaves it as it is.
    cpu_seconds : int or None
        CPU seconds (all threads together) the process may still use from now on: the time
        already spent, importing torch say, is added since ``RLIMIT_CPU`` counts the
        process's whole life. Past it comes ``SIGXCPU``, and ``SIGKILL`` 5 s later should
        the code catch that. None leaves it as it is.

    Raises
    ------
    ConfinementError
        The kernel refused a limit. Limits are clamped to the current hard limits.
    """
    _set_limit(resource.RLIMIT_CORE, 0, 0)  # a core file would hold the model's memory
    if address_space_bytes is not None:
        _set_limit(resource.RLIMIT_AS, address_space_bytes, address_space_bytes)
    if cpu_seconds is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_seconds
        _set_limit(resource.RLIMIT_CPU, soft, soft + 5)


@dataclass(frozen=True)
class SandboxSupport:
    """What :func:`probe` found out about confinement on this machine.

    Attributes
    ----------
    landlock_abi : int
        The kernel's Landlock ABI, 0 without Landlock.
    seccomp : bool
        Whether the seccomp filter installed and refused a socket.
    problems : tuple of str
        Everything that did not work as it should.
    """

    landlock_abi: int
    seccomp: bool
    problems: tuple[str, ...]

    @property
    def enforceable(self) -> bool:
        """Whether files, network and tracing can all be confined (Landlock ABI 4+)."""
        return self.landlock_abi >= 4 and self.seccomp and not self.problems

    def describe(self) -> str:
        """Return one line for the logs."""
        verdict = "enforceable" if self.enforceable else "NOT enforceable"
        text = f"sandbox {verdict}: Landlock ABI {self.landlock_abi}, seccomp {self.seccomp}"
        return text + "".join(f"; {problem}" for problem in self.problems)


_PROBE_CODE = """
import importlib.util, json, os, socket, sys
module_path, read_only, scratch, secret = sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:]
spec = importlib.util.spec_from_file_location("_confine_probe", module_path)
confine = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confine)
confine.limit_resources(address_space_bytes=1 << 30, cpu_seconds=10)
confine.restrict_filesystem(read_only=read_only, read_write=[scratch])
confine.deny_network_and_tracing()
result = {"abi": confine.landlock_abi(), "seccomp": False, "problems": []}
try:
    open(secret).close()
    result["problems"].append("a file outside the allowed paths was readable")
except PermissionError:
    pass
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    result["problems"].append("a UDP socket could be opened")
except PermissionError:
    result["seccomp"] = True
try:
    with open(os.path.join(scratch, "written"), "w") as handle:
        handle.write("ok")
    import fractions  # a lazy import, of a C extension too (_decimal)
except Exception as exc:
    result["problems"].append(f"scratch directory or standard library unusable: {exc!r}")
print(json.dumps(result))
"""


def probe(*, timeout_s: float = 30.0) -> SandboxSupport:
    """Check, in a throwaway child process, that confinement works here.

    The calling process is left unconfined. The child applies all three confinements, then
    checks that a file outside its paths and a UDP socket are refused, and that its scratch
    directory is writable and the standard library importable.

    Parameters
    ----------
    timeout_s : float
        How long the child may take (it needs well under a second).

    Returns
    -------
    SandboxSupport
        Failures of the child (exit status, timeout, unreadable output) become problems.
    """
    abi = landlock_abi()
    # Where the interpreter imports from: standard library (with lib-dynload), site-packages.
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = sorted({sysconfig.get_paths()[name] for name in names})
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryDirectory() as outside:
        secret = os.path.join(outside, "secret")
        with open(secret, "w") as handle:
            handle.write("probe")
        argv = [sys.executable, "-I", "-c", _PROBE_CODE, os.path.abspath(__file__),
                json.dumps(paths), scratch, secret]  # fmt: skip
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, close_fds=True,
                stdin=subprocess.DEVNULL, env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return SandboxSupport(abi, False, (f"the probe took longer than {timeout_s} s",))
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        problem = f"the probe exited with status {done.returncode}: {tail[0]}"
        return SandboxSupport(abi, False, (problem,))
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return SandboxSupport(
            int(result["abi"]), bool(result["seccomp"]), tuple(map(str, result["problems"]))
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return SandboxSupport(abi, False, (f"the probe printed no result ({exc})",))
