"""The experiment library (scripts/lab.py): fairseq log records, eval-lm's output, the
settings registry, a run's flags and cached result, and the report helpers that every
experiment script shares."""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import lab  # noqa: E402

EVAL_LM = """\
2026-01-01 | INFO | tarm_plugin.eval_segments | eval_segments | depth  tokens  loss  ppl
2026-01-01 | INFO | tarm_plugin.eval_segments | eval_segments |     0  1,000  6.5000  90.51
2026-01-01 | INFO | tarm_plugin.eval_segments | eval_segments |   2-3  2,500  6.0000  64.00
2026-01-01 | INFO | tarm_plugin.eval_segments | eval_segments | pos 0-15  800  6.9000  119.43
2026-01-01 | INFO | tarm_plugin.eval_segments | eval_segments | class far  300  4.0000  16.00
2026-01-01 | INFO | fairseq_cli.eval_lm | Evaluated 3,500 tokens in 1.0s (3500.00 tokens/s)
2026-01-01 | INFO | fairseq_cli.eval_lm | Loss (base 2): 6.1429, Perplexity: 70.67
"""


def test_log_records_keep_the_logs_order_and_the_later_validation_of_an_update_wins(tmp_path):
    log = tmp_path / "train.log"
    lines = [("train_inner", {"loss": "9", "num_updates": "50"}), ("valid", {"valid_loss": "8.0", "valid_num_updates": "100"}),
             ("train", {"train_loss": "8.5"}), ("valid", {"valid_loss": "7.5", "valid_num_updates": "200"}),
             ("valid", {"valid_loss": "7.4", "valid_num_updates": "200"})]  # resumed: validated again
    log.write_text("$ fairseq-train ...\n" + "".join(f"2026 | INFO | {k} | {json.dumps(r)}\n" for k, r in lines))
    assert [r.get("loss") or r.get("train_loss") for r in lab.log_records(log, "train_inner", "train")] == ["9", "8.5"]
    assert len(lab.log_records(log)) == 3
    assert lab.valid_curve(log) == [(100, 8.0), (200, 7.4)]
    assert lab.last_record(log, "train") == {"train_loss": "8.5"} and lab.last_record(log, "nothing") == {}


def test_eval_lm_reads_totals_and_every_table():
    ev = lab.eval_lm(EVAL_LM)
    assert (ev["tokens"], ev["loss_bits"], ev["ppl_printed"]) == (3500, 6.1429, 70.67)
    assert ev["ppl"] == pytest.approx(2 ** 6.1429)
    assert ev["by_depth"] == [{"depth": "0", "tokens": 1000, "loss_bits": 6.5}, {"depth": "2-3", "tokens": 2500, "loss_bits": 6.0}]
    assert ev["by_position"] == [{"positions": "0-15", "tokens": 800, "loss_bits": 6.9}]
    assert ev["by_class"] == {"far": {"tokens": 300, "loss_bits": 4.0}}
    with pytest.raises(ValueError, match="eval-lm totals"):
        lab.eval_lm("Traceback: killed before the totals")


def test_settings_registry_gives_memory_settings_their_m():
    assert lab.setting_flags(lab.SETTINGS["rmt"], 10) == ["--num-memory-tokens", "10", "--memory-ema-alpha", "1"]
    assert lab.setting_flags(lab.SETTINGS["no_memory"], 10) == ["--num-memory-tokens", "0"]
    assert lab.has_memory(lab.SETTINGS["assoc"]) and not lab.has_memory(lab.SETTINGS["no_memory"])
    cmd = lab.train_command("data-bin/x", "save", 3, "--lr", "1e-3")
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--save-dir") + 1] == "save"
    assert cmd[cmd.index("--user-dir") + 1] == lab.PLUGIN and "--lr" in cmd


def test_the_kinds_read_from_the_source_are_the_registered_ones():
    """lab.KINDS reads the decorators' names without importing the plugin; the registry that
    fairseq's --memory-kind checks against must hold the same names (besides the built-in tokens)."""
    from tarm_plugin.memory import MEMORY_KINDS

    assert sorted(lab.KINDS) == sorted(set(MEMORY_KINDS) - {"tokens"}) and "assoc" in lab.KINDS
    assert all(lab.SETTINGS[kind] == ["--memory-kind", kind] for kind in lab.KINDS)


