"""Run a fairseq console script or a Python script in a forked child of the test process.

A fresh ``fairseq-train`` spends ~4 s of CPU importing torch, fairseq and fairseq's
dependencies (scikit-learn alone is 2 s) before it reads its first flag; most CLI tests
here run for less than that. The test process has imported all of it already, so a
child forked from it starts the same entry point (``fairseq_cli.train:cli_main`` for
``fairseq-train``) at once. What a fresh process would own is rebuilt in the child:
argv, environment, working directory, stdin/stdout/stderr (fd level, so subprocesses the
child starts write to them too), logging set up by the entry module as at its import,
Python's default warning filters, exit status (SystemExit codes, the exception hook and
1 for an uncaught exception) and exit handlers (the child's own, not the parent's). ``run(..., fork=False)`` or
``TARM_TEST_FORK=0`` runs a real subprocess instead.
"""

import atexit
import importlib
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from importlib.metadata import entry_points

# Python's filters as a fresh interpreter has them (pytest edits them during a test)
_FRESH_FILTERS = list(warnings.filters)


def entry_point(name):
    """'module:function' of a console script installed in this environment, or None."""
    found = entry_points(group="console_scripts", name=name)
    return next(iter(found)).value if found else None


def forkable(cmd):
    """The target of ``cmd`` if it can run in a fork: a fairseq console script or ``python x.py``."""
    if cmd[0].startswith("fairseq-"):
        ep = entry_point(cmd[0])
        return ("entry", ep) if ep else None
    if cmd[0] in (sys.executable, "python") and len(cmd) > 1 and cmd[1].endswith(".py"):
        return ("script", cmd[1])
    return None


def _child(target, cmd, env, cwd, stdin_path, out_path, err_path):
    """Runs in the forked child; never returns."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # exit handlers are the parent's business (its tempfile/tmp_path finalizers would delete
    # directories the tests still use); keep fairseq's, which closes TensorBoard writers
    atexit._clear()
    for finalizer in list(weakref.finalize._registry):
        finalizer.atexit = False
    if "fairseq.logging.progress_bar" in sys.modules:
        atexit.register(sys.modules["fairseq.logging.progress_bar"]._close_writers)
    for fd, path, mode in ((0, stdin_path, os.O_RDONLY), (1, out_path, os.O_WRONLY), (2, err_path, os.O_WRONLY)):
        new = os.open(path, mode)
        os.dup2(new, fd)
        os.close(new)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    warnings.filters[:] = _FRESH_FILTERS
    warnings._filters_mutated()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    code = 0
    try:
        kind, what = target
        if kind == "entry":
            module_name, func = what.split(":")
            fresh = module_name not in sys.modules
            module = importlib.import_module(module_name)
            if not fresh:  # replay its import-time set-up (fairseq_cli modules configure logging there)
                module = importlib.reload(module)
            sys.argv = list(cmd)
            result = getattr(module, func)()
            if result not in (None, 0):
                raise SystemExit(result)
        else:
            sys.argv = list(cmd[1:])
            sys.path.insert(0, os.path.dirname(os.path.abspath(what)))
            runpy.run_path(what, run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_forked(target, cmd, env, cwd, input=None, timeout=600):
    """``subprocess.run(cmd, capture_output=True, text=True, ...)`` in a fork of this process."""
    # import in this process what every child needs, once, so children inherit it
    importlib.import_module("fairseq_cli.train")
    if target[0] == "entry":
        importlib.import_module(target[1].split(":")[0])
    with tempfile.TemporaryDirectory(prefix="forkrun") as tmp:
        paths = [os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")]
        for path, text in zip(paths, (input or "", "", "")):
            with open(path, "w") as f:
                f.write(text)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _child(target, cmd, env, cwd, *paths)
            finally:
                os._exit(1)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(cmd, timeout)
            time.sleep(0.02)
        out, err = (open(p, errors="replace").read() for p in paths[1:])
    return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), out, err)
