"""scripts/prepare_longdoc.py on a tiny fake package tree (offline): the separator layout in
the data-bin, the split by document, the stats, and re-running on a finished destdir."""

import json
import os
import random
import sys

import pytest

from conftest import ROOT, run

SCRIPT = os.path.join(ROOT, "scripts", "prepare_longdoc.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import prepare_longdoc  # noqa: E402

WORDS = ("alpha beta gamma delta value result index count total matrix vector symbol "
         "expr term factor order degree basis field ring poly root sum").split()


def fake_module(rng, n_funcs):
    """Python-like text with indentation, blank lines, a tab and trailing spaces."""
    out = ['"""A module about ' + " ".join(rng.choice(WORDS) for _ in range(6)) + '."""', ""]
    for k in range(n_funcs):
        a, b = rng.sample(WORDS, 2)
        out += [f"def {a}_{b}_{k}({a}, {b}=None):",
                f"    # {' '.join(rng.choice(WORDS) for _ in range(5))}",
                f"    if {b} is None:",
                f"        return {a} * {rng.randint(2, 99)}",
                f"\t{a} = {a} + {b}  " if k % 3 == 0 else f"    {a} = {a} - {b}",
                f"    return [{a}, {b}]", "", ""]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """pkg/ with 40 modules in 4 subpackages, a tests/ directory, a conftest.py and an empty
    __init__.py that must all stay out."""
    root = tmp_path_factory.mktemp("fake_wheel")
    rng = random.Random(0)
    files = {}
    for sub in ("core", "poly", "matrices", "series"):
        for i in range(10):
            files[f"pkg/{sub}/mod{i}.py"] = fake_module(rng, rng.randint(3, 12))
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "pkg/__init__.py").write_text("")
    (root / "pkg/conftest.py").write_text("import pytest\n")
    (root / "pkg/core/tests").mkdir()
    (root / "pkg/core/tests/test_mod0.py").write_text("def test_x():\n    assert True\n")
    (root / "pkg/README.txt").write_text("not a .py file\n")
    return root, files


def build(fake_tree, dest, *extra, source=None):
    root, _ = fake_tree
    return run([sys.executable, SCRIPT, "code", "--source", str(source or root), "--destdir", str(dest),
                "--vocab-size", "350", "--valid-percent", "20", "--test-percent", "20",
                "--min-eval-docs", "3", "--min-eval-tokens", "500", *extra])


