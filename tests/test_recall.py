"""scripts/recall.py's bookkeeping: sample layout, answer positions in the task's
targets, scoring, the run plan, resume, and the tables."""

import json
import os
import random
import sys

import pytest
import torch

from conftest import BIN, ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import recall  # noqa: E402


def test_sample_layout():
    L, P, D = 8, 3, 2
    rng = random.Random(0)
    for _ in range(50):
        s = recall.make_sample(rng, P, D, L, n_keys=5, n_values=4, n_filler=3)
        assert len(s) == (D + 1) * L + 2 * P  # + </s> from fairseq-preprocess fits the last segment
        keys, values = s[0:2 * P:2], s[1:2 * P:2]
        assert all(k[0] == "k" for k in keys) and all(v[0] == "v" for v in values)
        assert len(set(keys)) == P
        assert all(t[0] == "f" for t in s[2 * P:(D + 1) * L])  # filler up to the question segment
        question = s[(D + 1) * L:]
        assert sorted(question[0::2]) == sorted(keys)
        facts = dict(zip(keys, values))
        asked = [s[i - 1] for i in recall.answer_positions(P, D, L)]
        assert asked == question[0::2]
        assert [s[i] for i in recall.answer_positions(P, D, L)] == [facts[k] for k in asked]
    with pytest.raises(ValueError, match="segment-length"):
        recall.make_sample(rng, 4, 1, 8, 5, 5, 3)


def test_score_answers():
    logits = torch.full((2, 6, 5), -10.0)
    target = torch.tensor([[0, 0, 3, 0, 4, 0], [0, 0, 1, 0, 2, 0]])
    logits[0, 2, 3] = 10.0  # right
    logits[0, 4, 1] = 10.0  # wrong
    logits[1, 2, 1] = 0.0  # right, probability 1/(1 + 4e^-10) ~ 1
    logits[1, 4] = 0.0  # uniform: argmax is the first symbol (0), wrong; p = 1/5
    right, p = recall.score_answers(logits, target, [2, 4])
    assert right.tolist() == [[True, False], [True, False]]
    assert p[1, 1].item() == pytest.approx(0.2)
    assert p[0, 0].item() == pytest.approx(1.0, abs=1e-6) and p[0, 1].item() < 1e-6


@pytest.mark.cli
def test_answer_positions_in_the_task_targets(tmp_path):
    """The generated text, through fairseq-preprocess and the task, puts values at answer_positions."""
    os.environ["PATH"] = BIN + os.pathsep + os.environ["PATH"]
    args = recall.parse_args(["--out", str(tmp_path), "--segment-length", "8", "--facts", "3", "--keys", "6",
                              "--values", "5", "--filler", "4", "--train-samples", "16", "--test-samples", "6",
                              "--capacity-facts", "2"])
    data_dir, splits = recall.build_data(args, (1, 2), 3, (1, 4))
    assert splits == {1: "test", 4: "test1"}
    from fairseq.data import Dictionary, data_utils
    from tarm_plugin.tasks.tarm_language_modeling import SampleSegmentsDataset

    d = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    assert len(d) == 4 + 6 + 5 + 4  # fairseq's 4 specials + keys + values + filler
    for D, split in splits.items():
        data = data_utils.load_indexed_dataset(os.path.join(data_dir, split), d)
        ds = SampleSegmentsDataset(data, bsz=6, segment_length=8, pad=d.pad(), eos=d.eos(), name=split,
                                   loss_start_segment=2)
        target = ds[0]["target"]
        assert target.shape == (6, (D + 2) * 8)
        pos = recall.answer_positions(3, D, 8)
        assert all(d[int(t)].startswith("v") for t in target[:, pos].flatten())
        assert all(d[int(t)].startswith("k") for t in target[:, [p - 1 for p in pos]].flatten())
        assert (target[:, pos[-1] + 1] == d.eos()).all()
    # the same dictionary for every data-bin
    other, _ = recall.build_data(args, (1,), 2, (1,))
    assert open(os.path.join(other, "dict.txt")).read() == open(os.path.join(data_dir, "dict.txt")).read()


