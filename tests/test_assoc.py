"""--memory-kind assoc (tarm_plugin/kinds/assoc.py): the delta rule stores and replaces, a
write strength of 0 is the no-carry twin, rows reset alone, generation equals the
teacher-forced argmax, --checkpoint-segments and fp16 work, bad flags get one line."""

import pytest
import torch

from conftest import build
from test_documents import doc_bin  # noqa: F401  (a fixture)
from tarm_plugin.kinds.assoc import delta_write, dpfp, lookup
from tarm_plugin.errors import TarmError
from tarm_plugin.generation import generate

L = 4
ASSOC = ["--memory-kind", "assoc", "--assoc-key-dim", "8", "--assoc-dpfp-nu", "2"]


def assoc_model(dict_dir, *flags, m=3):
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m), *ASSOC, *flags)
    return model.eval()


def test_dpfp_is_non_negative_unit_and_of_the_stated_size():
    x = torch.randn(2, 5, 8)
    phi = dpfp(x, 3)
    assert phi.shape == (2, 5, 2 * 8 * 3) and bool((phi >= 0).all())
    assert torch.allclose(phi.norm(dim=-1), torch.ones(2, 5))


def test_orthogonal_keys_are_read_back_exactly():
    """Keys with orthogonal features, written with strength 1, read back their values
    exactly, each unaffected by the others; a value written again under a key replaces it."""
    B, F, d = 2, 6, 5
    keys = torch.zeros(B, 3, F)
    keys[:, 0, 0], keys[:, 1, 2:4], keys[:, 2, 5] = 1.0, 0.5 ** 0.5, 1.0  # unit, disjoint supports
    values = torch.randn(B, 3, d)
    A, z = delta_write(torch.zeros(B, F, d), torch.zeros(B, F), keys[:, :2], values[:, :2], torch.ones(B, 2, 1))
    A, z = delta_write(A, z, keys[:, 2:], values[:, 2:], torch.ones(B, 1, 1))  # a later segment
    assert torch.allclose(lookup(keys, A, z), values, atol=1e-6)
    new = torch.randn(B, 1, d)
    A, z = delta_write(A, z, keys[:, :1], new, torch.ones(B, 1, 1))
    read = lookup(keys, A, z)
    assert torch.allclose(read[:, 0], new[:, 0], atol=1e-6)        # replaced, not added to
    assert torch.allclose(read[:, 1:], values[:, 1:], atol=1e-6)   # the others untouched
    # strength 1/2 moves the stored value half way
    A2, z2 = delta_write(A, z, keys[:, 1:2], torch.zeros(B, 1, d), torch.full((B, 1, 1), 0.5))
    assert torch.allclose(lookup(keys[:, 1:2], A2, z2), values[:, 1:2] / 2, atol=1e-6)
    # two values under one new key in one segment read back as their mean
    k = torch.zeros(B, 2, F)
    k[:, :, 1] = 1.0
    A3, z3 = delta_write(A, z, k, values[:, :2], torch.ones(B, 2, 1))
    assert torch.allclose(lookup(k[:, :1], A3, z3)[:, 0], values[:, :2].mean(dim=1), atol=1e-6)
    # an empty memory reads 0, not 0/0
    assert torch.equal(lookup(keys, torch.zeros(B, F, d), torch.zeros(B, F)), torch.zeros(B, 3, d))


def stream(n_batches=3, bsz=2, n_seg=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 60, (bsz, n_seg * L), generator=g) for _ in range(n_batches)]


def run_stream(model, batches, reset_every_segment=False):
    memory, outs = None, []
    with torch.no_grad():
        for src in batches:
            n = src.size(1) // L
            reset = torch.ones(src.size(0), n, dtype=torch.bool) if reset_every_segment else None
            logits, extra = model(src, memory=memory, reset=reset, segment_length=L)
            memory = extra["memory"]
            outs.append(logits)
    return outs


def test_the_memory_carries_and_strength_zero_is_the_no_carry_twin(dict_dir):
    model = assoc_model(dict_dir)
    batches = stream()
    carried, alone = run_stream(model, batches), run_stream(model, batches, reset_every_segment=True)
    assert torch.equal(carried[0][:, :L], alone[0][:, :L])  # the first segment reads A_0 = 0 either way
    assert not torch.allclose(carried[-1], alone[-1])  # later ones read what was written
    for s in model.memory.strength:  # beta = sigmoid(-inf) = 0: nothing is ever written
        torch.nn.init.zeros_(s.weight)
        torch.nn.init.constant_(s.bias, float("-inf"))
    carried, alone = run_stream(model, batches), run_stream(model, batches, reset_every_segment=True)
    for a, b in zip(carried, alone):
        assert torch.equal(a, b)
    # and that is the plain transformer: the same decoder without memory
    _, plain = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "0")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("memory.")}, strict=False)
    for a, b in zip(carried, run_stream(plain.eval(), batches)):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_reset_row_starts_afresh_and_the_other_row_carries_on(dict_dir):
    model = assoc_model(dict_dir)
    a, b = stream(n_batches=2)
    with torch.no_grad():
        _, extra = model(a, segment_length=L)
        both, _ = model(b, memory=extra["memory"], reset=torch.tensor([True, False]), segment_length=L)
        fresh, _ = model(b[:1], segment_length=L)
        carried, _ = model(b[1:], memory=extra["memory"][1:], segment_length=L)
    assert torch.allclose(both[:1], fresh, atol=1e-6)
    assert torch.allclose(both[1:], carried, atol=1e-6)


