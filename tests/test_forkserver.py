"""The tests' fork server (tests/forkserver.py) behaves as a fresh process would: argv,
stdin/stdout/stderr, working directory, environment, exit status, an uncaught exception,
PYTHON* variables and --user-dir (applied, or the real program runs), and a child that
dies with its shim together with every process it started."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import PLUGIN, forkserver, run, start_forkserver

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
if sys.argv[1] == "spawn":  # a grandchild in this process group and one in a new session (as torchrun's ranks)
    import subprocess
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    kids = [subprocess.Popen(sleep), subprocess.Popen(sleep, start_new_session=True)]
    open(sys.argv[2], "w").write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))
    time.sleep(60)
if sys.argv[1] == "flags":  # served: the server's imports are here already
    import json, tempfile
    import mine  # from PYTHONPATH
    print(json.dumps({"served": "torch" in sys.modules, "optimize": sys.flags.optimize, "hash": hash("tarm"),
                      "mine": mine.__file__, "path1": sys.path[1], "bytecode": not sys.dont_write_bytecode,
                      "tmp": tempfile.gettempdir(), "encoding": sys.stdout.encoding,
                      "filters": [(f[0], f[2].__name__) for f in __import__("warnings").filters[:1]]}))
if sys.argv[1] == "which-plugin":
    served = "torch" in sys.modules
    import tarm_plugin
    print(tarm_plugin.__file__, served)
if sys.argv[1] == "which-json":
    import json
    print(json.__file__, "torch" in sys.modules)
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


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"  # a zombie is dead
    except FileNotFoundError:
        return False


@served
def test_a_dying_shim_takes_the_grandchildren_along(script, tmp_path):
    pid_file = tmp_path / "pids"
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, script, "spawn", str(pid_file)], timeout=4)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 3
    for _ in range(100):
        if not any(map(alive, pids)):
            return
        time.sleep(0.05)
    pytest.fail(f"still running after the shim died: {[p for p in pids if alive(p)]}")


def flags(script, tmp_path, *args, **env):
    """What the probe sees, run in ``tmp_path`` with PYTHONPATH=lib (holding ``mine.py``)."""
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / "mine.py").write_text("")
    # lib first, then this process's own entries (the server preloaded the plugin from them)
    path = os.pathsep.join(["lib", *filter(None, [os.environ.get("PYTHONPATH")])])
    p = run([sys.executable, script, "flags", *args], cwd=str(tmp_path), env={"PYTHONPATH": path, **env})
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


@served
def test_python_variables_apply_in_the_served_child(script, tmp_path):
    (tmp_path / "t").mkdir()
    got = flags(script, tmp_path, PYTHONDONTWRITEBYTECODE="1", TMPDIR=str(tmp_path / "t"),
                PYTHONIOENCODING="latin-1", PYTHONWARNINGS="error::UserWarning")
    assert got["served"]
    assert got["mine"] == str(tmp_path / "lib" / "mine.py") and got["path1"] == str(tmp_path / "lib")
    assert not got["bytecode"] and got["tmp"] == str(tmp_path / "t")
    assert got["encoding"] == "latin-1" and got["filters"] == [["error", "UserWarning"]]
    got = flags(script, tmp_path, PYTHONDONTWRITEBYTECODE="")  # and gone again in the next request
    fresh = run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"]).stdout.strip()
    assert got["served"] and got["bytecode"] and got["tmp"] != str(tmp_path / "t")
    assert got["encoding"] == fresh != "latin-1" and got["filters"] != [["error", "UserWarning"]]


@served
def test_python_variables_of_the_start_up_run_the_real_interpreter(script, tmp_path):
    got = flags(script, tmp_path, PYTHONOPTIMIZE="1")
    assert not got["served"] and got["optimize"] == 1
    got = flags(script, tmp_path, PYTHONHASHSEED="123")
    fresh = subprocess.run([sys.executable, "-c", "print(hash('tarm'))"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED="123"))
    assert not got["served"] and got["hash"] == int(fresh.stdout)
    # PYTHONPATH holding its own copy of a module the server has imported (json)
    (tmp_path / "lib" / "json.py").write_text("")
    p = run([sys.executable, script, "which-json"], cwd=str(tmp_path), env={"PYTHONPATH": "lib"})
    assert p.stdout.split() == [str(tmp_path / "lib" / "json.py"), "False"]


@served
def test_another_user_dir_runs_the_real_program(script, tmp_path):
    plugin = os.path.relpath(PLUGIN, tmp_path)
    for args, served in [(["--user-dir", PLUGIN], True), ([f"--user-dir={plugin}"], True),
                         (["--user-dir", "lib"], False), ([f"common.user_dir={tmp_path}/lib"], False)]:
        assert flags(script, tmp_path, *args)["served"] == served, args


@served
def test_what_it_does_not_serve_runs_as_itself():
    assert "TARM_FORKSERVER" in forkserver()
    p = run(["python", "-c", "import sys; print(sys.flags.no_site)"])
    assert p.returncode == 0 and p.stdout.strip() == "0"  # the real interpreter, not the -S shim
    p = run(["fairseq-train", "--help"])
    assert p.returncode == 0 and "usage: fairseq-train" in p.stdout


@served
def test_a_worktree_s_plugin_is_preloaded_from_its_pythonpath(script, tmp_path):
    """A server started with a PYTHONPATH (tests run from a second checkout) preloads that
    copy of the plugin, serves the requests that name it, and not those that would import
    another copy."""
    import shutil

    copy = tmp_path / "checkout"
    shutil.copytree(PLUGIN, copy / "tarm_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    sock, shims, stop = start_forkserver(str(copy))
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(TARM_FORKSERVER=sock, PATH=shims + os.pathsep + env["PATH"])
        python = os.path.join(shims, "python")

        def which(**more):
            p = subprocess.run([python, script, "which-plugin"], env={**env, **more}, capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0, p.stderr[-2000:]
            where, served = p.stdout.split()
            return os.path.dirname(where), served == "True"

        assert which(PYTHONPATH=str(copy)) == (str(copy / "tarm_plugin"), True)
        where, served = which()
        assert where != str(copy / "tarm_plugin") and not served
    finally:
        stop()
