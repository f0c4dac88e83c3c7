"""Speed and memory of tarm_lm next to fairseq's transformer_lm, measured side by side.

All numbers are ratios or rates measured in one run on the machine it runs on
(nothing else should be running). Sections:

  train   training tokens/s (forward + backward + Adam step) of fairseq's
          transformer_lm and of tarm_lm (m = 0, RMT a = 1, TARM a = 0.2) at
          the same size and segment length, interleaved rounds, median;
          targets: overhead <= 2m/L + 5%, EMA (a=0.2 vs a=1) within 2%
  mfu     achieved FLOP/s of a tarm training step (torch's FLOP counter) over
          this machine's fp32 matmul peak (a 2048^3 matmul, best of 10)
  stats   cost of the memory statistics the criterion logs (mem_norm, mem_dM,
          mem_dE, learned rates): a training step with the criterion's
          memory_logs() against the same step without, interleaved, median;
          target: <= 1% of a step
  long    evaluation of one stream of 1k..64k tokens: tokens/s and peak RSS
          (each in a fresh process); tarm reads segment by segment with
          memory, transformer_lm attends over the whole stream at once
          (its context window grows with the stream)

Usage: python benchmarks/bench.py [--out docs/performance.json] [--rounds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZE = ["--decoder-layers", "4", "--decoder-embed-dim", "256", "--decoder-ffn-embed-dim", "1024",
        "--decoder-attention-heads", "4", "--dropout", "0.1"]
VOCAB, L, K, B, M = 10_000, 64, 4, 8, 8


def make_dict_dir(path):
    from fairseq.data import Dictionary

    if not os.path.exists(os.path.join(path, "dict.txt")):
        os.makedirs(path, exist_ok=True)
        d = Dictionary()
        for i in range(VOCAB - 4):
            d.add_symbol(f"w{i}", n=VOCAB - i)
        d.save(os.path.join(path, "dict.txt"))
    return path


def build(data, kind, m=M, alpha=1.0, tokens_per_sample=L, learned=False):
    import tarm_plugin  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if kind == "transformer_lm":
        argv = [data, "--task", "language_modeling", "--arch", "transformer_lm",
                "--tokens-per-sample", str(tokens_per_sample), "--decoder-input-dim", "256",
                "--decoder-output-dim", "256", "--criterion", "cross_entropy"]
    else:
        argv = [data, "--task", "tarm_language_modeling", "--arch", "tarm_lm",
                "--segment-length", str(L), "--tokens-per-sample", str(tokens_per_sample),
                "--num-memory-tokens", str(m), "--memory-ema-alpha", str(alpha), "--criterion", "tarm_lm_loss"]
        argv += ["--memory-ema-learned"] if learned else []
    args = options.parse_args_and_arch(options.get_training_parser(), argv + SIZE + ["--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task.build_model(cfg.model)


def train_step_fn(model, kind, with_stats=False):
    """A closure doing one training step on B streams x K segments x L tokens
    (``with_stats``: plus the criterion's memory statistics, as fairseq-train logs them)."""
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, VOCAB, (B, K * L), generator=g)
    tgt = torch.randint(4, VOCAB, (B, K * L), generator=g)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        if kind == "transformer_lm":  # the same tokens as independent segments of L
            logits = model(src.view(B * K, L))[0]
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
        else:
            net_output = model(src, reset=torch.zeros(B, dtype=torch.bool), memory_key="bench", segment_length=L)
            if with_stats:
                logs = TarmLmLoss.memory_logs(model, net_output)
                [float(v) for v in logs.values()]  # fairseq reads them as numbers: include the sync
            logits = net_output[0]
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
        loss.backward()
        opt.step()
    return step


def bench_train(data, rounds, steps):
    variants = {
        "transformer_lm": ("transformer_lm", {}),
        "tarm_m0": ("tarm", {"m": 0}),
        "rmt_a1": ("tarm", {"m": M, "alpha": 1.0}),
        "tarm_a0.2": ("tarm", {"m": M, "alpha": 0.2}),
    }
    fns = {name: train_step_fn(build(data, kind, **kw), kind) for name, (kind, kw) in variants.items()}
    for fn in fns.values():  # warm up
        for _ in range(2):
            fn()
    rates = {name: [] for name in fns}
    for _ in range(rounds):  # interleaved, so drift hits all variants alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(steps * B * K * L / (time.perf_counter() - t0))
    tps = {name: statistics.median(r) for name, r in rates.items()}
    base = tps["transformer_lm"]
    return {
        "setup": f"4 layers, 256 dim, 4 heads, FFN 1024, vocab {VOCAB}, B={B}, k={K}, L={L}, m={M}",
        "tokens_per_s": {k: round(v) for k, v in tps.items()},
        "ratio_to_transformer_lm": {k: round(v / base, 3) for k, v in tps.items()},
        "memory_overhead": round(1 - tps["rmt_a1"] / base, 3),
        "memory_overhead_target": round(2 * M / L + 0.05, 3),
        "ema_cost": round(1 - tps["tarm_a0.2"] / tps["rmt_a1"], 3),
        "ema_cost_target": 0.02,
    }


