"""--tensorboard-logdir writes the loss and the memory statistics for train and valid."""

import pytest

from test_cli import train

pytestmark = pytest.mark.cli


def scalars(logdir):
    """{tag: set of scalar names} from the event files fairseq wrote under logdir/<tag>."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for tag in ("train_inner", "train", "valid"):
        acc = EventAccumulator(str(logdir / tag))
        acc.Reload()
        out[tag] = set(acc.Tags()["scalars"])
    return out


def test_tensorboard_has_loss_and_memory_statistics(ptb_small, tmp_path):
    data, _ = ptb_small
    logdir = tmp_path / "tb"
    log = train(data, tmp_path / "ckpt", "--tensorboard-logdir", str(logdir), "--memory-gate",
                "--log-interval", "2", "--max-epoch", "1", "--validate-interval-updates", "4",
                max_update=6)
    assert "tensorboard not found" not in log and "install" not in log.lower(), log[-2000:]
    found = scalars(logdir)
    for tag in ("train_inner", "train", "valid"):
        for name in ("loss", "mem_norm", "mem_dE", "mem_gate_mean", "mem_gate_min", "mem_gate_max"):
            assert name in found[tag], f"{name} missing from {tag}: {sorted(found[tag])}"
    assert "loss_seg1" in found["train_inner"]
