"""The quadratic-equations experiment (docs/quadratic.md): the paper's model
(tarm_lm_quadratic: 6 layers, 128 dim, FFN 256, 30 memory slots), 100k training equations,
the same updates for every setting; exact match of the greedy answer segment on the 1,000
test equations, overall and by kind.

  run OUT SETTING [SETTING ...] [-- FAIRSEQ_FLAGS]
      Two phases (warmup-stable-decay), each followed by a test evaluation of the
      best-validation checkpoint so far (scripts/eval_quadratic.py):
        stable: --max-update updates at LR 1e-3 after 200 warm-up updates (the paper's
                reduce-on-plateau 0.5 as the scheduler, its patience beyond the budget: the
                LR stays constant) -> train.log, test_stable.json
        decay:  continues the stable phase's last checkpoint (optimizer state kept), the LR
                linearly to 0 over --decay-updates more -> train.log, test.json
      Resumable: the same command after a stop (a kill, a session's end, --stop-at) continues
      each setting from OUT/<setting>/checkpoint_last.pt in the phase it was in; a finished
      phase or evaluation is not redone; train.log is only appended to. OUT/<setting>/run.conf
      holds the schedule, data, seed and flags: another call with others is refused.
      Kept: the checkpoint of every 1,000th update (for `valid`) and stable_end/ (the last and
      best when the stable phase ended, for `branch`). FAIRSEQ_FLAGS come last (they override).
  branch FROM_DIR TO_DIR [-- FAIRSEQ_FLAGS]
      FROM's state at the end of its stable phase becomes TO's (same setting name), so that
      `run --phases decay` continues it with other flags (e.g. the answer-loss decay).
  valid OUT_DIR CHECKPOINT [CHECKPOINT ...]
      The validation exact match of each checkpoint, by its update count:
      OUT_DIR/valid_update<N>.json and .misses.tsv; an evaluated update is skipped.
  save OUT DEST [SETTING ...] [--checkpoints]
      Each setting's logs and results (train.log, run.conf, test*.json/.log, valid_update*)
      copied from OUT/<setting>/ to DEST/<setting>/ (e.g. runs/quadratic23_s2 to
      results/quadratic23_s2), also while the run goes on: its log so far. A DEST holding
      another run.conf, or a log that OUT's does not continue (a later state, or another
      attempt of the same run), is not replaced. --checkpoints: also what continues the
      run elsewhere, checkpoint_last.pt (checked readable) and checkpoint_best.pt (without
      its optimizer state: it is only evaluated); on another machine, copy DEST/<setting>/
      to OUT/<setting>/ and call `run` again. Not copied: stable_end/ (for `branch`) and the
      kept checkpoints of every 1,000th update (for `valid`). A save without the flag
      leaves a DEST's checkpoints from an earlier one (it prints their update).
  report --runs OUT [--seed-runs OUT_S2 ...] --out FIG
      The figure and the tables (scripts/quadratic_report.py); a seed still running shows its
      updates and best validation so far.

Settings: no_memory, rmt, tarm_a0.5, tarm_a0.2, tarm_learned, tarm_gate (lab.SETTINGS).

Deviations from the paper, each forced by a 2-core CPU (docs/results.md): LR 1e-3 with 200
warm-up updates instead of 1e-4, gradient clipping at 1.0 for that LR, a fixed budget ending
in a linear decay instead of training to convergence under reduce-on-plateau (fairseq steps
that rule at epoch ends, patience 0: within a few epochs one flat epoch would halve the LR),
500 validation equations.

    python scripts/quadratic.py run runs/quadratic23_s2 tarm_a0.5 --schedule 12k --seed 2
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import lab

SETTINGS = {s: lab.SETTINGS[s] for s in ("no_memory", "rmt", "tarm_a0.5", "tarm_a0.2", "tarm_learned", "tarm_gate")}
MEMORY_TOKENS = 30
SCHEDULES = {"5k": (3000, 2000), "12k": (8000, 4000)}  # (stable, decay) updates: issue 12's runs, issue 23's
# the task and its metric: 6 segments of 30 characters, memory reset per equation, loss on
# segments 2-6 (the equation is given), validation = exact match of the greedy answer
RECIPE = ["--sample-break-mode", "eos", "--segment-length", "30", "--tokens-per-sample", "30",
          "--loss-start-segment", "1", "--eval-exact-match-segments", "1", "--batch-size", "32",
          "--lr", "1e-3", "--clip-norm", "1.0",
          "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
STABLE = ["--lr-scheduler", "reduce_lr_on_plateau", "--lr-shrink", "0.5", "--warmup-updates", "200",
          "--warmup-init-lr", "1e-7", "--lr-patience", "1000000"]
MARK = re.compile(r"^(cpu_runs\.sh|quadratic\.py): .* decay phase: ")  # train.log's phase lines (cpu_runs.sh: before)


def fail(message, code=2):
    print(f"quadratic.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def nonempty(path):
    return os.path.isfile(path) and os.path.getsize(path) > 0


def train_command(args, run_dir, setting, *flags):
    return lab.train_command(
        os.path.abspath(args.data), os.path.abspath(run_dir), args.seed, *RECIPE, *lab.setting_flags(SETTINGS[setting], MEMORY_TOKENS),
        "--validate-interval-updates", str(args.valid_every), "--save-interval-updates", str(args.valid_every),
        "--keep-interval-updates", "1", "--keep-interval-updates-pattern", "1000",
        arch="tarm_lm_quadratic", adam_betas=None) + list(flags)  # last: a phase's and the user's flags override


def evaluate(checkpoint, args, split, out_json, *flags):
    """eval_quadratic.py's JSON (its last line) into ``out_json``; its log beside it."""
    log = out_json[:-len(".json")] + ".log"
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, os.path.join(lab.ROOT, "scripts", "eval_quadratic.py"), "--path",
                            checkpoint, "--data", args.data, "--split", split, *flags], stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        fail(f"evaluation of {checkpoint} failed, see {log}", 1)
    with open(log) as f:
        last = f.read().strip().splitlines()[-1]
    with open(out_json + ".tmp", "w") as f:
        f.write(last + "\n")
    os.replace(out_json + ".tmp", out_json)
    return json.loads(last)


