"""--memory-gate: a content-dependent averaging rate g_t = sigmoid(W [M_t ; E_{t-1}] + b) (issue 17)."""

import json
import math
import os
import re
import sys

import pytest
import torch

from conftest import ROOT, build, run
from tarm_plugin.errors import TarmError
from tarm_plugin.memory import RecurrentMemory
from test_cli import MODEL, TASK, eval_lm, eval_numbers, one_line_error, train

L = 4
GATE_LOGS = ("mem_gate_mean", "mem_gate_min", "mem_gate_max")


def model_with(dict_dir, *flags, m=3, alpha=0.5):
    _, model = build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m),
                     "--memory-ema-alpha", str(alpha), *flags)
    return model.eval()


def forward(model, src, key="k"):
    return model(src, reset=torch.ones(src.size(0), dtype=torch.bool), memory_key=key, segment_length=L)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_gate_starts_as_the_fixed_rate(dict_dir, alpha):
    gated = model_with(dict_dir, "--memory-gate", alpha=alpha)
    plain = model_with(dict_dir, alpha=alpha)
    mine = dict(gated.named_parameters())
    assert set(mine) - dict(plain.named_parameters()).keys() == {"memory.gate_weight", "memory.gate_bias"}
    with torch.no_grad():  # the shared weights (build() seeds both the same; copy to be sure)
        for name, value in plain.named_parameters():
            mine[name].copy_(value)
    src = torch.randint(4, 60, (2, 3 * L))
    with torch.no_grad():
        logits_g, extra_g = forward(gated, src)
        logits_p, extra_p = forward(plain, src)
    assert extra_p["memory_gates"] == [] and len(extra_g["memory_gates"]) == 3
    for g in extra_g["memory_gates"]:
        assert g.shape == (2, 3, 32) and torch.allclose(g, torch.full_like(g, alpha), rtol=0, atol=1e-6)
    for e_g, e_p in zip(extra_g["ema_memory"], extra_p["ema_memory"]):
        assert torch.allclose(e_g, e_p, rtol=0, atol=1e-5)
    assert torch.allclose(logits_g, logits_p, rtol=0, atol=1e-5)
    if alpha == 0.5:  # sigmoid(0) is 0.5 exactly: the same arithmetic, bit for bit
        assert torch.equal(logits_g, logits_p)


def test_gate_follows_the_stated_recursion(dict_dir):
    model = model_with(dict_dir, "--memory-gate", alpha=0.3)
    with torch.no_grad():
        model.memory.gate_weight.normal_(std=0.3)
        model.memory.gate_bias.normal_()
    with torch.no_grad():
        _, extra = forward(model, torch.randint(4, 60, (2, 3 * L)))
    W, b = model.memory.gate_weight, model.memory.gate_bias
    E = extra["read_memory"]
    for M, E_t, g in zip(extra["written_memory"], extra["ema_memory"], extra["memory_gates"]):
        expected = torch.sigmoid(torch.cat([M, E], dim=-1) @ W.t() + b)  # [M_t ; E_{t-1}]
        assert torch.allclose(g, expected, atol=1e-6)
        E = g * M + (1 - g) * E
        assert torch.allclose(E_t, E, atol=1e-6)


def test_gradients_reach_W_and_b_and_then_the_gate_depends_on_content(dict_dir):
    model = model_with(dict_dir, "--memory-gate", alpha=0.5).train()
    src = torch.randint(4, 60, (2, 3 * L))
    logits, extra = forward(model, src, key="t")
    assert not extra["memory_gates"][0].requires_grad  # logged values keep no graph
    logits.float().pow(2).mean().backward()
    W, b = model.memory.gate_weight, model.memory.gate_bias
    assert W.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    torch.optim.Adam([W, b], lr=1e-2).step()
    model.eval()
    with torch.no_grad():
        _, extra = forward(model, src)
    gates = torch.stack(extra["memory_gates"])  # [segments, B, m, d]
    assert W.abs().sum() > 0
    # W moved: rows with other tokens and later segments now get other rates
    assert (gates[:, 0] - gates[:, 1]).abs().max() > 1e-3
    assert (gates[1:] - gates[:1]).abs().max() > 1e-3


def test_half_inputs(dict_dir):
    model = model_with(dict_dir, "--memory-gate", alpha=0.2).half()
    with torch.no_grad():
        logits, extra = forward(model, torch.randint(4, 60, (2, 3 * L)))
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()
    for g, e in zip(extra["memory_gates"], extra["ema_memory"]):
        assert g.dtype == e.dtype == torch.float16 and torch.isfinite(e).all()
        assert torch.allclose(g.float(), torch.full(g.shape, 0.2), atol=1e-3)
    # fp32 parameters, half memory (E_{t-1} may still be the fp32 initial memory)
    mem = RecurrentMemory(3, 8, alpha=0.2, gate=True)
    written = torch.randn(2, 3, 8).half()
    assert mem.average(written.float(), written).dtype == torch.float32  # as without a gate
    assert mem.average(written, written).dtype == torch.float16


