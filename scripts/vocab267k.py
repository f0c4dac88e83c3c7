"""The WikiText-103 vocabulary size on CPU: tarm_lm_wiki103 over a 267,735-word dictionary.

WikiText-103 itself cannot be downloaded here, so this generates a text with
exactly 267,735 word types (``<unk>`` among them, as in WikiText-103; Zipf
frequencies so the adaptive cutoffs 20000/60000 split it as on real text),
binarizes it with fairseq-preprocess (-> 267,744 types in dict.txt, as for
WikiText-103), trains ``--arch tarm_lm_wiki103`` for a few updates with
160-token segments and runs ``fairseq-eval-lm`` on its test split. Reports the
parameter count, seconds per update, eval tokens/s and each command's peak
memory (max RSS), next to fairseq's own ``transformer_lm_wiki103`` (same
layers, same tokens per update) trained the same way on the same data.

Usage: python scripts/vocab267k.py [--out runs/vocab267k] [--updates 6]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from lab import tool

N_TYPES = 267_735
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)")


def run_measured(cmd, log_path):
    """Run cmd in a fresh child; return (seconds, peak RSS in MiB, output)."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    secs = time.time() - t0
    out = p.stdout + p.stderr
    open(log_path, "w").write(out)
    if p.returncode != 0:
        sys.exit(f"vocab267k: error: {cmd[0]} failed, see {log_path}")
    rss_kb = int(re.findall(r"MAXRSS_KB (\d+)", out)[-1])
    return secs, rss_kb / 1024, out


def parse_train(out):
    """(parameter count, [train_inner records]) from a fairseq-train JSON log."""
    params = int(re.findall(r"num. shared model params: ([\d,]+)", out)[-1].replace(",", ""))
    return params, [json.loads(m) for m in re.findall(r"\| train_inner \| (\{.*\})", out)]


def write_text(raw, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(["<unk>"] + [f"w{i:06d}" for i in range(N_TYPES - 1)])
    zipf = 1.0 / np.arange(1, N_TYPES + 1)
    zipf /= zipf.sum()

    def lines(tokens, width=100):
        return "\n".join(" " + " ".join(tokens[i:i + width]) + " " for i in range(0, len(tokens), width)) + "\n"

    # train: every type once (so the dictionary has all of them) + a Zipf sample
    train = np.concatenate([words[rng.permutation(N_TYPES)], words[rng.choice(N_TYPES, 300_000, p=zipf)]])
    os.makedirs(raw, exist_ok=True)
    (open(os.path.join(raw, "wiki.train.tokens"), "w")).write(lines(list(train)))
    for split in ("valid", "test"):
        sample = words[rng.choice(N_TYPES, 8_000, p=zipf)]
        open(os.path.join(raw, f"wiki.{split}.tokens"), "w").write(lines(list(sample)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/vocab267k")
    p.add_argument("--updates", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=2, help="streams")
    p.add_argument("--bptt-segments", type=int, default=2)
    args = p.parse_args()
    raw, data = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin")
    write_text(raw)
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "prepare_wikitext103.sh"), data, raw],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, WORKERS="2"))
    from fairseq.data import Dictionary

    d = Dictionary.load(os.path.join(data, "dict.txt"))
    word_types = len([s for s in d.symbols[d.nspecial:] if not s.startswith("madeupword")]) + 1  # + <unk>
    assert word_types == N_TYPES, word_types

    common = [data, "--user-dir", os.path.join(ROOT, "tarm_plugin"), "--task", "tarm_language_modeling",
              "--segment-length", "160", "--cpu", "--num-workers", "0"]
    save = os.path.join(args.out, "checkpoints")
    train = [tool("fairseq-train"), *common, "--arch", "tarm_lm_wiki103", "--tokens-per-sample", "160",
             "--bptt-segments", str(args.bptt_segments), "--batch-size", str(args.batch_size),
             "--num-memory-tokens", "10", "--memory-ema-alpha", "0.2", "--criterion", "tarm_lm_loss",
             "--ddp-backend", "legacy_ddp", "--optimizer", "adam", "--lr", "2.5e-4", "--clip-norm", "0.25",
             "--max-update", str(args.updates), "--disable-validation", "--save-dir", save,
             "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1", "--no-progress-bar"]
    t_train, rss_train, out = run_measured(train, os.path.join(args.out, "train.log"))
    params, recs = parse_train(out)
    ups = [float(r["ups"]) for r in recs]
    losses = [float(r["loss"]) for r in recs]
    evaluate = [tool("fairseq-eval-lm"), *common, "--batch-size", "2", "--gen-subset", "test",
                "--path", os.path.join(save, "checkpoint_last.pt")]
    t_eval, rss_eval, out = run_measured(evaluate, os.path.join(args.out, "eval.log"))
    n_eval = int(re.findall(r"Evaluated ([\d,]+) tokens", out)[-1].replace(",", ""))
    eval_tps = float(re.findall(r"\(([\d.]+) tokens/s\)", out)[-1])
    ppl = float(re.findall(r"Perplexity: ([\d.]+)", out)[-1])
    result = {
        "dictionary_types": len(d), "word_types": word_types, "parameters": params,
        "train_tokens_per_update": args.batch_size * args.bptt_segments * 160,
        "updates": args.updates, "train_losses": losses,
        # the first update includes start-up work: take the median of the others
        "seconds_per_update": round(1 / float(np.median(ups[1:] or ups)), 2),
        "train_peak_rss_mib": round(rss_train), "train_seconds_total": round(t_train, 1),
        "eval_tokens": n_eval, "eval_tokens_per_s": eval_tps, "eval_ppl": ppl,
        "eval_peak_rss_mib": round(rss_eval), "eval_seconds_total": round(t_eval, 1),
    }
    # the same vocabulary through fairseq's own transformer_lm_wiki103 (adaptive input,
    # adaptive_loss), same tokens per update, as a reference for loss scale, speed, memory
    ref_cmd = [tool("fairseq-train"), data, "--task", "language_modeling", "--arch", "transformer_lm_wiki103",
               "--decoder-layers", "16", "--decoder-embed-dim", "410", "--decoder-ffn-embed-dim", "2100",
               "--decoder-attention-heads", "10", "--dropout", "0.1", "--tokens-per-sample", "160",
               "--batch-size", str(args.batch_size * args.bptt_segments), "--criterion", "adaptive_loss",
               "--ddp-backend", "legacy_ddp", "--optimizer", "adam", "--lr", "2.5e-4", "--clip-norm", "0.25",
               "--max-update", str(args.updates), "--disable-validation", "--no-save", "--cpu",
               "--num-workers", "0", "--log-format", "json", "--log-interval", "1", "--no-progress-bar"]
    t_ref, rss_ref, out = run_measured(ref_cmd, os.path.join(args.out, "fairseq_transformer_lm.log"))
    ref_params, recs = parse_train(out)
    result["fairseq_transformer_lm_wiki103"] = {
        "parameters": ref_params,
        "train_losses": [float(r["loss"]) for r in recs],
        "seconds_per_update": round(1 / float(np.median([float(r["ups"]) for r in recs][1:])), 2),
        "train_peak_rss_mib": round(rss_ref),
    }
    json.dump(result, open(os.path.join(args.out, "result.json"), "w"), indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
