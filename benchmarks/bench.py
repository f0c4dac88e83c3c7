"""Speed and memory of tarm_lm next to fairseq's transformer_lm, measured side by side.

All numbers are ratios or rates measured in one run on the machine it runs on
(nothing else should be running). Sections:

  train   training tokens/s (forward + backward + Adam step) of fairseq's
          transformer_lm and of tarm_lm (m = 0, RMT a = 1, TARM a = 0.2, the
          associative memory) at the same size and segment length, interleaved
          rounds, median; targets: overhead <= 2m/L + 5%, EMA (a=0.2 vs a=1)
          within 2%, assoc's time per token <= 1.3x RMT's
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
  gather  2 gloo processes: a data-parallel training step against the
          carried-memory all-gather for rank 0's checkpoints, i.e. the cost per
          update of gathering after every step (today's behaviour; the JSON's
          "before") or only where a checkpoint may follow (a schedule not
          adopted; "after", --save-interval-updates 1000)
  generation  greedy generation tokens/s for 512..8k new tokens, batch 1:
          tarm's generate (segment by segment with memory) against fairseq's
          transformer_lm decoding incrementally (its cache grows), interleaved,
          median; target: tarm flat within 10%
  bptt    deep BPTT: a training step on 2 streams x k segments (k = 1..16) of
          tarm_lm_wiki103's layers, with and without --checkpoint-segments,
          each in a fresh process: time per token, peak RSS growth, bytes
          saved for backward; targets (k = 16 with the flag against k = 1
          without): peak memory <= 1.5x, time per token <= 1.4x

Usage: python benchmarks/bench.py [--out results/performance/performance.json] [--rounds 5]
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


def build(data, kind, m=M, alpha=1.0, tokens_per_sample=L, learned=False, memory_kind="tokens"):
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
        argv += ["--memory-kind", memory_kind]
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
        "assoc": ("tarm", {"m": M, "memory_kind": "assoc"}),
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
        "assoc_time_vs_rmt": round(tps["rmt_a1"] / tps["assoc"], 3),
        "assoc_time_vs_rmt_target": 1.3,
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


def _gather_rank(rank, data, port, steps, gathers, out_path):
    """One of 2 gloo processes: time a data-parallel training step of the bench
    model and the carried-memory all-gather, interleaved; rank 0 writes the times."""
    import torch.distributed as dist
    from fairseq.distributed import LegacyDistributedDataParallel
    from fairseq.distributed import utils as dist_utils

    torch.set_num_threads(1)  # 2 processes on this machine's 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = build(data, "tarm", m=M, alpha=0.2)
    # fairseq's --ddp-backend legacy_ddp: all-reduce the gradients after backward
    ddp = LegacyDistributedDataParallel(model, dist_utils.get_data_parallel_group())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    src = torch.randint(4, VOCAB, (B, K * L), generator=g)
    tgt = torch.randint(4, VOCAB, (B, K * L), generator=g)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = ddp(src, reset=torch.zeros(B, dtype=torch.bool), memory_key="bench", segment_length=L)[0]
        torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1)).backward()
        ddp.all_reduce_grads()
        opt.step()

    def gather():
        dist.barrier()  # time the collective, not the other rank's lag
        return _timed(lambda: model.share_carried_memory("bench", B))

    step()
    gather()
    step_s, gather_s = [], []
    for _ in range(steps):
        dist.barrier()
        step_s.append(_timed(step))
        gather_s += [gather() for _ in range(gathers)]
    if rank == 0:
        shape = list(model._per_rank["bench"].shape)
        json.dump({"step": step_s, "gather": gather_s, "shape": shape}, open(out_path, "w"))
    dist.destroy_process_group()


def bench_gather(data, steps, gathers=20, save_interval_updates=1000):
    """Per-update cost of the carried-memory all-gather, 2 gloo processes: "before", after
    every training step (what the task does); "after", only at the updates a checkpoint may
    follow (2 per --save-interval-updates: the save and the one after it, plus one per epoch
    end), a schedule measured and not adopted. The keys keep their names for the committed JSON."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "gather.json")
        mp.spawn(_gather_rank, args=(data, port, steps, gathers, out_path), nprocs=2)
        t = json.load(open(out_path))
    step, gather = statistics.median(t["step"]), statistics.median(t["gather"])
    after = step + gather * 2 / save_interval_updates
    return {"setup": f"2 gloo processes x 1 thread, tarm a=0.2, B={B} per process, k={K}, L={L}, m={M}; "
                     f"training step = forward, backward, legacy_ddp gradient all-reduce, Adam; "
                     f"median of {steps} steps and {steps * gathers} gathers, interleaved",
            "gathered_shape": t["shape"],
            "step_seconds": round(step, 4), "gather_seconds": round(gather, 6),
            "before_seconds_per_update": round(step + gather, 4),
            f"after_seconds_per_update_save_interval_updates_{save_interval_updates}": round(after, 4),
            "gather_share_before": round(gather / (step + gather), 5),
            "gather_share_after": round(gather * 2 / save_interval_updates / after, 7)}


