"""tarm_lm built through fairseq's own task/model API: causality, memory, EMA, RMT."""

import os
import shutil

import pytest
import torch

from conftest import build
from tarm_plugin.errors import TarmError

L = 4  # segment length used below


def model_with(dict_dir, m=3, alpha=0.5, *flags):
    task, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m),
                        "--memory-ema-alpha", str(alpha), *flags)
    return model.eval()


def stream_batches(n_batches=3, bsz=2, n_seg=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 60, (bsz, n_seg * L), generator=g) for _ in range(n_batches)]


def run_stream(model, batches):
    """Feed consecutive batches of the same streams; memory is carried between them."""
    model.carried.clear()
    outs = []
    with torch.no_grad():
        for i, src in enumerate(batches):
            reset = torch.full((src.size(0),), i == 0)
            logits, extra = model(src, reset=reset, memory_key="s", segment_length=L)
            outs.append(logits)
    return outs


@pytest.mark.parametrize("m", [0, 3])
def test_no_token_sees_a_later_token(dict_dir, m):
    model = model_with(dict_dir, m=m, alpha=0.5)
    batches = stream_batches()
    ref = run_stream(model, batches)
    n_batches, T = len(batches), batches[0].size(1)
    for b in range(n_batches):
        for p in range(T):
            changed = [x.clone() for x in batches]
            changed[b][0, p] = (changed[b][0, p] - 4 + 7) % 56 + 4
            out = run_stream(model, changed)
            for bb in range(n_batches):
                earlier = slice(None) if bb < b else (slice(0, p) if bb == b else slice(0, 0))
                assert torch.allclose(out[bb][0, earlier], ref[bb][0, earlier], atol=1e-6, rtol=0), \
                    f"batch {bb} row 0 saw token {p} of batch {b}"
                assert torch.equal(out[bb][1], ref[bb][1]), "streams must not see each other"
            # sanity: the changed position's own output does change
            assert not torch.allclose(out[b][0, p], ref[b][0, p])


def test_memory_carries_information_only_when_m_positive(dict_dir):
    for m, expect_change in [(3, True), (0, False)]:
        model = model_with(dict_dir, m=m, alpha=0.5)
        batches = stream_batches(n_batches=2)
        ref = run_stream(model, batches)
        changed = [x.clone() for x in batches]
        changed[0][:, 0] = (changed[0][:, 0] - 4 + 11) % 56 + 4  # an input of segment 1 only
        out = run_stream(model, changed)
        seg2 = slice(L, 2 * L)
        later = [not torch.allclose(out[0][:, seg2], ref[0][:, seg2]),
                 not torch.allclose(out[1], ref[1])]
        assert later == [expect_change] * 2, f"m={m}"


def test_alpha_one_is_rmt(dict_dir):
    model = model_with(dict_dir, m=3, alpha=1.0)
    src = stream_batches(n_batches=1, n_seg=3)[0]
    with torch.no_grad():
        logits, extra = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        # RMT written out by hand: each segment reads the previous segment's written memory
        read, outs = model.memory.initial_memory(2), []
        for seg in src.split(L, dim=1):
            y, read = model.segment_step(seg, read)
            outs.append(y)
        expected = model.decoder.output_layer(torch.cat(outs, dim=1))
    assert torch.equal(logits, expected)
    for M, E in zip(extra["written_memory"], extra["ema_memory"]):
        assert torch.equal(M, E)


