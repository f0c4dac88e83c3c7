"""The quadratic experiment's figure and tables (scripts/quadratic.py report), from its run
directories (<runs>/<setting>/{train.log,test_stable.json,test.json}): validation exact match
over updates per setting, and the test table (overall and by kind) per phase; with `quadratic.py
valid`'s results in them (valid_update<N>.json), also the validation two-root exact match by the
segment in which the steps computed x1, over updates (panel and table); with --seed-runs (the
OUT of the same runs with other seeds), a table by seed with Wilson 95% intervals.

    python scripts/quadratic.py report --runs runs/quadratic23 --seed-runs runs/quadratic23_s2 \
        runs/quadratic23_s3 --out /tmp/q.png
"""

import glob
import json
import os
import re
import sys

import lab
from lab import wilson_interval

QUADRATIC_ORDER = ["no_memory", "rmt", "tarm_a0.5", "tarm_a0.2", "tarm_learned", "tarm_gate"]


def valid_accuracy(log_path):
    """[(num_updates, valid exact match %)] from a fairseq JSON log."""
    return lab.valid_curve(log_path, key="valid_accuracy")


def run_conf(run_dir):
    """A run's run.conf ("MAX_UPDATE=.. DECAY_UPDATES=.. VALID_EVERY=.. SEED=.. DATA=.. FLAGS=..") as
    {name: value}, FLAGS the rest of the line; {} without one."""
    path = os.path.join(run_dir, "run.conf")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        schedule, _, flags = f.read().strip().partition(" FLAGS=")
    return {**dict(kv.split("=", 1) for kv in schedule.split()), "FLAGS": flags}


def stable_end(run_dir):
    """The update at which the decay phase (scripts/quadratic.py run) starts: MAX_UPDATE of the run's
    run.conf; without one (runs before it existed), the log's first resume."""
    max_update = run_conf(run_dir).get("MAX_UPDATE")
    if max_update:
        return int(max_update)
    with open(os.path.join(run_dir, "train.log")) as f:
        resumes = [int(u) for u in re.findall(r"Loaded checkpoint .* @ (\d+) updates\)", f.read()) if int(u) > 0]
    return resumes[0] if resumes else None


KINDS = [("two_roots", "two roots"), ("double_root", "double root"), ("no_roots", "no real roots")]
WHERE_X1 = ["segment 4", "segments 3-4", "segment 3"]


def read_test(path):
    """The last JSON line of an eval_quadratic.py result, or None if absent or empty."""
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    return None


def run_phases(run):
    """[(phase, updates at its end, test result)] of one run directory: the
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
    """The run directories' names under a `quadratic.py run` OUT, in the canonical setting order."""
    names = os.listdir(runs_dir) if os.path.isdir(runs_dir) else []
    return sorted(names, key=lambda n: ((QUADRATIC_ORDER + [n]).index(n), n))


def interval(test):
    """'[lo, hi]': the Wilson 95% interval of a test exact match, in %."""
    n = test["samples"]
    lo, hi = wilson_interval(round(test["accuracy"] * n), n)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def run_seed(run_dir):
    """The SEED of a run's run.conf, None without one."""
    seed = run_conf(run_dir).get("SEED")
    return int(seed) if seed else None


def runs_by_seed(run_dirs, first_seed):
    """(setting, seed, run dir) of each run with a train.log under `quadratic.py run` OUTs, one OUT
    per seed: the seed as the run's run.conf records it, else first_seed, first_seed + 1, ... by place."""
    for place, runs_dir in enumerate(run_dirs, first_seed):
        for name in setting_names(runs_dir):
            run_dir = os.path.join(runs_dir, name)
            if os.path.isfile(os.path.join(run_dir, "train.log")):
                yield name, run_seed(run_dir) or place, run_dir


