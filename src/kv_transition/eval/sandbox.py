"""Run untrusted Python (a model's code answer and its test) in a sandbox.

``run_python(code, timeout_s)`` writes the code to ``solution.py`` in a fresh temporary
directory and runs it in a separate process. The layers, strongest first; each one used is
named in ``SandboxResult.isolation``:

* **Namespaces** (``unshare``): a new network namespace (no interface but a loopback that is
  down, so every connect fails), a new PID namespace (the code cannot see or signal the harness,
  and when the sandbox's first process ends the kernel kills everything left in it), and, for a
  non-root harness, a user namespace that makes the other two possible without privileges.
* **Landlock** (Linux >= 5.13): reading only the Python installation, system libraries and the
  temporary directory; writing, creating and deleting only inside that directory; from ABI 4 no
  TCP bind/connect, from ABI 6 no signals or abstract UNIX sockets outside the sandbox.
* **A root harness** runs the code as uid/gid 65534 (nobody), keeping only
  CAP_DAC_READ_SEARCH so an interpreter inside a private home stays importable (Landlock still
  limits what can be read). Without this, RLIMIT_NPROC does not apply to root.
* **rlimits**: CPU seconds, address space, file size, processes, open files, no core dumps.
* **An empty environment**, ``python -I -S -B`` (no site-packages, no user site, no bytecode
  writes), stdin from /dev/null, output to files cut to ``output_bytes``.
* **A Python audit hook** that refuses socket creation; without Landlock it also refuses file
  writes and reads outside the allowed roots, ctypes and exec. Audit hooks are not a security
  boundary (PEP 578): they are the fallback, and the README says so.
* **Wall-clock timeout**: the whole process group is killed with SIGKILL.

A hostile snippet (fork bomb, infinite loop, huge allocation, ``rm -rf``, reading ``~/.ssh``,
opening a socket) therefore ends as a failed test. A sandbox that cannot even start (its setup
failed) raises ``SandboxError``: that is a harness problem, not a wrong answer.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

NOBODY = 65534
_READY = b"ready"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the code it ran)."""


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 1 << 30      # address space of each process
    file_bytes: int = 16 << 20       # largest file the code may write (stdout/stderr included)
    n_processes: int = 64            # RLIMIT_NPROC: counted per user (per user namespace)
    n_files: int = 256               # open file descriptors
    output_bytes: int = 64 << 10     # stdout/stderr kept per stream


@dataclass
class SandboxResult:
    passed: bool          # exit status 0 within the timeout
    exit_code: int | None  # the process's status; negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool
    duration: float       # wall seconds, start-up included
    isolation: str = ""   # the layers that applied, e.g. "netns+pidns+landlock7+uid65534"
    workdir: str = ""     # the (deleted) temporary directory; diagnostics only


