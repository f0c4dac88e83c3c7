"""The paper's figures from this project's runs (matplotlib, PNG).

  curves:  validation perplexity over updates per setting, mean over seeds
           with the min-max band (the paper's Figure 3), from the fairseq JSON
           logs that scripts/ablate.py wrote.
  memory:  one memory value over consecutive segments of the test stream, raw
           (M_t) vs averaged (E_t), from a trained checkpoint (the paper's
           Figure 2), plus the relative change per segment of each.
  quadratic: validation exact match over updates per setting, and the test
           table (overall and by kind), from examples/quadratic/cpu_runs.sh's
           run directories (<runs>/<setting>/{train.log,test_stable.json,test.json});
           with examples/quadratic/valid_by_update.sh's results in them
           (valid_update<N>.json), also the validation two-root exact match by the
           segment in which the steps computed x1, over updates (panel and table).

Usage:
  python scripts/plot.py curves --runs runs/ablation --out docs/fig_valid_ppl.png
  python scripts/plot.py quadratic --runs runs/quadratic12 --out docs/fig_quadratic.png
  python scripts/plot.py quadratic --runs runs/quadratic23 --seed-runs runs/quadratic23_s2 runs/quadratic23_s3 \
      --out /tmp/q.png   # also a table by seed: test exact match with its Wilson 95% interval
  python scripts/plot.py memory --path runs/ablation/tarm_a0.2_s1/checkpoint_best.pt \
      --data data-bin/ptb --out docs/fig_memory.png
"""

import argparse
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import load_checkpoint, valid_curve as parse_valid, wilson_interval  # noqa: E402


def valid_curve(log_path):
    """[(num_updates, valid perplexity)] from a fairseq JSON log."""
    return [(u, 2 ** loss) for u, loss in parse_valid(log_path)]


