"""The real command-line path on a small real text (a slice of Penn Treebank):
fairseq-preprocess -> fairseq-train -> fairseq-eval-lm -> resume, 2 processes,
the half path, adaptive softmax, and one-line errors for bad input."""

import json
import math
import os
import re

import pytest

from conftest import PLUGIN, ROOT, free_port, run

pytestmark = pytest.mark.cli

MODEL = ["--arch", "tarm_lm", "--decoder-layers", "2", "--decoder-embed-dim", "32",
         "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2", "--tokens-per-sample", "16"]
TASK = ["--user-dir", PLUGIN, "--task", "tarm_language_modeling", "--segment-length", "16"]


def train(data, save_dir, *flags, max_update=20, launcher=None):
    cmd = (launcher or ["fairseq-train"]) + [
        data, *TASK, *MODEL, "--criterion", "tarm_lm_loss", "--num-memory-tokens", "4",
        "--memory-ema-alpha", "0.5", "--bptt-segments", "2", "--batch-size", "4",
        "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(max_update), "--cpu",
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "json",
        "--log-interval", "1", "--no-progress-bar", "--num-workers", "0", *flags]
    p = run(cmd)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return p.stdout + p.stderr


def train_losses(log):
    """{num_updates: loss} from fairseq's JSON train_inner lines."""
    out = {}
    for m in re.finditer(r"\| train_inner \| (\{.*\})", log):
        rec = json.loads(m.group(1))
        out[int(rec["num_updates"])] = float(rec["loss"])
    return out


def params(path):
    """The floating-point weights of a checkpoint."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}


def assert_resumed_equals_straight(straight_log, resumed_log, first, last, straight_dir=None, resumed_dir=None):
    """A run stopped and resumed trains updates ``first``..``last`` with the straight run's
    losses (within 2e-3; the log has 3 decimals) and, given both save dirs, ends on its weights
    (to 1e-6: the log's decimals could hide a memory restarted from E_0, these do not)."""
    straight, resumed = train_losses(straight_log), train_losses(resumed_log)
    assert sorted(resumed) == list(range(first, last + 1))
    for u in resumed:
        assert resumed[u] == pytest.approx(straight[u], abs=2e-3), f"update {u}"
    if straight_dir is not None:
        a, b = params(os.path.join(straight_dir, "checkpoint_last.pt")), params(os.path.join(resumed_dir, "checkpoint_last.pt"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def eval_lm(data, path, *flags):
    p = run(["fairseq-eval-lm", data, *TASK, "--path", path, "--batch-size", "4",
             "--gen-subset", "test", "--cpu", "--num-workers", "0", *flags])
    return p


def eval_numbers(p):
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    count = int(re.findall(r"Evaluated ([\d,]+) tokens", out)[-1].replace(",", ""))
    ppl = float(re.findall(r"Perplexity: ([\d.]+)", out)[-1])
    return count, ppl


def test_train_eval_resume(ptb_small, tmp_path):
    data, n_test = ptb_small
    log = train(data, tmp_path, max_update=30)
    losses = train_losses(log)
    assert losses[30] < losses[1], "loss must fall"
    assert "loss_seg1" in log, "per-segment loss is logged"
    count, ppl = eval_numbers(eval_lm(data, str(tmp_path / "checkpoint_last.pt")))
    assert count == n_test, "every test token scored exactly once"
    assert math.isfinite(ppl) and ppl > 1
    # resume from the checkpoint and go on
    log = train(data, tmp_path, max_update=35)
    assert "Loaded checkpoint" in log and "@ 30 updates" in log
    assert max(train_losses(log)) == 35
    assert "restarts from E_0" not in log
    # resumed with other streams (4 segments per row, not 2): the carried memory belongs to
    # other places in the text, so it is dropped, not read
    log = train(data, tmp_path, "--bptt-segments", "4", max_update=37)
    assert "@ 35 updates" in log and "the carried memory restarts from E_0" in log


def test_resume_mid_epoch_matches_straight_run(ptb_small, tmp_path):
    data, _ = ptb_small
    flags = ["--save-interval-updates", "10", "--disable-validation", "--seed", "3"]
    straight = train(data, tmp_path / "a", *flags, max_update=20)
    train(data, tmp_path / "b", *flags, max_update=10)
    assert_resumed_equals_straight(straight, train(data, tmp_path / "b", *flags, max_update=20), 11, 20)


def test_two_processes_match_one_with_the_same_global_batch(ptb_small, tmp_path):
    data, _ = ptb_small
    flags = ["--dropout", "0", "--disable-validation", "--ddp-backend", "legacy_ddp"]
    launcher = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "--no-python",
                os.path.join(ROOT, "scripts", "fairseq_train_cpu_ddp.sh")]
    two = train(data, tmp_path / "two", *flags, "--distributed-backend", "gloo", max_update=8,
                launcher=launcher)
    assert "training on 2 devices" in two
    # same global batch: 1 process x 8 streams == 2 processes x 4 streams
    one = train_losses(train(data, tmp_path / "one8", *flags, "--batch-size", "8", max_update=8))
    two = train_losses(two)
    assert sorted(two) == list(range(1, 9))
    for u in two:
        assert two[u] == pytest.approx(one[u], abs=2e-3), f"update {u}"


def test_two_processes_train_one_sample_per_line(ptb_small, tmp_path):
    # --sample-break-mode eos: each rank's batch is as wide as its own longest line, and the
    # loss by segment must log the same keys on both ranks (fairseq sums logs key by key)
    data, _ = ptb_small
    flags = ["--dropout", "0", "--disable-validation", "--ddp-backend", "legacy_ddp", "--sample-break-mode", "eos",
             "--segment-length", "8", "--tokens-per-sample", "8"]
    launcher = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "--no-python",
                os.path.join(ROOT, "scripts", "fairseq_train_cpu_ddp.sh")]
    log = train(data, tmp_path / "two", *flags, "--distributed-backend", "gloo", max_update=6, launcher=launcher)
    assert "training on 2 devices" in log
    losses = train_losses(log)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values())
    assert '"loss_seg0"' in log


