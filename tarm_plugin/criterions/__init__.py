from . import tarm_lm_loss  # noqa: F401
