"""Memory kinds: ``--memory-kind tokens`` (RMT, averaging, learned rate, gate, prefix) is
unchanged against outputs committed before memory kinds existed (bit for bit on the machine
that wrote them; to 1e-5 of each tensor's scale elsewhere, where other CPU kernels round
differently).

tests/fixtures/tokens_reference/outputs.pt was written by ``python tests/test_memory_kinds.py``
at commit 23ca6ae + the task's memory store (the model then had only token memory)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import build  # noqa: E402

L = 4
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokens_reference", "outputs.pt")
SETTINGS = {
    "rmt": ["--memory-ema-alpha", "1"],
    "a0.5": ["--memory-ema-alpha", "0.5"],
    "prefix": ["--memory-ema-alpha", "0"],
    "learned": ["--memory-ema-alpha", "0.3", "--memory-ema-learned"],
    "gate": ["--memory-ema-alpha", "0.5", "--memory-gate"],
    "learned_write": ["--memory-write-input", "learned"],
    "no_memory": ["--num-memory-tokens", "0"],
}


def outputs(dict_dir, flags):
    """Logits, memories and a gradient of two consecutive calls (memory passed by hand),
    on one thread (the order of a multi-threaded reduction changes the last bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _outputs(dict_dir, flags)
    finally:
        torch.set_num_threads(threads)


def _outputs(dict_dir, flags):
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "3", *flags)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randint(4, 60, (2, 3 * L), generator=g) for _ in range(2))
    reset = torch.tensor([[True, False, True], [True, False, False]])
    logits_a, extra_a = model(a, reset=reset, segment_length=L)
    logits_b, extra_b = model(b, memory=extra_a["memory"], segment_length=L)
    (logits_a.square().mean() + logits_b.square().mean()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return {"logits_a": logits_a.detach(), "logits_b": logits_b.detach(),
            "memory": extra_b["memory"].detach(), "grad": grad}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_token_memory_is_unchanged(dict_dir, setting):
    want = torch.load(REFERENCE, weights_only=True)[setting]
    got = outputs(dict_dir, SETTINGS[setting])
    for name, tensor in want.items():
        # bit for bit on the machine that wrote it; another CPU's kernels round differently (seen:
        # 1.2e-6 on logits of magnitude 4, float32's last bits): 1e-5 of the tensor's scale, where
        # a change of the rule moves values by far more
        scale = float(tensor.abs().max()) if tensor.numel() else 0.0  # no_memory: an empty memory
        assert torch.allclose(got[name], tensor, rtol=1e-5, atol=1e-5 * scale), f"{setting}: {name} changed"


if __name__ == "__main__":  # write the reference (only ever from the code it pins)
    import tempfile

    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(60):
        d.add_symbol(f"w{i}", n=100 - i)
    with tempfile.TemporaryDirectory() as tmp:
        d.save(os.path.join(tmp, "dict.txt"))
        torch.save({s: outputs(tmp, f) for s, f in SETTINGS.items()}, REFERENCE)
    print(f"wrote {REFERENCE}")


SUM_KIND = '''"""A test kind: E_t = E_{t-1} + s * M_t, a running sum of the written memory."""

import torch
from torch import nn

from ..memory import MemoryKind, Option, register_memory_kind


@register_memory_kind("sum")
class SumMemory(MemoryKind):
    OPTIONS = {"sum_scale": Option(0.5, "the weight s of each written memory")}

    @classmethod
    def from_config(cls, cfg, dim, num_layers, init_std, write_norm, dropout):
        return cls(cfg.num_memory_tokens, dim, cfg.sum_scale, init_std)

    def __init__(self, num_tokens, dim, scale, init_std):
        super().__init__()
        self.num_tokens, self.scale = num_tokens, scale
        self.initial = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    def initial_memory(self, bsz):
        return self.initial.unsqueeze(0).expand(bsz, -1, -1)

    def segment_memory(self, read, dtype):
        return read.to(dtype), read.to(dtype)

    def written(self, final, layers):
        return final

    def update(self, prev, written):
        return prev + self.scale * written, None
'''

BUILD_SUM = '''
import sys, torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
argv = [sys.argv[1], "--user-dir", sys.argv[2], "--task", "tarm_language_modeling", "--arch", "tarm_lm",
        "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
        "--decoder-attention-heads", "4", "--segment-length", "4", "--num-memory-tokens", "3", *sys.argv[3:]]
cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
model = tasks.setup_task(cfg.task).build_model(cfg.model)
logits, extra = model(torch.randint(4, 60, (2, 12)), segment_length=4)
logits.sum().backward()
print(type(model.memory).__name__, model.memory.scale, tuple(extra["memory"].shape),
      all(p.grad is not None for p in model.memory.parameters()))
'''


def test_a_new_kind_is_one_file(dict_dir, tmp_path, monkeypatch):
    """A module dropped into tarm_plugin/kinds/ is a --memory-kind with its own flags, the
    import contract holds, and nothing else in the package changes."""
    import shutil
    import subprocess

    from conftest import PLUGIN
    from test_layers import lint_imports

    pkg = tmp_path / "tarm_plugin"
    shutil.copytree(PLUGIN, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "kinds" / "sum.py").write_text(SUM_KIND)
    script = tmp_path / "build_sum.py"
    script.write_text(BUILD_SUM)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)

    def build_sum(*flags):
        return subprocess.run([sys.executable, str(script), dict_dir, str(pkg), *flags], env=env,
                              capture_output=True, text=True, timeout=300, cwd=str(tmp_path))

    p = build_sum("--memory-kind", "sum", "--sum-scale", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["SumMemory", "2.0", "(2,", "3,", "32)", "True"], p.stdout
    p = build_sum("--memory-kind", "tokens", "--sum-scale", "2")  # another kind's flag
    assert p.returncode != 0 and "tarm: error: --sum-scale needs --memory-kind sum" in p.stderr, p.stderr[-2000:]
    assert "1 kept, 0 broken" in lint_imports(str(tmp_path)).stdout
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(PLUGIN), "scripts"))
    import lab

    assert sorted(lab.memory_kinds(str(pkg))) == sorted(lab.KINDS + ["sum"])  # and so a setting of the benchmarks
    # a kind that forgets num_tokens would run as a plain transformer: refused, naming it
    (pkg / "kinds" / "sum.py").write_text(SUM_KIND.replace("self.num_tokens, self.scale = num_tokens, scale",
                                                           "self.scale = scale"))
    p = build_sum("--memory-kind", "sum")
    assert p.returncode != 0 and "tarm: error: --memory-kind sum: SumMemory leaves num_tokens at 0" in p.stderr, \
        p.stderr[-2000:]