def test_half_path(ptb_small, tmp_path):
    data, n_test = ptb_small
    log = train(data, tmp_path, "--fp16", "--memory-efficient-fp16", max_update=10)
    losses = train_losses(log)
    assert all(math.isfinite(v) for v in losses.values()) and losses[10] < losses[1]
    count, ppl = eval_numbers(eval_lm(data, str(tmp_path / "checkpoint_last.pt")))
    assert count == n_test and math.isfinite(ppl)


def test_adaptive_input_and_softmax(ptb_small, tmp_path):
    data, n_test = ptb_small
    log = train(data, tmp_path, "--adaptive-input", "--adaptive-input-cutoff", "200,1000",
                "--adaptive-softmax-cutoff", "200,1000", "--tie-adaptive-weights",
                "--ddp-backend", "legacy_ddp", max_update=10)
    losses = train_losses(log)
    assert losses[10] < losses[1]
    count, ppl = eval_numbers(eval_lm(data, str(tmp_path / "checkpoint_last.pt")))
    assert count == n_test and math.isfinite(ppl)


def one_line_error(p, flag):
    out = p.stdout + p.stderr
    assert p.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("tarm: error:")]
    assert len(errors) == 1 and flag in errors[0], out[-2000:]
    assert "Traceback" not in out


@pytest.mark.parametrize("flags,flag", [
    (["--memory-ema-alpha", "1.5"], "--memory-ema-alpha"),
    (["--memory-ema-alpha", "-0.5"], "--memory-ema-alpha"),
    (["--memory-ema-alpha", "0", "--memory-gate"], "--memory-gate"),
    (["--num-memory-tokens", "-2"], "--num-memory-tokens"),
    (["--sample-break-mode", "eos", "--eval-exact-match-segments", "99"], "--eval-exact-match-segments"),
    (["--batch-size", "0"], "--batch-size"),
    (["--arch", "transformer_lm"], "--arch transformer_lm"),  # its forward takes no memory
    (["--valid-subset", "nosuch"], "nosuch"),
    (["--valid-subset", "train"], "--valid-subset"),  # would re-lay out and overwrite the training streams
])
def test_bad_training_flags(ptb_small, tmp_path, flags, flag):
    data, _ = ptb_small
    p = run(["fairseq-train", data, *TASK, *MODEL, "--criterion", "tarm_lm_loss", "--batch-size", "2",
             "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1", "--cpu",
             "--save-dir", str(tmp_path), *flags])
    one_line_error(p, flag)


def test_missing_data_dir(tmp_path):
    p = run(["fairseq-train", str(tmp_path / "nope"), *TASK, *MODEL, "--criterion", "tarm_lm_loss",
             "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-3", "--cpu"])
    one_line_error(p, "nope")


def test_eval_errors(ptb_small, tmp_path):
    data, _ = ptb_small
    train(data, tmp_path / "ck", max_update=2)
    ckpt = str(tmp_path / "ck" / "checkpoint_last.pt")
    one_line_error(eval_lm(data, ckpt, "--context-window", "8"), "--context-window")
    one_line_error(eval_lm(data, ckpt, "--gen-subset", "nosuch"), "nosuch")
    # more bad data and checkpoints: test_bad_input.py


