"""The a-ablation on PTB: no memory, RMT (a=1), TARM (a=0.2/0.5/0.7), the learned
rate, several seeds; ``--write-input`` picks what the write positions hold
(``memory``, the default: the memory read, as in LM-RMT; ``learned``: the
first ablation's separately learned slots).

Every run trains the same model for the same number of updates on the same
segments, then ``fairseq-eval-lm`` scores the whole test split with the
checkpoint of best validation loss. Writes, under --out:
  <setting>_s<seed>/train.log   fairseq's JSON log (train_inner / valid lines)
  <setting>_s<seed>/eval.log    fairseq-eval-lm's output
  results.json                  every run's test/valid numbers
  results.md                    the table (mean +- std over seeds)

Usage: python scripts/ablate.py --data data-bin/ptb --out runs/ablation [--jobs 2] [--write-input learned]
"""

import argparse
import glob
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

import lab

M = 8  # memory tokens of every memory setting
SETTINGS = {s: lab.SETTINGS[s] for s in ("no_memory", "rmt", "tarm_a0.7", "tarm_a0.5", "tarm_a0.2",
                                          "tarm_learned", "tarm_gate")}


def describe(name):
    """(m, a, rate) of a setting, as its result.json and table name them."""
    flags = SETTINGS[name]
    if not lab.has_memory(flags):
        return 0, 1.0, "fixed"
    alpha = float(flags[flags.index("--memory-ema-alpha") + 1])
    rate = "learned" if "--memory-ema-learned" in flags else "gate" if "--memory-gate" in flags else "fixed"
    return M, alpha, rate

# one small model, equal for every setting (chosen so one run takes ~10 min on one CPU core);
# scripts/main.sh and examples/ptb/tarm_ptb.yaml train the tarm_a0.2 setting of it
# (tests/test_scripts.py checks that the three agree)
MODEL = ("--decoder-layers 2 --decoder-embed-dim 128 --decoder-ffn-embed-dim 512 "
         "--decoder-attention-heads 4 --dropout 0.1 --tokens-per-sample 32").split()
TASK = "--segment-length 32".split()


def train_cmd(args, run_dir, name, seed):
    return lab.train_command(
        args.data, run_dir, seed, *TASK, *MODEL,
        "--bptt-segments", str(args.bptt_segments), "--batch-size", str(args.batch_size),
        *(["--checkpoint-segments"] if args.checkpoint_segments else []),
        *lab.setting_flags(SETTINGS[name], M), "--memory-write-input", args.write_input,
        *([] if args.memory_dropout is None else ["--memory-dropout", str(args.memory_dropout)]),
        "--lr", str(args.lr), "--lr-scheduler", "polynomial_decay", "--warmup-updates", "100",
        "--total-num-update", str(args.max_update), "--max-update", str(args.max_update), "--clip-norm", "0.25",
        "--validate-interval-updates", str(args.valid_every), "--save-interval-updates",
        str(args.valid_every), "--keep-interval-updates", "1", user_dir=args.user_dir)


def eval_cmd(args, run_dir):
    return lab.eval_command(args.data, os.path.join(run_dir, "checkpoint_best.pt"), "test",
                            "--segment-length", "32", batch_size=16, user_dir=args.user_dir)


parse_valid = lab.valid_curve  # [(num_updates, validation loss)] of a fairseq JSON log


def parse_rates(log_path, stat="rate"):
    """The last logged learned averaging rate (``stat="rate"``) or gate (``"gate"``)
    {mean, min, max}; empty if the log has none (a fixed a)."""
    last = {}
    for rec in lab.log_records(log_path, "train_inner", "train"):
        got = {k: float(rec[f"{p}mem_{stat}_{k}"]) for k in ("mean", "min", "max")
               for p in ("", "train_") if f"{p}mem_{stat}_{k}" in rec}
        last = got or last
    return last