@pytest.mark.parametrize("prompt_len", [1, 6])
def test_greedy_generation_equals_teacher_forced_argmax(dict_dir, prompt_len):
    model = assoc_model(dict_dir)
    torch.manual_seed(1)
    inputs = torch.randint(4, 60, (2, prompt_len))
    new = generate(model, inputs, max_new_tokens=11)
    with torch.no_grad():
        logits, _ = model(torch.cat([inputs, new[:, :-1]], dim=1), segment_length=L)
    logits[..., model.padding_idx] = float("-inf")
    assert torch.equal(logits[:, prompt_len - 1:].argmax(-1), new)


def test_checkpoint_segments_same_loss_and_gradients(dict_dir):
    from test_checkpoint_segments import assert_same, plain_and_checkpointed

    plain, ckpt = plain_and_checkpointed(dict_dir, "--segment-length", "8", "--num-memory-tokens", "3", *ASSOC)
    assert_same(plain, ckpt)
    assert "memory.key.0.weight" in plain[1]  # the write is trained through the carried state


def test_half_precision_stays_finite_with_a_float32_state(dict_dir):
    model = assoc_model(dict_dir).half()
    memory = None
    with torch.no_grad():
        for src in stream(n_batches=4):
            logits, extra = model(src, memory=memory, segment_length=L)
            memory = extra["memory"]
    assert memory.dtype == torch.float32 and torch.isfinite(memory).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("flags,match", [
    (["--assoc-key-dim", "16"], "--assoc-key-dim needs --memory-kind assoc"),
    ([*ASSOC, "--memory-gate"], "--memory-gate needs --memory-kind tokens"),
    ([*ASSOC, "--memory-ema-alpha", "0.5"], "--memory-ema-alpha needs --memory-kind tokens"),
    ([*ASSOC, "--num-memory-tokens", "0"], "--num-memory-tokens must be >= 1"),
    (["--memory-kind", "matrix"], "--memory-kind 'matrix' is not one of"),
])
def test_bad_flags_name_the_flag(dict_dir, flags, match):
    with pytest.raises(TarmError, match="^" + match):  # from its start: the flag as typed, not inside another
        build(dict_dir, "--segment-length", str(L), *flags)


# --------------------------------------------------------------------- in fairseq
# test_cli.train passes --memory-ema-alpha 0.5 (a tokens flag): set back to its default
ASSOC_CLI = ["--memory-kind", "assoc", "--memory-ema-alpha", "1", "--assoc-key-dim", "8", "--assoc-dpfp-nu", "1"]


@pytest.mark.cli
def test_documents_resume_exactly_and_eval_lm_equals_validation(doc_bin, tmp_path):
    from test_cli import assert_resumed_equals_straight, eval_lm, eval_numbers, train
    from test_documents import DOC, doc_tokens
    from test_eval_lm import eval_loss, valid_loss

    data = doc_bin["blank"]
    flags = [*DOC, *ASSOC_CLI, "--save-interval-updates", "4", "--seed", "3", "--dropout", "0"]
    log = train(data, tmp_path / "a", *flags, max_update=8)
    train(data, tmp_path / "b", *flags, "--disable-validation", max_update=4)
    resumed = train(data, tmp_path / "b", *flags, max_update=8)
    assert_resumed_equals_straight(log, resumed, 5, 8, tmp_path / "a", tmp_path / "b")
    p = eval_lm(data, str(tmp_path / "a" / "checkpoint_last.pt"), "--gen-subset", "valid")
    assert eval_numbers(p)[0] == doc_tokens(doc_bin["raw"], "valid")
    assert eval_loss(p) == pytest.approx(valid_loss(log), abs=1e-3)


def test_no_token_sees_a_later_token(dict_dir):
    """Changing one token changes no output before it, in its batch or any earlier one, and
    nothing in the other row (the writes reach only later segments)."""
    from test_model import run_stream as run_keyed, stream_batches

    model = assoc_model(dict_dir)
    batches = stream_batches()
    ref = run_keyed(model, batches)
    for b in range(len(batches)):
        for p in range(batches[0].size(1)):
            changed = [x.clone() for x in batches]
            changed[b][0, p] = (changed[b][0, p] - 4 + 7) % 56 + 4
            out = run_keyed(model, changed)
            for bb in range(len(batches)):
                earlier = slice(None) if bb < b else (slice(0, p) if bb == b else slice(0, 0))
                assert torch.allclose(out[bb][0, earlier], ref[bb][0, earlier], atol=1e-6, rtol=0)
                assert torch.equal(out[bb][1], ref[bb][1])
            assert not torch.allclose(out[b][0, p], ref[b][0, p])


def test_memory_stats_leave_out_a_row_that_starts_from_zero():
    """The associative state starts at 0: no relative change from there (not 1e12)."""
    from tarm_plugin.memory import memory_stats

    read = torch.zeros(2, 3)
    read[1] = 1.0
    e1 = torch.full((2, 3), 2.0)
    stats = memory_stats(read, [e1], [e1])
    assert torch.isclose(stats["mem_dE"], torch.tensor(1.0))  # row 1: 1 -> 2; row 0 left out


@pytest.mark.parametrize("kind", [[], ASSOC])
def test_layerdrop_keeps_each_layers_index(dict_dir, kind):
    # fairseq's LayerDropModuleList yields only the layers it keeps: the associative memory's
    # per-layer state needs every layer's index (it crashed), and a dropped layer passes its
    # input on; in evaluation no layer is dropped
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", "3", "--decoder-layers", "2",
                     "--decoder-layerdrop", "0.5", *kind)
    model.train()
    src = torch.randint(4, 60, (2, 3 * L))
    for _ in range(6):
        logits, _ = model(src, segment_length=L)
        logits.float().sum().backward()
    model.eval()
    with torch.no_grad():
        kept, _ = model(src, segment_length=L)
        model.decoder.layers.p = 1.0
        assert torch.equal(model(src, segment_length=L)[0], kept), "no layer is dropped in evaluation"
