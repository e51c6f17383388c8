"""The sandbox against hostile snippets: each ends as a failed test, never as a harness crash
or a change outside the sandbox's directory. Run in every isolation mode this machine has."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kv_transition.eval import sandbox
from kv_transition.eval.sandbox import SandboxLimits, run_python

MODES = {
    "default": {},
    "no-namespaces": {"use_namespaces": False},
    "audit-hook-fallback": {"use_namespaces": False, "use_landlock": False},
}
FAST = SandboxLimits(memory_bytes=256 << 20)  # allocation snippets fail sooner


@pytest.fixture(params=list(MODES), scope="module")
def mode(request):
    return MODES[request.param]


def _survivors(workdir: str, wait_s: float = 3.0) -> list[int]:
    """PIDs whose command line names this sandbox's directory, once killed ones had time to go."""
    deadline = time.monotonic() + wait_s
    while True:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if workdir.encode() in (entry / "cmdline").read_bytes():
                        out.append(int(entry.name))
                except OSError:
                    continue
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_correct_code_passes_and_wrong_code_fails(mode):
    ok = run_python("import math, json\nprint(json.dumps(math.sqrt(16)))", 10, **mode)
    assert ok.passed and ok.exit_code == 0 and ok.stdout.strip() == "4.0" and not ok.timed_out
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'", 10, **mode)
    assert not bad.passed and bad.exit_code == 1 and "AssertionError: arithmetic" in bad.stderr


def test_environment_is_empty_and_cwd_is_a_fresh_directory(mode, monkeypatch):
    monkeypatch.setenv("KVT_SECRET_TOKEN", "do-not-leak")
    code = ("import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
            "print(sorted(os.listdir('.')))")
    res = run_python(code, 10, **mode)
    assert res.passed
    env, cwd, listing = res.stdout.strip().splitlines()
    assert "KVT_SECRET_TOKEN" not in env and "HOME" not in env and "PATH" not in env
    assert cwd == res.workdir and listing == "['solution.py']"
    assert not Path(res.workdir).exists()  # removed afterwards


def test_infinite_loop_times_out_and_is_killed(mode):
    start = time.perf_counter()
    res = run_python("while True:\n    pass", 1.0, **mode)
    assert res.timed_out and not res.passed
    assert time.perf_counter() - start < 6
    assert _survivors(res.workdir) == []


def test_fork_bomb_fails_and_leaves_no_process(mode):
    res = run_python("import os\nwhile True:\n    os.fork()", 10, **mode)
    assert not res.passed
    assert _survivors(res.workdir) == []


@pytest.mark.parametrize("code", [
    "x = bytearray(1 << 40)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))",
])
def test_huge_allocation_fails_with_memory_error(mode, code):
    res = run_python(code, 20, FAST, **mode)
    assert not res.passed and not res.timed_out and "MemoryError" in res.stderr


def test_rm_rf_outside_the_sandbox_changes_nothing(mode, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    code = (f"import os, shutil\np = {str(victim)!r}\n"
            "shutil.rmtree(p, ignore_errors=True)\n"
            "try:\n    os.system('rm -rf ' + p)\nexcept Exception:\n    pass\n"
            "raise SystemExit(0 if not os.path.exists(p + '/precious.txt') else 1)")
    res = run_python(code, 10, **mode)
    assert not res.passed
    assert (victim / "precious.txt").read_text() == "keep me"


def test_writes_outside_the_sandbox_fail(mode, tmp_path):
    target = tmp_path / "planted.txt"
    res = run_python(f"open({str(target)!r}, 'w').write('x')", 10, **mode)
    assert not res.passed and not target.exists()
    inside = run_python("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())",
                        10, **mode)
    assert inside.passed and inside.stdout.strip() == "x"


def test_reading_ssh_keys_fails(mode, tmp_path):
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret-material")
    key.chmod(0o600)
    for path in (str(key), os.path.expanduser("~/.ssh/id_rsa")):
        res = run_python(f"print(open({path!r}).read())", 10, **mode)
        assert not res.passed and "secret-material" not in res.stdout


@pytest.mark.parametrize("how", ["socket", "_socket", "udp"])
def test_opening_a_socket_fails(mode, how):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    code = {
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)",
        "_socket": f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
        "udp": f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
               f".sendto(b'x', ('127.0.0.1', {port}))",
    }[how]
    try:
        res = run_python(code, 10, **mode)
        assert not res.passed
        with pytest.raises(socket.timeout):
            server.accept()  # nothing got through
    finally:
        server.close()


def test_signalling_processes_outside_fails(mode):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        res = run_python(f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)", 10,
                         **mode)
        assert not res.passed
        time.sleep(0.1)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_output_is_truncated_to_the_bound():
    limits = SandboxLimits(output_bytes=1000)
    res = run_python("import sys\nsys.stdout.write('x' * 200000)", 10, limits)
    assert res.passed and res.stdout.startswith("x" * 1000)
    assert "truncated: 200000 bytes in all" in res.stdout and len(res.stdout) < 1200


def test_output_beyond_the_file_size_limit_kills_the_writer():
    res = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", 10,
                     SandboxLimits(file_bytes=1 << 20))
    assert not res.passed and not res.timed_out


def test_isolation_names_the_layers_used():
    res = run_python("pass", 10)
    assert res.passed and "rlimits" in res.isolation
    if sandbox._unshare_prefix():
        assert "netns" in res.isolation and "pidns" in res.isolation
    fallback = run_python("pass", 10, use_namespaces=False, use_landlock=False)
    assert fallback.passed and fallback.isolation.startswith("audit-hook")
