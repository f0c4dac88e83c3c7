"""The long-document report: scripts/longdoc.py's finished runs as tables (results.md), a
figure (longdoc.png) and the budget's calibration (calibration.md, calibration.png).

Everything here reads results (each run's result.json, its docs_test.json of losses per
test document, eval-lm logs) and writes pages; nothing trains or evaluates. Depth is in
segments of L (--segment-length) tokens; "deep" tokens are DEEP or more segments into their
document. Gains are % lower perplexity; intervals are paired bootstraps over test documents.
"""

import functools
import os
import statistics
import sys

import lab
from lab import cell, markdown_table

DEEP = 8
CLASSES = ("local", "far", "new")  # eval-lm's --eval-token-classes, in docs_test.json's codes 0, 1, 2


def deep_loss(by_depth, deep=DEEP):
    """(tokens, loss in bits) over the buckets that start at depth >= deep."""
    rows = [r for r in by_depth if int(r["depth"].split("-")[0]) >= deep]
    n = sum(r["tokens"] for r in rows)
    return n, (sum(r["tokens"] * r["loss_bits"] for r in rows) / n if n else float("nan"))


def deep_ppl(evaluation):
    """Perplexity at depth >= DEEP of an eval-lm result (its ``by_depth`` table)."""
    return 2 ** deep_loss(evaluation["by_depth"])[1]


@functools.lru_cache(maxsize=None)
def _rows(path, mtime):
    """docs_test.json's rows, read once per file version (every bootstrap cell sums them)."""
    return lab.read_json(path)["rows"]


def document_sums(run_dir, deep=DEEP, cls=None):
    """{document: (tokens, nll in nats)} of a run's test tokens at depth >= ``deep`` (units of
    L), of token class ``cls`` if given (0 local, 1 far, 2 new), from docs_test.json."""
    path = os.path.join(run_dir, "docs_test.json")
    if not os.path.exists(path):
        return None
    out = {}
    for doc, depth, c, n, nll in _rows(path, os.path.getmtime(path)):
        if depth >= deep and (cls is None or c == cls):
            t, s = out.get(doc, (0, 0.0))
            out[doc] = (t + n, s + nll)
    return out


def by_setting(results):
    """{setting: {seed: result}} in the runs' order."""
    by = {}
    for r in results:
        by.setdefault(r["setting"], {})[r["seed"]] = r
    return by


def seeds_of(seeds):
    """'1,2,3': the seeds (a {seed: result} dict's keys, or any iterable of them), sorted."""
    return ",".join(str(s) for s in sorted(seeds))


def report(results, args):
    """results.md's tables (without its command line) from the finished runs, in order:
    depth, the targets, gains at depth, position in the segment, the reset ablation, the bootstrap gains,
    token classes, the memory horizon, the TARM paper's question, the checks."""
    by = by_setting(results)
    settings = [s for s in args.settings if s in by]
    depths = sorted({row["depth"] for r in results for row in r["test"]["by_depth"]}, key=lambda d: int(d.split("-")[0]))
    seeds = sorted({r["seed"] for r in results})
    out = [f"Test perplexity by depth into the document (units of {args.segment_length} tokens = one "
           f"segment of L); mean +- std over seeds {', '.join(map(str, seeds))} where more than one ran.", ""]
    out += markdown_table(
        ["setting", "seeds", "all tokens", f"depth >= {DEEP}", *depths],
        [[s, seeds_of(by[s]), cell([r["test"]["ppl"] for r in by[s].values()]), cell([r["deep_ppl"] for r in by[s].values()]),
          *(cell([2 ** x["loss_bits"] for r in by[s].values() for x in r["test"]["by_depth"] if x["depth"] == d], 1)
            for d in depths)] for s in settings])
    out += targets(by, seeds, args)
    out += gains_at_depth(by, settings, seeds)
    out += by_position(by, settings, args)
    out += reset_ablation(by, settings)
    out += bootstrap_tables(by, seeds, args)
    out += class_table(by, args)
    out += horizon_table(by, args)
    out += seeds_question(by)
    if getattr(args, "compare_with", None):
        out += comparison(by, by_setting(lab.results_under(os.path.join(args.compare_with, "runs"))), args)
    out += ["", "Checks: eval-lm's validation loss against fairseq-train's last validation (bits):", ""]
    out += markdown_table(["run", "eval-lm valid", "fairseq-train valid", "test tokens scored"],
                          [[f"{s}_s{seed}", f"{r['valid_eval_lm_bits']:.4f}", r["valid_fairseq_train_bits"],
                            f"{r['test']['tokens']:,}"] for s in settings for seed, r in sorted(by[s].items())])
    return "\n".join(out) + "\n"


