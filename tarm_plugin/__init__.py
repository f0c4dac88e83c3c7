"""tarm: Token-Averaging Recurrent Memory (TARM) and RMT for fairseq.

Use with ``--user-dir tarm_plugin`` (or ``import tarm_plugin``): registers the
task ``tarm_language_modeling``, the archs ``tarm_lm``, ``tarm_lm_wiki103``,
``tarm_lm_quadratic``, the criterion ``tarm_lm_loss`` and the memory kinds
``tokens`` and ``assoc``. The memory logic itself is in :mod:`tarm_plugin.memory`
and :mod:`tarm_plugin.kinds` (plain PyTorch).
"""

from .errors import TarmError, install_excepthook

install_excepthook()

from . import criterions, models, tasks  # noqa: E402,F401  (register with fairseq; models: the memory kinds too)
from .models.tarm_lm import load_checkpoint  # noqa: E402,F401  (a trained model and its task)

__version__ = "0.1.0"
