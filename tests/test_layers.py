"""The package's imports run one way (the layers contract in .importlinter)."""

import os
import shutil

from conftest import BIN, ROOT, run

CONFIG = os.path.join(ROOT, ".importlinter")


def lint_imports(cwd):
    # PYTHONPATH: import-linter finds the package to analyse on sys.path
    return run([os.path.join(BIN, "lint-imports"), "--config", CONFIG, "--no-cache"],
               env={"PYTHONPATH": cwd}, cwd=cwd)


def test_imports_run_one_way():
    p = lint_imports(ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 kept, 0 broken" in p.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    """The contract sees imports inside functions too: a lower layer reaching up fails."""
    pkg = tmp_path / "tarm_plugin"
    shutil.copytree(os.path.join(ROOT, "tarm_plugin"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "memory.py", "a") as f:
        f.write("\n\ndef _reach_up():\n    from .models.tarm_lm import TarmLanguageModel  # noqa: F401\n")
    p = lint_imports(str(tmp_path))
    assert p.returncode != 0
    assert "tarm_plugin.memory is not allowed to import tarm_plugin.models" in p.stdout


def test_every_module_sits_in_a_layer(tmp_path):
    """A new module must be placed in the contract (exhaustive layers)."""
    pkg = tmp_path / "tarm_plugin"
    shutil.copytree(os.path.join(ROOT, "tarm_plugin"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "unplaced.py").write_text("X = 1\n")
    p = lint_imports(str(tmp_path))
    assert p.returncode != 0
    assert "unplaced" in p.stdout
