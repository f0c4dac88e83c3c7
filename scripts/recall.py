"""Long-range recall: can the memory carry key-value facts across D segments?

Each sample is one line (memory reset per sample), cut into segments of L tokens:

  segment 0        P facts "k v" (distinct keys k*, independent values v*), then filler f*
  segments 1..D    filler (random f* tokens)
  segment D+1      the P keys again, shuffled, each followed by its value, then </s>

The question segment sees the facts only through the memory. Training is plain
``fairseq-train --task tarm_language_modeling --sample-break-mode eos
--loss-start-segment D+1`` (only the question segment is scored). Evaluation
loads the last checkpoint and runs one teacher-forced forward per test batch
(memory carried across the sample's segments); only the value positions are
scored:
  fact_acc  share of asked facts whose value is the argmax at its position
            (exact greedy match: each answer is one token, and the key before
            it is given)
  all_acc   share of samples with all P answers right
  p_right   mean probability of the right value
Chance for fact_acc is 1 / --values.

Experiments (each run: one setting, one seed, one training data spec):
  distance   train and test at each D in --distances (P = --facts)
  capacity   accuracy vs P in --capacity-facts at D = --capacity-distance, m fixed
  lengthgen  train on a mix of D in --lengthgen-train, test at each D in --lengthgen-test
  curriculum (not in the default list) stages s in --curriculum, e.g. 1,2,4,8,16: stage s
             trains on D uniform over 1..s (short distances are not forgotten) from the
             previous stage's weights (--finetune-from-model), scoring only each sample's
             question segment (--loss-last-segments 1), in chunks of --check-every updates
             until the validation per-fact accuracy reaches --curriculum-threshold or the
             stage has used --stage-updates; after the last stage, test at --curriculum-test

The samples are made by scripts/recall_data.py, scored by scripts/recall_eval.py, the
curriculum run by scripts/recall_curriculum.py, the tables and figure made by
scripts/recall_report.py. Runs whose result.json exists are
skipped (resume; a curriculum stage with a stage.json is not redone, one cut short continues
from its last chunk; --report-only trains nothing). Writes under --out:
  data/D<spec>_P<P>/        the generated text and its fairseq-preprocess'd data-bin
  runs/<setting>_D<spec>_P<P>_s<seed>/train.log, result.json, checkpoint_last.pt
  runs/curriculum_<setting>_C<stages>_P<P>_s<seed>/result.json, stage<s>/ (a fairseq save
                            dir with train.log, progress.json, stage.json)
  results.json, results.md (tables, mean +- std over seeds), recall.png

Usage: python scripts/recall.py --out runs/recall [--experiment distance capacity lengthgen curriculum]
           [--settings rmt tarm_a0.5] [--seeds 1 2 3] [--curriculum 1,2,4,8,16 --stage-updates 1000]
"""

import argparse
import os
import time

import lab
import recall_report
from recall_curriculum import curriculum_config, run_curriculum
from recall_data import build_data, spec_name
from recall_eval import evaluate

MEM = ["--memory-write-input", "memory"]
SETTINGS = {  # name: model flags (every other flag is shared); the token memories write what they read
    "no_memory": lab.SETTINGS["no_memory"],
    "rmt": MEM + lab.SETTINGS["rmt"],
    "rmt_learned_write": ["--memory-write-input", "learned"] + lab.SETTINGS["rmt"],
    **{s: MEM + lab.SETTINGS[s] for s in ("tarm_a0.8", "tarm_a0.7", "tarm_a0.5", "tarm_a0.2")},
    "tarm_learned_rate": MEM + lab.SETTINGS["tarm_learned"],
    "tarm_gate": MEM + lab.SETTINGS["tarm_gate"],
}
lab.refuse_kind_names(SETTINGS, "scripts/recall.py")
SETTINGS.update({kind: lab.SETTINGS[kind] for kind in lab.KINDS})  # assoc (ARMT-style): its default key dim and nu
# capacity and length generalisation run a subset by default, to fit the CPU budget
REDUCED = ["no_memory", "rmt", "tarm_a0.5", "tarm_learned_rate"]
EXPERIMENTS = ["distance", "capacity", "lengthgen"]
RUN_FLAGS = ("segment_length", "keys", "values", "filler", "train_samples", "test_samples", "data_seed",
             "memory_tokens", "layers", "dim", "batch_size", "max_update", "lr", "warmup", "extra_model_args")


