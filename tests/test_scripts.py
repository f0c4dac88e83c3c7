"""The experiment scripts' bookkeeping: log parsing, the ablation table, the figure, and
the PTB recipe that scripts/main.sh, examples/ptb/tarm_ptb.yaml and scripts/ablate.py share."""

import ast
import json
import os
import re
import statistics
import subprocess
import sys

from conftest import PLUGIN, ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ablate  # noqa: E402
import plot  # noqa: E402
import quadratic_report  # noqa: E402


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
    plot.main(["curves", "--runs", str(tmp_path)])  # without --out: beside the runs, never over docs/
    assert (tmp_path / "valid_ppl.png").stat().st_size > 1000


def test_quadratic_figure_and_table(tmp_path, capsys):
    # rmt: a stable phase to 500 updates, then a decay phase resumed from it (appended to the
    # same log); no_memory: still in its stable phase. Accuracy curves from the valid lines.
    def valid_line(updates, acc):
        rec = {"valid_loss": "0.5", "valid_accuracy": str(acc), "valid_num_updates": str(updates)}
        return f"2026-01-01 00:00:00 | INFO | valid | {json.dumps(rec)}\n"

    def result(acc, two, no, misses=None):
        return json.dumps({"split": "test", "samples": 10, "accuracy": acc,
                           "by_kind": {"two_roots": {"accuracy": two, "samples": 8},
                                       "no_roots": {"accuracy": no, "samples": 2}},
                           **({"misses": misses} if misses else {})}) + "\n"

    for name in ("rmt", "no_memory"):
        os.makedirs(tmp_path / name)
    loaded = "2026-01-01 00:00:00 | INFO | fairseq.trainer | Loaded checkpoint {} (epoch 1 @ {} updates)\n"
    (tmp_path / "rmt" / "train.log").write_text(
        loaded.format("x/checkpoint_last.pt", 0) + valid_line(250, 10.0) + valid_line(500, 60.0)
        + loaded.format("x/checkpoint_last.pt", 500) + valid_line(750, 97.5)
        + loaded.format("x/checkpoint_last.pt", 750) + valid_line(1000, 98.0)  # killed after validating,
        + loaded.format("x/checkpoint_last.pt", 750) + valid_line(1000, 97.0))  # resumed: 1000 once more
    (tmp_path / "rmt" / "run.conf").write_text("MAX_UPDATE=500 DECAY_UPDATES=500 VALID_EVERY=250 SEED=1\n")
    (tmp_path / "no_memory" / "train.log").write_text(valid_line(250, 0.0) + valid_line(500, 0.0))
    # tarm_gate: killed in its stable phase and resumed (no decay yet: run.conf says where it starts)
    os.makedirs(tmp_path / "tarm_gate")
    (tmp_path / "tarm_gate" / "train.log").write_text(
        valid_line(250, 5.0) + loaded.format("x/checkpoint_last.pt", 250) + valid_line(500, 20.0))
    (tmp_path / "tarm_gate" / "run.conf").write_text("MAX_UPDATE=8000 DECAY_UPDATES=4000 VALID_EVERY=250 SEED=1\n")
    (tmp_path / "rmt" / "test_stable.json").write_text(result(0.6, 0.5, 1.0))
    final = json.loads(result(0.9, 0.875, 1.0, {"x2 only": 1}))
    final["two_roots_by_x1_segment"] = {"segment 4": {"accuracy": 1.0, "samples": 6},
                                        "segment 3": {"accuracy": 0.5, "samples": 2}}
    (tmp_path / "rmt" / "test.json").write_text(json.dumps(final) + "\n")
    # valid_by_update.sh's results for rmt: the third panel and a second table
    for u, at3 in [(500, 0.0), (1000, 0.5)]:
        res = json.loads(result(0.6, 0.5, 1.0))
        res["two_roots_by_x1_segment"] = {"segment 4": {"accuracy": 1.0, "samples": 6},
                                          "segment 3": {"accuracy": at3, "samples": 2}}
        (tmp_path / "rmt" / f"valid_update{u}.json").write_text(json.dumps(res) + "\n")
    assert list(quadratic_report.valid_by_update(tmp_path / "rmt")) == [500, 1000]
    assert quadratic_report.valid_accuracy(tmp_path / "rmt" / "train.log") == [(250, 10.0), (500, 60.0), (750, 97.5), (1000, 97.0)]
    assert [quadratic_report.stable_end(tmp_path / n) for n in ("rmt", "no_memory", "tarm_gate")] == [500, None, 8000]
    out = tmp_path / "fig.png"
    quadratic_report.write(type("A", (), {"runs": str(tmp_path), "out": str(out), "target": 99.8, "zoom": 90.0,
                                       "seed_runs": []}))
    assert out.stat().st_size > 1000
    import matplotlib.pyplot as plt
    left, right, by_x1 = plt.gcf().axes
    assert "target 99.8%" in [line.get_label() for line in left.lines]
    assert right.get_ylim()[0] == 90.0 and left.get_ylim()[0] < 0
    seg3 = [line for line in by_x1.lines if line.get_label() == "rmt: x1 in segment 3"][0]
    assert list(seg3.get_xdata()) == [500, 1000] and list(seg3.get_ydata()) == [0.0, 50.0]
    plt.close("all")
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("| setting | phase | updates | best valid EM | test EM [95% interval] |")
    assert rows[2].startswith("| no_memory | stable | 500 | 0.0% | (running) |")  # the canonical order
    # test exact match with its Wilson 95% interval (6 and 9 of 10 right)
    assert rows[3] == "| rmt | stable | 500 | 60.0% | **60.0%** [31.3, 83.2] | 50.0% (8) | - | 100.0% (2) | - |"
    assert rows[4] == "| rmt | decay | 1000 | 97.5% | **90.0%** [59.6, 98.2] | 87.5% (8) | - | 100.0% (2) | x2 only 1 |"
    assert rows[5].startswith("| tarm_gate | stable | 500 | 20.0% | (running) |")
    assert rows[9] == "| rmt | decay | 100.0% (6) | - | 50.0% (2) |"  # by where x1 was computed
    assert rows[11:15] == ["| setting | updates | valid EM | two roots: x1 read in segment 4 | segments 3-4 | segment 3 |",
                           "|---|---|---|---|---|---|",
                           "| rmt | 500 | 60.0% | 100.0% (6) | - | 0.0% (2) |",
                           "| rmt | 1000 | 60.0% | 100.0% (6) | - | 50.0% (2) |"]
    assert rows[15].startswith("wrote")
    # without --out the figure goes into the runs' OUT, never over a committed figure in docs/
    import quadratic

    quadratic.main(["report", "--runs", str(tmp_path), "--target", "99.8"])
    plt.close("all")
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'quadratic.png'}"
    assert (tmp_path / "quadratic.png").stat().st_size > 1000
    # seeds side by side: seed 2 is a copy of seed 1 without its finished test
    import shutil

    shutil.copytree(tmp_path / "rmt", tmp_path / "s2" / "rmt")
    os.remove(tmp_path / "s2" / "rmt" / "test.json")
    (tmp_path / "s2" / "rmt" / "test.json").write_text(result(1.0, 1.0, 1.0))
    (tmp_path / "s2" / "rmt" / "run.conf").write_text("MAX_UPDATE=500 DECAY_UPDATES=500 VALID_EVERY=250 SEED=2\n")
    table = quadratic_report.seeds_table([str(tmp_path), str(tmp_path / "s2")]).splitlines()
    assert table[2:] == ["| no_memory | 1 | 500 | (running) | (running) | 0.0% | - | - | - |",  # no test yet
                         "| rmt | 1 | 1000 | 60.0% [31.3, 83.2] | 90.0% [59.6, 98.2] | 97.5% | 100.0% (6) | - | 50.0% (2) |",
                         "| tarm_gate | 1 | 500 | (running) | (running) | 20.0% | - | - | - |",
                         "| rmt | 2 | 1000 | 60.0% [31.3, 83.2] | 100.0% [72.2, 100.0] | 97.5% | - | - | - |"]
    # the seed is the run's own (run.conf), not the place in the list
    table = quadratic_report.seeds_table([str(tmp_path / "s2"), str(tmp_path)]).splitlines()
    assert [row.split(" | ")[1] for row in table[2:] if row.startswith("| rmt ")] == ["2", "1"]
    # a seed in its decay phase: the stable phase's test, its updates and best validation so far
    shutil.copytree(tmp_path / "rmt", tmp_path / "s3" / "rmt", ignore=shutil.ignore_patterns("test.json", "test.log"))
    (tmp_path / "s3" / "rmt" / "run.conf").write_text("MAX_UPDATE=500 DECAY_UPDATES=500 VALID_EVERY=250 SEED=3\n")
    with open(tmp_path / "s3" / "rmt" / "train.log", "a") as f:
        f.write(valid_line(1250, 96.0))
    table = quadratic_report.seeds_table([str(tmp_path), str(tmp_path / "s3")]).splitlines()
    assert table[-1] == "| rmt | 3 | 1250 | 60.0% [31.3, 83.2] | (running) | 97.5% | - | - | - |"
    # the figure draws the other seeds' curves in their setting's colour, a line style per seed
    quadratic.main(["report", "--runs", str(tmp_path), "--seed-runs", str(tmp_path / "s2"), str(tmp_path / "s3"),
                    "--out", str(tmp_path / "seeds.png")])
    lines = {line.get_label(): line for line in plt.gcf().axes[0].lines}
    plt.close("all")
    assert lines["rmt, seed 2"].get_color() == lines["rmt, seed 3"].get_color() == lines["rmt"].get_color()
    assert (lines["rmt, seed 2"].get_linestyle(), lines["rmt, seed 3"].get_linestyle()) == ("--", ":")
    assert list(lines["rmt, seed 3"].get_xdata()) == [250, 500, 750, 1000, 1250]


