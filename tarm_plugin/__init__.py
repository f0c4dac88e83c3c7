"""tarm: Token-Averaging Recurrent Memory (TARM) and RMT for fairseq.

Use with ``--user-dir tarm_plugin`` (or ``import tarm_plugin``): registers the
task ``tarm_language_modeling``, the archs ``tarm_lm``, ``tarm_lm_wiki103``,
``tarm_lm_quadratic`` and the criterion ``tarm_lm_loss``. The memory logic
itself is in :mod:`tarm_plugin.memory` (plain PyTorch).
"""

from .errors import TarmError, install_excepthook

install_excepthook()

from . import criterions, models, tasks  # noqa: E402,F401  (register with fairseq)

__version__ = "0.1.0"