class Run:
    """One setting's run directory, trained phase by phase to the update count it asks for."""

    def __init__(self, args, setting):
        self.args, self.setting, self.dir = args, setting, os.path.join(args.out, setting)
        self.done = lab.resume_point(self.dir) if os.path.isdir(self.dir) else 0

    def train_to(self, phase, end, *flags):
        """Train on to update ``end`` (--stop-at if smaller); True if the phase is finished."""
        stop = min(end, self.args.stop_at or end)
        if self.done < stop:
            conf = os.path.join(self.dir, "run.conf")
            if not os.path.isfile(conf):  # what the run is started with (a later call must match it)
                with open(conf, "w") as f:
                    f.write(conf_line(self.args) + "\n")
            log = os.path.join(self.dir, "train.log")
            with open(log, "a") as f:
                f.write(f"quadratic.py: {time.strftime('%F %T')} {phase} phase: updates {self.done} -> {stop} of {end}\n")
            # fairseq does one more update when started at its --max-update: a finished phase is
            # never restarted, the update count decides what is left
            lab.run_logged(train_command(self.args, self.dir, self.setting, *flags, "--max-update", str(stop),
                                         *self.args.fairseq), log, threads=self.args.threads, who="quadratic.py")
            self.done = lab.resume_point(self.dir)
            if self.done < stop:
                fail(f"training ended at update {self.done} before {stop}, see {log}", 1)
        if self.done < end:
            print(f"{self.setting} stopped at update {self.done} of the {phase} phase (--stop-at "
                  f"{self.args.stop_at}); the same command continues it")
        return self.done >= end


def conf_line(args):
    return (f"MAX_UPDATE={args.max_update} DECAY_UPDATES={args.decay_updates} VALID_EVERY={args.valid_every} "
            f"SEED={args.seed} DATA={args.data} FLAGS={' '.join(args.fairseq)}")


