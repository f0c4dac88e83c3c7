"""The task's memory store (tarm_plugin.carry): the model keeps nothing, the store carries."""

import json
import os
import re

import pytest
import torch

from conftest import PLUGIN, ROOT, build, run, training_config
from tarm_plugin.carry import MemoryStore
from tarm_plugin.errors import TarmError

L = 4
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "legacy_checkpoint")


def test_store_marks_non_finite_rows_invalid():
    store = MemoryStore()
    mem = torch.randn(3, 2, 4, requires_grad=True)
    bad = mem.detach().clone()
    bad[1, 0, 0] = float("nan")
    store.put("train", bad)
    got, invalid = store.get("train", 3)
    assert not got.requires_grad
    assert invalid.tolist() == [False, True, False]
    assert store.get("train", 4) == (None, None)  # another batch size: nothing fits
    assert store.get("valid", 3) == (None, None)


def test_rerun_of_a_batch_reads_the_memory_from_before_it():
    store = MemoryStore()
    m0, m1, m2 = (torch.full((2, 1, 3), float(v)) for v in range(3))
    store.put("train", m0, batch_id=0)
    assert torch.equal(store.get("train", 2, batch_id=1)[0], m0)
    store.put("train", m1, batch_id=1)
    # batch 1 again (an --amp retry): it must not read what it wrote itself
    assert torch.equal(store.get("train", 2, batch_id=1)[0], m0)
    store.put("train", m1, batch_id=1)
    assert torch.equal(store.get("train", 2, batch_id=1)[0], m0)
    assert torch.equal(store.get("train", 2, batch_id=2)[0], m1)
    store.put("train", m2, batch_id=2)
    assert torch.equal(store.get("train", 2, batch_id=2)[0], m1)
    assert torch.equal(store.get("train", 2)[0], m2)  # no id: the latest


def test_an_amp_retry_of_an_updates_batches_reads_what_each_read_first():
    # --update-freq 3: update 7 runs batches 3, 4, 5 of the stream; after an --amp overflow
    # fairseq runs all three again. Each must read what it read the first time: batch 3 the
    # memory batch 2 wrote, not batch 5's (which has read batches 3-5's tokens)
    store = MemoryStore()
    m = [torch.full((2, 1, 3), float(v)) for v in range(7)]
    store.put("train", m[2], batch_id=2)
    for attempt in range(2):
        store.begin_step(7)
        for b in (3, 4, 5):
            assert torch.equal(store.get("train", 2, batch_id=b)[0], m[b - 1]), (attempt, b)
            store.put("train", m[b], batch_id=b)
    store.begin_step(8)  # the next update reads on from the last write
    assert torch.equal(store.get("train", 2, batch_id=6)[0], m[5])
    store.put("train", m[6], batch_id=6)
    store.begin_step(9)  # a new epoch's first batch: ids start again, nothing of update 7 is replayed
    assert torch.equal(store.get("train", 2, batch_id=3)[0], m[6])


def model_with(dict_dir, m=3):
    return build(dict_dir, "--segment-length", str(L), "--num-memory-tokens", str(m),
                 "--memory-ema-alpha", "0.5")[1].eval()


def test_the_model_is_a_function_of_its_inputs(dict_dir):
    """A bare call reads E_0 whatever ran before; the store's route (memory_key) equals
    passing the previous call's memory by hand; the model's forward holds no memory."""
    model = model_with(dict_dir)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(4, 60, (2, 2 * L), generator=g) for _ in range(2))
    with torch.no_grad():
        bare, first = model(a, segment_length=L)
        model(a, reset=torch.ones(2, dtype=torch.bool), memory_key="s", segment_length=L)
        carried, _ = model(b, reset=torch.zeros(2, dtype=torch.bool), memory_key="s", segment_length=L)
        by_hand, _ = model(b, memory=first["memory"], segment_length=L)
        again, _ = model(a, segment_length=L)
        fresh, _ = model(b, segment_length=L)
    assert torch.equal(carried, by_hand)
    assert torch.equal(bare, again)  # the keyed calls in between changed nothing for a bare call
    assert not torch.allclose(fresh, carried)  # and the carried memory does matter


