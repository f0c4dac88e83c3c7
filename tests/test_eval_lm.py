"""fairseq-eval-lm on tarm checkpoints: every target token scored at its own
position in every data layout (the loss equals fairseq-train's validation
loss, the printed word probabilities are the targets' own), checkpoint
settings used unless overridden, and the per-segment perplexity table."""

import json
import math
import re

import pytest

from conftest import run
from test_cli import MODEL, TASK, eval_lm, eval_numbers, one_line_error, train

pytestmark = pytest.mark.cli

LAYOUTS = {
    "streams": [],
    "eos": ["--sample-break-mode", "eos", "--segment-length", "8"],
    "eos_loss_start": ["--sample-break-mode", "eos", "--segment-length", "8", "--loss-start-segment", "2"],
}


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


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_eval_lm_equals_validation_and_scores_each_target(ptb_small, tmp_path, layout):
    data, _ = ptb_small
    flags = LAYOUTS[layout]
    log = train(data, tmp_path, *flags, "--dropout", "0", max_update=4)
    ckpt = str(tmp_path / "checkpoint_last.pt")
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
