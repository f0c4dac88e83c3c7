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
             "--data", str(dest), "--split", "valid"])
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["samples"] == 32
    assert result["accuracy"] * 100 == pytest.approx(acc, abs=0.01), "same metric in fairseq's validation"
    assert sum(v["samples"] for v in result["by_kind"].values()) == 32