# The sandbox's first process. It forks: the parent only waits (as PID 1 of the namespace
# when there is one, so its exit tears the namespace down) and the child confines itself
# irreversibly before running solution.py. Kept free of kv_transition imports: it runs under
# -I -S, where only the standard library exists.
_CHILD = r'''
import os, sys, resource, struct, ctypes, runpy

WD, READY_FD = sys.argv[1], int(sys.argv[2])
CPU, MEM, FSIZE, NPROC, NOFILE = (int(v) for v in sys.argv[3:8])
DROP_UID = int(sys.argv[8])
ROOTS = [r for r in sys.argv[9].split("\x1f") if r]
USE_LANDLOCK = sys.argv[10] == "1"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def fail(what):
    raise OSError(ctypes.get_errno(), what)


def limits():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU, CPU + 1))
    resource.setrlimit(resource.RLIMIT_AS, (MEM, MEM))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))


def drop_root():
    # KEEPCAPS keeps the permitted set across setresuid; then keep only DAC_READ_SEARCH (2),
    # so an interpreter in a private home (pyenv under /root) can still import its stdlib
    if libc.prctl(8, 1, 0, 0, 0) != 0:
        fail("prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(DROP_UID, DROP_UID, DROP_UID)
    os.setresuid(DROP_UID, DROP_UID, DROP_UID)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(1 << 2, 1 << 2, 0, 0, 0, 0)  # effective, permitted, inheritable
    if libc.capset(header, data) != 0:
        fail("capset")


def landlock():
    abi = libc.syscall(444, None, ctypes.c_size_t(0), 1)
    if abi < 1:
        return 0
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) \
        | (1 << 15 if abi >= 5 else 0)
    file_rights = 1 | 2 | 4 | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    attr = struct.pack("<QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    attr = attr[:8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(444, attr, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        fail("landlock_create_ruleset")
    read = 1 | 4 | 8  # execute, read file, read dir
    rules = [(r, read) for r in ROOTS] + [(WD, fs)]
    rules += [(d, 2 | 4 | file_rights) for d in ("/dev/null", "/dev/zero", "/dev/urandom")]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not os.path.isdir(path):
            access &= file_rights
        rule = struct.pack("<Qi", access, fd)
        if libc.syscall(445, ruleset, 1, rule, 0) != 0:
            fail("landlock_add_rule " + path)
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        fail("prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.syscall(446, ruleset, 0) != 0:
        fail("landlock_restrict_self")
    os.close(ruleset)
    return abi


def under(path, roots):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


_PATH_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.mkdir",
                "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
                "shutil.move", "shutil.copyfile", "os.mkfifo", "os.mknod")
_BLOCKED = ("ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.",
            "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill")
_BLOCKED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess", "subprocess")


def hook_factory(strict):
    write_ok = [os.path.realpath(WD)]
    read_ok = write_ok + [os.path.realpath(r) for r in ROOTS] + ["/dev"]

    def hook(event, args):
        if event.startswith("socket."):
            raise PermissionError("sandbox: network access is disabled")
        if not strict:
            return
        if event.startswith(_BLOCKED) or (event == "import" and args[0] in _BLOCKED_MODULES):
            raise PermissionError("sandbox: " + event + " is disabled")
        if event == "open" and isinstance(args[0], (str, bytes)):
            mode, flags = args[1] or "", args[2] or 0
            writes = any(c in str(mode) for c in "wax+") or flags & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            if not under(args[0], write_ok if writes else read_ok):
                raise PermissionError("sandbox: " + os.fsdecode(args[0]) + " is outside")
        elif event in _PATH_EVENTS:
            for a in args:
                if isinstance(a, (str, bytes)) and not under(a, write_ok):
                    raise PermissionError("sandbox: " + os.fsdecode(a) + " is outside")
    return hook


pid = os.fork()
if pid:
    os.close(READY_FD)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)

try:
    os.chdir(WD)
    limits()
    abi = landlock() if USE_LANDLOCK else 0
    if DROP_UID >= 0:
        drop_root()
    if abi == 0:
        # no Landlock (old kernel, or switched off): the strict audit hook stands in for it,
        # and modules the setup imported must be imported again, through the hook
        for name in _BLOCKED_MODULES:
            sys.modules.pop(name, None)
    sys.addaudithook(hook_factory(strict=abi == 0))
    os.write(READY_FD, ("ready %d" % abi).encode())
    os.close(READY_FD)
except BaseException as exc:
    sys.stderr.write("sandbox setup failed: %r\n" % (exc,))
    os._exit(120)
sys.argv = ["solution.py"]
runpy.run_path("solution.py", run_name="__main__")
'''


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` command that works here, or () when namespaces are unavailable."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return ()
    flags = ["--net", "--pid", "--ipc", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags = ["--user", "--map-root-user", *flags]
    cmd = (exe, *flags, "--")
    try:
        ok = subprocess.run([*cmd, "/bin/true" if os.path.exists("/bin/true") else "true"],
                            env={}, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return cmd if ok else ()


@functools.lru_cache(maxsize=1)
def _read_roots() -> tuple[str, ...]:
    """What the code may read: the interpreter's standard library and system libraries.

    Not the project, not the virtual environment's site-packages, not any home directory
    (unless the interpreter itself lives there, as with pyenv, and then only its directory).
    """
    roots = {sys.base_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    roots |= {sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib")}
    roots |= {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime"}
    roots = {os.path.realpath(r) for r in roots if r and os.path.exists(r)}
    return tuple(sorted(r for r in roots if r != "/"))


def _read_bounded(path: str, limit: int) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        data = fh.read(limit)
    text = data.decode("utf-8", errors="replace")
    if size > limit:
        text += f"\n[... output truncated: {size} bytes in all, {limit} kept]"
    return text


def _remove_tree(path: str) -> None:
    """Delete the sandbox directory even if the code made parts of it unwritable."""
    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=retry)


def _kill_group(pgid: int, grace_s: float = 1.0) -> None:
    """SIGKILL the group, then wait (briefly) until its members are gone."""
    deadline = time.monotonic() + grace_s
    try:
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:  # killed members take a moment to exit
            time.sleep(0.01)
            os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        pass


def _isolation(prefix: tuple[str, ...], drop: int, abi: int | None) -> str:
    parts = []
    if prefix:
        parts += ["userns"] if "--user" in prefix else []
        parts += ["netns", "pidns"]
    parts.append(f"landlock{abi}" if abi else "audit-hook")
    parts += [f"uid{drop}"] if drop >= 0 else []
    return "+".join(parts + ["rlimits"])


def run_python(code: str, timeout_s: float = 10.0, limits: SandboxLimits | None = None,
               *, use_namespaces: bool = True, use_landlock: bool = True) -> SandboxResult:
    """Run ``code`` as ``solution.py`` in a fresh sandbox; ``passed`` is exit status 0.

    ``use_namespaces`` / ``use_landlock`` exist so tests can exercise the fallbacks; leave them
    on. Raises ``SandboxError`` only when the sandbox could not be set up.
    """
    limits = limits or SandboxLimits()
    prefix = _unshare_prefix() if use_namespaces else ()
    drop = NOBODY if os.geteuid() == 0 else -1
    workdir = tempfile.mkdtemp(prefix="kvt-sandbox-")
    outdir = tempfile.mkdtemp(prefix="kvt-sandbox-out-")
    try:
        with open(os.path.join(workdir, "solution.py"), "w", encoding="utf-8") as fh:
            fh.write(code)
        if drop >= 0:
            os.chown(workdir, drop, drop)
            os.chown(os.path.join(workdir, "solution.py"), drop, drop)
        return _execute(code, timeout_s, limits, prefix, drop, workdir, outdir, use_landlock)
    finally:
        _remove_tree(workdir)
        shutil.rmtree(outdir, ignore_errors=True)


def _execute(code: str, timeout_s: float, limits: SandboxLimits, prefix: tuple[str, ...],
             drop: int, workdir: str, outdir: str, use_landlock: bool) -> SandboxResult:
    ready_r, ready_w = os.pipe()
    cpu = max(1, math.ceil(timeout_s)) + 1  # the wall clock fires first; CPU is the backstop
    argv = [*prefix, sys.executable, "-I", "-S", "-B", "-c", _CHILD, workdir, str(ready_w),
            str(cpu), str(limits.memory_bytes), str(limits.file_bytes), str(limits.n_processes),
            str(limits.n_files), str(drop), "\x1f".join(_read_roots()),  # argv holds no NUL
            "1" if use_landlock else "0"]
    out_path, err_path = os.path.join(outdir, "stdout"), os.path.join(outdir, "stderr")
    start = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=workdir, env={}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, pass_fds=(ready_w,), start_new_session=True)
    os.close(ready_w)
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid, grace_s=0.0)
        proc.wait()
    duration = time.perf_counter() - start
    _kill_group(proc.pid)  # orphans left in the group (no PID namespace) go too
    ready = _drain(ready_r)
    abi = int(ready.split()[1]) if ready.startswith(_READY) else None
    stderr = _read_bounded(err_path, limits.output_bytes)
    if abi is None and not timed_out:
        raise SandboxError(f"the sandbox could not start (status {proc.returncode}): "
                           f"{stderr.strip()[-500:]}")
    return SandboxResult(
        passed=proc.returncode == 0 and not timed_out, exit_code=proc.returncode,
        stdout=_read_bounded(out_path, limits.output_bytes), stderr=stderr,
        timed_out=timed_out, duration=duration,
        isolation=_isolation(prefix, drop, abi), workdir=workdir)


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 64)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)
