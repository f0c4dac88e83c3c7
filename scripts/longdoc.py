"""Long documents: does the memory help where a document refers far back?

Each run trains one setting with one seed on a document corpus
(``scripts/prepare_longdoc.py``) with ``--sample-break-mode doc``: every batch
row reads whole documents, segment after segment, memory reset at each
document's start. Then ``fairseq-eval-lm --eval-segment-ppl`` scores the test
split and reports loss by depth into the document, in units of
``--segment-length`` tokens (``--eval-depth-unit``, so the 4x-context
reference, whose segments are 4 times longer, lines up): buckets 0, 1, 2-3,
4-7, ... segments since the document's start.

Settings (same model, data, tokens per update and updates for all):
  no_memory   m = 0, segments of L
  prefix      m learned tokens read by every segment, nothing carried (a = 0): the control
              that separates what carried content adds from what extra learned tokens add
  rmt         m memory tokens, a = 1 (RMT)
  tarm_a0.5   a = 0.5;  tarm_a0.2: a = 0.2
  tarm_gate   the content-dependent gate, starting at a = 0.5
  assoc       the associative memory (--memory-kind assoc), m memory tokens that write; any
              other kind in tarm_plugin/kinds/ likewise, by its name, with its defaults
  context4x   m = 0, segments of 4L (attention over 4x the context), 1 segment per sample

Each run also evaluates the validation split and records fairseq-train's own
last validation loss beside it (they must agree). Runs resume: fairseq-train
continues from the run's checkpoint_last.pt, and a run whose result.json
exists is skipped. Writes under --out:
  runs/<setting>_s<seed>/train.log, eval_test.log, eval_valid.log, result.json,
      eval_test_reset_memory.log (memory settings: the test split with E_0 read at every
      segment, --eval-reset-memory: how much the model relies on the carry)
  results.json, results.md (tables of every finished run under --out, mean +- std over
                            seeds: by depth, gains, by position within the segment, the
                            memory ablation, the checks), longdoc.png: scripts/longdoc_report.py

Usage: python scripts/longdoc.py --data data-bin/code --doc-separator '<doc>' --out runs/longdoc_code
           [--settings no_memory rmt ...] [--seeds 1 2 3] [--max-update 1200]
"""

import argparse
import os
import re
import sys
import time

import lab
import longdoc_report
import prepare_longdoc
from longdoc_report import deep_loss, deep_ppl

SETTINGS = {s: lab.SETTINGS[s] for s in ("no_memory", "prefix", "rmt", "tarm_a0.5", "tarm_a0.2", "tarm_gate", *lab.KINDS)}
lab.refuse_kind_names(["context4x"], "scripts/longdoc.py")
SETTINGS["context4x"] = lab.SETTINGS["no_memory"]  # m = 0, one segment of 4L per sample
RUN_FLAGS = ("data", "doc_separator", "segment_length", "bptt_segments", "batch_size", "layers", "dim",
             "ffn", "heads", "memory_tokens", "dropout", "lr", "warmup", "max_update", "checkpoint_segments")
CALIBRATION_FLAGS = ("validate_every", "keep_every")
# the data-bin counts by its name (``code``), not its path: the same runs are read from another
# checkout or machine, and by a path spelled otherwise (relative, absolute)
BY_NAME = ("data",)


def has_memory(setting):
    """A setting with memory tokens (no_memory and context4x set none)."""
    return lab.has_memory(SETTINGS[setting])


def settings_flags(args, setting):
    """(model/task flags, segment length) of a setting; tokens per sample are k*L for all
    (context4x: one segment of 4L, with k = 4)."""
    wide = setting == "context4x"
    L = args.segment_length * (4 if wide else 1)
    out = ["--segment-length", str(L), "--bptt-segments", str(1 if wide else args.bptt_segments)]
    if has_memory(setting) and args.checkpoint_segments:
        out += ["--checkpoint-segments"]
    if has_memory(setting) and args.memory_detach_every:
        out += ["--memory-detach-every", str(args.memory_detach_every)]
    return out + lab.setting_flags(SETTINGS[setting], args.memory_tokens), L