# ------------------------------------------------------------------- training
def train_cmd(args, data_dir, run_dir, setting, seed, loss_start=None, loss_last=None, max_update=None,
              extra=()):
    """The fairseq-train command of one run: scoring from segment ``loss_start`` on and/or each
    sample's last ``loss_last`` segments, for ``max_update`` (default --max-update) updates."""
    L = str(args.segment_length)
    scored = ["--loss-start-segment", str(loss_start)] if loss_start is not None else []
    scored += ["--loss-last-segments", str(loss_last)] if loss_last else []
    return lab.train_command(
        data_dir, run_dir, seed, "--sample-break-mode", "eos", *scored, "--segment-length", L,
        "--tokens-per-sample", L, "--decoder-layers", str(args.layers), "--decoder-embed-dim", str(args.dim),
        "--decoder-ffn-embed-dim", str(4 * args.dim), "--decoder-attention-heads", "4", "--dropout", "0",
        *lab.setting_flags(SETTINGS[setting], args.memory_tokens), *args.extra_model_args,
        "--lr", str(args.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup),
        "--clip-norm", "1.0", "--batch-size", str(args.batch_size), "--max-update", str(max_update or args.max_update),
        "--disable-validation", *extra)


# ---------------------------------------------------------------------- runs
def plan(args):
    """[(experiment, setting, train_distances, n_facts, test_distances, seed)] in run order."""
    jobs = []
    for exp in args.experiment:
        settings = args.settings or (list(SETTINGS) if exp == "distance" else REDUCED)
        if exp == "distance":
            configs = [((d,), args.facts, (d,)) for d in args.distances]
        elif exp == "curriculum":
            settings = args.settings or list(SETTINGS)
            configs = [(tuple(args.curriculum), args.facts, tuple(args.curriculum_test))]
        elif exp == "capacity":
            configs = [((args.capacity_distance,), p, (args.capacity_distance,)) for p in args.capacity_facts]
        else:
            configs = [(tuple(args.lengthgen_train), args.facts, tuple(args.lengthgen_test))]
        for seed in args.seeds:
            for train_d, p, test_d in configs:
                for s in settings:
                    jobs.append((exp, s, train_d, p, test_d, seed))
    return jobs


def run_dir_for(args, setting, train_distances, n_facts, seed):
    return os.path.join(args.out, "runs", f"{setting}_D{spec_name(train_distances)}_P{n_facts}_s{seed}")


def one_run(args, setting, train_distances, n_facts, test_distances, seed):
    """Train (unless done) and evaluate; returns (the result dict, cached in result.json,
    whether it ran). A finished run asked for more test distances is evaluated again."""
    run_dir = run_dir_for(args, setting, train_distances, n_facts, seed)
    cached = lab.cached_result(run_dir, config(args), f"recall: error: {run_dir} holds a run with other "
                               "data/model flags; use another --out")
    if cached is not None and set(map(str, test_distances)) <= set(cached["test"]):
        return cached, False
    data_dir, splits = build_data(args, train_distances, n_facts, test_distances)
    os.makedirs(run_dir, exist_ok=True)
    cmd = train_cmd(args, data_dir, run_dir, setting, seed, loss_start=min(train_distances) + 1)
    t0 = time.time()
    # a finished run asked for more test distances is not trained again; a stopped one continues
    # from its checkpoint_last.pt, its log appended to
    log_path = os.path.join(run_dir, "train.log")
    trained = lab.train_unless_done(cmd, run_dir, args.max_update, log_path, mode="a", threads=1, who="recall")
    t1 = time.time()
    test = evaluate(os.path.join(run_dir, "checkpoint_last.pt"), data_dir, splits, n_facts, args)
    result = {"setting": setting, "seed": seed, "train_distances": list(train_distances), "facts": n_facts,
              "test": {str(k): v for k, v in test.items()},
              "train_seconds": cached["train_seconds"] if cached and not trained else round(t1 - t0, 1),
              "eval_seconds": round(time.time() - t1, 1), "max_update": args.max_update,
              "last_train_inner": lab.last_record(log_path),
              "command": " ".join(cmd), "config": config(args), "code": lab.code_version()}
    lab.save_result(run_dir, result)
    return result, True


def config(args):
    """The flags a run's result depends on: runs share a table only if these are equal
    (which experiments, settings, seeds, distances and P to run are a selection, not part of it)."""
    return lab.run_config(args, RUN_FLAGS)


def load_results(args):
    """Every result under --out made with these flags (a curriculum: with this curriculum)."""
    return [r for r in lab.results_under(os.path.join(args.out, "runs"))
            if (lab.made_with(r, curriculum_config(args, config(args)), key="curriculum") if r.get("experiment") == "curriculum"
                else lab.made_with(r, config(args)))]


