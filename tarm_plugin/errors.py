"""One-line errors for bad user input.

Library callers get an ordinary ``ValueError`` subclass; on the command line
(fairseq-train, fairseq-eval-lm) the plugin's exception hook prints just
``tarm: error: <message>`` instead of a deep stack trace.
"""

import sys


class TarmError(ValueError):
    """Bad input: a flag, file or checkpoint that cannot work."""


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if isinstance(exc, TarmError):
        print(f"tarm: error: {exc}", file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


def install_excepthook():
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