def plot_curves(args):
    runs = {}
    for log in sorted(glob.glob(os.path.join(args.runs, "*_s*", "train.log"))):
        setting = os.path.basename(os.path.dirname(log)).rsplit("_s", 1)[0]
        curve = valid_curve(log)
        if curve:
            runs.setdefault(setting, []).append(curve)
    if not runs:
        sys.exit(f"plot: error: no runs with validation in {args.runs}")
    fig, (ax, diff) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    means = {}
    for setting, curves in sorted(runs.items()):
        n = min(len(c) for c in curves)
        x = np.array([u for u, _ in curves[0][:n]])
        y = np.array([[p for _, p in c[:n]] for c in curves])
        means[setting] = (x, y.mean(0))
        ax.plot(x, y.mean(0), label=f"{setting} ({len(curves)} seeds)")
        ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("PTB validation perplexity (mean, min-max over seeds)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    # the curves overlap at this scale: show each one against the no-memory baseline
    base = means.get("no_memory")
    if base is not None:
        for setting, (x, y) in means.items():
            n = min(len(x), len(base[0]))
            diff.plot(x[:n], y[:n] - base[1][:n], label=setting)
        diff.axhline(0, color="gray", lw=0.8)
        diff.set_ylabel("minus no-memory (PPL)")
        diff.grid(alpha=0.3)
    diff.set_xlabel("updates")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


def memory_trace(path, data, segments, split="test"):
    """(M, E): [segments, m, d] arrays for the first stream of ``split``, in order."""
    import torch

    model, task = load_checkpoint(path, data, batch_size=1)
    if not model.memory.token_slots:
        from tarm_plugin.errors import TarmError

        raise TarmError(f"--path {path}: the memory plot shows token memory (M_t, E_t slots); "
                        f"this model has {type(model.memory).__name__}")
    task.load_dataset(split)
    written, averaged = [], []
    with torch.no_grad():
        for sample in task.eval_lm_dataloader(task.dataset(split), num_workers=0):
            _, extra = model(**sample["net_input"])
            written += [m[0].numpy() for m in extra["written_memory"]]
            averaged += [e[0].numpy() for e in extra["ema_memory"]]
            if len(written) >= segments:
                break
    return np.stack(written[:segments]), np.stack(averaged[:segments]), model.memory.alpha


def plot_memory(args):
    M, E, alpha = memory_trace(args.path, args.data, args.segments)
    # the coordinate whose raw value moves most from segment to segment
    flat_M, flat_E = M.reshape(len(M), -1), E.reshape(len(E), -1)
    j = int(np.abs(np.diff(flat_M, axis=0)).mean(0).argmax())
    slot, dim = divmod(j, M.shape[2])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    t = np.arange(1, len(M) + 1)
    ax1.plot(t, flat_M[:, j], label="written memory M_t (raw)", lw=1)
    ax1.plot(t, flat_E[:, j], label=f"averaged memory E_t (a={alpha})", lw=1.5)
    ax1.set_ylabel(f"slot {slot}, dim {dim}")
    ax1.legend()
    ax1.set_title("A memory value over consecutive test segments")

    def rel_change(x):
        return np.linalg.norm(np.diff(x, axis=0), axis=1) / np.linalg.norm(x[:-1], axis=1)

    ax2.plot(t[1:], rel_change(flat_M), label="|M_t - M_{t-1}| / |M_{t-1}|", lw=1)
    ax2.plot(t[1:], rel_change(flat_E), label="|E_t - E_{t-1}| / |E_{t-1}|", lw=1.5)
    ax2.set_xlabel("segment t")
    ax2.set_ylabel("relative change")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    summary = {"segments": len(M), "alpha": alpha, "slot": slot, "dim": dim,
               "mean_rel_change_M": float(rel_change(flat_M).mean()),
               "mean_rel_change_E": float(rel_change(flat_E).mean())}
    print(json.dumps(summary))
    print(f"wrote {args.out}")


def valid_accuracy(log_path):
    """[(num_updates, valid exact match %)] from a fairseq JSON log."""
    return parse_valid(log_path, key="valid_accuracy")


def stable_end(run_dir):
    """The update at which cpu_runs.sh's decay phase starts: MAX_UPDATE of the run's
    run.conf; without one (runs before it existed), the log's first resume."""
    conf = os.path.join(run_dir, "run.conf")
    if os.path.isfile(conf):
        with open(conf) as f:
            m = re.search(r"MAX_UPDATE=(\d+)", f.read())
        if m:
            return int(m.group(1))
    with open(os.path.join(run_dir, "train.log")) as f:
        resumes = [int(u) for u in re.findall(r"Loaded checkpoint .* @ (\d+) updates\)", f.read()) if int(u) > 0]
    return resumes[0] if resumes else None


QUADRATIC_ORDER = ["no_memory", "rmt", "tarm_a0.5", "tarm_a0.2", "tarm_learned", "tarm_gate"]
KINDS = [("two_roots", "two roots"), ("double_root", "double root"), ("no_roots", "no real roots")]
WHERE_X1 = ["segment 4", "segments 3-4", "segment 3"]


def read_test(path):
    """The last JSON line of an eval_quadratic.py result, or None if absent or empty."""
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    return None


def run_phases(run):
    """[(phase, updates at its end, test result)] of one cpu_runs.sh run directory: the
    stable phase ends at ``stable_end``, the decay phase at the last validation."""
    curve, stable = run["curve"], run["stable_end"]
    end = curve[-1][0] if curve else 0
    decaying = stable is not None and end > stable
    phases = [("stable", min(stable, end) if stable is not None else end, run["test_stable"])]
    if decaying or run["test"] is not None:
        phases.append(("decay" if decaying else "-", end, run["test"]))
    return phases


def accuracy_cell(by, key):
    """'97.5% (8)' from an eval_quadratic.py {key: {accuracy, samples}} breakdown, '-' if absent."""
    return f"{100 * by[key]['accuracy']:.1f}% ({by[key]['samples']})" if key in by else "-"


def setting_names(runs_dir):
    """The run directories' names under a cpu_runs.sh OUT, in the canonical setting order."""
    names = os.listdir(runs_dir) if os.path.isdir(runs_dir) else []
    return sorted(names, key=lambda n: ((QUADRATIC_ORDER + [n]).index(n), n))


def interval(test):
    """'[lo, hi]': the Wilson 95% interval of a test exact match, in %."""
    n = test["samples"]
    lo, hi = wilson_interval(round(test["accuracy"] * n), n)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def seeds_table(run_dirs):
    """Markdown: per setting and seed (one cpu_runs.sh OUT per seed, in order), the final test
    exact match with its Wilson 95% interval, the best validation exact match and the two-root
    answers by where the steps computed x1."""
    lines = ["| setting | seed | updates | test EM [95% interval] | best valid EM | two roots: x1 read in "
             + " | ".join(WHERE_X1) + " |", "|---|---|---|---|---|" + "---|" * len(WHERE_X1)]
    for seed, runs_dir in enumerate(run_dirs, 1):
        for name in setting_names(runs_dir):
            run_dir = os.path.join(runs_dir, name)
            test = read_test(os.path.join(run_dir, "test.json"))
            if test is None or not os.path.isfile(os.path.join(run_dir, "train.log")):
                continue
            curve = valid_accuracy(os.path.join(run_dir, "train.log"))
            x1 = test.get("two_roots_by_x1_segment", {})
            best = f"{max(a for _, a in curve):.1f}%" if curve else "-"
            lines.append(f"| {name} | {seed} | {curve[-1][0] if curve else '-'} | {100 * test['accuracy']:.1f}% "
                         f"{interval(test)} | {best} | "
                         + " | ".join(accuracy_cell(x1, w) for w in WHERE_X1) + " |")
    return "\n".join(lines)


def quadratic_table(runs):
    """Markdown: per setting and phase (cpu_runs.sh: stable, then decay), the updates, best
    valid exact match up to then, test exact match of that best checkpoint, overall and by kind;
    then the two-root answers by the segment in which the steps computed x1."""
    lines = ["| setting | phase | updates | best valid EM | test EM | " + " | ".join(k for _, k in KINDS)
             + " | wrong answers |", "|---|---|---|---|---|" + "---|" * (len(KINDS) + 1)]
    by_x1 = ["", "| setting | phase | two roots: x1 read in " + " | ".join(WHERE_X1) + " |",
             "|---|---|" + "---|" * len(WHERE_X1)]
    for setting, run in runs.items():
        for phase, updates, test in run_phases(run):
            seen = [a for u, a in run["curve"] if u <= updates]
            best = f"{max(seen):.1f}%" if seen else "-"
            if test:
                cells = [accuracy_cell(test["by_kind"], k) for k, _ in KINDS]
                em = f"**{100 * test['accuracy']:.1f}%** {interval(test)}"
                misses = sorted(test.get("misses", {}).items(), key=lambda kv: -kv[1])
                cells.append(", ".join(f"{k} {n}" for k, n in misses) or "-")
                if test.get("two_roots_by_x1_segment"):
                    by_x1.append(f"| {setting} | {phase} | "
                                 + " | ".join(accuracy_cell(test["two_roots_by_x1_segment"], w) for w in WHERE_X1) + " |")
            else:
                cells, em = ["-"] * (len(KINDS) + 1), "(running)"
            lines.append(f"| {setting} | {phase} | {updates} | {best} | {em} | " + " | ".join(cells) + " |")
    return "\n".join(lines + by_x1)


def valid_by_update(run_dir):
    """{update: eval_quadratic.py result} of valid_by_update.sh's valid_update<N>.json."""
    found = {}
    for path in glob.glob(os.path.join(run_dir, "valid_update*.json")):
        m = re.fullmatch(r"valid_update(\d+)\.json", os.path.basename(path))
        result = read_test(path) if m else None
        if result:
            found[int(m.group(1))] = result
    return dict(sorted(found.items()))


def by_x1_table(runs):
    """Markdown: per setting and evaluated update, validation exact match overall and of the
    two-root answers by where the steps computed x1."""
    lines = ["| setting | updates | valid EM | two roots: x1 read in " + " | ".join(WHERE_X1) + " |",
             "|---|---|---|" + "---|" * len(WHERE_X1)]
    for setting, run in runs.items():
        for u, res in run["by_update"].items():
            lines.append(f"| {setting} | {u} | {100 * res['accuracy']:.1f}% | "
                         + " | ".join(accuracy_cell(res.get("two_roots_by_x1_segment", {}), w) for w in WHERE_X1) + " |")
    return "\n".join(lines)


def unshared_curves(runs):
    """{setting: its curve without the leading points it shares with an earlier setting's}.
    A run continued from another's checkpoint (a decay from RMT's stable state) copies that
    run's log up to there; drawn twice, the copy would hide the original. The last shared
    point is kept so the continuation starts where it branched off."""
    drawn = {}
    for name, run in runs.items():
        curve, start = run["curve"], 0
        for other in runs.values():
            if other is run:
                break
            n = 0
            while n < min(len(curve), len(other["curve"])) and curve[n] == other["curve"][n]:
                n += 1
            start = max(start, n - 1)
        drawn[name] = curve[start:]
    return drawn


def plot_quadratic(args):
    runs = {}
    for name in setting_names(args.runs):
        log = os.path.join(args.runs, name, "train.log")
        if not os.path.isfile(log):
            continue
        runs[name] = {"curve": valid_accuracy(log), "stable_end": stable_end(os.path.join(args.runs, name)),
                      "test_stable": read_test(os.path.join(args.runs, name, "test_stable.json")),
                      "test": read_test(os.path.join(args.runs, name, "test.json")),
                      "by_update": valid_by_update(os.path.join(args.runs, name))}
    if not runs:
        sys.exit(f"plot: error: no runs (<setting>/train.log) in {args.runs}")
    # left: the whole curve; middle: its top, where a target such as 99.8% is told apart;
    # right (with valid_by_update.sh's results): the two-root answers by where x1 was computed
    by_update = any(run["by_update"] for run in runs.values())
    fig, axes = plt.subplots(1, 3 if by_update else 2, figsize=(18.5 if by_update else 11, 4.5))
    ends = {run["stable_end"] for run in runs.values() if run["curve"] and run["stable_end"] is not None}
    decays = sorted(u for u in ends if any(c[0] > u for r in runs.values() for c in r["curve"]))
    drawn = unshared_curves(runs)
    for ax, ylim in zip(axes, [(-2, 102), (args.zoom, 100.5)]):
        for i, (name, curve) in enumerate(drawn.items()):
            if curve:
                ax.plot(*zip(*curve), marker="o", ms=3, color=f"C{i}", label=name)
        for u in decays:
            ax.axvline(u, color="black", ls=":", lw=0.8, label=f"LR decay from {u}")
        ax.axhline(args.target, color="gray", ls="--", lw=0.8, label=f"target {args.target:g}%")
        ax.set_xlabel("updates")
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation exact match (%)")
    axes[0].legend()
    axes[1].set_title(f"the same, from {args.zoom:g}%")
    if by_update:
        ax = axes[2]
        from matplotlib.lines import Line2D
        legend = []  # one entry per setting (its colour) and one per line style: ten labelled lines would cover the data
        styles = list(zip(WHERE_X1[1:], ["--", "-"]))  # the carried x1: across segments 3-4, from segment 3
        for i, (name, run) in enumerate(runs.items()):
            for where, ls in styles:
                points = [(u, 100 * r["two_roots_by_x1_segment"][where]["accuracy"])
                          for u, r in run["by_update"].items() if where in r.get("two_roots_by_x1_segment", {})]
                if points:
                    ax.plot(*zip(*points), marker="o", ms=3, ls=ls, color=f"C{i}", label=f"{name}: x1 in {where}")
            if run["by_update"]:
                legend.append(Line2D([], [], color=f"C{i}", marker="o", ms=3, label=name))
        legend += [Line2D([], [], color="gray", ls=ls, label=f"x1 in {w}") for w, ls in styles]
        ax.axhline(args.target, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("updates")
        ax.set_ylabel("two-root validation exact match (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("two roots, by where the steps computed x1")
        ax.grid(alpha=0.3)
        ax.legend(handles=legend, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Quadratic equations: greedy answer segment, validation equations")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(quadratic_table(runs))
    if by_update:
        print("\n" + by_x1_table(runs))
    if args.seed_runs:
        print("\nBy seed (seed 1: --runs, then --seed-runs in order):\n\n" + seeds_table([args.runs, *args.seed_runs]))
    print(f"wrote {args.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--runs", default="runs/ablation")
    c.add_argument("--out", default="docs/fig_valid_ppl.png")
    m = sub.add_parser("memory")
    m.add_argument("--path", required=True)
    m.add_argument("--data", default="data-bin/ptb")
    m.add_argument("--segments", type=int, default=200)
    m.add_argument("--out", default="docs/fig_memory.png")
    q = sub.add_parser("quadratic")
    q.add_argument("--runs", default="runs/quadratic12")
    q.add_argument("--out", default="docs/fig_quadratic.png")
    q.add_argument("--target", type=float, default=95.0, help="the dashed line, in %% (95: issue 12's target)")
    q.add_argument("--zoom", type=float, default=90.0, help="where the right panel's y axis starts, in %%")
    q.add_argument("--seed-runs", nargs="*", default=[],
                   help="the OUT of the same runs with SEED=2, 3, ...: a table by seed with Wilson intervals")
    args = p.parse_args()
    {"curves": plot_curves, "memory": plot_memory, "quadratic": plot_quadratic}[args.cmd](args)


if __name__ == "__main__":
    main()