CARRYING = ("rmt", "tarm_a0.5", "tarm_a0.2", "tarm_gate", *lab.KINDS)  # settings whose memory carries content


def every_seed(per_seed, threshold):
    """'met in every seed (n)' / 'not met (k of n seeds)' for per-seed values {seed: value or None}
    against ``threshold`` (value >= threshold; a seed without a value does not meet it)."""
    if not any(v is not None for v in per_seed.values()):
        return "no seed yet"
    hits = sum(v is not None and v >= threshold for v in per_seed.values())
    if len(per_seed) == 1:  # "every seed" of one seed would read as more than it is
        return f"**{'met' if hits else 'not met'}** in seed {next(iter(per_seed))} (one seed)"
    return (f"**met** in every seed ({hits})" if hits == len(per_seed)
            else f"**not met** ({hits} of {len(per_seed)} seeds)")


def valid_deep_ppl(args, setting, seed, result):
    """Validation perplexity at depth >= DEEP of a run (its eval_valid.log), the test one if absent."""
    path = os.path.join(args.out, "runs", f"{setting}_s{seed}", "eval_valid.log")
    return deep_ppl(lab.read_eval_lm(path)) if os.path.exists(path) else result["deep_ppl"]


def targets(by, seeds, args):
    """The long-document issues' targets, each with its numbers per seed and whether it holds in
    every seed that ran: the calibration condition (4x against no memory at depth >= DEEP), the
    best memory setting against the prefix control at depth >= DEEP with its horizon beyond K = 1,
    the best on far tokens against no memory, and the share of the 4x gain. "Best": among the
    memory settings with the most seeds, the lowest mean validation perplexity at depth >= DEEP
    (chosen on validation, judged on test; a setting run in fewer seeds cannot hold in every seed)."""
    carrying = [s for s in CARRYING if s in by]
    if "no_memory" not in by or not carrying:
        return []
    most = max(len(by[s]) for s in carrying)
    best = min((s for s in carrying if len(by[s]) == most),
               key=lambda s: statistics.mean(valid_deep_ppl(args, s, x, r) for x, r in by[s].items()))

    def line(label, setting, baseline, threshold, **where):
        """A target's line over the seeds in which both ``setting`` and ``baseline`` ran (a seed
        of one of them alone is named, not counted as a miss: the 4x reference runs in fewer
        seeds by plan), or none if no seed has its numbers (runs evaluated before them)."""
        both = [x for x in seeds if x in by[setting] and x in by[baseline]]
        per_seed = {x: gain(by, args, setting, baseline, x, **where) for x in both}
        if all(g is None for g in per_seed.values()):
            return []
        cells = "; ".join(f"seed {seed} {gain_cell(g)}" for seed, g in per_seed.items())
        alone = [f"seed {x}: no {baseline if x in by[setting] else setting} run"
                   for x in seeds if (x in by[setting]) != (x in by[baseline])]
        return [f"- {label}: {cells}: {every_seed({k: g and g[0] for k, g in per_seed.items()}, threshold)}"
                + (f" ({'; '.join(alone)})" if alone else "")]

    out = []
    if "context4x" in by:
        out += line(f"calibration, 4x context >= 3% below no memory at depth >= {DEEP} (on test)",
                    "context4x", "no_memory", 3, point=True)
    if "prefix" in by:
        out += line(f"{best} >= 3% below the prefix control at depth >= {DEEP}", best, "prefix", 3, point=True)
    falls = {}
    for x, r in sorted(by[best].items()):
        h = horizon_of(r, args)
        if "1" in h.get("K", {}):
            k1, carried = (deep_ppl(e) for e in (h["K"]["1"], h["carried"]))
            falls[x] = (k1, carried)
    if falls:
        cells = "; ".join(f"seed {x} {k1:.2f} -> {c:.2f} ({100 * (k1 - c) / k1:.1f}% lower)" for x, (k1, c) in falls.items())
        verdict = every_seed({x: k1 - c for x, (k1, c) in falls.items()}, 1e-9).replace("met", "falling", 1)
        out.append(f"- {best}'s horizon still falling beyond K = 1 (depth >= {DEEP} on the horizon subset, "
                   f"K = 1 -> carried): {cells}: {verdict}")
    out += line(f"{best} >= 10% below no memory on far tokens", best, "no_memory", 10, **FAR)
    if "context4x" in by:
        shares = {}
        for x in seeds:
            if x in by[best] and x in by["context4x"] and x in by["no_memory"]:
                b = by["no_memory"][x]["deep_ppl"]
                full = b - by["context4x"][x]["deep_ppl"]
                shares[x] = (b - by[best][x]["deep_ppl"]) / full if full > 0 else None
        cells = "; ".join(f"seed {x} {v:.2f}" if v is not None else f"seed {x} n/a (4x not ahead)" for x, v in shares.items())
        verdict = every_seed(shares, 0.5) if any(v is not None for v in shares.values()) else "no share (4x not ahead)"
        out.append(f"- moonshot, {best} recovers >= half of the 4x reference's gain over no memory at depth >= {DEEP}: "
                   f"{cells or '-'}: {verdict} (a share of a small 4x gain says little)")
    return ["", f"Targets (over the seeds in which a setting and its baseline both ran; gains are % lower test perplexity with 95% bootstrap intervals over "
            f"the test documents; the best memory setting, by validation perplexity at depth >= {DEEP} among "
            f"those with the most seeds: {best}):", "", *out]