def train_cmd(args, run_dir, setting, seed):
    flags, _ = settings_flags(args, setting)
    sep = ["--doc-separator", args.doc_separator] if args.doc_separator else []
    return lab.train_command(
        args.data, run_dir, seed, "--sample-break-mode", "doc", *sep, *flags,
        "--decoder-layers", str(args.layers), "--decoder-embed-dim", str(args.dim),
        "--decoder-ffn-embed-dim", str(args.ffn), "--decoder-attention-heads", str(args.heads),
        "--share-decoder-input-output-embed", "--tokens-per-sample", str(4 * args.segment_length),
        "--dropout", str(args.dropout), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--lr-scheduler", "cosine", "--warmup-updates", str(args.warmup),
        "--warmup-init-lr", "1e-7", "--max-update", str(args.max_update), "--clip-norm", "0.25",
        # by default one validation, at the end (the runs are compared on the test split; each
        # costs minutes); a calibration validates every --validate-every updates
        "--validate-interval-updates", str(args.validate_every or args.max_update), "--validate-interval", "1000000",
        "--save-interval-updates", str(args.save_every), "--keep-interval-updates", "1",
        # --keep-every N: fairseq keeps the checkpoints of updates divisible by N besides the last
        *(["--keep-interval-updates-pattern", str(args.keep_every)] if args.keep_every else []))


def eval_cmd(args, run_dir, split, *flags, data=None, checkpoint="checkpoint_last.pt"):
    return lab.eval_command(data or args.data, os.path.join(run_dir, checkpoint), split, "--eval-segment-ppl",
                            "--eval-depth-unit", str(args.segment_length), *flags, batch_size=args.batch_size)


def test_flags(args, run_dir):
    """The test split's extras: token classes with the memory models' window (the same token
    sets for every setting, the 4x reference included), losses per document (bootstrap)."""
    return ["--eval-token-classes", "--eval-local-window", str(args.segment_length),
            "--eval-document-losses", os.path.join(run_dir, "docs_test.json")]


