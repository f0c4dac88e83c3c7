from . import tarm_language_modeling  # noqa: F401
