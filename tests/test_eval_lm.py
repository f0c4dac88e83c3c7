"""fairseq-eval-lm on tarm checkpoints: every target token scored at its own
position in every data layout (the loss equals fairseq-train's validation
loss, the printed word probabilities are the targets' own), checkpoint
settings used unless overridden, and the per-segment perplexity table."""

import json
import re

import pytest

from conftest import PLUGIN, run
from test_cli import eval_lm, eval_numbers, one_line_error, train

pytestmark = pytest.mark.cli

LAYOUTS = {
    "streams": [],
    "eos": ["--sample-break-mode", "eos", "--segment-length", "8"],
    "eos_loss_start": ["--sample-break-mode", "eos", "--segment-length", "8", "--loss-start-segment", "2"],
    # each sample's own last 2 segments: PTB lines differ in length, so rows of a batch differ
    "eos_loss_last": ["--sample-break-mode", "eos", "--segment-length", "8", "--loss-last-segments", "2"],
    "streams_assoc": [],
    "eos_assoc": ["--sample-break-mode", "eos", "--segment-length", "8"],
}
# model flags (training only): the associative memory kind, test_cli.train's
# --memory-ema-alpha 0.5 (a tokens flag) set back to its default
MODEL_FLAGS = {layout: ["--memory-kind", "assoc", "--memory-ema-alpha", "1", "--assoc-key-dim", "8"]
               for layout in LAYOUTS if layout.endswith("_assoc")}


def valid_loss(log):
    """fairseq-train's last validation loss (bits) from its JSON log."""
    recs = [json.loads(m) for m in re.findall(r"\| valid \| (\{.*\})", log)]
    assert recs, log[-2000:]
    return float(recs[-1]["valid_loss"])


def eval_loss(p):
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    return float(re.findall(r"Loss \(base 2\): ([\d.]+)", out)[-1])


def printed_word_probs(p):
    """[(word, log-prob), ...] per printed row, in order, from --output-word-probs."""
    rows = []
    for line in (p.stdout + p.stderr).splitlines():
        m = re.search(r"fairseq_cli\.eval_lm(?: \| |:)\d+ (.*)$", line)
        if m:
            rows.append([(w, float(s)) for w, s in re.findall(r"(\S+) \[(-?[\d.]+(?:e-?\d+)?)\]", m.group(1))])
    return rows


def teacher_forced_scores(data, ckpt, split, flags):
    """[(word, log-prob), ...] per row, by running the checkpoint over the task's batches
    in-process and reading each target's log-probability at its own position."""
    import torch
    from fairseq import checkpoint_utils

    import tarm_plugin  # noqa: F401
    from tarm_plugin.criterions.tarm_lm_loss import token_nll

    overrides = {"data": data, "batch_size": 4}
    for name, value in zip(flags[::2], flags[1::2]):
        overrides[name[2:].replace("-", "_")] = int(value) if value.isdigit() else value
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides=overrides)
    model = models[0].eval()
    task.load_dataset(split)
    ds = task.dataset(split)
    rows = []
    with torch.no_grad():
        for i in range(len(ds)):
            sample = ds.collater([ds[i]])
            nll = token_nll(model, model(**sample["net_input"]), sample["target"], task.dictionary.pad())
            for tgt, row in zip(sample["target"], nll):
                real = tgt.ne(task.dictionary.pad())
                rows.append([(task.dictionary[int(t)], -float(s)) for t, s in zip(tgt[real], row[real])])
    return rows


@pytest.fixture(scope="module")
def trained(ptb_small, tmp_path_factory):
    """trained(layout) -> (checkpoint, fairseq-train log): 4 updates, dropout 0, once per layout."""
    cache = {}

    def get(layout):
        if layout not in cache:
            save = tmp_path_factory.mktemp(layout)
            log = train(ptb_small[0], save, *LAYOUTS[layout], *MODEL_FLAGS.get(layout, []), "--dropout", "0",
                        max_update=4)
            cache[layout] = (str(save / "checkpoint_last.pt"), log)
        return cache[layout]

    return get


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_eval_lm_equals_validation_and_scores_each_target(ptb_small, trained, layout):
    data, _ = ptb_small
    flags = LAYOUTS[layout]
    ckpt, log = trained(layout)
    p = eval_lm(data, ckpt, *flags, "--gen-subset", "valid", "--output-word-probs")
    # the same split, the same batches: fairseq-train's validation loss to 1e-3 bits
    assert eval_loss(p) == pytest.approx(valid_loss(log), abs=1e-3)
    # every printed word is a target, with the log-probability of that target's own position
    printed = printed_word_probs(p)
    expected = teacher_forced_scores(data, ckpt, "valid", flags)
    assert len(printed) == len(expected)
    assert sum(map(len, expected)) == eval_numbers(p)[0]
    for got, want in zip(printed, expected):
        assert [w for w, _ in got] == [w for w, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)


