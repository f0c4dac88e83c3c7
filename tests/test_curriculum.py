"""A curriculum over segments, the fairseq way: --loss-last-segments scores each
sample's own last segments; DATA1:DATA2 trains epoch i on the i-th data-bin; a
stage continues from the previous stage's weights with --restore-file and the
--reset-* flags. (eval-lm with --loss-last-segments: test_eval_lm.py; bad values:
test_bad_input.py.)"""

import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import run
from test_cli import MODEL, TASK, one_line_error, train, train_losses

PAD, EOS, L = 1, 2, 4


class Lines:
    """An indexed-dataset stand-in: one tensor per sample."""

    def __init__(self, lengths):
        # token value = 100 * line + position (+ 10): every target is traceable
        self.lines = [torch.arange(n) + 100 * i + 10 for i, n in enumerate(lengths)]
        self.sizes = np.array(lengths)

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        return self.lines[i]


@pytest.mark.parametrize("loss_start,loss_last", [(0, 2), (0, 1), (1, 2), (3, 1)])
def test_each_row_scored_on_its_own_last_segments(loss_start, loss_last):
    from tarm_plugin.datasets import SampleSegmentsDataset, first_target

    lengths = [3, 9, 6, 16, 13]  # 1, 3, 2, 4, 4 segments of 4 in one batch
    data = Lines(lengths)
    ds = SampleSegmentsDataset(data, bsz=5, segment_length=L, pad=PAD, eos=EOS, name="valid",
                               loss_start_segment=loss_start, loss_last_segments=loss_last)
    batch = ds.collater([ds[0]])
    target = batch["target"]
    assert target.shape == (5, 16)
    for b, n in enumerate(lengths):
        n_seg = -(-n // L)
        # scored: segments at or after --loss-start-segment and among the row's own last N
        first = max(loss_start, n_seg - loss_last, 0) * L
        want = torch.full((16,), PAD)
        want[first:n] = data[b][first:]
        assert target[b].tolist() == want.tolist(), f"row {b} ({n} tokens)"
        # the source is the whole sample, scored or not
        assert batch["net_input"]["src_tokens"][b, 1:n].tolist() == data[b][:-1].tolist()
        # eval-lm reads the scores from start_indices on, as many as the row's non-padding targets
        if first < n:
            assert int(first_target(target, PAD)[b]) == first
            assert batch["start_indices"][b] == first
    # the short row's padding is never a target, whatever N
    assert target[0, 3:].eq(PAD).all()
    assert batch["ntokens"] == int(target.ne(PAD).sum())


def preprocess(raw_dir, dest, name, lines, srcdict=None):
    os.makedirs(raw_dir, exist_ok=True)
    path = os.path.join(raw_dir, f"{name}.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    cmd = ["fairseq-preprocess", "--only-source", "--trainpref", path, "--validpref", path,
           "--destdir", dest, "--workers", "1"]
    p = run(cmd + (["--srcdict", srcdict] if srcdict else []))
    assert p.returncode == 0, p.stderr[-2000:]
    return dest


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Two data-bins with one dict.txt: stage 1 has 1-segment samples (5 words + </s>),
    stage 2 3-segment samples (20 words + </s>), at --segment-length 8."""
    root = tmp_path_factory.mktemp("stages")
    rng = np.random.RandomState(0)
    words = [f"w{i}" for i in range(30)]
    with open(root / "dict.txt", "w") as f:
        f.writelines(f"{w} 1\n" for w in words)
    sample = lambda n: " ".join(rng.choice(words, n))  # noqa: E731
    s1 = preprocess(root / "raw", str(root / "stage1"), "s1", [sample(5) for _ in range(32)], str(root / "dict.txt"))
    s2 = preprocess(root / "raw", str(root / "stage2"), "s2", [sample(20) for _ in range(32)], str(root / "dict.txt"))
    return s1, s2


EOS_FLAGS = ["--sample-break-mode", "eos", "--segment-length", "8", "--tokens-per-sample", "8",
             "--batch-size", "8"]


def epoch_records(log):
    """{epoch: fairseq's end-of-epoch train record} from a JSON log."""
    recs = [json.loads(m) for m in re.findall(r"\| train \| (\{.*\})", log)]
    return {int(r["epoch"]): r for r in recs}


@pytest.mark.cli
def test_epoch_i_trains_on_the_ith_data_path(stages, tmp_path):
    s1, s2 = stages
    log = train(f"{s1}:{s2}", tmp_path, *EOS_FLAGS, "--max-epoch", "2", max_update=1000)
    # the task's "train:" line names the data-bin each epoch loaded, after fairseq's reload
    loads = re.findall(r"loading train data for epoch (\d)|train: (\d+) samples of up to (\d)x8 tokens, "
                       r"\d+ batches of 8x1, from (\S+)", log)
    # (after the last epoch fairseq already loads the next one's: epoch 3 reads path 1 again)
    assert [x[0] or x[1:] for x in loads] == ["1", ("32", "1", s1), "2", ("32", "3", s2), "3", ("32", "1", s1)]
    # and each epoch trained on it: stage 1's batches have one segment, stage 2's three
    recs = epoch_records(log)
    assert "train_loss_seg0" in recs[1] and "train_loss_seg1" not in recs[1]
    assert "train_loss_seg2" in recs[2]
    assert int(recs[1]["train_num_updates"]) == 4 and int(recs[2]["train_num_updates"]) == 8
    # validation reads the first path (fairseq loads it once, epoch 1)
    assert "valid: 32 samples of up to 1x8 tokens" in log


@pytest.mark.cli
def test_data_path_with_another_dictionary_is_refused(stages, tmp_path):
    s1, _ = stages
    other = preprocess(tmp_path / "raw", str(tmp_path / "other"), "o", ["a b c", "d e f g"] * 8)
    p = run(["fairseq-train", f"{s1}:{other}", *TASK, *MODEL, "--criterion", "tarm_lm_loss", *EOS_FLAGS,
             "--optimizer", "adam", "--lr", "1e-3", "--max-epoch", "2", "--cpu", "--num-workers", "0",
             "--save-dir", str(tmp_path / "ck")])
    one_line_error(p, f"{other}/dict.txt differs")


def first_batch_loss(checkpoint, data, flags):
    """The training loss (bits) of ``checkpoint``'s weights on the first batch of a fresh
    run's epoch 1 on ``data``: what that run logs at update 1."""
    from fairseq import checkpoint_utils

    import tarm_plugin  # noqa: F401
    from tarm_plugin.scoring import token_nll

    overrides = {"data": data}
    for name, value in zip(flags[::2], flags[1::2]):
        overrides[name[2:].replace("-", "_")] = int(value) if value.isdigit() else value
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
    model = models[0].eval()
    task.load_dataset("train")
    ds = task.dataset("train")
    ds.set_epoch(1)  # as fairseq's iterator does, with --reset-dataloader
    sample = ds.collater([ds[0]])
    with torch.no_grad():
        nll = token_nll(model, model(**sample["net_input"]), sample["target"], task.dictionary.pad())
    return float(nll.sum()) / sample["ntokens"] / np.log(2)


@pytest.mark.cli
def test_stage_continues_from_the_previous_stage_weights(stages, tmp_path):
    s1, s2 = stages
    flags = [*EOS_FLAGS, "--dropout", "0"]
    train(s1, tmp_path / "stage1", *flags, max_update=12)
    restore = str(tmp_path / "stage1" / "checkpoint_last.pt")
    log = train(s2, tmp_path / "stage2", *flags, "--restore-file", restore, "--reset-optimizer",
                "--reset-dataloader", "--reset-lr-scheduler", max_update=3)
    assert f"Loaded checkpoint {restore} (epoch" in log
    assert f"from {s2}" in log
    losses = train_losses(log)
    assert sorted(losses) == [1, 2, 3]  # the update count starts again (--reset-optimizer)
    # update 1's loss is the stage-1 weights' loss on stage 2's first batch
    assert losses[1] == pytest.approx(first_batch_loss(restore, s2, flags), abs=2e-3)
    # which a fresh model's is not (12 updates of stage 1 already lowered it)
    fresh = train_losses(train(s2, tmp_path / "fresh", *flags, max_update=1))
    assert fresh[1] > losses[1] + 0.1


def test_every_rank_logs_the_same_segment_keys():
    # fairseq sums the logging outputs of all ranks key by key (all_reduce_dict): each rank's
    # batch here is as wide as its own longest sample (3 and 2 segments), yet both log the
    # split's 3 segments' keys
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss
    from tarm_plugin.datasets import SampleSegmentsDataset

    data = Lines([4, 10, 3, 5])
    keys = []
    for shard in range(2):
        ds = SampleSegmentsDataset(data, bsz=2, segment_length=L, pad=PAD, eos=EOS, name="train",
                                   shard_id=shard, num_shards=2)
        batch = ds.collater([ds[0]])
        assert batch["segments"] == 3
        keys.append(batch["target"].size(1) // L)

        class Model(torch.nn.Module):  # uniform logits over the lines' token values
            decoder = None

            def forward(self, src_tokens, **kwargs):
                return torch.zeros(*src_tokens.shape, 400), {}

        crit = TarmLmLoss.__new__(TarmLmLoss)
        torch.nn.Module.__init__(crit)
        crit.padding_idx, crit.ddp_backend, crit.sentence_avg = PAD, "legacy_ddp", False
        _, sample_size, log = crit(Model(), batch)
        assert sample_size == log["ntokens"]
        crit.sentence_avg = True  # --sentence-avg: the gradient is averaged over rows, not tokens
        assert crit(Model(), batch)[1] == batch["target"].size(0)
        keys[-1] = (keys[-1], sorted(k for k in log if k.startswith("seg")))
    assert keys[0][0] != keys[1][0], "the two ranks' batches differ in width"
    assert keys[0][1] == keys[1][1] == sorted(f"seg{i}_{x}" for i in range(3) for x in ("loss", "ntokens"))