def seeds_table(run_dirs):
    """Markdown: per setting and seed (one `quadratic.py run` OUT per seed; the seed as its run.conf
    records it, else the OUT's place in the list), the test exact match with its Wilson 95% interval
    after the stable phase and at the end, the best validation exact match and the final test's
    two-root answers by where the steps computed x1; a phase not finished yet: "(running)", the
    updates and best validation so far."""
    lines = ["| setting | seed | updates | test EM after the stable phase | test EM [95% interval] | best valid EM | "
             "two roots: x1 read in " + " | ".join(WHERE_X1) + " |", "|---|---|---|---|---|---|" + "---|" * len(WHERE_X1)]
    for name, seed, run_dir in runs_by_seed(run_dirs, 1):
        stable, test = (read_test(os.path.join(run_dir, f)) for f in ("test_stable.json", "test.json"))
        curve = valid_accuracy(os.path.join(run_dir, "train.log"))
        x1 = test.get("two_roots_by_x1_segment", {}) if test else {}
        best = f"{max(a for _, a in curve):.1f}%" if curve else "-"  # so far, while running
        em = [f"{100 * t['accuracy']:.1f}% {interval(t)}" if t else "(running)" for t in (stable, test)]
        lines.append(f"| {name} | {seed} | {curve[-1][0] if curve else '-'} | {em[0]} | {em[1]} | {best} | "
                     + " | ".join(accuracy_cell(x1, w) for w in WHERE_X1) + " |")
    return "\n".join(lines)


SEED_STYLES = ["--", ":", "-."]


def seed_curves(run_dirs):
    """[(setting, seed, validation curve)] of the runs under the --seed-runs OUTs that have one."""
    found = [(name, seed, valid_accuracy(os.path.join(run_dir, "train.log")))
             for name, seed, run_dir in runs_by_seed(run_dirs, 2)]
    return [run for run in found if run[2]]


def quadratic_table(runs):
    """Markdown: per setting and phase (stable, then decay), the updates, best
    valid exact match up to then, test exact match of that best checkpoint, overall and by kind;
    then the two-root answers by the segment in which the steps computed x1."""
    lines = ["| setting | phase | updates | best valid EM | test EM [95% interval] | " + " | ".join(k for _, k in KINDS)
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
    """{update: eval_quadratic.py result} of `quadratic.py valid`'s valid_update<N>.json."""
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


def write(args):
    args.out = args.out or os.path.join(args.runs, "quadratic.png")
    plt = lab.pyplot()
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
        sys.exit(f"quadratic.py report: error: no runs (<setting>/train.log) in {args.runs}")
    # left: the whole curve; middle: its top, where a target such as 99.8% is told apart;
    # right (with `quadratic.py valid`'s results): the two-root answers by where x1 was computed
    by_update = any(run["by_update"] for run in runs.values())
    fig, axes = plt.subplots(1, 3 if by_update else 2, figsize=(18.5 if by_update else 11, 4.5))
    ends = {run["stable_end"] for run in runs.values() if run["curve"] and run["stable_end"] is not None}
    decays = sorted(u for u in ends if any(c[0] > u for r in runs.values() for c in r["curve"]))
    drawn = unshared_curves(runs)
    colours = {name: f"C{i}" for i, name in enumerate(drawn)}
    seeds = seed_curves(args.seed_runs)
    for ax, ylim in zip(axes, [(-2, 102), (args.zoom, 100.5)]):
        for name, curve in drawn.items():
            if curve:
                ax.plot(*zip(*curve), marker="o", ms=3, color=colours[name], label=name)
        for name, seed, curve in seeds:  # other seeds: the setting's colour, a line style per seed
            colour = colours.setdefault(name, f"C{len(colours)}")
            ax.plot(*zip(*curve), ls=SEED_STYLES[(seed - 2) % len(SEED_STYLES)], lw=1.2, color=colour,
                    label=f"{name}, seed {seed}")
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


def add_arguments(p):
    p.add_argument("--runs", default="runs/quadratic12", help="a `quadratic.py run` OUT")
    p.add_argument("--out", help="the figure (default: OUT/quadratic.png inside --runs, so that a report "
                   "never replaces a committed figure unless asked to)")
    p.add_argument("--target", type=float, default=95.0, help="the dashed line, in %% (95: issue 12's target)")
    p.add_argument("--zoom", type=float, default=90.0, help="where the middle panel's y axis starts, in %%")
    p.add_argument("--seed-runs", nargs="*", default=[],
                   help="the OUT of the same runs with --seed 2, 3, ...: a table by seed with Wilson intervals")
