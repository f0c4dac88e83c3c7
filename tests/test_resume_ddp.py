"""Exact resume with 2 processes (gloo, CPU): every rank's carried memory is in
rank 0's checkpoint and each rank gets its own back; another world size
resumes with one warning and E_0."""

import os

import pytest
import torch

from conftest import ROOT, free_port
from test_cli import assert_resumed_equals_straight, train, train_losses

pytestmark = pytest.mark.cli

# --dropout 0: with dropout, fairseq's own 2-process resume is not bit-exact even
# without memory (single-process resume is: test_cli.py)
FLAGS = ["--save-interval-updates", "5", "--disable-validation", "--seed", "3", "--dropout", "0",
         "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo"]


def torchrun():
    return ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "--no-python",
            os.path.join(ROOT, "scripts", "fairseq_train_cpu_ddp.sh")]


# test_cli.train passes --memory-ema-alpha 0.5 (a tokens flag): assoc sets it back to its default
# kind: (flags, the per-rank memory's leading shape: ranks, rows, slots or layers)
KINDS = {"tokens": ([], (2, 4, 4)),
         "assoc": (["--memory-kind", "assoc", "--memory-ema-alpha", "1", "--assoc-key-dim", "8",
                    "--assoc-dpfp-nu", "1"], (2, 4, 2))}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_process_resume_matches_straight_run(ptb_small, tmp_path, kind):
    data, _ = ptb_small
    flags, shape = KINDS[kind]
    flags = [*FLAGS, *flags]
    straight = train(data, tmp_path / "a", *flags, max_update=10, launcher=torchrun())
    train(data, tmp_path / "b", *flags, max_update=5, launcher=torchrun())
    saved = torch.load(tmp_path / "b" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    per_rank = saved["model"]["carried._extra_state"]["per_rank"]["train"]
    assert per_rank.shape[:3] == shape and not torch.equal(per_rank[0], per_rank[1]), "each rank's own memory"
    resumed = train(data, tmp_path / "b", *flags, max_update=10, launcher=torchrun())
    assert_resumed_equals_straight(straight, resumed, 6, 10, tmp_path / "a", tmp_path / "b")


def test_resume_from_a_save_interval_checkpoint_with_update_freq(ptb_small, tmp_path):
    """Mid-epoch, from the --save-interval-updates checkpoint alone (not the one
    --max-update wrote), 2 batches per update: the memory is gathered then too."""
    data, _ = ptb_small
    flags = [*FLAGS, "--update-freq", "2"]
    straight = train(data, tmp_path / "a", *flags, max_update=10, launcher=torchrun())
    train(data, tmp_path / "b", *flags, max_update=7, launcher=torchrun())
    interval = tmp_path / "b" / "checkpoint_1_5.pt"
    resumed = train(data, tmp_path / "c", *flags, "--restore-file", str(interval), max_update=10,
                    launcher=torchrun())
    assert_resumed_equals_straight(straight, resumed, 6, 10, tmp_path / "a", tmp_path / "c")


def test_other_world_size_resumes_from_initial_memory(ptb_small, tmp_path):
    data, _ = ptb_small
    train(data, tmp_path, *FLAGS, max_update=5, launcher=torchrun())
    log = train(data, tmp_path, *FLAGS[:7], max_update=7)  # one process
    warnings = [line for line in log.splitlines() if "carried memory restarts from E_0" in line]
    assert len(warnings) == 1 and "2 process(es), resuming with 1" in warnings[0], log[-3000:]
    assert sorted(train_losses(log)) == [6, 7]