def test_a_run_continued_from_another_is_drawn_from_where_it_branched():
    # rmt_answer_decay's log is rmt's up to update 500 (copied), then its own decay
    rmt = [(250, 10.0), (500, 60.0), (750, 70.0)]
    runs = {"rmt": {"curve": rmt}, "rmt_answer_decay": {"curve": rmt[:2] + [(750, 90.0)]},
            "tarm_gate": {"curve": [(250, 10.0), (500, 50.0)]}}
    drawn = quadratic_report.unshared_curves(runs)
    assert drawn["rmt"] == rmt
    assert drawn["rmt_answer_decay"] == [(500, 60.0), (750, 90.0)]
    assert drawn["tarm_gate"] == [(250, 10.0), (500, 50.0)]  # one equal first point is no copy to hide


def test_ablation_gate_setting_builds_a_gated_model_and_its_log_is_read(dict_dir, tmp_path):
    from conftest import build

    args = type("A", (), {"data": dict_dir, "user_dir": os.path.join(ROOT, "tarm_plugin"), "bptt_segments": 2,
                          "batch_size": 4, "checkpoint_segments": False, "write_input": "memory",
                          "memory_dropout": None, "lr": 1e-3, "max_update": 10, "valid_every": 5})
    assert ablate.describe("tarm_gate") == (8, 0.5, "gate")
    cmd = ablate.train_cmd(args, str(tmp_path), "tarm_gate", 1)
    assert cmd[0] == os.path.join(os.path.dirname(sys.executable), "fairseq-train")  # scripts/lab.py
    flags = cmd[cmd.index("--num-memory-tokens"):cmd.index("--criterion")]
    _, model = build(dict_dir, *flags)
    assert model.memory.gated and not model.memory.learned_rate and model.memory.alpha == 0.5
    with open(tmp_path / "train.log", "w") as f:
        f.write('x | train_inner | {"mem_gate_mean": "0.4", "mem_gate_min": "0.1", "mem_gate_max": "0.9"}\n')
        f.write('x | train | {"train_mem_gate_mean": "0.3", "train_mem_gate_min": "0.2", "train_mem_gate_max": "0.8"}\n')
    assert ablate.parse_rates(tmp_path / "train.log", "gate") == {"mean": 0.3, "min": 0.2, "max": 0.8}
    assert ablate.parse_rates(tmp_path / "train.log") == {}
    import continuation_bleu

    assert continuation_bleu.memory_rate(model.memory) == "gate from 0.5"
    # another kind's state is not token slots: the scripts that read slots ask the capability
    _, assoc = build(dict_dir, "--num-memory-tokens", "2", "--memory-kind", "assoc")
    assert model.memory.token_slots and not assoc.memory.token_slots
    assert continuation_bleu.memory_rate(assoc.memory) == "AssociativeMemory"


