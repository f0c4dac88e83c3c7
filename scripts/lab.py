"""The experiment library: what the ablation (ablate.py), long documents (longdoc.py),
recall (recall.py) and quadratic (quadratic.py, eval_quadratic.py) share,
so that each of them only says what is its own (its settings, data and tables).

  settings   the named memory settings, as fairseq flags (``setting_flags``)
  commands   fairseq-train / fairseq-eval-lm command lines with the flags every experiment
             passes (``train_command``, ``eval_command``), found beside this Python
  runs       a command run with its output logged (``run_logged``; ``eval_logged``: an
             eval-lm read back), training that stops at its budget (``train_unless_done``),
             a run's flags (``run_config``) and its cached result.json, refused if made with
             others (``cached_result``, ``made_with``, ``load_result``, ``save_result``,
             ``results_under``)
  logs       fairseq's JSON log records (``log_records``, ``valid_curve``), eval-lm's
             totals and tables (``eval_lm``)
  checkpoints  ``load_checkpoint``: a trained model and its task, as fairseq loads them
  reports    the command line a report was made by (``command_line``), mean +- std cells,
             the separation rule of docs/results.md, a paired bootstrap over documents,
             binomial intervals, matplotlib set up for files

Plain functions over paths and dicts; an experiment script imports what it needs
(``import lab``: the scripts directory is on sys.path when a script runs).
"""

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "tarm_plugin")
BIN = os.path.dirname(sys.executable)

# ------------------------------------------------------------------- settings
# name: fairseq model flags. Memory settings get --num-memory-tokens from the experiment
# (its m); a setting naming --num-memory-tokens itself has no memory.
SETTINGS = {
    "no_memory": ["--num-memory-tokens", "0"],
    "prefix": ["--memory-ema-alpha", "0"],  # the same learned tokens read by every segment, nothing carried
    "rmt": ["--memory-ema-alpha", "1"],
    "tarm_a0.8": ["--memory-ema-alpha", "0.8"],
    "tarm_a0.7": ["--memory-ema-alpha", "0.7"],
    "tarm_a0.5": ["--memory-ema-alpha", "0.5"],
    "tarm_a0.2": ["--memory-ema-alpha", "0.2"],
    "tarm_learned": ["--memory-ema-learned", "--memory-ema-alpha", "0.5"],  # a = sigmoid(b), from 0.5
    "tarm_gate": ["--memory-gate", "--memory-ema-alpha", "0.5"],  # content gate, starting as a = 0.5
}