def read_documents(dest, split, separator="<doc>"):
    """The split's documents as text, cut at the separator items, each line decoded with spm.model."""
    import sentencepiece as spm
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(dest, "dict.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(dest, split), d)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(dest, "spm.model"))
    sep = d.index(separator)
    assert sep != d.unk()
    docs, lines = [], []
    for i in range(len(ds)):
        item = ds[i].tolist()
        assert item[-1] == d.eos() and d.eos() not in item[:-1]
        if sep in item:
            assert item == [sep, d.eos()], "the separator is alone on its line"
            docs.append(lines)
            lines = []
        else:
            lines.append(sp.decode_pieces([d[t] for t in item[:-1]]))
    docs.append(lines)
    return ["".join(line + "\n" for line in doc) for doc in docs]


def test_collect_documents_leaves_out_tests_and_empty_files(fake_tree):
    root, files = fake_tree
    docs, info = prepare_longdoc.collect_documents(str(root), prepare_longdoc.CORPORA["code"], "<doc>")
    assert [rel for rel, _ in docs] == sorted(files)
    assert dict(docs) == files
    assert info == {"files": 43, "excluded": 2, "empty": 1}


def test_code_corpus_from_a_directory(fake_tree, tmp_path):
    root, files = fake_tree
    dest = tmp_path / "code"
    p = build(fake_tree, dest)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    with open(dest / "stats.json") as f:
        stats = json.load(f)
    # every split holds exactly the documents that the path hash gives it, in path order, and
    # each comes back from the data-bin byte for byte (indentation, the tab, trailing spaces)
    seen = []
    for split in ("train", "valid", "test"):
        want = [rel for rel in sorted(files) if prepare_longdoc.split_of(rel, 20, 20) == split]
        assert want, split
        got = read_documents(str(dest), split)
        assert got == [files[rel] for rel in want], split
        s = stats["splits"][split]
        assert s["documents"] == len(want) and s["separator_lines"] == len(want) - 1
        assert s["lines"] == sum(files[rel].count("\n") for rel in want)
        # the build checked the same: spm decodes every line exactly; fairseq's decode strips
        # the indented lines and shows the tab lines' tab as a stand-in
        n_lines = sum(files[rel].count("\n") for rel in want)
        assert s["decoded"]["lines"] == n_lines and s["decoded"]["spm_decode_differs"] == 0
        assert s["decoded"]["fairseq_decode_other"] == sum(files[rel].count("\t") for rel in want) > 0
        if split != "train":
            assert stats["split_documents"][split] == want
            assert s["unk_tokens"] == 0
        seen += want
    assert sorted(seen) == sorted(files)
    # the raw text in destdir holds the same layout: documents joined by one separator line
    with open(dest / "raw" / "valid.txt", encoding="utf-8") as f:
        assert f.read() == "<doc>\n".join(files[rel] for rel in stats["split_documents"]["valid"])
    # the dict has the separator once; the token counts add up to the .bin's sizes
    with open(dest / "dict.txt", encoding="utf-8") as f:
        assert [line.split()[0] for line in f].count("<doc>") == 1
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(dest / "dict.txt"))
    ds = data_utils.load_indexed_dataset(str(dest / "test"), d)
    s = stats["splits"]["test"]
    assert s["tokens"] == int(ds.sizes.sum()) - 2 * s["separator_lines"]
    assert s["doc_segments"]["32"]["median"] >= s["doc_segments"]["128"]["median"]
    assert stats["source"]["excluded"] == 2 and stats["source"]["empty"] == 1
    assert "--doc-separator '<doc>'" in p.stdout

    # the same command again: nothing rebuilt; other settings: a one-line error
    mtime = os.path.getmtime(dest / "train.bin")
    again = build(fake_tree, dest)
    assert again.returncode == 0 and "already holds this build" in again.stdout, again.stderr[-2000:]
    assert os.path.getmtime(dest / "train.bin") == mtime
    other = build(fake_tree, dest, "--separator", "<eod>")
    err = other.stderr.strip().splitlines()
    assert other.returncode != 0 and len(err) == 1 and "other settings" in err[0], other.stderr[-2000:]


def test_prose_share(tmp_path):
    prose = "The interpreter has a number of functions built into it."  # 10 plain words
    code = "    return self.func(*[a.doit() for a in args], evaluate=False)"
    marked = "Return an :term:`asynchronous iterator` for an :term:`asynchronous iterable`."
    path = tmp_path / "raw.txt"
    path.write_text(f"{prose}\n\n{code}\n<doc>\n{marked}\n")
    total = len(prose) + len(code.strip()) + len(marked)
    assert prepare_longdoc.prose_share(str(path), "<doc>") == round(len(prose) / total, 3)


@pytest.mark.parametrize("case,expect", [
    ("few_eval_docs", "fewer than --min-eval-docs"),
    ("separator_in_file", "holds a line equal to the separator"),
    ("separator_with_space", "without whitespace"),
    ("not_empty", "no finished build"),
])
def test_bad_input_is_one_line(fake_tree, tmp_path, case, expect):
    root, files = fake_tree
    dest, extra, source = tmp_path / "bin", [], None
    if case == "few_eval_docs":
        extra = ["--min-eval-docs", "100"]
    elif case == "separator_in_file":
        source = tmp_path / "tree"
        (source / "pkg").mkdir(parents=True)
        (source / "pkg" / "a.py").write_text('x = """\n<doc>\r\n"""\n')  # a CRLF line is read as <doc> too
    elif case == "separator_with_space":
        extra = ["--separator", "end of doc"]
    elif case == "not_empty":
        dest.mkdir()
        (dest / "something").write_text("x")
    p = build(fake_tree, dest, *extra, source=source)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and err[0].startswith("prepare_longdoc: error:"), p.stderr[-2000:]
    assert expect in err[0], err[0]
    assert not (dest / "train.bin").exists()