MAIN_SH = os.path.join(ROOT, "scripts", "main.sh")
SECTIONS = ("common", "dataset", "optimization", "checkpoint", "task", "model", "criterion", "optimizer",
            "lr_scheduler")
# where a run reads and writes and how it logs: not part of the recipe
WHERE = {"task.data", "task.save_dir", "checkpoint.save_dir", "common.user_dir", "common.log_format"}
# how often: ablate.py validates and saves every 100 updates (--valid-every) and logs every 50
SCHEDULE = {"common.log_interval", "dataset.validate_interval_updates", "checkpoint.save_interval_updates"}


def recipe(cfg):
    """{section.key: value} of a fairseq config, resolved; a tuple written as a string
    (``--adam-betas '(0.9, 0.98)'``) as the list a yaml holds."""
    from omegaconf import OmegaConf

    flat = {}
    for section in SECTIONS:
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if isinstance(value, str) and value.startswith("("):
                value = list(ast.literal_eval(value))
            flat[f"{section}.{key}"] = value
    return flat


def train_recipe(argv):
    """The config fairseq-train builds from ``argv``."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = list(argv)
    argv[argv.index("--user-dir") + 1] = PLUGIN  # main.sh's is relative to the repository
    return recipe(convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv)))


def yaml_recipe():
    """The config fairseq-hydra-train builds from examples/ptb/tarm_ptb.yaml."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir

    hydra_init("tarm_ptb")  # as fairseq-hydra-train --config-name tarm_ptb does
    with initialize_config_dir(config_dir=os.path.join(ROOT, "examples", "ptb"), version_base="1.1"):
        cfg = compose("tarm_ptb", overrides=[f"common.user_dir={PLUGIN}", "task.data=data-bin/ptb"])
    add_defaults(cfg)
    return recipe(cfg)