def gains_at_depth(by, settings, seeds):
    """Per seed: % lower perplexity than no memory at depth >= DEEP, and the share of the
    4x-context reference's gain that a setting recovers."""
    base, ref = by.get("no_memory", {}), by.get("context4x", {})
    if not base:
        return []
    rows = []
    for s in settings:
        if s == "no_memory":
            continue
        gains, shares = [], []
        for seed in seeds:
            r = by[s].get(seed)
            if r is None or seed not in base:
                gains.append("-")
                continue
            b = base[seed]["deep_ppl"]
            gains.append(f"{100 * (b - r['deep_ppl']) / b:.1f}%")
            if seed in ref and s != "context4x":
                full = b - ref[seed]["deep_ppl"]
                shares.append(f"seed {seed}: " + (f"{(b - r['deep_ppl']) / full:.2f}" if full > 0 else "n/a"))
        rows.append([s, *gains, ", ".join(shares) or "-"])
    return ["", f"Gain at depth >= {DEEP} segments against no memory, per seed (perplexity, % lower), and the "
            "share of the 4x-context reference's gain there that the setting recovers:", "",
            *markdown_table(["setting", *(f"seed {s}: gain" for s in seeds), "share of 4x gain (per seed)"], rows)]


def by_position(by, settings, args):
    """Test loss by position within the segment (the 4x reference's segments differ: left out)."""
    with_spans = [s for s in settings if s != "context4x" and all(r["test"].get("by_position") for r in by[s].values())]
    if "no_memory" not in with_spans or len(with_spans) < 2:
        return []
    labels = [x["positions"] for x in next(iter(by["no_memory"].values()))["test"]["by_position"]]
    return ["", f"Test loss (bits) by position within the segment of {args.segment_length} tokens, "
            "all depths; mean over seeds (the first positions have the least context inside the segment):", "",
            *markdown_table(["setting", *labels], [
                [s, *(cell([x["loss_bits"] for r in by[s].values() for x in r["test"]["by_position"]
                            if x["positions"] == p], 3) for p in labels)] for s in with_spans])]