def test_alpha_zero_is_a_learned_prefix_nothing_carried(dict_dir):
    """a = 0: every segment reads E_0, so a segment's loss does not depend on the
    segments before it (in its batch or in earlier batches), and each segment's
    outputs equal those of the segment read alone after a reset."""
    model = model_with(dict_dir, m=3, alpha=0.0)
    batches = stream_batches(n_batches=2, n_seg=3)
    ref = run_stream(model, batches)
    changed = [x.clone() for x in batches]
    changed[0][:, : 2 * L] = (changed[0][:, : 2 * L] - 4 + 11) % 56 + 4  # segments 1-2 of batch 0
    out = run_stream(model, changed)
    assert torch.equal(out[0][:, 2 * L :], ref[0][:, 2 * L :])  # segment 3 of the same batch
    assert torch.equal(out[1], ref[1])  # the next batch
    assert not torch.allclose(out[0][:, :L], ref[0][:, :L])  # the changed segment itself does change
    with torch.no_grad():  # each segment alone, reading E_0
        for i, src in enumerate(batches):
            for t, seg in enumerate(src.split(L, dim=1)):
                alone, _ = model(seg, reset=torch.ones(2, dtype=torch.bool), memory_key="alone", segment_length=L)
                assert torch.allclose(alone, ref[i][:, t * L : (t + 1) * L], atol=1e-6, rtol=0)
    # E_0 is learned from every segment, carried batches included (not a detached copy)
    model.train()
    model.zero_grad()
    model(batches[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="s", segment_length=L)[0].sum().backward()
    assert model.memory.initial.grad is not None and model.memory.initial.grad.abs().sum() > 0
    assert model.memory.norm is None or model.memory.norm.weight.grad is None


def test_model_memory_follows_ema_across_batches(dict_dir):
    a = 0.3
    model = model_with(dict_dir, m=3, alpha=a)
    model.carried.clear()
    prev = None
    with torch.no_grad():
        for i, src in enumerate(stream_batches(n_batches=3)):
            _, extra = model(src, reset=torch.full((2,), i == 0), memory_key="k", segment_length=L)
            E = extra["read_memory"]
            if i == 0:
                assert torch.equal(E, model.memory.initial_memory(2))  # E_0 = M_0
            else:
                assert torch.equal(E, prev)  # carried from the previous batch
            for M, E_t in zip(extra["written_memory"], extra["ema_memory"]):
                E = a * M + (1 - a) * E
                assert torch.allclose(E_t, E, atol=1e-6)
            prev = extra["ema_memory"][-1]
        # a stream restart reads E_0 again
        _, extra = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        assert torch.equal(extra["read_memory"], model.memory.initial_memory(2))


def test_m0_is_fairseq_transformer_lm_per_segment(dict_dir):
    model = model_with(dict_dir, m=0)
    src = stream_batches(n_batches=1, n_seg=3)[0]
    with torch.no_grad():
        logits, _ = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        plain = torch.cat([model.decoder(seg)[0] for seg in src.split(L, dim=1)], dim=1)
    assert torch.allclose(logits, plain, atol=1e-5)


def test_gradients_flow_within_a_sample_and_stop_between_samples(dict_dir):
    model = model_with(dict_dir, m=3, alpha=0.5).train()
    src = stream_batches(n_batches=2, n_seg=3)
    logits, extra = model(src[0], reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
    M1 = extra["written_memory"][0]
    (g,) = torch.autograd.grad(logits[:, 2 * L:].sum(), M1, retain_graph=True)
    assert g.abs().sum() > 0, "segment 3's loss must reach segment 1's memory"
    logits2, extra2 = model(src[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="k", segment_length=L)
    (g2,) = torch.autograd.grad(logits2.sum(), M1, allow_unused=True)
    assert g2 is None, "the carried memory must be detached between samples"


@pytest.mark.parametrize("kind", [[], ["--memory-kind", "assoc"]])
def test_memory_detach_every_truncates_the_gradient_inside_a_sample(dict_dir, kind):
    """--memory-detach-every 2 over 4 segments: segment 3's loss reaches segment 2's memory
    (K = 1 back) but not segment 1's and 2's written before the cut; the loss is the same."""
    src = stream_batches(n_batches=1, n_seg=4)[0]
    reset = torch.ones(2, dtype=torch.bool)
    losses = []
    for every in (0, 2):
        torch.manual_seed(0)
        model = model_with(dict_dir, 3, 1.0 if kind else 0.5, "--memory-detach-every", str(every), *kind).train()
        torch.manual_seed(1)  # the same dropout draws in both
        logits, extra = model(src, reset=reset, memory_key="k", segment_length=L)
        losses.append(logits.detach())
        written = extra["written_memory"]
        grads = torch.autograd.grad(logits[:, 2 * L:3 * L].sum(), [written[0], written[1], written[2]],
                                    allow_unused=True, retain_graph=True)
        reach = [g is not None and g.abs().sum().item() > 0 for g in grads]
        assert reach == ([True, True, False] if every == 0 else [False, False, False]), (every, reach)
        # after the cut at segment 2, segment 4's loss still reaches segment 3's memory
        (g,) = torch.autograd.grad(logits[:, 3 * L:].sum(), written[2], allow_unused=True)
        assert g is not None and g.abs().sum() > 0
    assert torch.equal(losses[0], losses[1]), "detaching changes the gradient, not the values"


def test_a_learned_prefix_learns_from_every_segment_whatever_the_detach(dict_dir):
    # a = 0: every segment reads E_0 itself; a cut after each segment has nothing carried to cut
    src = stream_batches(n_batches=1, n_seg=4)[0]
    model = model_with(dict_dir, 3, 0.0, "--memory-detach-every", "1").train()
    for reset in (None, torch.ones(2, dtype=torch.bool)):
        logits, _ = model(src, reset=reset, memory_key=None, segment_length=L)
        (g,) = torch.autograd.grad(logits[:, 3 * L:].sum(), model.memory.initial)
        assert g.abs().sum() > 0, f"segment 4 must reach E_0 (reset={reset is not None})"


def test_short_last_segment(dict_dir):
    model = model_with(dict_dir, m=2)
    src = torch.randint(4, 60, (2, 2 * L + 1))
    logits, extra = model(src, memory_key="k", segment_length=L)
    assert logits.shape[:2] == src.shape and len(extra["written_memory"]) == 3


def test_checkpoint_with_other_dictionary_is_refused(dict_dir, tmp_path):
    from fairseq.data import Dictionary

    other = Dictionary()
    for i in range(60):
        other.add_symbol(f"v{i}", n=100 - i)  # same size, different words
    other.save(str(tmp_path / "dict.txt"))
    model = model_with(dict_dir, m=2)
    _, model_b = build(str(tmp_path), "--segment-length", str(L), "--num-memory-tokens", "2")
    with pytest.raises(TarmError, match="dictionary"):
        model_b.load_state_dict(model.state_dict())
    model_with(dict_dir, m=2).load_state_dict(model.state_dict())  # the same dictionary loads


def test_carried_memory_is_saved_with_the_model(dict_dir):
    model = model_with(dict_dir, m=2)
    run_stream(model, stream_batches(n_batches=1))
    state = model.state_dict()
    fresh = model_with(dict_dir, m=2)
    fresh.load_state_dict(state)
    got, _ = fresh.carried.get("s", 2)
    want, _ = model.carried.get("s", 2)
    assert torch.equal(got, want)


@pytest.mark.parametrize("flags,match", [
    (["--memory-ema-alpha", "-0.1"], "--memory-ema-alpha"),
    (["--memory-ema-alpha", "1.01"], "--memory-ema-alpha"),
    (["--memory-ema-alpha", "0", "--memory-gate"], "--memory-gate"),
    (["--memory-ema-alpha", "0", "--memory-ema-learned"], "--memory-ema-learned"),
    (["--num-memory-tokens", "-1"], "--num-memory-tokens"),
    (["--segment-length", "0"], "--segment-length"),
    (["--bptt-segments", "0"], "--bptt-segments"),
    (["--memory-detach-every", "-1"], "--memory-detach-every -1"),
    (["--segment-length", "100"], "--segment-length 100 exceeds"),
])
def test_bad_flags_raise_tarm_error(dict_dir, flags, match):
    with pytest.raises(TarmError, match=match):
        build(dict_dir, *flags)


def test_overflowed_memory_is_reset_never_propagated(dict_dir):
    """An fp16 overflow step can leave inf/NaN in the carried memory: the next
    batch must read E_0 for those rows and stay finite."""
    model = model_with(dict_dir, m=3, alpha=0.5).half()
    batches = stream_batches(n_batches=2)
    with torch.no_grad():
        model(batches[0], reset=torch.ones(2, dtype=torch.bool), memory_key="h", segment_length=L)
        carried, _ = model.carried.get("h", 2)
        poisoned = carried.clone()
        poisoned[1, 0, 0] = float("inf")
        model.carried.put("h", poisoned)
        logits, extra = model(batches[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="h",
                              segment_length=L)
    assert torch.isfinite(logits).all()
    assert torch.equal(extra["read_memory"][1], model.memory.initial.detach())  # row 1: E_0
    assert torch.equal(extra["read_memory"][0], carried[0])                   # row 0: carried on
    assert torch.isfinite(extra["ema_memory"][-1]).all()


def test_a_retried_batch_sees_the_same_memory(dict_dir):
    """fairseq --amp re-runs a batch after an overflow: the re-run must read the
    memory from before the batch, so its outputs are those of the first run."""
    model = model_with(dict_dir, m=3, alpha=0.5)
    batches = stream_batches(n_batches=2)
    with torch.no_grad():
        model(batches[0], reset=torch.ones(2, dtype=torch.bool), memory_key="r", segment_length=L, batch_id=0)
        first, _ = model(batches[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="r", segment_length=L,
                         batch_id=1)
        again, _ = model(batches[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="r", segment_length=L,
                         batch_id=1)
        leaked, _ = model(batches[1], reset=torch.zeros(2, dtype=torch.bool), memory_key="r", segment_length=L)
    assert torch.equal(first, again)
    assert not torch.allclose(first, leaked)  # without the id it would read batch 1's own memory


def test_train_subset_flag_decides_which_split_trains(dict_dir):
    task, _ = build(dict_dir, "--train-subset", "wiki_train")
    assert task.is_train("wiki_train") and not task.is_train("train") and not task.is_train("valid")


def test_a_bare_call_is_a_function_of_its_inputs(dict_dir):
    """model(src) without memory or memory_key starts from E_0 every time; memory
    passed in and returned gives what the carried (task) path gives."""
    _, model = build(dict_dir, "--num-memory-tokens", "3", "--segment-length", "4")
    model.eval()
    src = torch.randint(4, 60, (2, 12))
    with torch.no_grad():
        first, extra = model(src)
        second, _ = model(src)
        assert torch.equal(first, second)
        # the same two halves: memory handed over explicitly == carried under a key
        a, ea = model(src[:, :8])
        b, _ = model(src[:, 8:], memory=ea["memory"])
        assert torch.allclose(torch.cat([a, b], dim=1), first, atol=1e-6)
        model(src[:, :8], memory_key="k", reset=torch.ones(2, dtype=torch.bool))
        carried, _ = model(src[:, 8:], memory_key="k")
        assert torch.allclose(carried, b, atol=1e-6)
        assert not torch.allclose(model(src[:, 8:])[0], b, atol=1e-3), "E_0 is not the carried memory"


def test_max_tokens_batches_of_whole_samples_hold_the_longest(dict_dir, tmp_path):
    # --sample-break-mode eos: a row holds a whole sample, padded to whole segments, so
    # --max-tokens counts rows as wide as the longest sample (not L * k, not L)
    from fairseq.data import Dictionary, indexed_dataset

    shutil.copy(os.path.join(dict_dir, "dict.txt"), tmp_path / "dict.txt")
    d = Dictionary.load(str(tmp_path / "dict.txt"))
    for split in ("train", "valid"):
        out = indexed_dataset.make_builder(str(tmp_path / f"{split}.bin"), impl="mmap", vocab_size=len(d))
        for n in (5, 40, 12) * 4:  # the longest: 40 words + </s> = 3 segments of 16
            out.add_item(d.encode_line(" ".join(f"w{i % 50}" for i in range(n)), add_if_not_exist=False))
        out.finalize(str(tmp_path / f"{split}.idx"))
    task, _ = build(str(tmp_path), "--sample-break-mode", "eos", "--max-tokens", "480",
                    "--segment-length", "16", "--bptt-segments", "4")
    for split in ("train", "valid"):
        task.load_dataset(split)
        sizes = [tuple(task.dataset(split)[i]["source"].shape) for i in range(len(task.dataset(split)))]
        assert sizes[0] == (480 // 48, 48) and all(r * w <= 480 for r, w in sizes), (split, sizes)
    task, _ = build(str(tmp_path), "--sample-break-mode", "eos", "--max-tokens", "40", "--segment-length", "16")
    with pytest.raises(TarmError, match="--max-tokens 40 is below the longest sample of split 'train' .48 tokens"):
        task.load_dataset("train")


def test_validation_batches_follow_max_tokens_valid(dict_dir):
    # with --max-tokens, each split's rows are what fits; --max-tokens-valid (fairseq's flag for
    # validation batches) decides validation's, and defaults to --max-tokens
    flags = ["--max-tokens", "640", "--segment-length", "16", "--bptt-segments", "4"]
    task, _ = build(dict_dir, *flags, "--max-tokens-valid", "128")
    assert (task.batch_size_for("train"), task.batch_size_for("valid")) == (640 // 64, 128 // 16)
    assert build(dict_dir, *flags)[0].batch_size_for("valid") == 640 // 16
