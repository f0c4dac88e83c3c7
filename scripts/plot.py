"""The paper's figures from this project's runs (matplotlib, PNG).

  curves:  validation perplexity over updates per setting, mean over seeds
           with the min-max band (the paper's Figure 3), from the fairseq JSON
           logs that scripts/ablate.py wrote.
  memory:  one memory value over consecutive segments of the test stream, raw
           (M_t) vs averaged (E_t), from a trained checkpoint (the paper's
           Figure 2), plus the relative change per segment of each.
  (the quadratic experiment's figure: scripts/quadratic.py report)

Usage:
  python scripts/plot.py curves --runs runs/ablation --out docs/fig_valid_ppl.png
  python scripts/plot.py memory --path runs/ablation/tarm_a0.2_s1/checkpoint_best.pt \
      --data data-bin/ptb --out docs/fig_memory.png
"""

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import load_checkpoint, valid_curve as parse_valid  # noqa: E402


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--runs", default="runs/ablation")
    c.add_argument("--out", help="default: valid_ppl.png inside --runs")
    m = sub.add_parser("memory")
    m.add_argument("--path", required=True)
    m.add_argument("--data", default="data-bin/ptb")
    m.add_argument("--segments", type=int, default=200)
    m.add_argument("--out", help="default: memory.png beside the checkpoint")
    args = p.parse_args(argv)
    # a figure goes beside what it was drawn from unless --out says otherwise, never over docs/
    args.out = args.out or (os.path.join(args.runs, "valid_ppl.png") if args.cmd == "curves"
                            else os.path.join(os.path.dirname(args.path), "memory.png"))
    {"curves": plot_curves, "memory": plot_memory}[args.cmd](args)


if __name__ == "__main__":
    main()