def bench_stats(data, rounds, steps):
    model = build(data, "tarm", m=M, alpha=0.5, learned=True)
    fns = {"without": train_step_fn(model, "tarm"), "with_stats": train_step_fn(model, "tarm", with_stats=True)}
    for fn in fns.values():
        fn()
    secs = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            secs[name].append(min(_timed(fn) for _ in range(steps)))
    t = {name: statistics.median(v) for name, v in secs.items()}
    # the statistics alone, on one step's outputs: a ratio that machine noise cannot swamp
    from tarm_plugin.criterions.tarm_lm_loss import TarmLmLoss

    src = torch.randint(4, VOCAB, (B, K * L))
    out = model(src, reset=torch.zeros(B, dtype=torch.bool), memory_key="bench", segment_length=L)
    call = statistics.median(_timed(lambda: [float(v) for v in TarmLmLoss.memory_logs(model, out).values()])
                             for _ in range(20))
    return {"setup": f"RMT/TARM train step, learned rate, B={B}, k={K}, L={L}, m={M}",
            "step_seconds": {k: round(v, 4) for k, v in t.items()},
            "stats_cost_step_vs_step": round(t["with_stats"] / t["without"] - 1, 4),
            "stats_call_seconds": round(call, 6),
            "stats_cost": round(call / t["without"], 5), "target": 0.01}


def matmul_peak(n=2048, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n ** 3 / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_mfu(data, steps):
    from torch.utils.flop_counter import FlopCounterMode

    model = build(data, "tarm", m=M, alpha=0.2)
    step = train_step_fn(model, "tarm")
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    secs = statistics.median(_timed(step) for _ in range(steps))
    peak = matmul_peak()
    return {"step_gflop": round(flops / 1e9, 2), "step_seconds": round(secs, 4),
            "achieved_gflop_s": round(flops / secs / 1e9, 1), "matmul_peak_gflop_s": round(peak / 1e9, 1),
            "mfu": round(flops / secs / peak, 3), "target": 0.5}


def one_long(data, kind, n_tokens):
    """In this (fresh) process: evaluate one stream of n_tokens; print tokens/s and peak RSS."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(4, VOCAB, (1, n_tokens), generator=g)
    with torch.no_grad():
        if kind == "transformer_lm":
            model = build(data, "transformer_lm", tokens_per_sample=n_tokens).eval()
            model(stream[:, :L])  # warm-up
            t0 = time.perf_counter()
            model(stream)
        else:
            model = build(data, "tarm", m=M, alpha=0.2).eval()
            model(stream[:, :L], memory_key="warm-up", segment_length=L)
            t0 = time.perf_counter()
            for i, seg in enumerate(stream.split(L, dim=1)):
                model(seg, reset=torch.tensor([i == 0]), memory_key="long", segment_length=L)
        secs = time.perf_counter() - t0
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, kept across exec)
    hwm_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"tokens_per_s": round(n_tokens / secs), "peak_rss_mib": round(hwm_kb / 1024)}))


def bench_long(data, lengths, full_attention_max):
    out = {}
    for kind in ("tarm", "transformer_lm"):
        for n in lengths:
            if kind == "transformer_lm" and n > full_attention_max:
                out[f"{kind}_{n}"] = {"skipped": f"full attention over {n} tokens: "
                                      f"{4 * 4 * n * n / 2**30:.0f} GiB of attention weights alone"}
                continue
            p = subprocess.run([sys.executable, __file__, "--one-long", kind, str(n), "--data", data],
                               capture_output=True, text=True)
            if p.returncode != 0:
                out[f"{kind}_{n}"] = {"failed": p.stderr.strip().splitlines()[-1:]}
            else:
                out[f"{kind}_{n}"] = json.loads(p.stdout.strip().splitlines()[-1])
            print(kind, n, out[f"{kind}_{n}"], flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/performance.json")
    p.add_argument("--data", default="runs/bench_dict")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--full-attention-max", type=int, default=8192)
    p.add_argument("--sections", nargs="+", default=["train", "stats", "mfu", "long"])
    p.add_argument("--one-long", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = make_dict_dir(args.data)
    if args.one_long:
        return one_long(data, args.one_long[0], int(args.one_long[1]))
    result = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads",
              "command": "python " + " ".join(sys.argv)}
    if "train" in args.sections:
        result["train"] = bench_train(data, args.rounds, args.steps)
        print(json.dumps(result["train"], indent=1), flush=True)
    if "stats" in args.sections:
        result["stats"] = bench_stats(data, args.rounds * 2, args.steps)
        print(json.dumps(result["stats"], indent=1), flush=True)
    if "mfu" in args.sections:
        result["mfu"] = bench_mfu(data, args.steps * 2)
        print(json.dumps(result["mfu"], indent=1), flush=True)
    if "long" in args.sections:
        result["long"] = bench_long(data, args.lengths, args.full_attention_max)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(result, open(args.out, "w"), indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