def greedy_transformer_lm(model, inputs, max_new_tokens):
    """fairseq's transformer_lm decoding greedily with its incremental state (keys and
    values cached), the same token choice as tarm's generate: never <pad>, never stops."""
    state, tokens, pad = {}, inputs, model.decoder.padding_idx
    for _ in range(max_new_tokens):
        logits = model.decoder(tokens, incremental_state=state)[0][:, -1:]
        lp = model.get_normalized_probs((logits, None), log_probs=True)[:, 0].float()
        lp[:, pad] = float("-inf")
        tokens = torch.cat([tokens, lp.argmax(dim=-1, keepdim=True)], dim=1)
    return tokens[:, inputs.size(1):]


def bench_generation(data, lengths, rounds, repeat_max_s=60.0):
    """Greedy generation tokens/s, batch 1, from </s>: tarm (segment by segment with
    memory, each segment decoded incrementally) against fairseq's transformer_lm with
    its incremental decoding (its cache grows with the text), interleaved rounds,
    median. Also per second of this process's CPU time: one thread, so the rate that
    other work on a shared machine changes least. A run of over ``repeat_max_s`` CPU
    seconds (transformer_lm's longest) is not repeated, to keep the section to minutes."""
    from tarm_plugin.generation import generate

    models = {"tarm": build(data, "tarm", m=M, alpha=0.2).eval(),
              "transformer_lm": build(data, "transformer_lm", tokens_per_sample=max(lengths) + 1).eval()}
    run = {"tarm": generate, "transformer_lm": greedy_transformer_lm}
    start = torch.tensor([[2]])  # </s>, the first input of a stream
    with torch.no_grad():
        for name in models:  # warm up
            run[name](models[name], start, 2 * L)
        wall = {(name, n): [] for n in lengths for name in models}
        cpu = {key: [] for key in wall}
        once = set()
        for _ in range(rounds):
            for n in lengths:
                for name, model in models.items():
                    if (name, n) in once:
                        continue
                    c0 = time.process_time()
                    secs = _timed(lambda: run[name](model, start, n))
                    cpu_secs = time.process_time() - c0
                    if cpu_secs > repeat_max_s:
                        once.add((name, n))
                    wall[(name, n)].append(n / secs)
                    cpu[(name, n)].append(n / cpu_secs)
                    print(name, n, round(wall[(name, n)][-1]), round(cpu[(name, n)][-1]), flush=True)
    first, last = min(lengths), max(lengths)
    out = {"setup": f"4 layers, 256 dim, 4 heads, FFN 1024, vocab {VOCAB}, batch 1, greedy; tarm L={L}, m={M}, "
                    f"a=0.2; transformer_lm --tokens-per-sample {last + 1}; median of {rounds} rounds, "
                    f"a run over {repeat_max_s:.0f} CPU seconds only once",
           "runs": {f"{name}_{n}": len(r) for (name, n), r in wall.items()},
           "target": f"tarm within 10% from {first} to {last} new tokens"}
    # the best run too: other work only ever slows a run down
    for label, rates, pick in (("tokens_per_s", wall, statistics.median), ("tokens_per_cpu_s", cpu, statistics.median),
                               ("tokens_per_cpu_s_best", cpu, max)):
        tps = {f"{name}_{n}": round(pick(r)) for (name, n), r in rates.items()}
        out[label] = tps
        out[label + "_last_over_first"] = {name: round(tps[f"{name}_{last}"] / tps[f"{name}_{first}"], 3)
                                           for name in models}
    out["tokens_per_cpu_s_runs"] = {f"{name}_{n}": [round(x) for x in r] for (name, n), r in cpu.items()}
    return out