def memory_kinds(plugin=PLUGIN):
    """The memory kinds in ``plugin``/kinds/, in module order: the names of the classes decorated
    with ``register_memory_kind("name")`` (or ``name=``) in the modules the package imports, read
    from their source (listing them imports no fairseq)."""
    import ast
    import pkgutil

    kinds_dir, found = os.path.join(plugin, "kinds"), []
    if not os.path.isdir(kinds_dir):
        return found
    for module in sorted(pkgutil.iter_modules([kinds_dir]), key=lambda m: m.name):
        path = os.path.join(kinds_dir, module.name, "__init__.py") if module.ispkg else \
            os.path.join(kinds_dir, module.name + ".py")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
        for dec in (dec for cls in classes for dec in cls.decorator_list if isinstance(dec, ast.Call)):
            if getattr(dec.func, "id", getattr(dec.func, "attr", None)) != "register_memory_kind":
                continue
            args = list(dec.args[:1]) + [k.value for k in dec.keywords if k.arg == "name"]
            found += [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return found


def refuse_kind_names(names, where="scripts/lab.py"):
    """Stop (one line) if a kind has the name of one of ``names``, settings of ``where``: it
    would replace that setting, and a cached run of that name would pass for the kind's."""
    clash = sorted(set(KINDS) & set(names))
    if clash:
        sys.exit(f"lab: memory kind {', '.join(clash)} (tarm_plugin/kinds/) has the name of a setting of "
                 f"{where}: rename the kind")


# every kind there is a setting of its own name with its defaults (assoc: the associative memory,
# docs/model.md): a new kind's file puts it on the benchmarks that take kinds (longdoc.py, recall.py)
KINDS = memory_kinds()
refuse_kind_names(SETTINGS)
SETTINGS.update({kind: ["--memory-kind", kind] for kind in KINDS})


def has_memory(flags):
    """Whether model flags (a SETTINGS value) leave the memory tokens to the experiment."""
    return "--num-memory-tokens" not in flags


def setting_flags(flags, memory_tokens):
    """Model flags with ``--num-memory-tokens memory_tokens`` first for a memory setting."""
    return (["--num-memory-tokens", str(memory_tokens)] if has_memory(flags) else []) + list(flags)


# ------------------------------------------------------------------- commands
def tool(name):
    """The path of command ``name`` beside this Python (the venv's bin, so that
    ``.venv/bin/python scripts/x.py`` needs no activated venv), or the bare name. Under the test
    suite's fork server (TARM_FORKSERVER, tests/forkserver.py), the shim it put first on PATH."""
    if os.environ.get("TARM_FORKSERVER"):
        import shutil

        found = shutil.which(name)
        if found:
            return found
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def train_command(data, save_dir, seed, *flags, arch="tarm_lm", adam_betas="(0.9, 0.98)", user_dir=PLUGIN,
                  log_interval=50):
    """fairseq-train of the plugin's task, model ``arch`` and criterion with Adam (``adam_betas``;
    None: fairseq's default) on the CPU, a JSON log and no epoch checkpoints; ``flags`` are the
    experiment's (data layout, model size, memory, LR schedule, budget, validation and checkpoint
    intervals)."""
    betas = ["--adam-betas", adam_betas] if adam_betas else []
    return [tool("fairseq-train"), data, "--user-dir", user_dir, "--task", "tarm_language_modeling", "--arch",
            arch, *flags, "--criterion", "tarm_lm_loss", "--optimizer", "adam", *betas, "--seed", str(seed), "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--save-dir", save_dir,
            "--log-format", "json", "--log-interval", str(log_interval), "--no-progress-bar"]


def eval_command(data, checkpoint, split, *flags, batch_size, user_dir=PLUGIN):
    """fairseq-eval-lm of a plugin checkpoint on ``split`` on the CPU."""
    return [tool("fairseq-eval-lm"), data, "--user-dir", user_dir, "--task", "tarm_language_modeling", *flags,
            "--batch-size", str(batch_size), "--path", checkpoint, "--gen-subset", split, "--cpu",
            "--num-workers", "0"]


# ----------------------------------------------------------------------- runs
def run_logged(cmd, log_path, mode="a", threads=None, who="lab"):
    """Run ``cmd`` with its output in ``log_path`` (opened with ``mode``), the command line
    first, on ``threads`` CPU threads (default: OMP_NUM_THREADS as set, else 2); a failure
    stops the experiment with one line naming the log, and the log's tail."""
    threads = str(threads or os.environ.get("OMP_NUM_THREADS", "2"))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with open(log_path, mode) as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if p.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{who}: command failed ({log_path}):\n{tail}")


def eval_logged(cmd, log_path, **kw):
    """fairseq-eval-lm ``cmd`` run into a fresh ``log_path`` (``run_logged``), its totals and
    tables read back (``eval_lm``)."""
    run_logged(cmd, log_path, mode="w", **kw)
    return read_eval_lm(log_path)


def train_unless_done(cmd, save_dir, max_update, log_path, **kw):
    """Run fairseq-train ``cmd`` (``run_logged``) unless its save dir's checkpoint_last.pt is
    at ``max_update`` already; returns whether it trained. fairseq-train started at its
    --max-update trains one update more: a run whose training finished but whose evaluations
    were cut (or that is evaluated again) would evaluate another model."""
    if resume_point(save_dir) >= max_update:
        return False
    run_logged(cmd, log_path, **kw)
    return True


def code_version():
    """The commit of the code that runs (``git describe --always --dirty``), for the record
    of a run that other sessions' code may continue; None outside a git checkout."""
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip() or None if p.returncode == 0 else None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def save_json(path, obj):
    """Written aside and moved in: a kill leaves the old file or the new one, never half. The
    aside file is this writer's own: two matrix workers report into one results.json."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_result(run_dir):
    """A run's result.json, or None if it has not finished."""
    path = os.path.join(run_dir, "result.json")
    return read_json(path) if os.path.exists(path) else None


def save_result(run_dir, result):
    save_json(os.path.join(run_dir, "result.json"), result)


def run_config(args, names, when_set=()):
    """What a run's result depends on: the ``names`` fields of parsed ``args`` (a selection of
    runs, such as settings and seeds, is not part of it), and the ``when_set`` fields when
    they are set (flags added later: runs made before them still match)."""
    out = {k: getattr(args, k) for k in names}
    out.update({k: getattr(args, k) for k in when_set if getattr(args, k)})
    return out


def made_with(result, config, key="config", by_name=()):
    """Whether a run's ``result`` was made with ``config`` (its ``result[key]``). The fields in
    ``by_name`` (paths, e.g. a data-bin) count by their last name: the same runs are read from
    another checkout or machine, by a path spelled otherwise (relative, absolute)."""
    made = result.get(key)
    if not isinstance(made, dict) or any(k not in made for k in by_name):  # another experiment's result
        return False
    name = lambda c: dict(c, **{k: os.path.basename(os.path.normpath(c[k])) for k in by_name})  # noqa: E731
    return name(made) == name(config)


def cached_result(run_dir, config, refusal, **match):
    """A run's result.json if it has finished (None if not), made with ``config``
    (``made_with``, its ``match`` keywords): one made with other flags stops the experiment
    with the one line ``refusal`` rather than be mixed with these runs or overwritten."""
    result = load_result(run_dir)
    if result is not None and not made_with(result, config, **match):
        raise SystemExit(refusal)
    return result


def results_under(runs_dir, name="result.json"):
    """Every run's result under ``runs_dir`` (one directory per run), in name order."""
    if not os.path.isdir(runs_dir):
        return []
    paths = (os.path.join(runs_dir, x, name) for x in sorted(os.listdir(runs_dir)))
    return [read_json(p) for p in paths if os.path.exists(p)]


# ----------------------------------------------------------------------- logs
def log_records(log_path, *kinds):
    """The JSON records of a fairseq JSON log's lines of ``kinds`` (default: valid; also
    train_inner, train), in the log's order."""
    marks = [f"| {k} | " for k in kinds or ("valid",)]
    out = []
    with open(log_path) as f:
        for line in f:
            mark = next((m for m in marks if m in line), None)
            if mark:
                out.append(json.loads(line[line.index(mark) + len(mark):]))
    return out


def valid_curve(log_path, key="valid_loss"):
    """[(num_updates, value of ``key``)] of the validation records (default: the loss,
    base 2). A run killed and resumed validates some updates again: the later record is
    the run's, as its later training went on from it."""
    return sorted({int(r["valid_num_updates"]): float(r[key]) for r in log_records(log_path)}.items())


def last_record(log_path, kind="train_inner"):
    """The last record of ``kind`` in a fairseq JSON log (loss, memory statistics), or {}."""
    recs = log_records(log_path, kind)
    return recs[-1] if recs else {}


def eval_lm(text):
    """fairseq-eval-lm's totals (tokens, loss in bits, perplexity) and the plugin's tables
    by depth, by position within the segment and by token class, from its output."""
    row = r"([\d,]+)\s+([\d.]+)\s+[\d.]+$"
    depth = re.findall(r"eval_segments(?: \| |:)\s*(\d+(?:-\d+)?)\s+" + row, text, re.M)
    spans = re.findall(r"eval_segments(?: \| |:)\s*pos (\d+-\d+)\s+" + row, text, re.M)
    classes = re.findall(r"eval_segments(?: \| |:)\s*class (\w+)\s+" + row, text, re.M)
    counts, losses = re.findall(r"Evaluated ([\d,]+) tokens", text), re.findall(r"Loss \(base 2\): ([\d.]+)", text)
    if not counts or not losses:
        raise ValueError("no fairseq-eval-lm totals in this output")
    bits = float(losses[-1])
    printed = re.findall(r"Perplexity: ([\d.]+)", text)
    num = lambda n: int(n.replace(",", ""))  # noqa: E731
    if depth and sum(num(n) for _, n, _ in depth) != num(counts[-1]):
        raise ValueError("eval-lm's depth table does not sum to its scored tokens")
    return {"tokens": num(counts[-1]), "loss_bits": bits, "ppl": 2 ** bits,
            "ppl_printed": float(printed[-1]) if printed else 2 ** bits,  # eval-lm's own, to 2 decimals
            "by_class": {c: {"tokens": num(n), "loss_bits": float(b)} for c, n, b in classes},
            "by_depth": [{"depth": d, "tokens": num(n), "loss_bits": float(b)} for d, n, b in depth],
            "by_position": [{"positions": p, "tokens": num(n), "loss_bits": float(b)} for p, n, b in spans]}


def read_eval_lm(path):
    with open(path) as f:
        return eval_lm(f.read())


# ---------------------------------------------------------------- checkpoints
def import_plugin():
    """This checkout's ``tarm_plugin``, imported as ``--user-dir`` imports it (not another
    checkout's editable install)."""
    from argparse import Namespace

    from fairseq import utils

    utils.import_user_module(Namespace(user_dir=PLUGIN))
    import tarm_plugin

    return tarm_plugin


def load_checkpoint(path, data, batch_size=None):
    """``tarm_plugin.load_checkpoint`` (model in eval mode, task)."""
    return import_plugin().load_checkpoint(path, data, batch_size)


RUN_LOCK = "driver.lock"  # a driver's claim on a run dir (fairseq-train's own lock is tarm.lock)


def claim_run(run_dir, who="lab"):
    """Whether this process may train and evaluate ``run_dir``: it takes the dir's driver lock
    for as long as it lives (``tarm_plugin.savedir``; the kernel drops it however the process
    ends). A second driver reaching the run while the first still evaluates it (fairseq-train's
    lock is gone by then) gets False and a line naming the holder, not evaluations run twice
    into the same logs."""
    import_plugin()
    from tarm_plugin.savedir import lock_save_dir

    holder = lock_save_dir(run_dir, RUN_LOCK)
    if holder is not None:
        print(f"{who}: {run_dir} is in use by another process ({holder}): skipped", flush=True)
    return holder is None


def resume_point(run_dir):
    """The update count a fairseq run directory resumes from: that of its checkpoint_last.pt,
    0 before its first save.

    fairseq saves a checkpoint's first file atomically (a .tmp file renamed) and then copies
    it, non-atomically, to the others (checkpoint_best.pt, checkpoint_last.pt). A kill during
    that copy leaves checkpoint_last.pt truncated (or absent after the very first save); then
    the newest complete checkpoint in the directory that holds its optimizer state (the first
    file of that same save; not a `quadratic.py save --checkpoints` copy of the best one) is
    put in its place (a note on stderr) and the run resumes from it."""
    import glob
    import shutil

    last = os.path.join(run_dir, "checkpoint_last.pt")
    others = [p for p in glob.glob(os.path.join(run_dir, "checkpoint*.pt")) if p != last]
    if os.path.isfile(last):
        n = checkpoint_updates(last)
        if n is not None:
            return n
    elif not others:
        return 0
    readable = [(n, p) for p in others if (n := checkpoint_updates(p, resumable=True)) is not None]
    if not readable:
        raise SystemExit(f"lab: error: {last} is unreadable and no other checkpoint in {run_dir} is complete")
    n, src = max(readable)
    shutil.copyfile(src, last + ".tmp")
    os.replace(last + ".tmp", last)
    print(f"lab: {last} was missing or truncated; replaced by {os.path.basename(src)} ({n} updates)", file=sys.stderr)
    return n


def checkpoint_updates(path, resumable=False):
    """The update count stored in a fairseq checkpoint, None if it cannot be read (a
    truncated file: torch raises whatever its zip reader hits) or, with ``resumable``, if
    it holds no optimizer state (fairseq would restart from update 0 with it)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if resumable and "last_optimizer_state" not in state:
            return None
        return int(state["optimizer_history"][-1]["num_updates"])
    except Exception:
        return None


# -------------------------------------------------------------------- reports
def command_line(script, argv=None):
    """``python scripts/<script> ARGS``, a report's record of how it was made: ``argv`` as
    main() was given it, else this process's arguments."""
    return f"python scripts/{os.path.basename(script)} {' '.join(sys.argv[1:] if argv is None else argv)}"


def mean_std(values):
    """(mean, sample std) over seeds; std 0 for one value, both nan for none."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values, digits=2, scale=1.0, single=""):
    """'mean +- std' of a value over seeds, times ``scale``; one value: the mean and
    ``single`` (e.g. ' (n=1)'); none: '-'."""
    if not values:
        return "-"
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f}" + (f" +- {s:.{digits}f}" if len(values) > 1 else single)


def markdown_table(header, rows):
    """Markdown lines of a table: ``header`` and ``rows`` are lists of cells."""
    return ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def separation(a, b):
    """The rule of docs/results.md for lower-is-better values per seed {seed: value}:
    'separated', 'ahead in every seed', 'not separated' (a against b), or 'one seed'."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "one seed"
    (ma, sa), (mb, sb) = mean_std([a[s] for s in seeds]), mean_std([b[s] for s in seeds])
    every = all(a[s] < b[s] for s in seeds)
    if every and mb - ma > math.sqrt(sa ** 2 + sb ** 2):
        return "separated"
    return "ahead in every seed" if every else "not separated"


def bootstrap_gain(a, b, resamples, seed=0):
    """% lower perplexity of ``a`` than ``b`` ({document: (tokens, nll)} of the same tokens)
    and its 95% interval, resampling documents with replacement (paired: the same
    documents for both)."""
    import numpy as np

    docs = sorted(set(a) & set(b))
    if not docs or any(a[d][0] != b[d][0] for d in docs):
        raise SystemExit("bootstrap over documents needs the same scored tokens in both runs")
    n = np.array([a[d][0] for d in docs], dtype=float)
    sa, sb = np.array([a[d][1] for d in docs]), np.array([b[d][1] for d in docs])

    def gain(idx):
        return 100 * (1 - np.exp((sa[idx].sum(-1) - sb[idx].sum(-1)) / n[idx].sum(-1)))

    idx = np.random.RandomState(seed).randint(0, len(docs), size=(resamples, len(docs)))
    lo, hi = np.percentile(gain(idx), [2.5, 97.5])
    return float(gain(np.arange(len(docs)))), float(lo), float(hi)


def wilson_interval(right, total, z=1.96):
    """The Wilson score interval (95% by default) of a proportion ``right / total``."""
    if total <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def pyplot():
    """matplotlib's pyplot drawing to files (Agg), its import's debug logging quiet."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's import logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