def distance_list(text):
    """'1,2,4' -> [1, 2, 4]"""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 1,2,4,8,16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/recall")
    p.add_argument("--experiment", nargs="+", default=EXPERIMENTS, choices=EXPERIMENTS + ["curriculum"])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                   help=f"default: all for distance and curriculum, {' '.join(REDUCED)} for capacity and lengthgen")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    g = p.add_argument_group("data")
    g.add_argument("--segment-length", type=int, default=8)
    g.add_argument("--facts", type=int, default=3, help="P for distance and lengthgen")
    g.add_argument("--keys", type=int, default=4)
    g.add_argument("--values", type=int, default=8)
    g.add_argument("--filler", type=int, default=8)
    g.add_argument("--distances", nargs="+", type=int, default=[1, 2, 4, 8])
    g.add_argument("--capacity-facts", nargs="+", type=int, default=[1, 2, 3])
    g.add_argument("--capacity-distance", type=int, default=1)
    g.add_argument("--lengthgen-train", nargs="+", type=int, default=[1, 2])
    g.add_argument("--lengthgen-test", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    g.add_argument("--train-samples", type=int, default=20000)
    g.add_argument("--test-samples", type=int, default=500)
    g.add_argument("--data-seed", type=int, default=0)
    g = p.add_argument_group("model and training (the same for every setting)")
    g.add_argument("--memory-tokens", type=int, default=4, help="m for the memory settings")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--dim", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-update", type=int, default=500)
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--eval-batch-size", type=int, default=100)
    g = p.add_argument_group("curriculum (--experiment curriculum)")
    g.add_argument("--curriculum", type=distance_list, default=[1, 2, 4, 8, 16],
                   help="the stages s, comma-separated, increasing: stage s trains on D uniform over 1..s")
    g.add_argument("--curriculum-test", type=distance_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="test distances after the last stage, comma-separated")
    g.add_argument("--curriculum-threshold", type=float, default=95.0,
                   help="a stage ends when its validation per-fact accuracy reaches this (%%)")
    g.add_argument("--check-every", type=int, default=250, help="updates between validation checks")
    g.add_argument("--stage-updates", type=int, default=1000, help="update budget of each stage")
    g.add_argument("--curriculum-valid-samples", type=int, default=256,
                   help="validation samples per stage (D uniform over 1..s)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild results.md and recall.png from the finished runs under --out")
    g = p.add_argument_group("appended to every training command")
    g.add_argument("--extra-model-args", nargs=argparse.REMAINDER, default=[],
                   help="appended to every fairseq-train command (must come last)")
    args = p.parse_args(argv)
    for flag in ("segment_length", "facts", "keys", "values", "filler", "max_update", "batch_size", "check_every",
                 "stage_updates", "curriculum_valid_samples"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if min(args.distances + args.lengthgen_train + args.lengthgen_test + [args.capacity_distance]
           + args.curriculum + args.curriculum_test) < 1:
        p.error("distances must be >= 1")
    if any(b <= a for a, b in zip(args.curriculum, args.curriculum[1:])):
        p.error(f"--curriculum {spec_name(args.curriculum)}: the stages must increase")
    if not 0 < args.curriculum_threshold <= 100:
        p.error(f"--curriculum-threshold {args.curriculum_threshold:g}: a percentage in (0, 100]")
    for n in [args.facts] + args.capacity_facts:
        if 2 * n + 1 > args.segment_length or n > args.keys:
            p.error(f"{n} facts do not fit: need 2P+1 <= --segment-length and P <= --keys")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    jobs = [] if args.report_only else plan(args)
    results, seen = [], set()
    for i, (exp, setting, train_d, p, test_d, seed) in enumerate(jobs, 1):
        key = (exp == "curriculum", setting, train_d, p, seed)
        if key in seen:  # e.g. capacity at P = --facts is the distance run at that D
            continue
        seen.add(key)
        t = time.time()
        if exp == "curriculum":
            result, ran = run_curriculum(args, setting, train_d, p, test_d, seed, train_cmd, config(args))
        else:
            result, ran = one_run(args, setting, train_d, p, test_d, seed)
        results.append(result)
        acc = " ".join(f"D{d}:{v['fact_acc'] * 100:.1f}%" for d, v in result["test"].items())
        print(f"[{i}/{len(jobs)}] {exp} {setting} D{spec_name(train_d)} P{p} seed {seed}: {acc} "
              f"({'%.0f s' % (time.time() - t) if ran else 'cached'})", flush=True)
    # every result on disk with this configuration, not only this invocation's, goes into the tables
    results = load_results(args)
    wall = time.time() - start
    print(recall_report.write(results, args, list(SETTINGS), lab.command_line(__file__, argv), wall))
    print(f"total wall time: {wall:.0f} s ({wall / 60:.1f} min); results in {args.out}/results.md")


if __name__ == "__main__":
    main()
