"""What the experiment scripts share: where they find fairseq's commands (beside this
Python, the venv's bin, so ``.venv/bin/python scripts/x.py`` works without an activated
venv) and how they load a checkpoint."""

import os
import sys

BIN = os.path.dirname(sys.executable)
PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tarm_plugin")


def tool(name):
    """The path of command ``name`` in BIN, or the bare name (looked up on PATH) if absent."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def load_checkpoint(path, data, batch_size=None):
    """(model in eval mode, task) of a tarm_lm checkpoint, by fairseq's checkpoint_utils with
    the plugin imported as ``--user-dir`` does; the task reads ``data`` (a data-bin), in
    batches of ``batch_size`` samples if given (else the checkpoint's). A TarmError names
    ``--path`` if the checkpoint holds another model."""
    from argparse import Namespace

    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=PLUGIN))
    from tarm_plugin.errors import TarmError

    overrides = {"data": data}
    if batch_size is not None:
        overrides.update(batch_size=batch_size, batch_size_valid=batch_size)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
    if not hasattr(models[0], "memory"):
        raise TarmError(f"--path {path}: not a tarm_lm checkpoint")
    return models[0].eval(), task
