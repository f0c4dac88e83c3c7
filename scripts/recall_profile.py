"""Where the recall curriculum's memories change: a per-segment profile of each finished
run's final model (docs/recall.md, "What the memory does between the fact and the question").

Every run in ``--out``/runs (``scripts/recall.py --experiment curriculum``) reads its
test split at distance D with the last stage's checkpoint: the facts are in segment 1,
D filler segments follow, the questions are in segment D + 2 and read E_{D+1}. By segment:

  change  ||E_t - E_{t-1}|| / ||E_{t-1}||, per slot, mean over slots and samples
          (E_0 the initial memory): how much segment t moved the memory passed on
  kept    cos(E_t, E_1), per slot: how much of the memory as it was after the facts
          segment is still there when the question reads it (t = D + 1)
  gate    mean g_t of a --memory-gate run (for a fixed rate a it is a)

    python scripts/recall_profile.py --out runs/recall_curriculum --distances 16 64 \\
        --md results/recall_curriculum/profile.md
"""

import argparse
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recall  # noqa: E402
from lab import command_line, load_checkpoint  # noqa: E402
from recall_data import stage_data_name  # noqa: E402


def profile(checkpoint, data_dir, splits, batch_size=100):
    """{label: {'change': [per segment t = 1..], 'kept': [...], 'gate': [...] or None,
    'samples': n}} for each split of ``splits`` ({label: split name}), the checkpoint loaded
    once; None for a model without memory."""
    import torch

    torch.set_num_threads(1)
    model, task = load_checkpoint(checkpoint, data_dir, batch_size)
    if model.memory.num_tokens == 0:
        return None  # no memory to profile
    if not model.memory.token_slots:  # the profile measures token memory slots
        print(f"recall_profile: {checkpoint}: {type(model.memory).__name__} is not token memory; skipped",
              file=sys.stderr)
        return None
    profiles = {}
    for label, split in splits.items():
        task.load_dataset(split)
        sums, n = {}, 0
        with torch.no_grad():
            for sample in task.get_batch_iterator(task.dataset(split)).next_epoch_itr(shuffle=False):
                _, extra = model(**sample["net_input"])
                E = [extra["read_memory"]] + list(extra["ema_memory"])  # E_0 .. E_T, each [B, m, d]
                change = [((b - a).norm(dim=-1) / a.norm(dim=-1)).mean(dim=1) for a, b in zip(E, E[1:])]
                kept = [torch.cosine_similarity(e, E[1], dim=-1).mean(dim=1) for e in E[1:]]
                gates = [g.mean(dim=(1, 2)) for g in extra["memory_gates"]]
                for name, rows in (("change", change), ("kept", kept), ("gate", gates)):
                    if rows:
                        got = torch.stack(rows, dim=1).sum(dim=0)  # [T]
                        sums[name] = got if name not in sums else sums[name] + got
                n += sample["net_input"]["src_tokens"].size(0)
        out = {k: (v / n).tolist() for k, v in sums.items()}
        out.setdefault("gate", None)
        out["samples"] = n
        profiles[label] = out
    return profiles


def run_profiles(out_dir, distances):
    """[{setting, seed, D: {profile}}] for every finished curriculum run in out_dir."""
    rows = []
    for result_path in sorted(glob.glob(os.path.join(out_dir, "runs", "curriculum_*", "result.json"))):
        result = json.load(open(result_path))
        last = result["curriculum"]["curriculum"][-1]
        checkpoint = os.path.join(os.path.dirname(result_path), f"stage{last}", "checkpoint_last.pt")
        # the last stage's data-bin as recall.py built it (read, never rebuilt here)
        data_dir = os.path.join(out_dir, "data", stage_data_name(last, result["facts"]))
        splits = json.load(open(os.path.join(data_dir, "recall.json")))["splits"]
        missing = [d for d in distances if str(d) not in splits]
        if missing:
            sys.exit(f"recall_profile: error: --distances {missing} not among the test distances of "
                     f"{data_dir} ({', '.join(splits)})")
        profiles = profile(checkpoint, data_dir, {d: splits[str(d)] for d in distances})
        if profiles is None:
            continue
        rows.append({"setting": result["setting"], "seed": result["seed"], "test": result["test"], **profiles})
        print(f"{result['setting']} seed {result['seed']}: done", file=sys.stderr, flush=True)
    return rows


def mean_sd(values, digits=3):
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def markdown(rows, distances, order):
    """One table per D: per setting (mean +- std over seeds) the change on the facts segment,
    per filler segment, kept at the question, the gate on facts / filler, and accuracy."""
    out = []
    for d in distances:
        out += [f"### D = {d}: memory change by segment (t = 1 the facts, t = 2..{d + 1} filler; "
                f"the question reads E_{d + 1}); mean +- std over seeds\n",
                "| setting | seeds | change, facts | change per filler segment | kept at the question "
                "cos(E_{D+1}, E_1) | gate, facts | gate, filler | per-fact accuracy % |",
                "|---|---|---|---|---|---|---|---|"]
        for setting in order:
            runs = [r for r in rows if r["setting"] == setting]
            if not runs:
                continue
            p = [r[d] for r in runs]
            gate = all(x["gate"] for x in p)
            out.append(
                f"| {setting} | {len(runs)} | {mean_sd([x['change'][0] for x in p])} | "
                f"{mean_sd([statistics.mean(x['change'][1:d + 1]) for x in p])} | "
                f"{mean_sd([x['kept'][d] for x in p])} | "
                f"{mean_sd([x['gate'][0] for x in p]) if gate else ''} | "
                f"{mean_sd([statistics.mean(x['gate'][1:d + 1]) for x in p]) if gate else ''} | "
                f"{mean_sd([100 * r['test'][str(d)]['fact_acc'] for r in runs], 1)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/recall_curriculum", help="scripts/recall.py's --out")
    p.add_argument("--distances", nargs="+", type=int, default=[16, 64],
                   help="test distances to profile (among the runs' --curriculum-test)")
    p.add_argument("--md", help="also write the tables (and the command) here")
    p.add_argument("--json", help="also write the per-run profiles here")
    args = p.parse_args(argv)
    rows = run_profiles(args.out, args.distances)
    if not rows:
        sys.exit(f"recall_profile: error: no finished curriculum runs in {args.out}/runs")
    order = [s for s in recall.SETTINGS if any(r["setting"] == s for r in rows)]
    md = markdown(rows, args.distances, order)
    print(md)
    command = command_line(__file__, argv)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"Command: `{command}`\n\n{md}")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