def reset_ablation(by, settings):
    """Carried memory against E_0 read at every segment (--eval-reset-memory), the same checkpoints."""
    rows = []
    for s in settings:
        rs = [r for r in by[s].values() if "test_reset_memory" in r]
        if not rs:
            continue
        carried, reset = [r["deep_ppl"] for r in rs], [r["test_reset_memory"]["deep_ppl"] for r in rs]
        rows.append([s, seeds_of(r["seed"] for r in rs), cell([r["test"]["ppl"] for r in rs]),
                     cell([r["test_reset_memory"]["ppl"] for r in rs]), cell(carried), cell(reset),
                     cell([100 * (b - a) / b for a, b in zip(carried, reset)], 1) + "%"])
    if not rows:
        return []
    return ["", "How much the models rely on the carry: test perplexity with the memory carried from segment "
            "to segment (as trained) and with E_0 read at every segment (`--eval-reset-memory`), the same "
            "checkpoints; mean over seeds. A trained model reading E_0 where it was trained to read a carried "
            "memory is off its training distribution: this is not what the carried content adds (the prefix "
            "control and the memory horizon measure that):", "",
            *markdown_table(["setting", "seeds", "all: carried", "all: E_0 each segment", f"depth >= {DEEP}: carried",
                             f"depth >= {DEEP}: E_0 each segment", f"depth >= {DEEP}: % lower carried"], rows)]


FAR = {"deep": 0, "cls": 1}  # document_sums' selection of the far tokens, at every depth


def paired_gain(run_dir, base_dir, resamples, **selection):
    """(% lower perplexity, 95% interval low, high) of the run in ``run_dir`` than the one in
    ``base_dir`` on the tokens ``selection`` picks (default: depth >= DEEP), a paired bootstrap
    over the test documents; None if either has no losses per document."""
    a, b = (document_sums(d, **selection) for d in (run_dir, base_dir))
    return None if a is None or b is None else lab.bootstrap_gain(a, b, resamples)


def gain(by, args, setting, base, seed, point=False, **selection):
    """(% lower perplexity, 95% interval low, high) of ``setting`` than ``base`` in ``seed`` on the
    tokens ``selection`` picks (default: depth >= DEEP), a paired bootstrap over the test
    documents; None if either run or its losses per document are missing (with ``point``, at
    depth >= DEEP: the point estimate from the results, without an interval)."""
    if seed not in by.get(setting, {}) or seed not in by.get(base, {}):
        return None
    g = paired_gain(*(os.path.join(args.out, "runs", f"{s}_s{seed}") for s in (setting, base)), args.bootstrap,
                    **selection)
    if g is not None or selection or not point:
        return g
    # runs evaluated before docs_test.json: the point estimate, no interval
    mine, theirs = by[setting][seed]["deep_ppl"], by[base][seed]["deep_ppl"]
    return 100 * (theirs - mine) / theirs, None, None


def gain_cell(g):
    if g is None:
        return "-"
    return f"{g[0]:.1f}%" + (" (no interval)" if g[1] is None else f" [{g[1]:.1f}, {g[2]:.1f}]")


def bootstrap_tables(by, seeds, args):
    """Gains over no memory, over the prefix control and (the TARM paper's question: the averaged,
    gated and associative memories) over RMT, at depth >= DEEP and on far tokens, with 95%
    paired bootstrap intervals over the test documents, per seed. A table whose runs have no
    losses per document (evaluated before docs_test.json) is left out."""
    out = []
    for title, kw in ((f"depth >= {DEEP} (all token classes)", {}), ("far tokens (all depths)", FAR)):
        for base in ("no_memory", "prefix", "rmt"):
            if base not in by:
                continue
            against = [s for s in by if s != base and (base != "rmt" or s in CARRYING)]
            rows = [[s, *(gain_cell(gain(by, args, s, base, seed, **kw)) for seed in seeds)] for s in against]
            if any(c != "-" for r in rows for c in r[1:]):
                first = next(iter(by[base].values()))
                docs = document_sums(os.path.join(args.out, "runs", f"{base}_s{first['seed']}"), **kw) or {}
                out += ["", f"Gain over {base} on {title}: % lower test perplexity, 95% interval from "
                        f"{args.bootstrap} bootstrap resamples of the {len(docs)} test documents that have such "
                        "tokens (paired), per seed:", "",
                        *markdown_table(["setting", *(f"seed {x}" for x in seeds)], rows)]
    return out