def test_criterion_logs_the_gate(dict_dir):
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    model = model_with(dict_dir, "--memory-gate", alpha=0.5)
    logs = TarmLmLoss.memory_logs(model, forward(model, torch.randint(4, 60, (2, 2 * L))))
    for key in GATE_LOGS:
        assert float(logs[key]) == 0.5 and logs[key + "_n"] == 1
    assert "mem_rate_mean" not in logs
    plain = model_with(dict_dir, alpha=0.5)
    assert not set(GATE_LOGS) & set(TarmLmLoss.memory_logs(plain, forward(plain, torch.randint(4, 60, (2, 2 * L)))))


def test_state_dict_round_trip(dict_dir):
    model = model_with(dict_dir, "--memory-gate", alpha=0.3)
    with torch.no_grad():
        model.memory.gate_weight.normal_(std=0.3)
    src = torch.randint(4, 60, (2, 3 * L))
    with torch.no_grad():
        before, _ = forward(model, src)
    other = model_with(dict_dir, "--memory-gate", alpha=0.3)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        after, _ = forward(other, src)
    assert torch.equal(before, after)
    with pytest.raises(RuntimeError, match="gate_weight"):  # a checkpoint without the gate does not fit it
        other.load_state_dict(model_with(dict_dir, alpha=0.3).state_dict())


def test_no_gate_parameters_without_the_flag_or_memory(dict_dir):
    assert model_with(dict_dir, alpha=0.5).memory.gate_weight is None
    assert not model_with(dict_dir, "--memory-gate", m=0).memory.gated
    assert ".gate" not in "".join(model_with(dict_dir, "--memory-gate", m=0).state_dict())


def test_gate_and_learned_rate_are_refused(dict_dir):
    with pytest.raises(TarmError, match="--memory-gate and --memory-ema-learned"):
        model_with(dict_dir, "--memory-gate", "--memory-ema-learned")
    with pytest.raises(ValueError, match="gate and learn_alpha"):
        RecurrentMemory(3, 8, gate=True, learn_alpha=True)


@pytest.mark.cli
def test_cli_logs_the_gate_and_its_checkpoint_evaluates(ptb_small, tmp_path):
    data, n_test = ptb_small
    log = train(data, tmp_path, "--memory-gate", "--disable-validation", max_update=10)
    records = [json.loads(m.group(1)) for m in re.finditer(r"\| train_inner \| (\{.*\})", log)]
    assert len(records) == 10
    for rec in records:
        low, mean, high = (float(rec[k]) for k in ("mem_gate_min", "mem_gate_mean", "mem_gate_max"))
        assert 0 < low <= mean <= high < 1
    assert float(records[-1]["mem_gate_max"]) > float(records[-1]["mem_gate_min"])  # W has moved
    ckpt = str(tmp_path / "checkpoint_last.pt")
    assert torch.load(ckpt, weights_only=False)["model"]["memory.gate_weight"].abs().sum() > 0
    count, ppl = eval_numbers(eval_lm(data, ckpt))
    assert count == n_test and math.isfinite(ppl)


@pytest.mark.cli
def test_cli_refuses_gate_with_learned_rate(ptb_small, tmp_path):
    p = run(["fairseq-train", ptb_small[0], *TASK, *MODEL, "--criterion", "tarm_lm_loss",
             "--memory-gate", "--memory-ema-learned", "--batch-size", "2", "--optimizer", "adam",
             "--lr", "1e-3", "--max-update", "1", "--cpu", "--save-dir", str(tmp_path)])
    one_line_error(p, "--memory-gate")


def test_recall_runs_and_reports_the_gate(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import recall
    import recall_report

    assert recall.SETTINGS["tarm_gate"] == recall.MEM + ["--memory-gate", "--memory-ema-alpha", "0.5"]
    args = recall.parse_args(["--out", str(tmp_path)])
    test = {"1": {"fact_acc": 0.5, "all_acc": 0.2, "p_right": 0.3, "samples": 10}}
    gate = {"mem_gate_mean": "0.4", "mem_gate_min": "0.1", "mem_gate_max": "0.9"}
    results = [{"setting": "tarm_gate", "seed": s, "train_distances": [1], "facts": 3, "test": test,
                "last_train_inner": gate} for s in (1, 2)]
    md = recall_report.markdown(results, args, list(recall.SETTINGS))
    assert "### gate at the end of training" in md and "| tarm_gate D=1 P=3 | 0.400 | 0.100 | 0.900 | 2 |" in md
    assert "learned rate at the end" not in md