def bare_eval_lm(data, ckpt, *flags):
    """eval-lm with no task flags at all (test_cli.eval_lm always passes --segment-length)."""
    return run(["fairseq-eval-lm", data, "--user-dir", PLUGIN, "--path", ckpt, "--batch-size", "4",
                "--gen-subset", "valid", "--cpu", "--num-workers", "0", *flags])


def test_checkpoint_settings_unless_given(ptb_small, trained):
    data, _ = ptb_small
    ckpt, log = trained("eos_loss_start")
    task = ["--task", "tarm_language_modeling"]
    # nothing given: evaluated as trained (L=8, eos, loss from segment 2)
    p = bare_eval_lm(data, ckpt, *task)
    assert eval_loss(p) == pytest.approx(valid_loss(log), abs=1e-3)
    assert "WARNING" not in p.stdout + p.stderr
    # a given value that differs is used, with one warning naming both values
    p = bare_eval_lm(data, ckpt, *task, "--segment-length", "4", "--loss-start-segment", "4")
    out = p.stdout + p.stderr
    assert eval_loss(p) != pytest.approx(valid_loss(log), abs=1e-3)
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, warnings
    assert "--segment-length 4" in warnings[0] and "--segment-length 8" in warnings[0]
    assert "--loss-start-segment 4" in warnings[1] and "--loss-start-segment 2" in warnings[1]
    assert "valid: 300 samples of up to" in out  # eos (one sample per line) still from the checkpoint
    # a value given that equals the default is still "given" (spelled on the command line)
    p = bare_eval_lm(data, ckpt, *task, "--sample-break-mode", "none", "--loss-start-segment", "0")
    assert "--sample-break-mode none given" in p.stdout + p.stderr
    assert eval_numbers(p)[0] == 7060  # every token of the split, as streams


def test_loss_last_segments_from_the_checkpoint(ptb_small, trained):
    data, _ = ptb_small
    ckpt, log = trained("eos_loss_last")
    p = bare_eval_lm(data, ckpt, "--task", "tarm_language_modeling")
    assert "--loss-last-segments 2 (from the checkpoint)" in p.stdout + p.stderr
    assert eval_loss(p) == pytest.approx(valid_loss(log), abs=1e-3)
    # a checkpoint saved before the flag existed evaluates with every segment scored
    import torch

    state = torch.load(ckpt, weights_only=False)
    del state["task_state"]["tarm_trained_with"]["loss_last_segments"]
    old = ckpt.replace(".pt", "_old.pt")
    torch.save(state, old)
    assert eval_numbers(eval_lm(data, old, *LAYOUTS["eos"], "--gen-subset", "valid"))[0] == 7060  # every token


def test_task_without_memory_is_refused(ptb_small, trained):
    """eval-lm's default task (language_modeling) would not carry the memory."""
    data, _ = ptb_small
    ckpt, _ = trained("streams")
    one_line_error(bare_eval_lm(data, ckpt), "--task tarm_language_modeling")
    one_line_error(bare_eval_lm(data, ckpt, "--task", "language_modeling"), "--task tarm_language_modeling")


def segment_table(p):
    """[(label, tokens, bits)] from the --eval-segment-ppl table."""
    rows = re.findall(r"eval_segments(?: \| |:)\s+(\d+(?:-\d+)?)\s+([\d,]+)\s+([\d.]+)\s+[\d.]+$",
                      p.stdout + p.stderr, re.M)
    return [(label, int(n.replace(",", "")), float(bits)) for label, n, bits in rows]


@pytest.mark.parametrize("layout,labels", [
    ("streams", ["0", "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127"]),
    ("eos_loss_start", ["2", "3", "4", "5", "6", "7", "8"]),
])
def test_segment_perplexity_table(ptb_small, trained, layout, labels):
    data, _ = ptb_small
    ckpt, _ = trained(layout)
    p = eval_lm(data, ckpt, *LAYOUTS[layout], "--gen-subset", "valid", "--eval-segment-ppl")
    rows = segment_table(p)
    assert [label for label, _, _ in rows] == labels
    count = eval_numbers(p)[0]
    assert sum(n for _, n, _ in rows) == count  # every scored token in exactly one row
    # the rows' token-weighted mean is eval-lm's own loss
    assert sum(n * bits for _, n, bits in rows) / count == pytest.approx(eval_loss(p), abs=1e-3)
    if layout == "streams":  # 4 streams, one 16-token segment each per batch
        assert [n for _, n, _ in rows[:4]] == [64, 64, 128, 256]