def class_table(by, args):
    """Test perplexity by token class (the same tokens in every run)."""
    classed = [s for s in by if all(r["test"].get("by_class") for r in by[s].values())]
    if not classed:
        return []
    ref = next(iter(by[classed[0]].values()))["test"]["by_class"]
    return ["", f"Test perplexity by token class (local: among the {args.segment_length} tokens before it; "
            "far: earlier in its document, not within them; new: first occurrence; the same tokens for "
            "every setting); mean +- std over seeds. Tokens: " +
            ", ".join(f"{c} {ref[c]['tokens']:,}" for c in CLASSES if c in ref) + ".", "",
            *markdown_table(["setting", "seeds", *CLASSES], [
                [s, seeds_of(by[s]), *(cell([2 ** r["test"]["by_class"][c]["loss_bits"] for r in by[s].values()
                                             if c in r["test"]["by_class"]]) for c in CLASSES)] for s in classed])]


def horizon_of(result, args):
    """A run's memory-horizon evaluation if it was made on this subset (--horizon-docs), else {}."""
    h = result.get("horizon") or {}
    return h if h.get("docs") == args.horizon_docs else {}


def horizon_table(by, args):
    """Perplexity at depth >= DEEP on the horizon subset, memory built over K segments, and carried."""
    with_h = [s for s in by if any(horizon_of(r, args) for r in by[s].values())]
    if not with_h:
        return []
    ks, rows = args.horizons, []
    for s in with_h:
        hs = {r["seed"]: horizon_of(r, args) for r in by[s].values() if horizon_of(r, args)}
        rows.append([s, seeds_of(hs),
                     *(cell([deep_ppl(h["K"][str(k)]) for h in hs.values()
                             if str(k) in h["K"]]) for k in ks),
                     cell([deep_ppl(h["carried"]) for h in hs.values()])])
    return ["", f"Memory horizon: test perplexity at depth >= {DEEP} on the horizon subset (test documents of "
            f"{args.horizon_docs[0]}-{args.horizon_docs[1]} segments), the memory built from E_0 over only the "
            "K segments before each scored one (`--eval-memory-horizon K`), and carried as trained; "
            "mean over seeds:", "", *markdown_table(["setting", "seeds", *(f"K = {k}" for k in ks), "carried"], rows)]


def comparison(by, other, args):
    """Each run against the run of the same setting and seed under ``args.compare_with``
    (another configuration of the same model and data, e.g. BPTT through 8 segments against
    the matrix's 4): % lower test perplexity at depth >= DEEP and on far tokens, 95% paired
    bootstrap intervals over the test documents, and both runs' memory horizons. ``other``:
    {setting: {seed: result}} there."""
    pairs = [(s, seed, r, other[s][seed]) for s in by for seed, r in sorted(by[s].items())
             if seed in other.get(s, {})]
    if not pairs:
        return []
    rows, horizons = [], []
    for s, seed, mine, theirs in pairs:
        dirs = [os.path.join(d, "runs", f"{s}_s{seed}") for d in (args.out, args.compare_with)]
        cells = [gain_cell(paired_gain(*dirs, args.bootstrap, **kw)) for kw in ({}, FAR)]
        rows.append([f"{s}_s{seed}", f"{theirs['deep_ppl']:.2f}", f"{mine['deep_ppl']:.2f}", *cells])
        for label, r in (("here", mine), ("compared", theirs)):
            h = horizon_of(r, args)
            if h:
                horizons.append([f"{s}_s{seed}", label, *(f"{deep_ppl(h['K'][str(k)]):.2f}" if str(k) in h["K"]
                                                          else "-" for k in args.horizons),
                                 f"{deep_ppl(h['carried']):.2f}"])
    out = ["", f"Against the same setting and seed under `{args.compare_with}` (% lower test perplexity here; "
           f"95% interval from {args.bootstrap} paired bootstrap resamples of the test documents):", "",
           *markdown_table(["run", f"depth >= {DEEP} there", f"depth >= {DEEP} here", f"gain at depth >= {DEEP}",
                            "gain on far tokens"], rows)]
    if horizons:
        out += ["", f"Memory horizons of both (test perplexity at depth >= {DEEP} on the horizon subset, the memory "
                "built over K segments, and carried):", "",
                *markdown_table(["run", "where", *(f"K = {k}" for k in args.horizons), "carried"], horizons)]
    return out


