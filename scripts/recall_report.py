"""Long-range recall's report: tables (results.md) and the figure (recall.png) of
scripts/recall.py's finished runs (results.json), mean +- std over seeds; ``settings`` gives
the rows' order (and each setting's colour in every panel)."""

import os
import statistics

import lab
from recall_data import spec_name


def cell(values, digits=1, scale=100.0):
    """'mean +- std' of a metric over seeds in %; one seed: 'mean (n=1)'; none: ''."""
    return lab.cell(values, digits, scale, single=" (n=1)") if values else ""


def collect(results, exp, args):
    """{setting: {column: [per-seed result dict at that column]}} for one experiment."""
    table = {}
    for r in results:
        if (r.get("experiment") == "curriculum") != (exp == "curriculum"):
            continue
        train, p = tuple(r["train_distances"]), r["facts"]
        if exp == "curriculum" and p == args.facts:
            cols = {int(d): v for d, v in r["test"].items() if int(d) in args.curriculum_test}
        elif exp == "distance" and len(train) == 1 and p == args.facts and train[0] in args.distances:
            cols = {train[0]: r["test"][str(train[0])]}
        elif exp == "capacity" and train == (args.capacity_distance,) and p in args.capacity_facts:
            cols = {p: r["test"][str(args.capacity_distance)]}
        elif exp == "lengthgen" and train == tuple(args.lengthgen_train) and p == args.facts:
            cols = {int(d): v for d, v in r["test"].items()}
        else:
            continue
        for col, v in cols.items():
            table.setdefault(r["setting"], {}).setdefault(col, []).append(v)
    return table


TITLES = {"distance": ("train and test at distance D", "D"),
          "capacity": ("facts P at fixed m", "P"),
          "lengthgen": ("trained on D in {train}, tested at D", "D"),
          "curriculum": ("stages {stages}: stage s trains on D uniform over 1..s until {threshold:g}% "
                         "validation per-fact accuracy or {budget} updates; tested at D after the last", "D")}


def title_of(exp, args):
    title, _ = TITLES[exp]
    return title.format(train=",".join(map(str, args.lengthgen_train)), stages=",".join(map(str, args.curriculum)),
                        threshold=args.curriculum_threshold, budget=args.stage_updates)


def markdown(results, args, settings):
    chance = 100.0 / args.values
    out = []
    for exp in args.experiment:
        table = collect(results, exp, args)
        if not table:
            continue
        title, col = title_of(exp, args), TITLES[exp][1]
        cols = sorted({c for row in table.values() for c in row})
        for metric, name in (("fact_acc", "per-fact accuracy %"), ("all_acc", "all facts right %"),
                             ("p_right", "mean p(right value) %")):
            out.append(f"### {exp}: {name} ({title}; chance {chance:.1f}% per fact)\n")
            out.append("| setting | " + " | ".join(f"{col}={c}" for c in cols) + " |")
            out.append("|---|" + "---|" * len(cols))
            for s in settings:
                if s in table:
                    row = table[s]
                    out.append(f"| {s} | " + " | ".join(cell([v[metric] for v in row.get(c, [])]) for c in cols) + " |")
            out.append("")
        if exp == "curriculum":
            out += curriculum_tables(results, args, settings)
    titles = {"rate": "learned rate at the end of training (mean over seeds of the rate's mean, min, max)",
              "gate": "gate at the end of training (mean over seeds of the last logged mean, min, max "
                      "of the batches' gate values g_t)"}
    for kind, title in titles.items():
        rates = {}
        for r in results:  # the learned rate's / the gate's summary at the end of training, per training data
            rec = r.get("last_train_inner", {})
            if f"mem_{kind}_mean" in rec:
                name = f"{r['setting']} D={spec_name(r['train_distances'])} P={r['facts']}"
                keys = [f"mem_{kind}_{k}" for k in ("mean", "min", "max")]
                rates.setdefault(name, []).append(tuple(float(rec[k]) for k in keys))
        if rates:
            out.append(f"### {title}\n")
            out.append("| run | mean | min | max | seeds |")
            out.append("|---|---|---|---|---|")
            for name, v in rates.items():
                out.append(f"| {name} | " + " | ".join(f"{statistics.mean(x[i] for x in v):.3f}" for i in range(3))
                           + f" | {len(v)} |")
            out.append("")
    return "\n".join(out)