def test_plan_defaults():
    args = recall.parse_args([])
    jobs = recall.plan(args)
    by_exp = {e: [j for j in jobs if j[0] == e] for e in recall.EXPERIMENTS}
    assert len(by_exp["distance"]) == len(recall.SETTINGS) * 4 * 3
    assert {j[1] for j in by_exp["capacity"]} == set(recall.REDUCED)
    assert all(j[2] == (1, 2) and j[4] == (1, 2, 4, 8, 16) for j in by_exp["lengthgen"])
    # capacity at P = --facts and D = --capacity-distance is a distance run: main trains it once
    keys = {(j[1], j[2], j[3], j[5]) for j in jobs}
    assert len(keys) == len(jobs) - len(recall.REDUCED) * 3
    sub = recall.plan(recall.parse_args(["--experiment", "distance", "--settings", "rmt", "--seeds", "1", "2"]))
    assert len(sub) == 4 * 2 and {j[1] for j in sub} == {"rmt"}


def fake_result(args, setting, train_d, p, seed, test):
    run_dir = recall.run_dir_for(args, setting, train_d, p, seed)
    os.makedirs(run_dir, exist_ok=True)
    r = {"setting": setting, "seed": seed, "train_distances": list(train_d), "facts": p,
         "test": {str(k): {"fact_acc": v, "all_acc": v / 2, "p_right": v / 4, "samples": 10} for k, v in test.items()},
         "train_seconds": 10.0, "eval_seconds": 1.0, "config": recall.config(args)}
    json.dump(r, open(os.path.join(run_dir, "result.json"), "w"))
    return r


def test_resume_and_tables(tmp_path):
    args = recall.parse_args(["--out", str(tmp_path)])
    for seed, acc in [(1, 0.5), (2, 0.7), (3, 0.9)]:
        fake_result(args, "rmt", (1,), 3, seed, {1: acc})
    fake_result(args, "no_memory", (1,), 2, 1, {1: 0.1})
    fake_result(args, "rmt", (1, 2), 3, 1, {1: 0.8, 16: 0.2})
    # resume: a run with a result is not trained again
    cached, ran = recall.one_run(args, "rmt", (1,), 3, (1,), 2)
    assert not ran and cached["test"]["1"]["fact_acc"] == 0.7
    results = recall.load_results(args)
    assert len(results) == 5
    md = recall.markdown(results, args)
    assert "| rmt | 70.0 +- 20.0 |" in md  # distance D=1: mean +- std over the three seeds
    assert "| no_memory | 10.0 (n=1) |" in md  # capacity P=2
    assert "| rmt |  | 70.0 +- 20.0 |" in md  # capacity: no P=2 run for rmt; P=3 shares the distance runs
    assert "| rmt | 80.0 (n=1) | 20.0 (n=1) |" in md  # lengthgen: trained on D=1,2, tested at 1 and 16
    assert "chance 12.5% per fact" in md
    assert os.path.exists(recall.figure(results, args, str(tmp_path / "fig.png")))
    # selecting other distances or settings keeps the same runs
    assert len(recall.load_results(recall.parse_args(["--out", str(tmp_path), "--distances", "1", "2"]))) == 5
    # a different configuration in the same --out is refused, not mixed into the table
    other = recall.parse_args(["--out", str(tmp_path), "--max-update", "5"])
    assert recall.load_results(other) == []
    with pytest.raises(SystemExit, match="other data/model flags"):
        recall.one_run(other, "rmt", (1,), 3, (1,), 1)


@pytest.mark.cli
def test_end_to_end_tiny(tmp_path):
    """fairseq-train + evaluation for one tiny run: every test sample's answers are scored."""
    os.environ["PATH"] = BIN + os.pathsep + os.environ["PATH"]
    out = str(tmp_path / "out")
    recall.main(["--out", out, "--experiment", "distance", "--distances", "1", "--settings", "no_memory",
                 "--seeds", "1", "--max-update", "3", "--train-samples", "64", "--test-samples", "30",
                 "--segment-length", "8", "--facts", "3", "--capacity-facts", "2", "--dim", "16"])
    results = json.load(open(os.path.join(out, "results.json")))
    assert len(results) == 1
    test = results[0]["test"]["1"]
    assert test["samples"] == 30
    assert 0.0 <= test["all_acc"] <= test["fact_acc"] <= 1.0 and 0.0 < test["p_right"] < 1.0
    md = open(os.path.join(out, "results.md")).read()
    assert "Wall time" in md and "| no_memory |" in md
    assert os.path.exists(os.path.join(out, "recall.png"))
    log = open(os.path.join(out, "runs", "no_memory_D1_P3_s1", "train.log")).read()
    assert "--loss-start-segment 2" in log and '"train_num_updates": "3"' in log