# bptt: tarm_lm_wiki103's layers (16 x 410, 10 heads, FFN 2100, adaptive input and
# softmax, tied) over the bench's 10k words, so its cutoffs are cut to fit
BPTT_CUTOFFS, BPTT_L, BPTT_M, BPTT_B = "2000,6000", 160, 10, 2


def _status_mib(field):
    """A memory field of this process's own /proc/self/status (VmRSS, VmHWM), in MiB."""
    kb = int(next(line for line in open("/proc/self/status") if line.startswith(field + ":")).split()[1])
    return kb / 1024


def one_bptt(data, k, checkpoint_segments, layers, steps):
    """In this (fresh) process: training steps (forward, loss, backward, Adam) on
    BPTT_B streams x k segments; print time per token, the peak RSS growth over
    the RSS once the model and optimizer are built, and the bytes autograd keeps
    for the backward pass (in the model's forward, and in the loss)."""
    import contextlib

    import tarm_plugin  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from tarm_plugin.scoring import token_nll

    argv = [data, "--task", "tarm_language_modeling", "--arch", "tarm_lm_wiki103",
            "--criterion", "tarm_lm_loss", "--segment-length", str(BPTT_L),
            "--tokens-per-sample", str(BPTT_L), "--num-memory-tokens", str(BPTT_M),
            "--decoder-layers", str(layers), "--adaptive-input-cutoff", BPTT_CUTOFFS,
            "--adaptive-softmax-cutoff", BPTT_CUTOFFS, "--cpu"]
    argv += ["--checkpoint-segments"] if checkpoint_segments else []
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    # Zipf-distributed words (the dictionary is sorted by count, as a real one is), so
    # the adaptive softmax's head and tails see a text's share of the tokens
    g = torch.Generator().manual_seed(0)
    zipf = 1.0 / torch.arange(1, VOCAB - 4 + 1, dtype=torch.float)
    words = 4 + torch.multinomial(zipf, BPTT_B * (k * BPTT_L + 1), replacement=True, generator=g)
    src, tgt = words.view(BPTT_B, -1)[:, :-1], words.view(BPTT_B, -1)[:, 1:]
    pad = task.source_dictionary.pad()

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    phase, saved = ["model"], {"model": {}, "loss": {}}

    def pack(t):  # each storage once, parameters left out
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and not any(ptr in s for s in saved.values()):
            saved[phase[0]][ptr] = t.untyped_storage().nbytes()
        return t

    def step(count=False):
        opt.zero_grad(set_to_none=True)
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count else contextlib.nullcontext()
        with hooks:
            phase[0] = "model"
            out = model(src, reset=torch.zeros(BPTT_B, dtype=torch.bool), memory_key="bench",
                        segment_length=BPTT_L)
            phase[0] = "loss"
            loss = token_nll(model, out, tgt, pad).sum() / tgt.numel()
        loss.backward()
        opt.step()

    rss = _status_mib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak from here on
    step(count=True)  # also the warm-up (allocates the gradients and Adam's moments)
    secs = statistics.median(_timed(step) for _ in range(steps))
    mib = {name: sum(s.values()) / 2**20 for name, s in saved.items()}
    print(json.dumps({
        "seconds_per_token": secs / (BPTT_B * k * BPTT_L),
        "rss_after_build_mib": round(rss), "peak_rss_growth_mib": round(_status_mib("VmHWM") - rss),
        "params_mib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20),
        "saved_for_backward_mib": {"model": round(mib["model"], 1), "loss": round(mib["loss"], 1),
                                   "total": round(mib["model"] + mib["loss"], 1)}}))


