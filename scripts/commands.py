"""Where the experiment scripts find fairseq's commands: beside this Python (the venv's
bin), so ``.venv/bin/python scripts/x.py`` works without an activated venv."""

import os
import sys

BIN = os.path.dirname(sys.executable)


def tool(name):
    """The path of command ``name`` in BIN, or the bare name (looked up on PATH) if absent."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name