def run_setting(args, setting):
    run = Run(args, setting)
    os.makedirs(run.dir, exist_ok=True)
    conf, path = conf_line(args), os.path.join(run.dir, "run.conf")
    if os.path.isfile(path) and open(path).read().strip() != conf:
        fail(f"{run.dir} was started with '{open(path).read().strip()}', not '{conf}'; use those or another OUT")
    total = args.max_update + args.decay_updates
    if "stable" in args.phases:
        if run.done < args.max_update:
            if not run.train_to("stable", args.max_update, *STABLE):
                return
        stable_json = os.path.join(run.dir, "test_stable.json")
        if not nonempty(stable_json):
            if run.done == args.max_update:  # the state a decay with other flags branches off
                os.makedirs(os.path.join(run.dir, "stable_end"), exist_ok=True)
                for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
                    shutil.copyfile(os.path.join(run.dir, name), os.path.join(run.dir, "stable_end", name))
                evaluate(os.path.join(run.dir, "checkpoint_best.pt"), args, "test", stable_json)
            else:  # checkpoint_best.pt may be a decay-phase one by now
                print(f"quadratic.py: warning: no test_stable.json in {run.dir} and its decay phase has begun: "
                      "not evaluated", file=sys.stderr)
        if nonempty(stable_json):
            print(f"{setting} after {args.max_update} updates: {open(stable_json).read().strip()}")
    if "decay" in args.phases:
        if run.done < args.max_update:
            fail(f"no stable phase to resume in {run.dir} (run --phases stable first)")
        if run.done < total:
            # polynomial_decay decays from the end of its warm-up: put there at --max-update, the
            # linear decay starts where the stable phase stopped, from the full LR. Its LR is a
            # function of the update count alone, so a resumed decay continues it; the stable
            # phase's scheduler state is dropped once, when the decay starts.
            reset = ["--reset-lr-scheduler"] if run.done == args.max_update else []
            if not run.train_to("decay", total, "--lr-scheduler", "polynomial_decay", "--warmup-updates",
                                str(args.max_update), "--total-num-update", str(total), *reset):
                return
        test_json = os.path.join(run.dir, "test.json")
        if not nonempty(test_json):
            evaluate(os.path.join(run.dir, "checkpoint_best.pt"), args, "test", test_json)
        print(f"{setting} after {total} updates: {open(test_json).read().strip()}")


def cmd_run(args):
    import importlib.util

    if not importlib.util.find_spec("fairseq"):
        fail(f"{sys.executable} cannot import fairseq: run this with the project's venv (.venv/bin/python)")
    if any(f.startswith("--max-update") for f in args.fairseq):
        fail("--max-update comes from --max-update, --decay-updates and --stop-at, not from FAIRSEQ_FLAGS")
    stable, decay = SCHEDULES[args.schedule]
    args.max_update, args.decay_updates = args.max_update or stable, args.decay_updates or decay
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        subprocess.run(["bash", os.path.join(lab.ROOT, "examples", "quadratic", "prepare.sh"), args.data, "--train",
                        "100000", "--valid", "500", "--test", "1000", "--seed", "1"], check=True)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # evaluations too
    for setting in args.settings:
        run_setting(args, setting)


