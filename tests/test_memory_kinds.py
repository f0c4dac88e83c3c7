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