def test_kinds_are_the_decorated_classes_of_the_modules_the_package_imports(tmp_path, monkeypatch):
    kinds = tmp_path / "kinds"
    (kinds / "sub").mkdir(parents=True)
    (kinds / "__init__.py").write_text('"""@register_memory_kind("in_a_docstring")"""\n')
    (kinds / "a.py").write_text(
        '"""A kind.\n\n    @register_memory_kind("example")\n"""\n'
        '@register_memory_kind("first")\nclass A: pass\n\n'
        '# @register_memory_kind("commented")\nclass B: pass\n\n'
        'class Holder:\n    @memory.register_memory_kind(name="nested")\n    class C: pass\n')
    (kinds / "sub" / "__init__.py").write_text('@register_memory_kind("in_a_package")\nclass D: pass\n')
    (kinds / "notes.py.bak").write_text('@register_memory_kind("backup")\nclass E: pass\n')
    assert lab.memory_kinds(str(tmp_path)) == ["first", "nested", "in_a_package"]
    assert lab.memory_kinds(str(tmp_path / "nowhere")) == []
    # a kind named like a setting would replace it (and a cached run of that name pass for it)
    monkeypatch.setattr(lab, "KINDS", ["rmt", "mean"])
    with pytest.raises(SystemExit, match="lab: memory kind rmt .* has the name of a setting of scripts/lab.py"):
        lab.refuse_kind_names(lab.SETTINGS)
    lab.refuse_kind_names(["no_memory", "context4x"], "scripts/longdoc.py")  # no clash: nothing happens


def test_report_helpers():
    assert lab.cell([]) == "-" and lab.cell([1.0]) == "1.00" and lab.cell([0.5], 1, 100, " (n=1)") == "50.0 (n=1)"
    assert lab.cell([1.0, 3.0], 1) == f"2.0 +- {math.sqrt(2):.1f}"
    assert lab.separation({1: 1.0, 2: 1.1}, {1: 2.0, 2: 2.1}) == "separated"
    assert lab.separation({1: 1.0, 2: 1.9}, {1: 2.0, 2: 1.95}) == "ahead in every seed"
    assert lab.separation({1: 1.0, 2: 3.0}, {1: 2.0, 2: 2.0}) == "not separated"
    assert lab.separation({1: 1.0}, {1: 2.0}) == "one seed"
    lo, hi = lab.wilson_interval(999, 1000)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (99.4, 100.0)  # docs/checks.md's interval for 999 of 1,000
    assert lab.wilson_interval(0, 10)[0] == 0.0
    # paired bootstrap: equal runs gain 0 with a degenerate interval; a run with 1 nat less per
    # token everywhere is 1 - e^-1 = 63.2% lower in perplexity, in every resample
    docs = {d: (10 + d, 5.0 * (10 + d)) for d in range(20)}
    assert lab.bootstrap_gain(docs, docs, 200) == (0.0, 0.0, 0.0)
    better = {d: (n, s - n) for d, (n, s) in docs.items()}
    g, lo, hi = lab.bootstrap_gain(better, docs, 200)
    assert g == pytest.approx(100 * (1 - math.exp(-1))) and lo == pytest.approx(g) and hi == pytest.approx(g)
    with pytest.raises(SystemExit, match="same scored tokens"):
        lab.bootstrap_gain({0: (5, 1.0)}, {0: (6, 1.0)}, 10)


