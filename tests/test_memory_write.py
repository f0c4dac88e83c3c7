"""What the write positions hold, the memory norm, memory dropout and the learned rate (issue 9)."""

import pytest
import torch

from conftest import build
from tarm_plugin.memory import MEMORY_KINDS, RecurrentMemory, memory_stats

L = 4


def model_with(dict_dir, *flags, m=3, alpha=1.0):
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m),
                     "--memory-ema-alpha", str(alpha), *flags)
    return model.eval()


def reference_mask(m, seg_len):
    """LM-RMT's mask written out position by position (True = may attend)."""
    T = 2 * m + seg_len
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            q_read, k_read = q < m, k < m
            q_write = q >= m + seg_len
            if q_read:
                allowed[q, k] = k_read
            elif q_write:
                allowed[q, k] = True
            else:
                allowed[q, k] = k_read or (m <= k <= q)
    return torch.zeros(T, T).masked_fill(~allowed, float("-inf"))


def lm_rmt_reference(model, src, seg_len):
    """An independent re-implementation of the RMT authors' LM recurrence (a = 1):
    input [mem | segment | mem] with ONE memory tensor at both ends; at the stream
    start that tensor is the learned memory, afterwards the previous segment's
    outputs at the write slots. Memory positions are not scored. (LM-RMT's layers are
    post-LN; fairseq's transformer_lm is pre-LN, and its final LayerNorm plays that role.)"""
    dec = model.decoder
    mem = model.memory.initial.unsqueeze(0).expand(src.size(0), -1, -1)
    m = mem.size(1)
    mask = reference_mask(m, seg_len)
    outs = []
    for seg in src.split(seg_len, dim=1):
        emb = dec.embed_scale * dec.embed_tokens(seg) + dec.embed_positions(seg)
        h = torch.cat([mem, emb, mem], dim=1).transpose(0, 1)
        for layer in dec.layers:
            h = layer(h, self_attn_mask=mask)[0]
        h = dec.layer_norm(h).transpose(0, 1)
        outs.append(h[:, m : m + seg_len])
        mem = h[:, m + seg_len :]
    return dec.output_layer(torch.cat(outs, dim=1))


