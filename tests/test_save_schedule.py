"""With several processes the carried memory is all-gathered for rank 0's
checkpoints only after the training steps that fairseq-train may follow with a
checkpoint (fairseq_cli/train.py validate_and_save), and when a validation
starts. The end-to-end check (2 processes, exact resume) is tests/test_resume_ddp.py."""

from conftest import build

import tarm_plugin.tasks.tarm_language_modeling as task_module


def gathering_steps(task, num_batches, epochs, update_freq=1, skip_remainder=False, max_update=None):
    """Run fairseq-train's loop on paper: {(update, batch_id)} for the micro-batches
    after which the task gathers, and the updates made (as {update: its batch ids})."""
    gathers, updates, n = set(), {}, 0
    for epoch in range(1, epochs + 1):
        task.begin_epoch(epoch, None)
        usable = num_batches - (num_batches % update_freq if skip_remainder else 0)
        for start in range(0, usable, update_freq):
            group = range(start, min(start + update_freq, usable))
            updates[n + 1] = list(group)
            for b in group:
                if task.may_save_after(n, b, num_batches):
                    gathers.add((n + 1, b))
            n += 1
            if max_update and n >= max_update:
                return gathers, updates
    return gathers, updates


def gathered_updates(gathers, updates):
    """The updates whose last micro-batch gathers: what rank 0's checkpoint holds."""
    return sorted(u for u, batches in updates.items() if (u, batches[-1]) in gathers)


def test_save_interval_updates_max_update_and_epoch_ends(dict_dir):
    task, _ = build(dict_dir, "--save-interval-updates", "4", "--max-update", "10")
    gathers, updates = gathering_steps(task, num_batches=7, epochs=2, max_update=10)
    # fairseq saves after updates 4 and 8 (interval), 7 (epoch 1 ends), 10 (max-update);
    # 5 and 9: after an update skipped for fp16 overflow fairseq checks the count 4 (8) again
    assert gathered_updates(gathers, updates) == [4, 5, 7, 8, 9, 10]
    assert {u for u, _ in gathers} == {4, 5, 7, 8, 9, 10}  # and never on 1, 2, 3, 6


def test_update_freq_groups_and_the_shorter_last_group(dict_dir):
    task, _ = build(dict_dir, "--update-freq", "3", "--max-update", "100")
    gathers, updates = gathering_steps(task, num_batches=7, epochs=2, update_freq=3)
    # 7 batches in groups [0 1 2] [3 4 5] [6]: the epoch's last update is the single batch 6
    assert updates[3] == [6] and updates[6] == [6]
    assert gathered_updates(gathers, updates) == [2, 3, 5, 6]
    # the last update's batch, plus batches 4 and 5 (an upper bound on the last group,
    # for a run resumed mid-epoch with another --update-freq); never update 1's
    assert gathers == {(2, 4), (2, 5), (3, 6), (5, 4), (5, 5), (6, 6)}


def test_update_freq_per_epoch_and_skip_remainder_batch(dict_dir):
    task, _ = build(dict_dir, "--update-freq", "2,3", "--skip-remainder-batch", "--max-update", "100")
    # epoch 1: 7 batches in pairs, batch 6 dropped: the last update is [4 5]
    gathers, updates = gathering_steps(task, num_batches=7, epochs=1, update_freq=2, skip_remainder=True)
    assert updates[3] == [4, 5] and (3, 5) in gathers
    assert not any(u == 1 for u, _ in gathers)
    # epoch 2 and later use --update-freq 3: groups [0 1 2] [3 4 5], batch 6 dropped
    task.begin_epoch(2, None)
    assert task.may_save_after(10, 5, 7) and not task.may_save_after(9, 2, 7)


def test_save_interval_skips_epoch_ends(dict_dir):
    task, _ = build(dict_dir, "--save-interval", "2", "--max-update", "100")
    gathers, updates = gathering_steps(task, num_batches=5, epochs=4)
    assert gathered_updates(gathers, updates) == [10, 20]  # the ends of epochs 2 and 4


def test_stop_time_gathers_every_step(dict_dir):
    task, _ = build(dict_dir, "--stop-time-hours", "1", "--save-interval-updates", "100")
    gathers, updates = gathering_steps(task, num_batches=5, epochs=2)
    assert gathered_updates(gathers, updates) == list(range(1, 11))


def test_validation_start_gathers_the_training_memory(dict_dir, monkeypatch):
    """--patience: fairseq may stop, and save, after any validation."""
    calls = []

    class Wrapped:  # fairseq's DDP wrapper around the model
        class module:
            @staticmethod
            def share_carried_memory(key, bsz):
                calls.append((key, bsz))

    task, _ = build(dict_dir, "--batch-size", "3")
    task.begin_valid_epoch(1, Wrapped)
    assert calls == []  # one process: nothing to gather
    monkeypatch.setattr(task_module, "data_parallel_shard", lambda: (0, 2))
    task.begin_valid_epoch(1, Wrapped)
    assert calls == [("train", 3)]