def bash_argv(script, command):
    """The arguments of the first ``command`` line of ``script`` as bash expands them, with
    the script's variables at their defaults; only the variable assignments run."""
    lines = open(script).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(command + " "))
    end = start
    while lines[end].endswith("\\"):
        end += 1
    words = " ".join(line.rstrip("\\") for line in lines[start:end + 1])[len(command):]
    words = re.split(r" 2>&1| \| ", words)[0]  # the command, not its redirections and pipes
    assignments = [line for line in lines[:start] if re.match(r"[A-Z_]+=", line)]
    out = subprocess.run(["bash", "-c", "\n".join(assignments + ["printf '%s\\0'" + words])],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def test_ptb_recipe_is_the_same_in_main_sh_the_hydra_config_and_the_ablation():
    main = train_recipe(bash_argv(MAIN_SH, "fairseq-train"))
    assert (main["model.num_memory_tokens"], main["model.memory_ema_alpha"], main["optimization.max_update"]) \
        == (8, 0.2, 1200)  # main.sh's defaults were read
    args = ablate.parse_args([])
    ablation = train_recipe(ablate.train_cmd(args, "checkpoints/x", "tarm_a0.2", 1)[1:])

    def differ(a, b, ignore):
        return {k: (a.get(k), b.get(k)) for k in sorted((set(a) | set(b)) - ignore) if a.get(k) != b.get(k)}

    assert differ(main, ablation, WHERE | SCHEDULE) == {}
    assert differ(main, yaml_recipe(), WHERE) == {}
    # and both score the test split the same way
    evals = [bash_argv(MAIN_SH, "fairseq-eval-lm"), ablate.eval_cmd(args, "checkpoints/x")[1:]]
    for argv in evals:
        argv[0] = argv[argv.index("--user-dir") + 1] = argv[argv.index("--path") + 1] = "?"
    assert evals[0] == evals[1]


def test_every_plugin_flag_is_in_the_readme_table():
    """The README's flag table lists each flag the plugin adds to fairseq's (task, model, criterion)."""
    import dataclasses

    from fairseq.dataclass import FairseqDataclass
    from fairseq.models.transformer_lm import TransformerLanguageModelConfig
    from fairseq.tasks.language_modeling import LanguageModelingConfig

    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLossConfig
    from tarm_plugin.models.tarm_lm import TarmLanguageModelConfig
    from tarm_plugin.tasks.tarm_language_modeling import TarmLanguageModelingConfig

    def own(cls, base):  # the fields cls adds, less fairseq's settings it only refers to (II)
        inherited = {f.name for f in dataclasses.fields(base)}
        return {f.name for f in dataclasses.fields(cls) if f.name not in inherited
                and not str(f.default).startswith("${")}

    names = (own(TarmLanguageModelingConfig, LanguageModelingConfig) | own(TarmLanguageModelConfig, TransformerLanguageModelConfig)
             | own(TarmLmLossConfig, FairseqDataclass))
    with open(os.path.join(ROOT, "README.md")) as f:
        table = {m for m in re.findall(r"^\| `(--[a-z0-9-]+)", f.read(), re.M)}
    missing = {"--" + n.replace("_", "-") for n in names} - table
    assert not missing, f"flags missing from README's table: {sorted(missing)}"


def test_ablation_run_is_not_trained_past_its_budget_and_force_starts_afresh(tmp_path, monkeypatch):
    # a run whose training finished but whose evaluation was cut: fairseq-train started at its
    # --max-update would train one update more, so it is evaluated as it is; --force redoes it
    # from scratch (fairseq would otherwise resume from the old checkpoint_last.pt)
    trained = []

    def fake_train(cmd, log, *a, **k):
        trained.append(cmd)
        (tmp_path / "rmt_s1" / "checkpoint_last.pt").write_text("at 10")
        with open(log, "a") as f:
            f.write('x | valid | {"valid_num_updates": "10", "valid_loss": "7.0"}\n')

    monkeypatch.setattr(ablate.lab, "run_logged", fake_train)
    monkeypatch.setattr(ablate.lab, "eval_logged", lambda *a, **k: {"loss_bits": 7.0, "ppl_printed": 128.0, "tokens": 5})
    monkeypatch.setattr(ablate.lab, "resume_point", lambda d: 10 if os.path.exists(os.path.join(d, "checkpoint_last.pt")) else 0)
    args = ablate.parse_args(["--out", str(tmp_path), "--max-update", "10"])
    run_dir = tmp_path / "rmt_s1"
    run_dir.mkdir()
    (run_dir / "checkpoint_last.pt").write_text("at 10")
    (run_dir / "train.log").write_text('x | valid | {"valid_num_updates": "10", "valid_loss": "7.5"}\n')
    assert ablate.one_run(args, "rmt", 1)["test_ppl"] == 128.0 and trained == []
    assert list(map(tuple, ablate.one_run(args, "rmt", 1)["valid"])) == [(10, 7.5)]  # cached: nothing again
    args.force = True
    result = ablate.one_run(args, "rmt", 1)
    assert len(trained) == 1 and result["valid"] == [(10, 7.0)], "trained afresh, its old log gone"
