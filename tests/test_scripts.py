"""The experiment scripts' bookkeeping: log parsing, the ablation table, the figure."""

import json
import os
import statistics
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ablate  # noqa: E402
import plot  # noqa: E402


def fake_log(path, losses):
    with open(path, "w") as f:
        for i, loss in enumerate(losses, 1):
            rec = {"epoch": 1, "valid_loss": str(loss), "valid_ppl": str(2 ** loss),
                   "valid_num_updates": str(100 * i)}
            f.write(f"2026-01-01 00:00:00 | INFO | valid | {json.dumps(rec)}\n")
            f.write('2026-01-01 00:00:00 | INFO | train_inner | {"loss": "9.0"}\n')


def test_parse_valid_and_table(tmp_path):
    fake_log(tmp_path / "a.log", [8.0, 7.5, 7.6])
    assert ablate.parse_valid(tmp_path / "a.log") == [(100, 8.0), (200, 7.5), (300, 7.6)]
    results = [{"setting": "rmt", "seed": s, "test_ppl": p, "best_valid_ppl": p,
                "valid": [(100, 8.0), (200, v), (300, 7.6)]}
               for s, p, v in [(1, 100.0, 7.5), (2, 110.0, 7.7), (3, 120.0, 7.9)]]
    row = ablate.table(results, ["rmt", "no_memory"]).splitlines()[2]
    assert row.startswith("| rmt | 8 | 1.0 | 110.00 +- 10.00 | 3 |")
    spread = statistics.mean([0.0, statistics.stdev([7.5, 7.7, 7.9]), 0.0])
    assert f"{spread:.4f}" in row
    assert row.rstrip(" |").endswith("0.3")  # valid loss rose once in the first run of three


def test_curves_figure(tmp_path):
    for name, losses in [("rmt_s1", [8, 7, 6]), ("rmt_s2", [8.2, 7.1, 6.1]), ("no_memory_s1", [8, 7.5, 7])]:
        os.makedirs(tmp_path / name)
        fake_log(tmp_path / name / "train.log", losses)
    out = tmp_path / "fig.png"
    plot.plot_curves(type("A", (), {"runs": str(tmp_path), "out": str(out)}))
    assert out.stat().st_size > 1000


def test_quadratic_figure_and_table(tmp_path, capsys):
    # two settings: one finished (test.json), one still running; accuracy curve from valid lines
    for name, accs in (("rmt", [10.0, 60.0, 97.5]), ("no_memory", [0.0, 0.0])):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "train.log", "w") as f:
            for i, acc in enumerate(accs, 1):
                rec = {"valid_loss": "0.5", "valid_accuracy": str(acc), "valid_num_updates": str(250 * i)}
                f.write(f"2026-01-01 00:00:00 | INFO | valid | {json.dumps(rec)}\n")
    test = {"split": "test", "samples": 10, "accuracy": 0.9,
            "by_kind": {"two_roots": {"accuracy": 0.875, "samples": 8},
                        "no_roots": {"accuracy": 1.0, "samples": 2}}}
    (tmp_path / "rmt" / "test.json").write_text(json.dumps(test) + "\n")
    assert plot.valid_accuracy(tmp_path / "rmt" / "train.log") == [(250, 10.0), (500, 60.0), (750, 97.5)]
    out = tmp_path / "fig.png"
    plot.plot_quadratic(type("A", (), {"runs": str(tmp_path), "out": str(out)}))
    assert out.stat().st_size > 1000
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| no_memory | 500 | 0.0% | (running) |")  # the canonical order
    assert rows[3] == "| rmt | 750 | 97.5% | **90.0%** | 87.5% (8) | - | 100.0% (2) |"
