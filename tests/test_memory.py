"""The memory module alone (plain PyTorch, no fairseq)."""

import pytest
import torch

from tarm_plugin.memory import (
    RecurrentMemory,
    ema_update,
    memory_attention_mask,
)


def test_ema_update_is_the_stated_recursion():
    prev, written = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.allclose(ema_update(prev, written, 0.2), 0.2 * written + 0.8 * prev)
    assert ema_update(prev, written, 1.0) is written  # a = 1 is RMT exactly


def recording_step(written):
    """A stand-in segment step: records what each segment read, writes ``written[t]``."""
    seen = []

    def step(x, read):
        seen.append(read)
        return x, written[len(seen) - 1]

    return step, seen


def test_scan_gives_E0_equal_M0_and_recursion():
    torch.manual_seed(0)
    mem = RecurrentMemory(num_tokens=3, dim=4, alpha=0.3)
    written = [torch.randn(2, 3, 4) for _ in range(4)]
    step, seen = recording_step(written)
    read0 = mem.read(None, None, bsz=2)
    assert torch.equal(read0, mem.initial.expand(2, 3, 4))  # E_0 = M_0 = learned initial memory
    trace = mem.scan([torch.zeros(1)] * 4, read0, step)
    E = read0
    for t in range(4):
        assert torch.equal(seen[t], E)  # segment t+1 reads E_t
        E = 0.3 * written[t] + 0.7 * E
        assert torch.allclose(trace.averaged[t], E)
        assert trace.written[t] is written[t]


def test_alpha_one_reads_raw_written_memory():
    mem = RecurrentMemory(num_tokens=2, dim=4, alpha=1.0)
    written = [torch.randn(1, 2, 4) for _ in range(3)]
    step, seen = recording_step(written)
    mem.scan([None] * 3, mem.read(None, None, 1), step)
    for t in range(1, 3):
        assert torch.equal(seen[t], written[t - 1])  # RMT: segment t+1 reads M_t


@pytest.mark.parametrize("bad", [-1e-6, -0.1, 1.5])
def test_alpha_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="alpha"):
        RecurrentMemory(2, 4, alpha=bad)


def test_alpha_zero_reads_the_initial_memory_at_every_segment():
    """a = 0: E_t = E_0 whatever is written, read live (not a detached carried copy)."""
    mem = RecurrentMemory(2, 4, alpha=0.0)
    assert not mem.carries
    written = [torch.randn(1, 2, 4) for _ in range(3)]
    step, seen = recording_step(written)
    trace = mem.scan([None] * 3, mem.read(torch.randn(1, 2, 4), None, 1), step)
    for t in range(3):
        assert torch.equal(seen[t], mem.initial_memory(1))
        assert torch.equal(trace.averaged[t], mem.initial_memory(1))
    with pytest.raises(ValueError, match="gate"):
        RecurrentMemory(2, 4, alpha=0.0, gate=True)


def test_mask_structure():
    m, L = 2, 3
    mask = memory_attention_mask(m, L)
    allowed = mask == 0
    R, S, W = slice(0, m), slice(m, m + L), slice(m + L, 2 * m + L)
    assert allowed[R, R].all() and not allowed[R, S].any() and not allowed[R, W].any()
    assert allowed[S, R].all() and not allowed[S, W].any()
    assert torch.equal(allowed[S, S], torch.ones(L, L, dtype=torch.bool).tril())
    assert allowed[W, :].all()
    assert torch.equal(memory_attention_mask(0, 4) == 0, torch.ones(4, 4, dtype=torch.bool).tril())


def test_read_resets_rows_and_keeps_initial_in_graph():
    mem = RecurrentMemory(2, 4, alpha=0.5)
    carried = torch.randn(3, 2, 4)
    reset = torch.tensor([True, False, False])
    out = mem.read(carried, reset, 3)
    assert torch.equal(out[0], mem.initial.detach())
    assert torch.equal(out[1:], carried[1:])
    out.sum().backward()
    assert mem.initial.grad is not None