def test_a_failed_command_stops_with_its_log(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(SystemExit, match=f"longdoc: command failed \\({log}\\)"):
        lab.run_logged([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], str(log), who="longdoc")
    assert log.read_text().startswith("$ ") and "boom" in log.read_text()
    lab.save_json(str(tmp_path / "r.json"), {"a": 1})
    assert lab.read_json(str(tmp_path / "r.json")) == {"a": 1} and sorted(os.listdir(tmp_path)) == ["r.json", "x.log"]


def test_two_writers_of_one_json_never_collide(tmp_path):
    # the two matrix workers report into one results.json: a shared aside name made one's move fail
    path = str(tmp_path / "results.json")
    code = f"import sys; sys.path.insert(0, {os.path.dirname(lab.__file__)!r}); import lab\n" \
           f"for i in range(300): lab.save_json({path!r}, {{'i': i}})"
    writers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [w.wait() for w in writers] == [0, 0]
    assert lab.read_json(path) == {"i": 299} and os.listdir(tmp_path) == ["results.json"]


def test_eval_lm_reads_every_depth_row_and_checks_their_sum():
    # a 9-character depth label (1024-2047) fills its column: no space before it
    rows = [("0", 100), ("1-3", 300), ("1024-2047", 50)]
    text = "".join(f"INFO:tarm_plugin.eval_segments:{d:>9} {n:>9,} {5.0:>8.4f} {32.0:>10.2f}\n" for d, n in rows)
    text += "INFO:fairseq_cli.eval_lm:Evaluated 450 tokens in 1.0s (450.00 tokens/s)\n"
    text += "INFO:fairseq_cli.eval_lm:Loss (base 2): 5.0000, Perplexity: 32.00\n"
    assert [r["depth"] for r in lab.eval_lm(text)["by_depth"]] == ["0", "1-3", "1024-2047"]
    with pytest.raises(ValueError, match="does not sum"):
        lab.eval_lm(text.replace("Evaluated 450", "Evaluated 451"))


def test_a_cached_result_is_used_only_if_made_with_these_flags(tmp_path):
    args = argparse.Namespace(data="/abs/data-bin/code/", lr=1e-3, validate_every=0, keep_every=800)
    config = lab.run_config(args, ("data", "lr"), when_set=("validate_every", "keep_every"))
    assert list(config.items()) == [("data", "/abs/data-bin/code/"), ("lr", 1e-3), ("keep_every", 800)]
    run = str(tmp_path / "run")
    assert lab.cached_result(run, config, "refused") is None  # not finished
    os.makedirs(run)
    lab.save_result(run, {"config": dict(config, data="data-bin/code"), "test": 1})  # another checkout's path
    with pytest.raises(SystemExit, match="^refused$"):
        lab.cached_result(run, config, "refused")
    assert lab.cached_result(run, config, "refused", by_name=("data",))["test"] == 1
    assert not lab.made_with({"config": dict(config, data="/x/prose")}, config, by_name=("data",))
    assert not lab.made_with({"config": dict(config, lr=5e-4)}, config, by_name=("data",))
    assert not lab.made_with({"test": 1}, config), "a result without its flags"
    assert not lab.made_with({"config": {"lr": 1e-3}}, config, by_name=("data",)), "another experiment's flags"
    assert lab.made_with({"curriculum": config}, config, key="curriculum")
    assert not lab.made_with({"config": config}, config, key="curriculum")


def test_training_is_not_started_again_at_its_budget(tmp_path):
    # fairseq-train started at its --max-update trains one update more
    import torch

    run, log = tmp_path / "run", tmp_path / "run" / "train.log"
    run.mkdir()
    cmd = [sys.executable, "-c", "print('trained')"]
    trainings = lambda: log.read_text().splitlines().count("trained")  # noqa: E731
    assert lab.train_unless_done(cmd, str(run), 4, str(log)) and trainings() == 1  # no checkpoint yet
    torch.save({"optimizer_history": [{"num_updates": 4}]}, run / "checkpoint_last.pt")
    assert not lab.train_unless_done(cmd, str(run), 4, str(log)) and trainings() == 1
    assert lab.train_unless_done(cmd, str(run), 5, str(log)) and trainings() == 2


def test_an_evaluation_is_logged_afresh_and_read_back(tmp_path):
    log = tmp_path / "eval.log"
    for _ in range(2):
        ev = lab.eval_logged([sys.executable, "-c", f"print({EVAL_LM!r})"], str(log))
    lines = log.read_text().splitlines()  # the command line and its output, once: not appended to
    assert ev["tokens"] == 3500 and lines[0].startswith("$ ") and lines[1:] == EVAL_LM.splitlines() + [""]


def test_command_line_names_the_script_and_its_arguments(monkeypatch):
    assert lab.command_line("/x/scripts/longdoc.py", ["--out", "o", "<doc>"]) == "python scripts/longdoc.py --out o <doc>"
    monkeypatch.setattr(sys, "argv", ["scripts/recall.py", "--report-only"])
    assert lab.command_line("recall.py") == "python scripts/recall.py --report-only"


def test_a_run_claimed_by_another_driver_is_skipped_not_run_twice(tmp_path, capsys):
    """Two matrix workers reaching the same run: the one that does not hold the run's driver
    lock skips it with a line naming the holder (it used to evaluate beside the first, both
    writing the same eval logs); the lock dies with its holder."""
    import longdoc

    run_dir = tmp_path / "out" / "runs" / "rmt_s1"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r}); import lab\n"
         f"assert lab.claim_run({str(run_dir)!r}); print('claimed', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dict.txt").write_text("a 1\n")
    args = longdoc.parse_args(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert longdoc.one_run(args, "rmt", 1) is None
        assert f"longdoc: {run_dir} is in use by another process (pid {holder.pid} on " in capsys.readouterr().out
        assert sorted(p.name for p in run_dir.iterdir()) == [lab.RUN_LOCK], "nothing trained or evaluated"
    finally:
        holder.kill()
        holder.wait()
    assert lab.claim_run(str(run_dir)) and lab.claim_run(str(run_dir)), "free once its holder is gone; held again"
