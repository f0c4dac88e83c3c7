from . import tarm_lm  # noqa: F401
