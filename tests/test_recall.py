"""scripts/recall.py's bookkeeping: sample layout, answer positions in the task's
targets, scoring, the run plan, resume, and the tables."""

import json
import os
import random
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import recall  # noqa: E402
import recall_curriculum  # noqa: E402
import recall_data  # noqa: E402
import recall_eval  # noqa: E402
import recall_report  # noqa: E402


def test_sample_layout():
    L, P, D = 8, 3, 2
    rng = random.Random(0)
    for _ in range(50):
        s = recall_data.make_sample(rng, P, D, L, n_keys=5, n_values=4, n_filler=3)
        assert len(s) == (D + 1) * L + 2 * P  # + </s> from fairseq-preprocess fits the last segment
        keys, values = s[0:2 * P:2], s[1:2 * P:2]
        assert all(k[0] == "k" for k in keys) and all(v[0] == "v" for v in values)
        assert len(set(keys)) == P
        assert all(t[0] == "f" for t in s[2 * P:(D + 1) * L])  # filler up to the question segment
        question = s[(D + 1) * L:]
        assert sorted(question[0::2]) == sorted(keys)
        facts = dict(zip(keys, values))
        asked = [s[i - 1] for i in recall_data.answer_positions(P, D, L)]
        assert asked == question[0::2]
        assert [s[i] for i in recall_data.answer_positions(P, D, L)] == [facts[k] for k in asked]
    with pytest.raises(ValueError, match="segment-length"):
        recall_data.make_sample(rng, 4, 1, 8, 5, 5, 3)


def test_score_answers():
    logits = torch.full((2, 6, 5), -10.0)
    target = torch.tensor([[0, 0, 3, 0, 4, 0], [0, 0, 1, 0, 2, 0]])
    logits[0, 2, 3] = 10.0  # right
    logits[0, 4, 1] = 10.0  # wrong
    logits[1, 2, 1] = 0.0  # right, probability 1/(1 + 4e^-10) ~ 1
    logits[1, 4] = 0.0  # uniform: argmax is the first symbol (0), wrong; p = 1/5
    right, p = recall_eval.score_answers(logits, target, [2, 4])
    assert right.tolist() == [[True, False], [True, False]]
    assert p[1, 1].item() == pytest.approx(0.2)
    assert p[0, 0].item() == pytest.approx(1.0, abs=1e-6) and p[0, 1].item() < 1e-6


@pytest.mark.cli
def test_answer_positions_in_the_task_targets(tmp_path, commands):
    """The generated text, through fairseq-preprocess and the task, puts values at answer_positions."""
    args = recall.parse_args(["--out", str(tmp_path), "--segment-length", "8", "--facts", "3", "--keys", "6",
                              "--values", "5", "--filler", "4", "--train-samples", "16", "--test-samples", "6",
                              "--capacity-facts", "2"])
    data_dir, splits = recall_data.build_data(args, (1, 2), 3, (1, 4))
    assert splits == {1: "test", 4: "test1"}
    from fairseq.data import Dictionary, data_utils
    from tarm_plugin.datasets import SampleSegmentsDataset

    d = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    assert len(d) == 4 + 6 + 5 + 4  # fairseq's 4 specials + keys + values + filler
    for D, split in splits.items():
        data = data_utils.load_indexed_dataset(os.path.join(data_dir, split), d)
        ds = SampleSegmentsDataset(data, bsz=6, segment_length=8, pad=d.pad(), eos=d.eos(), name=split,
                                   loss_start_segment=2)
        target = ds[0]["target"]
        assert target.shape == (6, (D + 2) * 8)
        pos = recall_data.answer_positions(3, D, 8)
        assert all(d[int(t)].startswith("v") for t in target[:, pos].flatten())
        assert all(d[int(t)].startswith("k") for t in target[:, [p - 1 for p in pos]].flatten())
        assert (target[:, pos[-1] + 1] == d.eos()).all()
    # the same dictionary for every data-bin
    other, _ = recall_data.build_data(args, (1,), 2, (1,))
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
    md = recall_report.markdown(results, args, list(recall.SETTINGS))
    assert "| rmt | 70.0 +- 20.0 |" in md  # distance D=1: mean +- std over the three seeds
    assert "| no_memory | 10.0 (n=1) |" in md  # capacity P=2
    assert "| rmt |  | 70.0 +- 20.0 |" in md  # capacity: no P=2 run for rmt; P=3 shares the distance runs
    assert "| rmt | 80.0 (n=1) | 20.0 (n=1) |" in md  # lengthgen: trained on D=1,2, tested at 1 and 16
    assert "chance 12.5% per fact" in md
    assert os.path.exists(recall_report.figure(results, args, str(tmp_path / "fig.png"), list(recall.SETTINGS)))
    # --report-only: the same tables from the runs on disk, nothing trained (the default plan
    # has 168 runs, most of them absent here)
    recall.main(["--out", str(tmp_path), "--report-only"])
    assert md in (tmp_path / "results.md").read_text() and (tmp_path / "recall.png").exists()
    assert len(recall.load_results(args)) == 5 and not (tmp_path / "data").exists()
    # selecting other distances or settings keeps the same runs
    assert len(recall.load_results(recall.parse_args(["--out", str(tmp_path), "--distances", "1", "2"]))) == 5
    # a different configuration in the same --out is refused, not mixed into the table
    other = recall.parse_args(["--out", str(tmp_path), "--max-update", "5"])
    assert recall.load_results(other) == []
    with pytest.raises(SystemExit, match="other data/model flags"):
        recall.one_run(other, "rmt", (1,), 3, (1,), 1)


