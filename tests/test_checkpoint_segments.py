"""--checkpoint-segments: each segment is recomputed in the backward pass (with
the same dropout masks), so the loss and every gradient equal the plain path's,
while only what crosses segment boundaries is kept for the backward pass."""

import pytest
import torch

from conftest import build
from test_cli import train, train_losses
from test_resume_ddp import torchrun

DROPOUT = ["--dropout", "0.1", "--memory-dropout", "0.1"]
L, B = 8, 3


def loss_and_grads(model, task, n_segments=4, last_segment=L, batches=2):
    """Sum of the criterion's loss over ``batches`` consecutive batches of the same
    streams (the second reads the first's memory), and the parameter gradients."""
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    criterion = TarmLmLoss(task)
    model.train()
    data = torch.Generator().manual_seed(0)
    torch.manual_seed(1)  # dropout
    n = (n_segments - 1) * L + last_segment
    total = 0.0
    for b in range(batches):
        src = torch.randint(4, len(task.source_dictionary), (B, n), generator=data)
        tgt = torch.randint(4, len(task.source_dictionary), (B, n), generator=data)
        sample = {"net_input": {"src_tokens": src, "reset": torch.full((B,), b == 0),
                                "memory_key": "train", "segment_length": L}, "target": tgt}
        loss, _, _ = criterion(model, sample)
        loss.backward()
        total += loss.item()
    return total, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def plain_and_checkpointed(dict_dir, *flags, **kw):
    task, plain = build(dict_dir, *DROPOUT, *flags)
    _, ckpt = build(dict_dir, *DROPOUT, *flags, "--checkpoint-segments")
    assert ckpt.checkpoint_segments and not plain.checkpoint_segments
    ckpt.load_state_dict(plain.state_dict())
    return loss_and_grads(plain, task, **kw), loss_and_grads(ckpt, task, **kw)


def assert_same(a, b, atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-6, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-5, atol=atol), name


def has_flag(flag):
    from tarm_plugin.models.tarm_lm import TarmLanguageModelConfig

    return flag.lstrip("-").replace("-", "_") in TarmLanguageModelConfig.__dataclass_fields__


MEMORY_SETTINGS = {
    "rmt": [],
    "tarm_a0.5": ["--memory-ema-alpha", "0.5"],
    "learned_rate": ["--memory-ema-alpha", "0.5", "--memory-ema-learned"],
    "gate": ["--memory-ema-alpha", "0.5", "--memory-gate"],
    "adaptive_softmax": ["--memory-ema-alpha", "0.5", "--adaptive-softmax-cutoff", "20,40"],
}


@pytest.mark.parametrize("name", list(MEMORY_SETTINGS))
def test_same_loss_and_gradients_as_the_plain_path(dict_dir, name):
    flags = MEMORY_SETTINGS[name]
    if "--memory-gate" in flags and not has_flag("--memory-gate"):
        pytest.skip("no --memory-gate in this tree")
    plain, ckpt = plain_and_checkpointed(dict_dir, *flags)
    assert len(plain[1]) > 10, "the gradients reach the layers"
    assert_same(plain, ckpt)


def test_no_memory_same_loss_and_gradients(dict_dir):
    # m = 0 with the flag runs the segments one after another instead of as one batch;
    # without dropout that is the batched path's arithmetic, segment by segment
    task, plain = build(dict_dir, "--num-memory-tokens", "0")
    _, ckpt = build(dict_dir, "--num-memory-tokens", "0", "--checkpoint-segments")
    ckpt.load_state_dict(plain.state_dict())
    assert_same(loss_and_grads(plain, task), loss_and_grads(ckpt, task), atol=1e-5)
    # with dropout the masks follow the segments' order, so compare both on the
    # sequential path (a short last segment makes the plain path sequential too)
    assert_same(*plain_and_checkpointed(dict_dir, "--num-memory-tokens", "0", last_segment=5))


def saved_for_backward_bytes(model, task, k):
    """Bytes of the activations autograd keeps between forward and backward (the
    criterion's loss included), each storage once, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    model.train()
    src = torch.randint(4, len(task.source_dictionary), (B, k * L))
    sample = {"net_input": {"src_tokens": src, "reset": torch.ones(B, dtype=torch.bool),
                            "memory_key": "train", "segment_length": L}, "target": src}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = TarmLmLoss(task)(model, sample)
    loss.backward()
    return sum(saved.values())


@pytest.mark.parametrize("m", ["4", "0"])
def test_keeps_far_less_for_the_backward_pass(dict_dir, m):
    task, plain = build(dict_dir, *DROPOUT, "--num-memory-tokens", m)
    _, ckpt = build(dict_dir, *DROPOUT, "--num-memory-tokens", m, "--checkpoint-segments")
    without, with_flag = (saved_for_backward_bytes(x, task, k=8) for x in (plain, ckpt))
    # what is left: the token features and logits the loss needs (2 layers of a
    # 32-wide model keep ~15x that per token without the flag)
    assert with_flag < 0.2 * without, (with_flag, without)


def test_evaluation_is_unchanged(dict_dir):
    task, plain = build(dict_dir, *DROPOUT)
    _, ckpt = build(dict_dir, *DROPOUT, "--checkpoint-segments")
    src = torch.randint(4, 64, (B, 4 * L))
    with torch.no_grad():
        outs = [m.eval()(src, segment_length=L)[0] for m in (plain, ckpt)]
    assert torch.equal(*outs)


# ------------------------------------------------------------------- CLI
CLI = ["--dropout", "0.1", "--disable-validation", "--seed", "5"]


@pytest.mark.cli
def test_half_path_logs_the_same_losses(ptb_small, tmp_path):
    data, _ = ptb_small
    half = ["--fp16", "--memory-efficient-fp16", *CLI]
    plain = train_losses(train(data, tmp_path / "a", *half, max_update=6))
    ckpt = train_losses(train(data, tmp_path / "b", *half, "--checkpoint-segments", max_update=6))
    assert sorted(ckpt) == list(range(1, 7))
    assert ckpt == plain


@pytest.mark.cli
def test_two_processes_log_the_same_losses(ptb_small, tmp_path):
    data, _ = ptb_small
    ddp = [*CLI, "--distributed-backend", "gloo"]
    plain = train_losses(train(data, tmp_path / "a", *ddp, max_update=5, launcher=torchrun()))
    ckpt = train_losses(train(data, tmp_path / "b", *ddp, "--checkpoint-segments", max_update=5,
                              launcher=torchrun()))
    assert sorted(ckpt) == list(range(1, 6))
    assert ckpt == plain