def bench_bptt(data, ks, layers, steps):
    """Deep BPTT: time per token and peak memory of a training sample of k segments,
    with and without --checkpoint-segments, each in a fresh process; ratios to
    k = 1 without it. Targets: k = 16 with the flag within 1.5x the peak memory
    and 1.4x the time per token."""
    runs = {}
    for k in ks:
        for flag in (False, True):
            name = f"k{k}" + ("_checkpoint_segments" if flag else "")
            p = subprocess.run([sys.executable, __file__, "--one-bptt", str(k), str(int(flag)), "--data", data,
                                "--bptt-layers", str(layers), "--steps", str(steps)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                runs[name] = {"failed": p.stderr.strip().splitlines()[-1:]}
            else:
                runs[name] = json.loads(p.stdout.strip().splitlines()[-1])
            print(name, runs[name], flush=True)
    base = runs.get(f"k{min(ks)}", {})
    for r in runs.values():
        if "failed" in r or "failed" in base:
            continue
        r["time_per_token_ratio"] = round(r["seconds_per_token"] / base["seconds_per_token"], 3)
        r["peak_rss_growth_ratio"] = round(r["peak_rss_growth_mib"] / base["peak_rss_growth_mib"], 3)
        r["saved_for_backward_ratio"] = round(r["saved_for_backward_mib"]["total"]
                                              / base["saved_for_backward_mib"]["total"], 3)
        r["seconds_per_token"] = round(r["seconds_per_token"], 6)
    return {"setup": f"tarm_lm_wiki103 layers ({layers} x 410, 10 heads, FFN 2100), adaptive input and softmax "
                     f"over {VOCAB} words (cutoffs {BPTT_CUTOFFS}, Zipf-distributed tokens), "
                     f"B={BPTT_B} streams x k segments of L={BPTT_L}, m={BPTT_M}, a=1; forward, loss, "
                     f"backward, Adam step; median of {steps} steps after one; ratios to k={min(ks)} "
                     f"without --checkpoint-segments; {torch.get_num_threads()} threads",
            "runs": runs,
            "target": "k=16 with --checkpoint-segments: peak RSS growth <= 1.5x, time per token <= 1.4x"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/performance/performance.json")
    p.add_argument("--data", default="runs/bench_dict")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--full-attention-max", type=int, default=8192)
    p.add_argument("--gen-lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--gen-rounds", type=int, default=3)
    p.add_argument("--bptt-ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--bptt-layers", type=int, default=16)
    p.add_argument("--sections", nargs="+",
                   default=["train", "stats", "mfu", "long", "gather", "generation", "bptt"])
    p.add_argument("--one-long", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    p.add_argument("--one-bptt", nargs=2, type=int, metavar=("K", "CHECKPOINT_SEGMENTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = make_dict_dir(args.data)
    if args.one_long:
        return one_long(data, args.one_long[0], int(args.one_long[1]))
    if args.one_bptt:
        return one_bptt(data, args.one_bptt[0], bool(args.one_bptt[1]), args.bptt_layers, args.steps)
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
    if "gather" in args.sections:
        result["gather"] = bench_gather(data, args.steps * 2)
        print(json.dumps(result["gather"], indent=1), flush=True)
    if "generation" in args.sections:
        result["generation"] = bench_generation(data, args.gen_lengths, args.gen_rounds)
        print(json.dumps(result["generation"], indent=1), flush=True)
    if "bptt" in args.sections:
        result["bptt"] = bench_bptt(data, args.bptt_ks, args.bptt_layers, args.steps)
        print(json.dumps(result["bptt"], indent=1), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(result, open(args.out, "w"), indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