@pytest.mark.cli
def test_end_to_end_tiny(tmp_path, commands):
    """fairseq-train + evaluation for one tiny run: every test sample's answers are scored."""
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


def test_score_answers_per_row_positions():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 10, 6), torch.randint(0, 6, (3, 10))
    rows = torch.tensor([[1, 3], [5, 7], [2, 4]])
    right, p = recall_eval.score_answers(logits, target, rows)
    for b in range(3):  # each row scored at its own positions, as a list of that row's positions would
        r, q = recall_eval.score_answers(logits[b:b + 1], target[b:b + 1], rows[b].tolist())
        assert right[b].tolist() == r[0].tolist() and p[b].tolist() == pytest.approx(q[0].tolist())


@pytest.mark.cli
def test_curriculum_stage_data_mixes_distances_and_rows_find_their_answers(tmp_path, commands):
    """A stage's data-bin mixes D = 1..s in equal shares; in a batch of rows of different
    lengths, each row's answer positions come from its own length."""
    L, P = 8, 3
    args = recall.parse_args(["--out", str(tmp_path), "--segment-length", str(L), "--facts", str(P),
                              "--train-samples", "40", "--test-samples", "4", "--curriculum-test", "2,5",
                              "--curriculum-valid-samples", "12"])
    data_dir, splits = recall_data.stage_data(args, 4, P)
    assert splits == {2: "test", 5: "test1"}
    from fairseq.data import Dictionary, data_utils
    from tarm_plugin.datasets import SampleSegmentsDataset

    d = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    length = lambda D: (D + 1) * L + 2 * P + 1  # noqa: E731  tokens with </s>
    for split, n in (("train", 40), ("valid", 12)):
        data = data_utils.load_indexed_dataset(os.path.join(data_dir, split), d)
        sizes = sorted(int(x) for x in data.sizes)
        assert sizes == sorted(length(D) for D in (1, 2, 3, 4) for _ in range(n // 4))  # equal shares
    # one batch of all 40 rows, D mixed, scored on the question segment only (--loss-last-segments 1)
    data = data_utils.load_indexed_dataset(os.path.join(data_dir, "train"), d)
    ds = SampleSegmentsDataset(data, bsz=40, segment_length=L, pad=d.pad(), eos=d.eos(), name="train",
                               loss_last_segments=1)
    batch = ds.collater([ds[0]])
    target, lengths = batch["target"], batch["net_input"]["src_lengths"]
    assert len(set(lengths.tolist())) == 4
    pos = recall_data.row_answer_positions(lengths, P)
    for b in range(40):
        D = (int(lengths[b]) - 2 * P - 1) // L - 1
        assert pos[b].tolist() == recall_data.answer_positions(P, D, L)
        assert all(d[int(t)].startswith("v") for t in target[b, pos[b]])
        assert all(d[int(t)].startswith("k") for t in target[b, pos[b] - 1])
        assert int(target[b, pos[b][-1] + 1]) == d.eos()
        assert target[b, : (D + 1) * L].eq(d.pad()).all()  # only the question segment is scored
    # every stage's data-bin has the test splits, and the stages' data differ
    other, _ = recall_data.stage_data(args, 1, P)
    assert open(os.path.join(other, "raw", "train.txt")).read() != open(os.path.join(data_dir, "raw", "train.txt")).read()


def fake_curriculum(args, setting, seed, test, reached):
    run_dir = recall_curriculum.curriculum_dir(args, setting, args.facts, seed)
    os.makedirs(run_dir, exist_ok=True)
    stages = [{"stage": s, "updates": 100 * s, "valid": {"fact_acc": 0.96 if ok else 0.5}, "reached": ok,
               "train_seconds": 60.0, "eval_seconds": 6.0} for s, ok in zip(args.curriculum, reached)]
    r = {"experiment": "curriculum", "setting": setting, "seed": seed, "facts": args.facts,
         "train_distances": list(range(1, args.curriculum[-1] + 1)), "stages": stages,
         "test": {str(k): {"fact_acc": v, "all_acc": v, "p_right": v, "samples": 10} for k, v in test.items()},
         "train_seconds": 120.0, "eval_seconds": 12.0, "curriculum": recall_curriculum.curriculum_config(args, recall.config(args))}
    json.dump(r, open(os.path.join(run_dir, "result.json"), "w"))


def test_curriculum_tables(tmp_path):
    args = recall.parse_args(["--out", str(tmp_path), "--experiment", "curriculum", "--curriculum", "1,2",
                              "--curriculum-test", "1,4"])
    fake_curriculum(args, "rmt", 1, {1: 1.0, 4: 0.5}, [True, True])
    fake_curriculum(args, "rmt", 2, {1: 0.2, 4: 0.1}, [True, False])  # a failed seed
    fake_curriculum(args, "tarm_a0.5", 1, {1: 0.9, 4: 0.7}, [True, True])
    fake_result(args, "rmt", (1, 2), 3, 1, {1: 0.8, 4: 0.3})  # lengthgen's run: not a curriculum
    results = recall.load_results(args)
    assert len(results) == 4
    assert set(recall_report.collect(results, "curriculum", args)) == {"rmt", "tarm_a0.5"}
    assert len(recall_report.collect(results, "lengthgen", args)["rmt"][1]) == 1  # trained on D = 1, 2 too, not mixed in
    md = recall_report.markdown(results, args, list(recall.SETTINGS))
    assert "| rmt | 1 | 100.0 | 50.0 | 2/2 |" in md
    assert "| rmt | 2 | 20.0 | 10.0 | 1/2 |" in md  # each seed's result, the failed one too
    assert "| rmt | mean | 60.0 | 30.0 | |" in md
    assert "| tarm_a0.5 | 1 | 90.0 | 70.0 | 2/2 |" in md
    assert "| rmt | 2 | 96.0 at 100 (1.1) | 50.0 at 200, budget (1.1) | 2.2 |" in md  # the stage log
    assert "| rmt | 60.0 +- 56.6 | 30.0 +- 28.3 |" in md  # mean +- std like the other experiments
    # another curriculum (other stages) in the same --out does not share the table
    other = recall.parse_args(["--out", str(tmp_path), "--experiment", "curriculum", "--curriculum", "1,2,4"])
    assert [r for r in recall.load_results(other) if r.get("experiment") == "curriculum"] == []
    assert os.path.exists(recall_report.figure(results, args, str(tmp_path / "fig.png"), list(recall.SETTINGS)))


@pytest.mark.cli
def test_curriculum_end_to_end_tiny(tmp_path, commands):
    """Two stages of a tiny model, two chunks each: stage 2 starts from stage 1's weights, a
    chunk continues its stage's run, the per-seed table and the stage records, and resume."""
    out = str(tmp_path / "out")
    argv = ["--out", out, "--experiment", "curriculum", "--curriculum", "1,2", "--curriculum-test", "1,3",
            "--settings", "rmt", "--seeds", "1", "--check-every", "2", "--stage-updates", "4",
            "--curriculum-threshold", "100", "--train-samples", "64", "--test-samples", "20",
            "--curriculum-valid-samples", "16", "--dim", "16", "--batch-size", "8"]
    recall.main(argv)
    run_dir = os.path.join(out, "runs", "curriculum_rmt_C1-2_P3_s1")
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert [s["stage"] for s in result["stages"]] == [1, 2]
    for st in result["stages"]:
        assert st["updates"] == 4 and [c["updates"] for c in st["checks"]] == [2, 4]
        assert st["valid"]["samples"] == 16 and st["reached"] == (st["valid"]["fact_acc"] >= 1.0)
        assert st["train_seconds"] > 0
    assert result["stages"][1]["train_distances"] == [1, 2]
    assert sorted(result["test"]) == ["1", "3"] and result["test"]["3"]["samples"] == 20
    log1 = open(os.path.join(run_dir, "stage1", "train.log")).read()
    log2 = open(os.path.join(run_dir, "stage2", "train.log")).read()
    assert "--loss-last-segments 1" in log1 and "--loss-start-segment" not in log1
    assert "Loaded checkpoint" not in log1.split("\n$ ")[0]  # stage 1 starts from scratch
    assert f"{run_dir}/stage1/checkpoint_last.pt (epoch 1 @ 2 updates)" in log1  # its 2nd chunk continues it
    assert f"loading pretrained model from {run_dir}/stage1/checkpoint_last.pt" in log2
    assert f"{run_dir}/stage2/checkpoint_last.pt (epoch 1 @ 2 updates)" in log2
    md = open(os.path.join(out, "results.md")).read()
    assert "### curriculum: per-fact accuracy % by seed" in md and "| rmt | 1 | " in md
    assert "### curriculum: stages" in md
    # resume: nothing is trained again; a lost stage record is rebuilt from its progress
    os.remove(os.path.join(run_dir, "result.json"))
    os.remove(os.path.join(run_dir, "stage2", "stage.json"))
    recall.main(argv)
    assert open(os.path.join(run_dir, "stage1", "train.log")).read() == log1
    assert open(os.path.join(run_dir, "stage2", "train.log")).read() == log2
    again = json.load(open(os.path.join(run_dir, "result.json")))
    assert again["stages"] == result["stages"] and again["test"] == result["test"]
    # a chunk trained whose check was cut: checked, not trained again (fairseq-train started at
    # its --max-update would train one update more)
    os.remove(os.path.join(run_dir, "result.json"))
    os.remove(os.path.join(run_dir, "stage2", "stage.json"))
    progress_path = os.path.join(run_dir, "stage2", "progress.json")
    progress = json.load(open(progress_path))
    progress.update(updates=2, checks=progress["checks"][:1])
    json.dump(progress, open(progress_path, "w"))
    recall.main(argv)
    assert open(os.path.join(run_dir, "stage2", "train.log")).read() == log2
    again = json.load(open(os.path.join(run_dir, "result.json")))
    assert again["stages"][1]["checks"] == result["stages"][1]["checks"] and again["test"] == result["test"]
    # the per-segment memory profile of the final model (scripts/recall_profile.py)
    import recall_profile

    rows = recall_profile.run_profiles(out, [3])
    prof = rows[0][3]
    assert rows[0]["setting"] == "rmt" and prof["samples"] == 20 and prof["gate"] is None
    assert len(prof["change"]) == len(prof["kept"]) == 3 + 2  # facts, 3 filler, the question
    assert prof["kept"][0] == pytest.approx(1.0) and all(c > 0 for c in prof["change"])
    recall_profile.main(["--out", out, "--distances", "3", "--md", str(tmp_path / "p.md")])
    md = (tmp_path / "p.md").read_text()
    assert md.startswith("Command: `python scripts/recall_profile.py --out") and "| rmt | 1 | " in md