def test_hydra_config(ptb_small, tmp_path):
    """examples/ptb/tarm_ptb.yaml through fairseq-hydra-train."""
    data, _ = ptb_small
    p = run(["fairseq-hydra-train", "--config-dir", os.path.join(ROOT, "examples", "ptb"),
             "--config-name", "tarm_ptb", f"common.user_dir={PLUGIN}", f"task.data={data}",
             "optimization.max_update=2", f"checkpoint.save_dir={tmp_path}", "common.log_interval=1",
             "dataset.validate_interval_updates=0", f"hydra.run.dir={tmp_path}"])
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "num_updates=2" in out and (tmp_path / "checkpoint_last.pt").exists()


def test_hub_sample_and_score(ptb_small, tmp_path):
    """from_pretrained(...).sample / .score carry memory (see test_generation.py for exactness)."""
    import torch

    from tarm_plugin.models.tarm_lm import TarmLanguageModel

    data, _ = ptb_small
    train(data, tmp_path, max_update=2)
    hub = TarmLanguageModel.from_pretrained(str(tmp_path), "checkpoint_last.pt", data)
    text = hub.sample("the company said", max_new_tokens=40)
    assert text.startswith("the company said") and len(text.split()) > 3
    scored = hub.score("the company said it would sell " * 10)
    assert scored["positional_scores"].shape == (61,) and torch.isfinite(scored["positional_scores"]).all()
    with pytest.raises(ValueError, match="beam"):
        hub.sample("the", beam=4)
    # fairseq's hub conventions: one 1-D tensor gives its hypotheses; max_len_b and
    # sampling_topk are fairseq's names for the new tokens and top-k; others are refused
    prompt = hub.encode("the company said")
    hypos = hub.generate(prompt, max_len_b=5)
    assert len(hypos) == 1 and len(hypos[0]["tokens"]) == len(prompt) - 1 + 5
    torch.manual_seed(0)
    top1 = hub.generate(prompt, sampling=True, sampling_topk=1, max_len_b=6)[0]["tokens"]
    assert torch.equal(top1, hub.generate(prompt, max_len_b=6)[0]["tokens"]), "top-1 sampling is greedy"
    with pytest.raises(ValueError, match="does not take nosuch"):
        hub.sample("the", nosuch=1)



def test_memory_plot_traces_the_average(ptb_small, tmp_path, capsys):
    """scripts/plot.py memory (the paper's Figure 2): the traced E_t is the average of the traced
    M_t, E_t = a*M_t + (1-a)*E_{t-1}, segment after segment; the figure lands beside the checkpoint."""
    import sys

    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot

    data, _ = ptb_small
    train(data, tmp_path, max_update=2)
    ckpt = str(tmp_path / "checkpoint_last.pt")
    M, E, alpha = plot.memory_trace(ckpt, data, 12)
    assert alpha == 0.5 and M.shape == E.shape == (12, 4, 32)
    np.testing.assert_allclose(E[1:], 0.5 * M[1:] + 0.5 * E[:-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(M[1:], M[:-1]), "the written memory moves from segment to segment"
    plot.main(["memory", "--path", ckpt, "--data", data, "--segments", "12"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote {tmp_path / 'memory.png'}" and (tmp_path / "memory.png").stat().st_size > 1000
    assert json.loads(out[-2])["segments"] == 12


def test_torchrun_without_world_size_is_refused(ptb_small, tmp_path):
    """WORLD_SIZE set (as torchrun does) but fairseq left single-process: N copies of the
    same run would train side by side and overwrite each other's checkpoints."""
    data, _ = ptb_small
    p = run(["fairseq-train", data, *TASK, *MODEL, "--criterion", "tarm_lm_loss", "--batch-size", "2",
             "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1", "--cpu", "--save-dir", str(tmp_path)],
            env={"WORLD_SIZE": "2"})
    one_line_error(p, "--distributed-world-size")


def test_one_segment_per_row_warns_what_will_not_learn(ptb_small, tmp_path):
    # fairseq-train logs it once, after the first update; the run goes on (a zero gradient each)
    data, _ = ptb_small
    log = train(data, tmp_path, "--memory-gate", "--bptt-segments", "1", "--disable-validation", max_update=2)
    assert log.count("will not learn") == 1 and "gate_weight, gate_bias" in log, log[-3000:]
    assert max(train_losses(log)) == 2
