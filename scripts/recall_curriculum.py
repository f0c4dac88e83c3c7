"""The recall curriculum (scripts/recall.py --experiment curriculum, docs/recall.md):
stage s trains on D uniform over 1..s from the previous stage's weights, in chunks of
--check-every updates until the validation per-fact accuracy reaches --curriculum-threshold
or the stage has used --stage-updates; after the last stage, a test at --curriculum-test.

Resumable at every level: a run with a result.json is done, a stage with a stage.json is
not redone, a stage cut short continues from its last checked chunk (progress.json).
"""

import os
import sys
import time

import lab
from lab import read_json, save_json
from recall_data import spec_name, stage_data
from recall_eval import evaluate

CURRICULUM_FLAGS = ("curriculum", "curriculum_threshold", "check_every", "stage_updates", "curriculum_valid_samples")


def curriculum_config(args, config):
    """What a curriculum run's result depends on: the data and model flags ``config`` (a
    recall run's, without --max-update, which the stages replace) and the curriculum's own
    (not the test distances: a selection)."""
    out = {k: v for k, v in config.items() if k != "max_update"}
    out.update((k, getattr(args, k)) for k in CURRICULUM_FLAGS)
    return out


def curriculum_dir(args, setting, n_facts, seed):
    return os.path.join(args.out, "runs", f"curriculum_{setting}_C{spec_name(args.curriculum)}_P{n_facts}_s{seed}")


def run_stage(args, setting, seed, n_facts, stage, stage_dir, previous, train_cmd):
    """Train one stage from the checkpoint ``previous`` (None: from scratch) in chunks of
    --check-every updates, each chunk resuming the stage's own checkpoint_last.pt, until the
    validation per-fact accuracy reaches --curriculum-threshold or --stage-updates are used.
    Returns the stage's record (cached in stage.json; progress.json lets a cut-short stage
    continue from its last finished chunk)."""
    record_path = os.path.join(stage_dir, "stage.json")
    if os.path.exists(record_path):
        return read_json(record_path)
    data_dir, _ = stage_data(args, stage, n_facts)
    os.makedirs(stage_dir, exist_ok=True)
    progress_path, log_path = os.path.join(stage_dir, "progress.json"), os.path.join(stage_dir, "train.log")
    progress = {"updates": 0, "checks": [], "train_seconds": 0.0, "eval_seconds": 0.0}
    if os.path.exists(progress_path):
        progress = read_json(progress_path)
    # fairseq loads --finetune-from-model only while the save dir has no checkpoint_last.pt:
    # every later chunk continues the stage's own run (optimizer, LR schedule, data order)
    extra = ["--finetune-from-model", previous] if previous else []
    threshold = args.curriculum_threshold / 100.0

    def done():
        last = progress["checks"][-1] if progress["checks"] else None
        return last is not None and (last["fact_acc"] >= threshold or last["updates"] >= args.stage_updates)

    while not done():
        updates = min(progress["updates"] + args.check_every, args.stage_updates)
        cmd = train_cmd(args, data_dir, stage_dir, setting, seed, loss_last=1, max_update=updates, extra=extra)
        t0 = time.time()
        # each chunk appends to the stage's log; a chunk trained whose check was cut is not started
        # again (fairseq-train started at its --max-update would train one update more)
        lab.train_unless_done(cmd, stage_dir, updates, log_path, mode="a", threads=1, who="recall")
        t1 = time.time()
        valid = evaluate(os.path.join(stage_dir, "checkpoint_last.pt"), data_dir, {"valid": "valid"},
                         n_facts, args)["valid"]
        progress["updates"] = updates
        progress["checks"].append({"updates": updates, **valid})
        progress["train_seconds"] = round(progress["train_seconds"] + t1 - t0, 1)
        progress["eval_seconds"] = round(progress["eval_seconds"] + time.time() - t1, 1)
        save_json(progress_path, progress)
        print(f"  {setting} seed {seed} stage {stage}: {updates} updates, valid per-fact "
              f"{valid['fact_acc'] * 100:.1f}%", flush=True)
    last = progress["checks"][-1]
    record = {"stage": stage, "train_distances": list(range(1, stage + 1)), "updates": last["updates"],
              "valid": {k: v for k, v in last.items() if k != "updates"}, "reached": last["fact_acc"] >= threshold,
              "train_seconds": progress["train_seconds"], "eval_seconds": progress["eval_seconds"],
              "checks": [{"updates": c["updates"], "fact_acc": c["fact_acc"]} for c in progress["checks"]],
              "last_train_inner": lab.last_record(log_path)}
    save_json(record_path, record)
    return record


def run_curriculum(args, setting, stages, n_facts, test_distances, seed, train_cmd, config):
    """All stages of one setting and seed (each resumable), then the test of the last stage's
    checkpoint at ``test_distances``; returns (the result dict, cached in result.json, whether it
    ran). ``train_cmd`` and ``config``: recall.py's fairseq-train command and run flags."""
    run_dir = curriculum_dir(args, setting, n_facts, seed)
    config_path = os.path.join(run_dir, "curriculum.json")
    if os.path.exists(config_path) and read_json(config_path) != curriculum_config(args, config):
        sys.exit(f"recall: error: {run_dir} holds a curriculum with other data/model/curriculum flags; "
                 "use another --out")
    cached = lab.load_result(run_dir)  # made with curriculum.json's flags
    if cached is not None and set(map(str, test_distances)) <= set(cached["test"]):
        return cached, False
    os.makedirs(run_dir, exist_ok=True)
    save_json(config_path, curriculum_config(args, config))
    records, previous = [], None
    for stage in stages:
        stage_dir = os.path.join(run_dir, f"stage{stage}")
        records.append(run_stage(args, setting, seed, n_facts, stage, stage_dir, previous, train_cmd))
        previous = os.path.join(stage_dir, "checkpoint_last.pt")
    t0 = time.time()
    data_dir, splits = stage_data(args, stages[-1], n_facts)
    test = evaluate(previous, data_dir, {d: splits[d] for d in test_distances}, n_facts, args)
    result = {"experiment": "curriculum", "setting": setting, "seed": seed, "facts": n_facts,
              "train_distances": list(range(1, stages[-1] + 1)), "stages": records,
              "test": {str(k): v for k, v in test.items()},
              "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
              "eval_seconds": round(sum(r["eval_seconds"] for r in records) + time.time() - t0, 1),
              "curriculum": curriculum_config(args, config), "code": lab.code_version()}
    lab.save_result(run_dir, result)
    return result, True
