"""The quadratic task end to end on a tiny generated set: generate, binarize, train with
validation accuracy, and the standalone exact-match evaluation."""

import json
import re

import pytest

from conftest import run

pytestmark = pytest.mark.cli


def test_quadratic_end_to_end(tmp_path):
    dest = tmp_path / "bin"
    p = run(["bash", "examples/quadratic/prepare.sh", str(dest), "--train", "256", "--valid", "32",
             "--test", "32", "--seed", "3"])
    assert p.returncode == 0, p.stderr[-2000:]
    p = run(["bash", "examples/quadratic/train.sh", "--max-update", "6", "--cpu", "--num-workers", "0",
             "--decoder-layers", "2", "--num-memory-tokens", "4", "--batch-size", "16", "--lr", "1e-3",
             "--no-progress-bar"],
            env={"DATA": str(dest), "SAVE": str(tmp_path / "ck"), "ALPHA": "0.2"})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "32 samples of up to 6x30 tokens" in out
    valid = [json.loads(m) for m in re.findall(r"\| valid \| (\{.*\})", out)]
    assert valid and "valid_accuracy" in valid[-1]
    acc = float(valid[-1]["valid_accuracy"])
    assert 0.0 <= acc <= 100.0
    # scored tokens: segments 2-6 of each sample (5 x 30, the last one ends in </s>)
    assert float(valid[-1]["valid_wpb"]) * 2 == pytest.approx(32 * 150)
    p = run(["python", "scripts/eval_quadratic.py", "--path", str(tmp_path / "ck" / "checkpoint_last.pt"),
             "--data", str(dest), "--split", "valid", "--misses", str(tmp_path / "misses.tsv")])
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["samples"] == 32
    misses = [line.split("\t") for line in (tmp_path / "misses.tsv").read_text().splitlines()]
    assert len(misses) == round(32 * (1 - result["accuracy"]))
    assert all(ref != answer and "_" not in ref for ref, answer in misses)
    assert sum(result["misses"].values()) == len(misses)
    by_x1 = result["two_roots_by_x1_segment"]
    assert by_x1 and sum(v["samples"] for v in by_x1.values()) == result["by_kind"]["two_roots"]["samples"]
    assert result["accuracy"] * 100 == pytest.approx(acc, abs=0.01), "same metric in fairseq's validation"
    assert sum(v["samples"] for v in result["by_kind"].values()) == 32


def test_cpu_runs_stable_then_decay(tmp_path):
    # the issue-12 experiment script on a tiny set: a stable phase, then a decay phase that
    # resumes its last checkpoint and ends at LR 0; a test result after each phase
    dest = tmp_path / "bin"
    assert run(["bash", "examples/quadratic/prepare.sh", str(dest), "--train", "128", "--valid", "16",
                "--test", "16", "--seed", "3"]).returncode == 0
    env = {"DATA": str(dest), "MAX_UPDATE": "4", "DECAY_UPDATES": "4", "VALID_EVERY": "2"}
    p = run(["bash", "examples/quadratic/cpu_runs.sh", str(tmp_path / "runs"), "no_memory"], env=env)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    log = (tmp_path / "runs" / "no_memory" / "train.log").read_text()
    assert re.search(r"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", log)
    last = [json.loads(m) for m in re.findall(r"\| train \| (\{.*\})", log)][-1]
    assert last["train_num_updates"] == "8" and float(last["train_lr"]) == 0.0
    for name in ("test_stable.json", "test.json"):
        result = json.loads((tmp_path / "runs" / "no_memory" / name).read_text())
        assert result["split"] == "test" and result["samples"] == 16
    # a decay phase needs a stable one to resume
    p = run(["bash", "examples/quadratic/cpu_runs.sh", str(tmp_path / "fresh"), "rmt"],
            env={**env, "PHASES": "decay"})
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "PHASES=stable" in p.stderr