def horizon_data(args):
    """A data-bin of the test documents of --horizon-docs A B segments (A to B segments of L,
    in file order), the dictionary shared: the stated subset the memory horizon is measured on."""
    lo, hi = args.horizon_docs
    dest = os.path.join(args.out, f"horizon_bin_{lo}_{hi}")
    if os.path.exists(os.path.join(dest, "test.idx")):
        return dest
    d, docs = prepare_longdoc.documents(args.data, "test", args.doc_separator)
    chosen = [doc for doc in docs if lo <= -(-len(doc) // args.segment_length) <= hi]
    if len(chosen) < args.batch_size:
        raise SystemExit(f"longdoc: --horizon-docs {lo} {hi}: {len(chosen)} test documents, fewer than "
                         f"--batch-size {args.batch_size}")
    return prepare_longdoc.write_documents(dest, d, chosen, args.doc_separator, "test")


def memory_horizon(args, run_dir, result):
    """The horizon subset scored as carried (every setting) and, for settings that carry
    memory, with the memory built over only the K segments before each scored one
    (--eval-memory-horizon K). Checks that depths <= K equal the carried evaluation."""
    done = result.get("horizon", {})
    if not args.horizons or (done.get("horizons"), done.get("docs")) == (args.horizons, args.horizon_docs):
        return result
    data = horizon_data(args)
    carries = has_memory(result["setting"]) and result["setting"] != "prefix"
    out = {"horizons": args.horizons, "docs": args.horizon_docs, "K": {}}
    out["carried"] = evaluated(eval_cmd(args, run_dir, "test", data=data),
                               os.path.join(run_dir, "eval_horizon_carried.log"))
    for k in (args.horizons if carries else []):
        path = os.path.join(run_dir, f"eval_horizon_{k}.log")
        ev = evaluated(eval_cmd(args, run_dir, "test", "--eval-memory-horizon", str(k), data=data), path)
        same_tokens(path, ev, out["carried"])
        for row, ref in zip(ev["by_depth"], out["carried"]["by_depth"]):
            if int(row["depth"].split("-")[-1]) <= k and row != ref:
                raise SystemExit(f"longdoc: {path}: depth {row['depth']} <= K differs from the carried memory")
        out["K"][str(k)] = ev
    result["horizon"] = out
    lab.save_result(run_dir, result)
    return result


def memory_ablation(args, run_dir, result):
    """A memory setting's test split once more with E_0 read at every segment
    (--eval-reset-memory): how much the model relies on the carry (off its training distribution).
    Added to ``result`` (and its result.json) once; runs finished before it get it too."""
    if not has_memory(result["setting"]) or result["setting"] == "prefix" or "test_reset_memory" in result:
        return result
    path = os.path.join(run_dir, "eval_test_reset_memory.log")
    ev = evaluated(eval_cmd(args, run_dir, "test", "--eval-reset-memory"), path)
    same_tokens(path, ev, result["test"])
    n, bits = deep_loss(ev["by_depth"])
    result["test_reset_memory"] = dict(ev, deep_loss_bits=bits, deep_ppl=2 ** bits)
    lab.save_result(run_dir, result)
    return result


def evaluated(cmd, log_path):
    """eval-lm's totals and tables from ``cmd`` run into ``log_path``."""
    return lab.eval_logged(cmd, log_path, who="longdoc")


def same_tokens(path, ev, ref):
    """Every evaluation of a run scores the same test tokens."""
    if ev["tokens"] != ref["tokens"]:
        raise SystemExit(f"longdoc: {path} scored {ev['tokens']} tokens, not {ref['tokens']}")


def one_run(args, setting, seed):
    """Train (unless done) and evaluate one run; its result (cached in result.json) with the
    memory ablation and horizon, which runs finished before them get too. None: another
    process holds the run (``lab.claim_run``)."""
    run_dir = os.path.join(args.out, "runs", f"{setting}_s{seed}")
    if not lab.claim_run(run_dir, who="longdoc"):
        return None
    result = lab.cached_result(run_dir, config(args), f"longdoc: {run_dir}/result.json was made with other "
                               "settings; use another --out", by_name=BY_NAME)
    if result is None:
        os.makedirs(run_dir, exist_ok=True)
        start, log_path = time.time(), os.path.join(run_dir, "train.log")
        lab.train_unless_done(train_cmd(args, run_dir, setting, seed), run_dir, args.max_update, log_path,
                              who="longdoc")
        minutes = (time.time() - start) / 60
        evals = {split: evaluated(eval_cmd(args, run_dir, split, *flags), os.path.join(run_dir, f"eval_{split}.log"))
                 for split, flags in (("test", test_flags(args, run_dir)), ("valid", []))}
        curve = lab.valid_curve(log_path)
        n, bits = deep_loss(evals["test"]["by_depth"])
        result = {"setting": setting, "seed": seed, "config": config(args), "test": evals["test"],
                  "valid_eval_lm_bits": evals["valid"]["loss_bits"],
                  "valid_fairseq_train_bits": curve[-1][1] if curve else None,
                  "deep_tokens": n, "deep_loss_bits": bits, "deep_ppl": 2 ** bits,
                  "train_minutes_this_invocation": round(minutes, 1), "code": lab.code_version()}
        lab.save_result(run_dir, result)
    return memory_horizon(args, run_dir, memory_ablation(args, run_dir, result))


def config(args):
    """The flags a run's result depends on (the calibration's only when set: runs before them match)."""
    return lab.run_config(args, RUN_FLAGS, when_set=CALIBRATION_FLAGS)


def calibration_report(args, argv=None):
    """The budget's calibration: every run under --out with kept checkpoints (--keep-every),
    each kept checkpoint scored on the validation split by depth (eval-lm, once), beside
    fairseq-train's validation by update. Writes calibration.md, .json and .png."""
    runs = os.path.join(args.out, "runs")
    curves, train_curves = {}, {}
    for name in sorted(os.listdir(runs)):
        run_dir = os.path.join(runs, name)
        kept = sorted((int(m.group(1)), f) for f in os.listdir(run_dir)
                      for m in [re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", f)] if m)
        if not kept:
            continue
        train_curves[name] = train_valid = dict(lab.valid_curve(os.path.join(run_dir, "train.log")))
        curves[name] = {}
        for update, ckpt in kept:
            path = os.path.join(run_dir, f"eval_valid_{update}.log")
            done = os.path.exists(path) and "Loss (base 2)" in open(path).read()
            ev = lab.read_eval_lm(path) if done else evaluated(eval_cmd(args, run_dir, "valid", checkpoint=ckpt), path)
            curves[name][update] = {"valid_bits": ev["loss_bits"], "deep_ppl": deep_ppl(ev),
                                    "train_valid_bits": train_valid.get(update)}
    print("\n".join(longdoc_report.calibration(curves, train_curves, args.out, lab.command_line(__file__, argv))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a document data-bin (scripts/prepare_longdoc.py)")
    p.add_argument("--doc-separator", default=None, help="the data-bin's document separator symbol, e.g. '<doc>'")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--segment-length", type=int, default=64)
    p.add_argument("--bptt-segments", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="rows (documents read side by side)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--memory-tokens", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--max-update", type=int, default=1200)
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N updates (resume point)")
    p.add_argument("--validate-every", type=int, default=0,
                   help="fairseq-train validates every N updates (default: once, at the end)")
    p.add_argument("--keep-every", type=int, default=0,
                   help="keep the checkpoints of updates divisible by N (a calibration's curves; "
                        "a multiple of --save-every; default: only the last)")
    p.add_argument("--checkpoint-segments", action="store_true",
                   help="recompute each segment in the backward pass (memory settings)")
    p.add_argument("--memory-detach-every", type=int, default=0, metavar="K",
                   help="the memory settings: gradients cut after every K segments of a sample (the model's "
                        "--memory-detach-every), so that the gradient's reach differs while --bptt-segments and "
                        "--batch-size stay; 0: through the whole sample. Give such runs an --out of their own")
    p.add_argument("--horizons", nargs="*", type=int, default=[0, 1, 2, 4, 8, 16],
                   help="memory horizons K (segments) scored on the horizon subset; none: skip")
    p.add_argument("--horizon-docs", nargs=2, type=int, default=[32, 128], metavar=("A", "B"),
                   help="the horizon subset: the test documents of A to B segments")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test documents")
    p.add_argument("--calibration-report", action="store_true",
                   help="evaluate the kept checkpoints (--keep-every) on valid by depth; write calibration.md")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables from the finished runs")
    p.add_argument("--compare-with", metavar="OUT",
                   help="another --out of the same model and data (e.g. the matrix's, BPTT through 4 segments): "
                        "the report sets each run against the one of the same setting and seed there")
    args = p.parse_args(argv)
    if "context4x" in args.settings and args.bptt_segments != 4 and not args.report_only:
        p.error("context4x reads one 4L segment per sample: it needs --bptt-segments 4 (equal tokens)")
    if args.memory_detach_every < 0 or 0 < args.bptt_segments <= args.memory_detach_every:
        p.error(f"--memory-detach-every {args.memory_detach_every} must be 0 (never) or from 1 to --bptt-segments - 1 "
                f"({args.bptt_segments - 1}): otherwise it cuts nothing")
    if args.keep_every and args.keep_every % args.save_every:
        p.error(f"--keep-every {args.keep_every} is not a multiple of --save-every {args.save_every}")
    if args.compare_with and not os.path.isdir(os.path.join(args.compare_with, "runs")):
        p.error(f"--compare-with {args.compare_with}: no runs/ directory (another --out of scripts/longdoc.py)")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        p.error(f"--data {args.data}: no dict.txt (build it with scripts/prepare_longdoc.py)")
    return args


def finished_runs(args):
    """Every finished run under --out made with these flags (other invocations' settings
    and seeds too: several may run side by side, e.g. one thread each)."""
    results = [r for r in lab.results_under(os.path.join(args.out, "runs"))
               if lab.made_with(r, config(args), by_name=BY_NAME)]
    unknown = sorted({r["setting"] for r in results} - set(SETTINGS))
    if unknown:  # e.g. a kind's file removed since its runs
        print(f"longdoc: left out of the report, not settings here: {', '.join(unknown)}", file=sys.stderr)
    results = [r for r in results if r["setting"] in SETTINGS]
    return sorted(results, key=lambda r: (list(SETTINGS).index(r["setting"]), r["seed"]))


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.calibration_report:
        return calibration_report(args, argv)
    if not args.report_only:
        for seed in args.seeds:
            for setting in args.settings:
                print(f"longdoc: {setting} seed {seed}", flush=True)
                one_run(args, setting, seed)
    results = finished_runs(args)
    args.settings = [s for s in SETTINGS if any(r["setting"] == s for r in results)]
    print(longdoc_report.write(results, args, lab.command_line(__file__, argv)))


if __name__ == "__main__":
    main()
