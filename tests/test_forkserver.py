"""The tests' fork server (tests/forkserver.py) behaves as a fresh process would: argv,
stdin/stdout/stderr, working directory, environment, exit status, an uncaught exception,
and a child that dies with its shim."""

import os
import subprocess
import sys
import time

import pytest

from conftest import forkserver, run

SCRIPT = """
import os, sys, time
if sys.argv[1] == "echo":
    print("out:" + sys.stdin.read().upper() + ":" + " ".join(sys.argv[2:]))
    print("err:" + os.getcwd() + ":" + os.environ.get("WHO", ""), file=sys.stderr)
    print("argv0:" + sys.argv[0], file=sys.stderr)
    sys.exit(3)
if sys.argv[1] == "raise":
    raise KeyError("boom")
if sys.argv[1] == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
"""

served = pytest.mark.skipif(os.environ.get("TARM_TEST_FORK", "1") == "0", reason="TARM_TEST_FORK=0")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return str(path)


@served
def test_served_script_gets_argv_stdin_cwd_env_and_returns_its_status(script, tmp_path):
    p = run([sys.executable, script, "echo", "a", "b"], input="hi", cwd=str(tmp_path), env={"WHO": "me"})
    assert p.returncode == 3
    assert p.stdout == "out:HI:a b\n"
    assert p.stderr.splitlines() == [f"err:{tmp_path}:me", f"argv0:{script}"]
    assert os.environ.get("TARM_FORKSERVER") is None  # the test process's env is untouched


@served
def test_uncaught_exception_is_status_1_with_the_traceback(script):
    p = run([sys.executable, script, "raise"])
    assert p.returncode == 1 and "Traceback" in p.stderr and p.stderr.strip().endswith("KeyError: 'boom'")


@served
def test_a_timeout_kills_the_served_child(script, tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, script, "sleep", str(pid_file)], timeout=3)
    pid = int(pid_file.read_text())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"served child {pid} outlived its shim")


@served
def test_what_it_does_not_serve_runs_as_itself():
    assert "TARM_FORKSERVER" in forkserver()
    p = run(["python", "-c", "import sys; print(sys.flags.no_site)"])
    assert p.returncode == 0 and p.stdout.strip() == "0"  # the real interpreter, not the -S shim
    p = run(["fairseq-train", "--help"])
    assert p.returncode == 0 and "usage: fairseq-train" in p.stdout