def seeds_question(by):
    """TARM against RMT at depth >= DEEP per seed, by the separation rule of docs/results.md."""
    tarm = [s for s in ("tarm_a0.5", "tarm_a0.2", "tarm_gate") if s in by]
    if "rmt" not in by or not tarm:
        return []
    rmt, rows = {seed: r["deep_ppl"] for seed, r in by["rmt"].items()}, []
    for s in tarm:
        mine = {seed: r["deep_ppl"] for seed, r in by[s].items() if seed in rmt}  # the seeds both ran
        if not mine:
            continue
        verdict = lab.separation(mine, rmt)
        if verdict == "not separated" and lab.separation(rmt, mine) != "not separated":
            verdict = "rmt " + lab.separation(rmt, mine)
        rows.append([s, seeds_of(mine), ", ".join(f"{mine[x]:.2f}" for x in sorted(mine)),
                     ", ".join(f"{rmt[x]:.2f}" for x in sorted(mine)), verdict])
    return ["", f"The TARM paper's question at depth >= {DEEP} (test perplexity in the seeds both ran; the separation "
            "rule of `docs/results.md`):", "",
            *markdown_table(["setting", "seeds", "per seed", "rmt per seed", "against rmt"], rows)]


def figure(results, args, path):
    """Loss by depth per setting (mean over seeds), the same against no memory, and the
    loss against no memory by position within the segment."""
    plt = lab.pyplot()

    def mean_by(rs, table, key):
        labels = [x[key] for x in rs[0]["test"][table]]
        return labels, [statistics.mean(x["loss_bits"] for r in rs for x in r["test"][table] if x[key] == k)
                        for k in labels]

    by = {s: [r for r in results if r["setting"] == s] for s in args.settings}
    by = {s: rs for s, rs in by.items() if rs}
    fig, (ax, diff, pos) = plt.subplots(3, 1, figsize=(7, 10), gridspec_kw={"height_ratios": [3, 2, 2]})
    base = mean_by(by["no_memory"], "by_depth", "depth")[1] if "no_memory" in by else None
    base_pos = (mean_by(by["no_memory"], "by_position", "positions")[1]
                if "no_memory" in by and all(r["test"].get("by_position") for r in by["no_memory"]) else None)
    for s, rs in by.items():
        depths, mean = mean_by(rs, "by_depth", "depth")
        xs = list(range(len(depths)))
        ax.plot(xs, mean, marker="o", label=f"{s} (n={len(rs)})")
        if base is not None and len(base) == len(mean):
            diff.plot(xs, [m - b for m, b in zip(mean, base)], marker="o", label=s)
        if base_pos is not None and s != "context4x" and all(r["test"].get("by_position") for r in rs):
            spans, mean_pos = mean_by(rs, "by_position", "positions")
            pos.plot(range(len(spans)), [m - b for m, b in zip(mean_pos, base_pos)], marker="o", label=s)
            pos.set_xticks(range(len(spans)), spans)
    for a in (ax, diff):
        a.set_xticks(xs, depths, rotation=45)
        a.grid(alpha=0.3)
    ax.set_ylabel("test loss (bits/token)")
    ax.set_title(f"{os.path.basename(os.path.normpath(args.data))}: loss by depth into the document")
    ax.legend(fontsize=8)
    diff.axhline(0, color="gray", lw=0.8)
    diff.set_ylabel("minus no memory (bits)")
    diff.set_xlabel(f"depth into the document (segments of {args.segment_length} tokens)")
    pos.axhline(0, color="gray", lw=0.8)
    pos.set_ylabel("minus no memory (bits)")
    pos.set_xlabel(f"position within the segment of {args.segment_length} tokens (all depths)")
    pos.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def calibration(curves, train_curves, out, command):
    """calibration.md, .json and .png of the budget's calibration: ``curves`` {run: {update:
    {valid_bits, deep_ppl, train_valid_bits}}} from the kept checkpoints, ``train_curves``
    {run: {update: fairseq-train's validation bits}}; no memory against 4x per seed, the
    condition being >= 3% lower perplexity at depth >= DEEP. Returns the page's lines."""
    names = sorted(curves)
    updates = sorted({u for c in curves.values() for u in c})
    validated = sorted({u for v in train_curves.values() for u in v})
    lines = ["fairseq-train's validation loss (bits/token, all tokens) at every update it validated:", "",
             *markdown_table(["update", *names], [[u, *(f"{train_curves[n][u]:.3f}" if u in train_curves[n] else "-"
                                                        for n in names)] for u in validated])]
    rows = []
    for u in updates:
        cells = []
        for n in names:
            pnt = curves[n].get(u)
            if pnt is None:
                cells += ["-", "-"]
                continue
            tv = f" ({pnt['train_valid_bits']:.3f})" if pnt["train_valid_bits"] is not None else ""
            cells += [f"{pnt['valid_bits']:.4f}{tv}", f"{pnt['deep_ppl']:.2f}"]
        rows.append([u, *cells])
    lines += ["", f"Validation by update: eval-lm's loss (bits, all tokens) and perplexity at depth >= {DEEP} of each kept "
              "checkpoint (fairseq-train's own validation loss in brackets where it validated there).", "",
              *markdown_table(["update", *(c for n in names for c in (f"{n}: bits", f"{n}: depth >= {DEEP}"))], rows)]
    pairs = [(b, r) for b in names if b.startswith("no_memory_") for r in names
             if r.startswith("context4x_") and r.split("_s")[-1] == b.split("_s")[-1]]
    for b, r in pairs:
        lines += ["", f"{r} against {b} at depth >= {DEEP} on validation (% lower perplexity; the calibration "
                  "condition is >= 3%):", ""]
        for u in updates:
            if u in curves[b] and u in curves[r]:
                g = 100 * (1 - curves[r][u]["deep_ppl"] / curves[b][u]["deep_ppl"])
                lines.append(f"- update {u}: {g:+.1f}% ({'met' if g >= 3 else 'not met'})")
    lab.save_json(os.path.join(out, "calibration.json"), {"eval_lm": curves, "train_valid_bits": train_curves})
    with open(os.path.join(out, "calibration.md"), "w") as f:
        f.write(f"Command: {command}\n\n" + "\n".join(lines) + "\n")
    plt = lab.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, n in enumerate(names):
        us = sorted(curves[n])
        a1.plot(us, [curves[n][u]["valid_bits"] for u in us], marker="o", color=f"C{i}", label=f"{n} (eval-lm)")
        tv = sorted(train_curves[n])
        a1.plot(tv, [train_curves[n][u] for u in tv], ls="--", color=f"C{i}", alpha=0.6,
                label=f"{n} (fairseq-train)")
        a2.plot(us, [curves[n][u]["deep_ppl"] for u in us], marker="o", color=f"C{i}", label=n)
    a1.set_ylabel("validation loss (bits/token)")
    a2.set_ylabel(f"validation perplexity, depth >= {DEEP}")
    for a in (a1, a2):
        a.set_xlabel("update")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "calibration.png"), dpi=120)
    return lines