def test_a_keyed_batch_without_a_store_is_refused(dict_dir):
    """Built around the task (no store attached), a batch that names its stream would
    silently read E_0 every time: refused instead."""
    from fairseq import models, tasks

    cfg = training_config(dict_dir, "--segment-length", str(L))
    bare = models.build_model(cfg.model, tasks.setup_task(cfg.task))  # not task.build_model
    assert not hasattr(bare, "carried")
    with pytest.raises(TarmError, match="memory_key"):
        bare(torch.randint(4, 60, (2, L)), memory_key="train", segment_length=L)
    with pytest.raises(ValueError, match="already"):
        MemoryStore().attach(model_with(dict_dir))
    # a checkpoint with a store loads into a model without one (the weights, not the store)
    with_store = build(dict_dir, "--segment-length", str(L))[1]
    with torch.no_grad():
        with_store(torch.randint(4, 60, (2, L)), memory_key="train", segment_length=L)
    assert "carried._extra_state" in with_store.state_dict()
    bare.load_state_dict(with_store.state_dict())
    assert torch.equal(bare.memory.initial, with_store.memory.initial)


def test_the_store_rides_in_the_model_checkpoint(dict_dir):
    model = model_with(dict_dir, m=2)
    with torch.no_grad():
        model(torch.randint(4, 60, (2, 2 * L)), reset=torch.ones(2, dtype=torch.bool), memory_key="s",
              segment_length=L)
    state = model.state_dict()
    assert "carried._extra_state" in state
    fresh = model_with(dict_dir, m=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.carried.get("s", 2)[0], model.carried.get("s", 2)[0])


def test_memory_restored_into_other_streams_is_dropped():
    saved = MemoryStore()
    saved.use_layout("train", "100 tokens in 2x1 streams, 5 batches of 2x4 tokens")
    saved.put("train", torch.ones(2, 3, 4))
    state = saved.get_extra_state()
    for layout, kept in (("100 tokens in 2x1 streams, 5 batches of 2x4 tokens", True),
                         ("100 tokens in 2x1 streams, 3 batches of 4x4 tokens", False)):
        store = MemoryStore()
        store.set_extra_state(state)
        store.use_layout("train", layout)
        assert (store.get("train", 2)[0] is not None) == kept, layout
    older = MemoryStore()  # a checkpoint from before layouts were saved: kept, as before
    older.set_extra_state({k: v for k, v in state.items() if k != "layouts"})
    older.use_layout("train", "anything")
    assert older.get("train", 2)[0] is not None


def test_a_checkpoint_from_before_the_store_loads_and_evaluates_the_same(tmp_path):
    """tests/fixtures/legacy_checkpoint (made by make.sh at commit 23ca6ae, when the carried
    memory was the model's own extra state): its carried memory lands in the store, and
    fairseq-eval-lm gives the loss that code printed."""
    from fairseq import checkpoint_utils

    import tarm_plugin  # noqa: F401

    data = tmp_path / "bin"
    p = run(["fairseq-preprocess", "--only-source", "--srcdict", os.path.join(FIXTURE, "dict.txt"),
             "--trainpref", os.path.join(FIXTURE, "train.txt"), "--validpref", os.path.join(FIXTURE, "valid.txt"),
             "--destdir", str(data), "--workers", "1"])
    assert p.returncode == 0, p.stderr[-2000:]
    ckpt = os.path.join(FIXTURE, "checkpoint.pt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]["_extra_state"]["carried"]["train"]
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": str(data), "user_dir": PLUGIN})
    assert torch.equal(models[0].carried.get("train", saved.size(0))[0], saved)

    p = run(["fairseq-eval-lm", str(data), "--user-dir", PLUGIN, "--path", ckpt, "--task",
             "tarm_language_modeling", "--gen-subset", "valid", "--batch-size", "2", "--cpu"])
    assert p.returncode == 0, p.stderr[-2000:]
    got = float(re.findall(r"Loss \(base 2\): ([\d.]+)", p.stdout + p.stderr)[-1])
    with open(os.path.join(FIXTURE, "expected.json")) as f:  # the same 4 printed decimals (another
        assert got == pytest.approx(json.load(f)["valid_loss_base2"], abs=1.01e-4)  # CPU may round the last)
