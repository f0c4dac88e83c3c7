"""Memory kinds besides the ``tokens`` memory of :mod:`tarm_plugin.memory`: one module each.

A module placed here is imported with the package, so its
``@register_memory_kind("name")`` class is a ``--memory-kind`` and its ``OPTIONS``
become the model's flags: a new kind is one file (``docs/model.md``, "Adding a
kind of memory"; :mod:`.assoc` is the example).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