def one_run(args, name, seed):
    m, alpha, rate = describe(name)
    run_dir = os.path.join(args.out, f"{name}_s{seed}")
    os.makedirs(run_dir, exist_ok=True)
    if args.force:  # redo from scratch: fairseq-train would resume from the old checkpoint_last.pt
        for f in glob.glob(os.path.join(run_dir, "checkpoint*.pt")) + [
                os.path.join(run_dir, f) for f in ("train.log", "eval.log", "result.json")]:
            if os.path.exists(f):
                os.remove(f)
    result = lab.load_result(run_dir)
    if result is not None:
        return result
    # a stopped run continues from its checkpoint_last.pt, its log appended to; a trained one
    # (its evaluation cut) is not started again: fairseq would train one update more
    lab.train_unless_done(train_cmd(args, run_dir, name, seed), run_dir, args.max_update,
                          os.path.join(run_dir, "train.log"), threads=args.threads, who="ablate")
    test = lab.eval_logged(eval_cmd(args, run_dir), os.path.join(run_dir, "eval.log"), threads=args.threads,
                           who="ablate")
    test_loss, test_ppl, n_tokens = test["loss_bits"], test["ppl_printed"], test["tokens"]
    valid = parse_valid(os.path.join(run_dir, "train.log"))
    result = {"setting": name, "seed": seed, "num_memory_tokens": m, "alpha": alpha, "rate": rate,
              "write_input": args.write_input, "memory_dropout": args.memory_dropout,
              "bptt_segments": args.bptt_segments, "batch_size": args.batch_size,
              "checkpoint_segments": args.checkpoint_segments,
              "test_loss": test_loss, "test_ppl": test_ppl, "test_tokens": n_tokens,
              "valid": valid, "best_valid_ppl": 2 ** min(v for _, v in valid)}
    rates = parse_rates(os.path.join(run_dir, "train.log"))
    if rates:
        result["learned_rate"] = rates  # the last logged mean/min/max of sigmoid(b)
    gates = parse_rates(os.path.join(run_dir, "train.log"), "gate")
    if gates:
        result["gate"] = gates  # the last logged mean/min/max of g_t
    lab.save_result(run_dir, result)
    print(f"{name} seed {seed}: test ppl {test_ppl:.2f}", flush=True)
    return result


def table(results, settings):
    lines = ["| setting | m | a | test PPL (mean +- std) | seeds | best valid PPL | valid-loss seed spread | valid-loss rises |",
             "|---|---|---|---|---|---|---|---|"]
    for name in settings:
        runs = [r for r in results if r["setting"] == name]
        if not runs:
            continue
        ppl = [r["test_ppl"] for r in runs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else float("nan")
        best = statistics.mean(r["best_valid_ppl"] for r in runs)
        # stability: std across seeds of the validation loss at each evaluation, averaged
        # over evaluations; and how often validation loss went up between evaluations
        curves = [[v for _, v in r["valid"]] for r in runs]
        n = min(len(c) for c in curves)
        spread = statistics.mean(statistics.stdev(c[i] for c in curves) for i in range(n)) if len(runs) > 1 else float("nan")
        rises = statistics.mean(sum(b > a for a, b in zip(c, c[1:])) for c in curves)
        m, a, rate = describe(name)
        a = f"{rate} from {a}" if rate in ("learned", "gate") else a
        lines.append(f"| {name} | {m} | {a} | {statistics.mean(ppl):.2f} +- {sd:.2f} | {len(runs)} | "
                     f"{best:.2f} | {spread:.4f} | {rises:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data-bin/ptb")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--user-dir", default=lab.PLUGIN)
    p.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if s != "tarm_gate"], choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--max-update", type=int, default=1200)
    p.add_argument("--valid-every", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    p.add_argument("--force", action="store_true",
                   help="redo every run from scratch (its checkpoints, logs and result deleted first)")
    p.add_argument("--bptt-segments", type=int, default=4, help="k, segments per training sample")
    p.add_argument("--batch-size", type=int, default=16,
                   help="streams per update (keep k x batch size fixed to compare k at equal tokens per update)")
    p.add_argument("--checkpoint-segments", action="store_true",
                   help="recompute each segment in the backward pass (--checkpoint-segments)")
    p.add_argument("--write-input", default="memory", choices=["memory", "learned"],
                   help="--memory-write-input of every memory run")
    p.add_argument("--memory-dropout", type=float, default=None,
                   help="--memory-dropout of every run (default: the model's, = --dropout)")
    return p.parse_args(argv)


def main():
    args = parse_args()
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        sys.exit(f"ablate: error: --data {args.data} has no dict.txt (run scripts/prepare_ptb.sh)")
    os.makedirs(args.out, exist_ok=True)
    jobs = [(name, seed) for seed in args.seeds for name in args.settings]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: one_run(args, *job), jobs))
    lab.save_json(os.path.join(args.out, "results.json"), results)
    md = table(results, args.settings)
    cmd = lab.command_line(__file__)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"Command: `{cmd}`\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