def curriculum_tables(results, args, settings):
    """The curriculum by seed (a seed that failed is a result, not only a wider std) and
    its stage log, as markdown lines."""
    runs = [r for r in results if r.get("experiment") == "curriculum" and r["facts"] == args.facts]
    order = {s: i for i, s in enumerate(settings)}
    runs.sort(key=lambda r: (order.get(r["setting"], len(order)), r["setting"], r["seed"]))
    pct = lambda x: "" if x is None else f"{x * 100:.1f}"  # noqa: E731
    tests = list(args.curriculum_test)
    out = [f"### curriculum: per-fact accuracy % by seed (tested at D after the last stage; chance "
           f"{100.0 / args.values:.1f}%)\n",
           "| setting | seed | " + " | ".join(f"D={d}" for d in tests) + " | stages reached |",
           "|---|---|" + "---|" * (len(tests) + 1)]
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rows = [r for r in runs if r["setting"] == setting]
        for r in rows:
            reached = sum(st["reached"] for st in r["stages"])
            out.append(f"| {setting} | {r['seed']} | " + " | ".join(
                pct(r["test"].get(str(d), {}).get("fact_acc")) for d in tests) + f" | {reached}/{len(r['stages'])} |")
        if len(rows) > 1:
            means = [[r["test"][str(d)]["fact_acc"] for r in rows if str(d) in r["test"]] for d in tests]
            out.append(f"| {setting} | mean | " + " | ".join(pct(statistics.mean(m)) if m else "" for m in means)
                       + " | |")
    out.append("")
    out.append(f"### curriculum: stages (validation per-fact accuracy % on D uniform over 1..s at the "
               f"updates the stage used, its minutes of training and checks; budget: not reached within "
               f"{args.stage_updates} updates)\n")
    out.append("| setting | seed | " + " | ".join(f"s={s}" for s in args.curriculum) + " | minutes |")
    out.append("|---|---|" + "---|" * (len(args.curriculum) + 1))
    for r in runs:
        cells = [f"{pct(st['valid']['fact_acc'])} at {st['updates']}{'' if st['reached'] else ', budget'} "
                 f"({(st['train_seconds'] + st['eval_seconds']) / 60:.1f})" for st in r["stages"]]
        out.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells)
                   + f" | {(r['train_seconds'] + r['eval_seconds']) / 60:.1f} |")
    out.append("")
    return out


def figure(results, args, path, settings):
    plt = lab.pyplot()
    # the default cycle's 10 colours (C10 is C0 again), then tab20b's for more settings (new kinds)
    colour = lambda i: f"C{i}" if i < 10 else plt.get_cmap("tab20b")((i - 10) % 20)  # noqa: E731
    exps = [e for e in args.experiment if collect(results, e, args)]
    if not exps:
        return None
    fig, axes = plt.subplots(1, len(exps), figsize=(5 * len(exps), 4), squeeze=False)
    for ax, exp in zip(axes[0], exps):
        table = collect(results, exp, args)
        for s in settings:
            if s not in table:
                continue
            cols = sorted(table[s])
            acc = [[v["fact_acc"] * 100 for v in table[s][c]] for c in cols]
            mean = [statistics.mean(a) for a in acc]
            std = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in acc]
            # one colour per setting in every panel, whatever subset a panel shows
            ax.errorbar(cols, mean, yerr=std, marker="o", capsize=3, label=s,
                        color=colour(settings.index(s)))
        ax.axhline(100.0 / args.values, color="grey", linestyle=":", label="chance")
        title, col = TITLES[exp]
        ax.set_title(f"{exp}: " + title_of(exp, args), fontsize=9, wrap=True)
        ax.set_xlabel(col)
        if col == "D":
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c for s in table for c in table[s]}))
        ax.set_xticklabels([str(c) for c in ax.get_xticks()])
        ax.set_ylabel("per-fact accuracy % (mean +- std over seeds)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(results, args, settings, command, wall):
    """results.json, results.md and recall.png under args.out; results.md starts with the
    ``command`` and its ``wall`` time (seconds) beside the runs' own. Returns the tables."""
    lab.save_json(os.path.join(args.out, "results.json"), results)
    md = markdown(results, args, settings)
    fig = figure(results, args, os.path.join(args.out, "recall.png"), settings)
    run_time = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    header = (f"Command: `{command}`\n\n"
              f"Wall time of this invocation: {wall / 60:.1f} min; {len(results)} runs on disk, "
              f"{run_time / 60:.1f} min of training + evaluation in total "
              f"({run_time / max(len(results), 1):.0f} s per run).\n\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + md + (f"\n![recall]({os.path.basename(fig)})\n" if fig else ""))
    return md