def test_rmt_with_memory_write_input_is_lm_rmt(dict_dir):
    model = model_with(dict_dir, m=3, alpha=1.0)  # the default write input
    assert model.memory.write_input == "memory"
    src = torch.randint(4, 60, (2, 4 * L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        expected = lm_rmt_reference(model, src, L)
    assert torch.allclose(logits, expected, atol=1e-5)
    # the learned write input is a different model: the reference must not match it
    learned = model_with(dict_dir, "--memory-write-input", "learned", m=3, alpha=1.0)
    with torch.no_grad():
        other, _ = learned(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        assert not torch.allclose(other, lm_rmt_reference(learned, src, L), atol=1e-3)


NO_UNUSED = {  # every parameter gets a gradient in training, whatever the batch's segments
    "rmt": ([], 3, 1.0), "a0.5": ([], 3, 0.5), "no memory": ([], 0, 1.0),
    "prefix, learned write input": (["--memory-write-input", "learned"], 3, 0.0),
    "learned write input": (["--memory-write-input", "learned"], 3, 0.5),
    "gate": (["--memory-gate"], 3, 0.5), "learned rate": (["--memory-ema-learned"], 3, 0.5),
    # every other kind in tarm_plugin/kinds/ (assoc, and a new one's file), with its defaults
    **{f"kind {kind}": (["--memory-kind", kind], 3, 1.0) for kind in sorted(MEMORY_KINDS) if kind != "tokens"},
}


@pytest.mark.parametrize("segments", [1, 3])
@pytest.mark.parametrize("setting", NO_UNUSED)
def test_every_parameter_gets_a_gradient(dict_dir, setting, segments):
    # one segment: the gate, a learned rate, the writers shape only the next batch's read
    flags, m, alpha = NO_UNUSED[setting]
    model = model_with(dict_dir, *flags, m=m, alpha=alpha).train()
    src = torch.randint(4, 60, (2, segments * L))
    logits, _ = model(src, reset=torch.ones(2, dtype=torch.bool), segment_length=L)
    logits.float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # DDP (find_unused_parameters=False) would fail on any of these
    # no arithmetic on the values: the same outputs as without the zero-gradient pass-through
    import tarm_plugin.models.tarm_lm as tarm_lm

    torch.manual_seed(3)
    kept = model(src, reset=torch.ones(2, dtype=torch.bool), segment_length=L)[0]
    keep, tarm_lm.keep_in_graph = tarm_lm.keep_in_graph, lambda x, params: x
    try:
        torch.manual_seed(3)
        plain = model(src, reset=torch.ones(2, dtype=torch.bool), segment_length=L)[0]
    finally:
        tarm_lm.keep_in_graph = keep
    assert torch.equal(kept, plain)


def test_the_zero_gradients_survive_half_precision(dict_dir):
    # a gate's bias starts at logit(0.999) = 6.9: summed in fp16 over a wide memory it would
    # overflow; the pass-through does no arithmetic on the parameters or the features
    model = model_with(dict_dir, "--memory-gate", m=3, alpha=1.0)
    model.memory.gate_bias.data.fill_(60000.0)
    model = model.half().train()
    logits, _ = model(torch.randint(4, 60, (2, L)), reset=torch.ones(2, dtype=torch.bool), segment_length=L)
    assert torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert model.memory.gate_bias.grad is not None and torch.equal(model.memory.gate_bias.grad,
                                                                    torch.zeros_like(model.memory.gate_bias))


def test_torch_ddp_trains_every_setting(dict_dir):
    # fairseq's default --ddp-backend (pytorch_ddp) stops at the next step on a parameter
    # without a gradient: steps of 2, 1 and 2 segments of each setting under torch's DDP
    import torch.distributed as dist

    from conftest import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        for setting, (flags, m, alpha) in NO_UNUSED.items():
            ddp = torch.nn.parallel.DistributedDataParallel(model_with(dict_dir, *flags, m=m, alpha=alpha).train())
            for step, segments in enumerate((2, 1, 2)):  # e.g. an epoch's last batch of one segment
                src = torch.randint(4, 60, (2, segments * L), generator=torch.Generator().manual_seed(step))
                logits, _ = ddp(src, reset=torch.ones(2, dtype=torch.bool), segment_length=L)
                logits.float().sum().backward()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("setting", NO_UNUSED)
def test_what_only_a_cut_carry_would_train_is_named(dict_dir, setting):
    # one segment per row: what shapes only the next batch's read never gets a gradient;
    # the names a kind declares are exactly those (the rest learn from the segment's own loss)
    from types import SimpleNamespace

    from tarm_plugin.tasks.settings import untrained_memory

    flags, m, alpha = NO_UNUSED[setting]
    model = model_with(dict_dir, *flags, m=m, alpha=alpha).train()
    with torch.no_grad():
        # off a zero init (the gate's W, a kind's zero-started scale): a zero gradient then comes
        # from where a parameter acts, not from its start
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
        # a memory carried from an earlier batch (detached, as between samples)
        _, extra = model(torch.randint(4, 60, (2, L)), reset=torch.ones(2, dtype=torch.bool), segment_length=L)
    # one segment: row 0 starts a text (reads E_0), row 1 reads the carried memory; the written
    # memory, read by a second segment, is what a carry would pass on
    logits, _ = model(torch.randint(4, 60, (2, L)), memory=extra["memory"], reset=torch.tensor([True, False]),
                      segment_length=L)
    logits.float().sum().backward()
    untouched = {n for n, p in model.memory.named_parameters() if p.numel() and not bool(p.grad.any())}
    if alpha == 0.0:
        untouched -= {"write_slots"}  # a = 0 runs no write slots at any depth: not the cut's doing
    assert set(model.memory.carry_only_parameters()) == untouched, setting
    warning = untrained_memory(model, SimpleNamespace(bptt_segments=1), "none")
    assert (warning is not None) == bool(untouched)
    if warning:
        assert "--bptt-segments 1" in warning and all(n in warning for n in untouched)
    assert untrained_memory(model, SimpleNamespace(bptt_segments=1), "eos") is None  # eos: the data's rows
    assert untrained_memory(model, SimpleNamespace(bptt_segments=4), "none") is None


def test_gradients_flow_through_both_memory_copies(dict_dir, monkeypatch):
    model = model_with(dict_dir, m=3, alpha=0.5).train()
    copies = []
    original = model.memory.segment_memory

    def capture(read, dtype):
        read_in, write_in = original(read, dtype)
        copies.append((read_in, write_in))
        return read_in, write_in

    monkeypatch.setattr(model.memory, "segment_memory", capture)
    src = torch.randint(4, 60, (2, 2 * L))
    logits, _ = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
    read_in, write_in = copies[0]  # segment 1's two copies of E_0
    g_read, g_write = torch.autograd.grad(logits[:, L:].sum(), [read_in, write_in])
    assert g_read.abs().sum() > 0 and g_write.abs().sum() > 0  # segment 2's loss reaches both


def test_old_checkpoint_with_write_slots_loads_as_learned(dict_dir):
    old = model_with(dict_dir, "--memory-write-input", "learned", m=3, alpha=0.5)
    src = torch.randint(4, 60, (2, 2 * L))
    fresh = model_with(dict_dir, m=3, alpha=0.5)  # built with today's default
    fresh.load_state_dict(old.state_dict())
    assert fresh.memory.write_input == "learned"
    with torch.no_grad():
        want, _ = old(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
        got, _ = fresh(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
    assert torch.equal(got, want)


def wiki103_shaped(dict_dir, *flags):
    """tarm_lm_wiki103 at full width and depth (16 layers, 410 dim, pre-LN, no final
    norm), with adaptive cutoffs that fit the 64-word test dictionary."""
    _, model = build(dict_dir, "--arch", "tarm_lm_wiki103", "--decoder-layers", "16",
                     "--decoder-embed-dim", "410", "--decoder-ffn-embed-dim", "2100",
                     "--decoder-attention-heads", "10", "--adaptive-input-cutoff", "20,40",
                     "--adaptive-softmax-cutoff", "20,40", "--segment-length", str(L),
                     "--memory-ema-alpha", "1", *flags)
    return model.eval()


def stream_memory_norms(model, n_segments, seed=0):
    g = torch.Generator().manual_seed(seed)
    norms = []
    model.carried.clear()
    with torch.no_grad():
        for i in range(n_segments):
            src = torch.randint(4, 60, (1, L), generator=g)
            _, extra = model(src, reset=torch.tensor([i == 0]), memory_key="long", segment_length=L)
            norms.append(float(extra["ema_memory"][-1].norm(dim=-1).max()))
    return norms


def test_wiki103_memory_norm_stays_bounded_over_1000_segments(dict_dir):
    model = wiki103_shaped(dict_dir)
    assert model.decoder.layer_norm is None and model.memory.norm is not None  # pre-LN, no final norm
    norms = stream_memory_norms(model, 1000)
    bound = 2 * 410 ** 0.5  # a LayerNorm'd slot has norm ~sqrt(d) (gamma = 1 at init)
    assert all(n == n for n in norms) and max(norms) < bound, max(norms)


def test_without_the_memory_norm_the_wiki103_memory_grows(dict_dir):
    """Why the norm is there: the raw residual stream, fed back through 16 layers
    segment after segment, grows (this is what the bound above would catch)."""
    model = wiki103_shaped(dict_dir)
    model.memory.norm = None
    norms = stream_memory_norms(model, 50)
    assert norms[-1] > 2 * 410 ** 0.5 and norms[-1] > 2 * norms[0]


def test_memory_norm_only_where_the_layers_do_not_end_in_one(dict_dir):
    model = model_with(dict_dir, m=3)  # transformer_lm is pre-LN with a final LayerNorm
    assert model.decoder.layer_norm is not None and model.memory.norm is None
    no_final = model_with(dict_dir, "--no-decoder-final-norm", m=3)
    assert no_final.decoder.layer_norm is None and no_final.memory.norm is not None


def test_memory_dropout_defaults_to_dropout_and_can_be_set(dict_dir):
    assert model_with(dict_dir, "--dropout", "0.3").memory.dropout.p == 0.3
    assert model_with(dict_dir, "--dropout", "0.3", "--memory-dropout", "0.05").memory.dropout.p == 0.05
    assert isinstance(model_with(dict_dir, "--memory-dropout", "0").memory.dropout, torch.nn.Identity)
    model = model_with(dict_dir, "--memory-dropout", "0.5")
    read = torch.ones(2, 3, 32)
    model.train()
    r, w = model.memory.segment_memory(read, torch.float32)
    assert (r == 0).any() and not torch.equal(r, w)  # independent masks on the two copies
    # the read copy's mask is drawn first: the random stream training had before the memory
    # kinds' interface, so a seed's run is the same run (scripts/main.sh's digits, issue 37)
    torch.manual_seed(0)
    r, w = model.memory.segment_memory(read, torch.float32)
    torch.manual_seed(0)
    first, second = model.memory.dropout(read), model.memory.dropout(read)
    assert torch.equal(r, first) and torch.equal(w, second)
    model.eval()
    r, w = model.memory.segment_memory(read, torch.float32)
    assert torch.equal(r, read) and torch.equal(w, read)


def test_bad_memory_dropout_is_one_line_error(dict_dir):
    from tarm_plugin.errors import TarmError

    with pytest.raises(TarmError, match="--memory-dropout"):
        model_with(dict_dir, "--memory-dropout", "1.0")


def test_learned_rate_starts_at_alpha_and_follows_the_recursion(dict_dir):
    model = model_with(dict_dir, "--memory-ema-learned", m=3, alpha=0.3)
    rate = model.memory.rate()
    assert rate.shape == (3, 32) and torch.allclose(rate, torch.full_like(rate, 0.3), atol=1e-6)
    with torch.no_grad():
        model.memory.rate_logit.normal_()  # per-slot, per-channel rates
    src = torch.randint(4, 60, (2, 3 * L))
    with torch.no_grad():
        _, extra = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
    a = torch.sigmoid(model.memory.rate_logit)
    E = extra["read_memory"]
    for M, E_t in zip(extra["written_memory"], extra["ema_memory"]):
        E = a * M + (1 - a) * E
        assert torch.allclose(E_t, E, atol=1e-6)
    model.train()
    logits, _ = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="t", segment_length=L)
    logits.sum().backward()
    assert model.memory.rate_logit.grad.abs().sum() > 0


def test_fixed_alpha_has_no_rate_parameter(dict_dir):
    model = model_with(dict_dir, m=3, alpha=0.3)
    assert model.memory.rate_logit is None and model.memory.rate() == 0.3


def test_memory_stats_measure_relative_change():
    read = torch.ones(2, 3, 4)
    written = [torch.full((2, 3, 4), 2.0), torch.full((2, 3, 4), 3.0)]
    averaged = [torch.full((2, 3, 4), 1.5), torch.full((2, 3, 4), 2.25)]
    s = memory_stats(read, written, averaged)
    assert torch.isclose(s["mem_norm"], torch.tensor(2.0))  # a slot of four ones
    assert torch.isclose(s["mem_dM"], torch.tensor(0.5))    # 2 -> 3
    assert torch.isclose(s["mem_dE"], torch.tensor((0.5 + 0.5) / 2))  # 1 -> 1.5 -> 2.25
    assert "mem_dM" not in memory_stats(read, written[:1], averaged[:1])


def test_criterion_logs_memory_stats_and_learned_rates(dict_dir):
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    model = model_with(dict_dir, "--memory-ema-learned", m=3, alpha=0.5)
    src = torch.randint(4, 60, (2, 2 * L))
    net_output = model(src, reset=torch.ones(2, dtype=torch.bool), memory_key="k", segment_length=L)
    logs = TarmLmLoss.memory_logs(model, net_output)
    for key in ("mem_norm", "mem_dM", "mem_dE", "mem_rate_mean", "mem_rate_min", "mem_rate_max"):
        assert key in logs and logs[key + "_n"] == 1
    assert abs(float(logs["mem_rate_mean"]) - 0.5) < 1e-6
    no_mem = model_with(dict_dir, m=0)
    assert TarmLmLoss.memory_logs(no_mem, no_mem(src, memory_key="k", segment_length=L)) == {}


def test_recurrent_memory_alone_rejects_bad_write_input():
    with pytest.raises(ValueError, match="write_input"):
        RecurrentMemory(2, 4, write_input="other")