def unigram_bits(data, doc_separator, split="test"):
    """Cross-entropy (bits/token) of the split's document tokens under the training
    split's unigram distribution (counts + 1): the loss a model stuck at its
    unigram stage would have."""
    import numpy as np
    from prepare_longdoc import documents

    d, train = documents(data, "train", doc_separator)
    counts = np.bincount(np.concatenate(train), minlength=len(d)).astype(np.float64) + 1
    test = np.concatenate(documents(data, split, doc_separator)[1])
    return float(-np.log2(counts[test] / counts.sum()).mean())


def write(results, args, command):
    """results.json, results.md (with the unigram baseline) and longdoc.png under args.out;
    returns the tables."""
    lab.save_json(os.path.join(args.out, "results.json"), results)
    unigram = unigram_bits(args.data, args.doc_separator)
    table = report(results, args) + (f"\nA unigram model of the training split scores the test split at "
                                     f"{unigram:.3f} bits/token (perplexity {2 ** unigram:.1f}).\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"Command: {command}\n\n{table}")
    if results:
        figure(results, args, os.path.join(args.out, "longdoc.png"))
    return table


if __name__ == "__main__":
    sys.exit("longdoc_report.py is a module of scripts/longdoc.py: run `python scripts/longdoc.py ... --report-only`")