def cmd_branch(args):
    src, dst = os.path.normpath(args.src), os.path.normpath(args.dst)
    if os.path.basename(src) != os.path.basename(dst):
        fail(f"TO_DIR must name the same setting as FROM_DIR ({os.path.basename(src)}): `run` reads it from there")
    for f in ("run.conf", "test_stable.json", "stable_end/checkpoint_last.pt", "stable_end/checkpoint_best.pt"):
        if not nonempty(os.path.join(src, f)):
            fail(f"no {src}/{f}: FROM_DIR needs a stable phase finished by `quadratic.py run`")
    if os.path.exists(os.path.join(dst, "checkpoint_last.pt")) or os.path.exists(os.path.join(dst, "train.log")):
        fail(f"{dst} already holds a run; branch into a new directory")
    os.makedirs(dst, exist_ok=True)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        shutil.copyfile(os.path.join(src, "stable_end", name), os.path.join(dst, name))
    for name in ("test_stable.json", "test_stable.log"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    with open(os.path.join(src, "train.log")) as f:
        lines = f.readlines()
    cut = next((i for i, line in enumerate(lines) if MARK.match(line)), len(lines))
    flags = " ".join(args.fairseq)
    with open(os.path.join(dst, "train.log"), "w") as f:
        f.writelines(lines[:cut])
        f.write(f"quadratic.py: {time.strftime('%F %T')} branched off {src} at the end of its stable phase, "
                f"flags: {flags}\n")
    import quadratic_report

    conf = quadratic_report.run_conf(src)
    schedule = " ".join(f"{k}={v}" for k, v in conf.items() if k != "FLAGS")
    with open(os.path.join(dst, "run.conf"), "w") as f:
        f.write(f"{schedule} FLAGS={flags}\n")
    print(f"branched {src} into {dst}; continue it with:\n  python scripts/quadratic.py run {os.path.dirname(dst)} "
          f"{os.path.basename(dst)} --phases decay --max-update {conf['MAX_UPDATE']} --decay-updates "
          f"{conf['DECAY_UPDATES']} --valid-every {conf['VALID_EVERY']} --seed {conf['SEED']} --data {conf['DATA']}"
          + (f" -- {flags}" if flags else ""))


def cmd_valid(args):
    if not os.path.isdir(args.out):
        fail(f"OUT_DIR {args.out} is not a directory")
    for ckpt in args.checkpoints:
        if not os.path.isfile(ckpt):
            fail(f"no checkpoint {ckpt}")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    for ckpt in args.checkpoints:
        n = lab.checkpoint_updates(ckpt)
        if n is None:
            fail(f"cannot read {ckpt}", 1)
        out = os.path.join(args.out, f"valid_update{n}.json")
        if nonempty(out):
            continue
        result = evaluate(ckpt, args, "valid", out, "--misses", os.path.join(args.out, f"valid_update{n}.misses.tsv"))
        os.remove(out[:-len(".json")] + ".log")
        print(f"{ckpt}: update {n}, {result['accuracy']}")


CHECKPOINTS = ("checkpoint_last.pt", "checkpoint_best.pt")  # what `save --checkpoints` adds


def saved_files(run_dir):
    """What `save` copies of a run: its logs and results (no checkpoint)."""
    return sorted(f for f in os.listdir(run_dir)
                  if f in ("train.log", "run.conf") or re.fullmatch(r"(test\w*|valid_update\d+)\.(json|log|misses\.tsv)", f))


def cmd_save(args):
    import quadratic_report

    if not os.path.isdir(args.out):
        fail(f"OUT {args.out} is not a directory")
    names = args.settings or sorted(n for n in os.listdir(args.out) if os.path.isfile(os.path.join(args.out, n, "train.log")))
    if not names:
        fail(f"no runs (<setting>/train.log) in {args.out}")
    pairs = [(name, os.path.join(args.out, name), os.path.join(args.dest, name)) for name in names]
    for name, src, dst in pairs:  # every check before any copy: a refused save copies nothing
        if not os.path.isfile(os.path.join(src, "train.log")):
            fail(f"no {src}/train.log")
        confs = [os.path.join(d, "run.conf") for d in (src, dst)]
        if all(os.path.isfile(c) for c in confs) and open(confs[0]).read() != open(confs[1]).read():
            fail(f"{confs[1]} differs from {confs[0]}: DEST holds another run of {name}; save into another DEST")
        old, new = os.path.join(dst, "train.log"), os.path.join(src, "train.log")
        if os.path.isfile(old):  # a run's log only grows: one log must begin with the other
            with open(old, "rb") as f_old, open(new, "rb") as f_new:
                held, log = f_old.read(), f_new.read()
            if not log.startswith(held):
                fail(f"{old} is a later state of {new}: not replaced" if held.startswith(log) else
                     f"{old} is not an earlier state of {new}: DEST holds another attempt of {name}; save into another DEST")
    # the checkpoints read (and checked) before anything is copied: fairseq may be writing them
    checkpoints = {dst: read_checkpoints(src) for _, src, dst in pairs} if args.checkpoints else {}
    for _, src, dst in pairs:
        os.makedirs(dst, exist_ok=True)
        files = saved_files(src)
        for f in files:
            shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
        for f, data in checkpoints.get(dst, {}).items():
            with open(os.path.join(dst, f + ".tmp"), "wb") as out:
                out.write(data)
            os.replace(os.path.join(dst, f + ".tmp"), os.path.join(dst, f))
            files.append(f)
        curve = quadratic_report.valid_accuracy(os.path.join(dst, "train.log"))
        state = "finished" if nonempty(os.path.join(dst, "test.json")) else "running"
        held = lab.checkpoint_updates(os.path.join(dst, CHECKPOINTS[0]))
        print(f"{dst}: {len(files)} files, validated to update {curve[-1][0] if curve else 0} ({state})"
              + (f"; continues from update {held} ({CHECKPOINTS[0]})" if held is not None else ""))


def read_checkpoints(run_dir):
    """{name: bytes} of a run's checkpoint_last.pt (as it is: what training resumes from) and
    checkpoint_best.pt without its optimizer state (it is only evaluated)."""
    import io

    import torch

    out = {}
    for name in CHECKPOINTS:
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            fail(f"--checkpoints: no {path} (no checkpoint saved yet)")
        with open(path, "rb") as f:
            data = f.read()
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            int(state["optimizer_history"][-1]["num_updates"])
        except Exception:
            fail(f"--checkpoints: {path} is unreadable (being written, or truncated by a kill); save again", 1)
        if name == "checkpoint_last.pt":
            if "last_optimizer_state" not in state:
                fail(f"--checkpoints: {path} holds no optimizer state: training cannot resume from it", 1)
            out[name] = data
        else:
            state.pop("last_optimizer_state", None)
            buffer = io.BytesIO()
            torch.save(state, buffer)
            out[name] = buffer.getvalue()
    return out


def parse_args(argv):
    argv, fairseq = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train settings in two phases and evaluate them")
    r.add_argument("out")
    r.add_argument("settings", nargs="+", choices=list(SETTINGS), metavar="SETTING")
    r.add_argument("--schedule", choices=list(SCHEDULES), default="5k",
                   help="5k: 3,000 stable + 2,000 decay updates (issue 12); 12k: 8,000 + 4,000 (issue 23)")
    r.add_argument("--max-update", type=int, help="stable-phase updates (default: the schedule's)")
    r.add_argument("--decay-updates", type=int, help="decay-phase updates (default: the schedule's)")
    r.add_argument("--valid-every", type=int, default=250, help="validation and checkpoint interval")
    r.add_argument("--phases", nargs="+", choices=["stable", "decay"], default=["stable", "decay"])
    r.add_argument("--stop-at", type=int, help="stop each setting at this update; the same command without it continues")
    r.add_argument("--seed", type=int, default=1, help="initialisation, data order, dropout")
    r.add_argument("--data", default="data-bin/quadratic-100k", help="generated if absent")
    r.add_argument("--threads", type=int, default=1)
    b = sub.add_parser("branch", help="a decay phase branched off another run's stable phase")
    b.add_argument("src", metavar="FROM_DIR")
    b.add_argument("dst", metavar="TO_DIR")
    v = sub.add_parser("valid", help="validation exact match of checkpoints, by update")
    v.add_argument("out", metavar="OUT_DIR")
    v.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    v.add_argument("--data", default="data-bin/quadratic-100k")
    v.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("save", help="copy runs' logs and results for committing")
    s.add_argument("out", metavar="OUT")
    s.add_argument("dest", metavar="DEST")
    s.add_argument("settings", nargs="*", metavar="SETTING", help="default: every setting with a train.log in OUT")
    s.add_argument("--checkpoints", action="store_true",
                   help="also checkpoint_last.pt and checkpoint_best.pt (no optimizer state), to continue elsewhere")
    q = sub.add_parser("report", help="the figure and tables (scripts/quadratic_report.py)")
    import quadratic_report
    quadratic_report.add_arguments(q)
    args = p.parse_args(argv)
    args.fairseq = fairseq
    if fairseq and args.cmd not in ("run", "branch"):
        p.error(f"`{args.cmd}` takes no FAIRSEQ_FLAGS after --")
    for name in ("max_update", "decay_updates", "valid_every", "stop_at", "seed", "threads"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be a positive integer, not {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "report":
        import quadratic_report
        return quadratic_report.write(args)
    {"run": cmd_run, "branch": cmd_branch, "valid": cmd_valid, "save": cmd_save}[args.cmd](args)


if __name__ == "__main__":
    main()
