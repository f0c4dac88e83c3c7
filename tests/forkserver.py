"""A fork server for the tests' command lines: fairseq's console scripts, torchrun and
``python script.py`` start without paying for their imports.

A fresh ``fairseq-train`` spends ~4 s of CPU importing torch, fairseq and fairseq's
dependencies (scikit-learn alone is 2 s) before it reads its first flag, and most CLI
tests run for less than that; a 2-process torchrun test pays it three times per launch.
The server imports all of it once. The tests put a directory of shims first on PATH: a
shim (a stdlib-only client named ``fairseq-train``, ``torchrun``, ``python``, ...) sends
its argv, environment, working directory and stdin/stdout/stderr file descriptors to the
server, which forks a child that runs the same entry point (``fairseq_cli.train:cli_main``
for ``fairseq-train``) as a fresh process would, and the shim exits with the child's
status. Shims are found through PATH, so commands started by bash scripts, torchrun and
the project's scripts go through the server too.

What a fresh process would own is rebuilt in the child: argv, environment, working
directory, fds 0-2, logging set up by the entry module as at its import, Python's default
warning filters, exit status (SystemExit codes, the exception hook and 1 for an uncaught
exception). The server is a plain Python process that imported what the commands import,
so the exit handlers the child inherits and runs are the ones a fresh process would have
(multiprocessing's, which stops DataLoader workers, logging's, fairseq's). If the shim dies (a timeout, torchrun
stopping a rank), the child is killed. A shim that cannot reach the server, or a command
it does not serve (``python -c``), execs the real program.

    python tests/forkserver.py SOCKET SHIM_DIR   # serve until the parent process exits
"""

import atexit
import importlib
import io
import json
import logging
import os
import runpy
import select
import signal
import socket
import struct
import sys
import traceback
import warnings
from importlib.metadata import entry_points

# Python's filters as a fresh interpreter has them
_FRESH_FILTERS = list(warnings.filters)
COMMANDS = ("fairseq-train", "fairseq-eval-lm", "fairseq-generate", "fairseq-interactive",
            "fairseq-preprocess", "fairseq-hydra-train", "torchrun")
PRELOAD = ("fairseq_cli.train", "tarm_plugin")

SHIM = """#!{python} -S
# fork-server client (tests/forkserver.py); stdlib only, so it starts in milliseconds
import json, os, socket, struct, sys
REAL = {real!r}
def real():
    os.execv(REAL, [REAL] + sys.argv[1:])
if {is_python} and not (len(sys.argv) > 1 and sys.argv[1].endswith(".py")):
    real()
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["TARM_FORKSERVER"])
except (KeyError, OSError):
    real()
msg = json.dumps({{"argv": [REAL] + sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
socket.send_fds(s, [struct.pack("!Q", len(msg))], [0, 1, 2])
s.sendall(msg)
status = b""
while len(status) < 4:
    chunk = s.recv(4 - len(status))
    if not chunk:
        sys.exit("forkserver: lost the server")
    status += chunk
code = struct.unpack("!i", status)[0]
if code < 0:  # killed by a signal: die of it too
    signal = __import__("signal")
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def write_shims(shim_dir, bin_dir):
    """One shim per served command found in ``bin_dir``, and ``python``."""
    os.makedirs(shim_dir, exist_ok=True)
    names = [n for n in COMMANDS if os.path.exists(os.path.join(bin_dir, n))]
    for name, real, is_python in [(n, os.path.join(bin_dir, n), False) for n in names] + \
                                 [("python", sys.executable, True)]:
        path = os.path.join(shim_dir, name)
        with open(path, "w") as f:
            f.write(SHIM.format(python=sys.executable, real=real, is_python=is_python))
        os.chmod(path, 0o755)


def target_of(argv):
    """('entry', 'module:function') for a console script, ('script', path) for python x.py."""
    if argv[0] == sys.executable:
        return "script", argv[1]
    name = os.path.basename(argv[0])
    found = entry_points(group="console_scripts", name=name)
    if not found:
        raise ValueError(f"forkserver: not a console script: {name}")
    return "entry", next(iter(found)).value


def run_child(target, argv, env, cwd):
    """Runs in the forked child with fds 0-2 in place; never returns."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
    root = logging.getLogger()  # unconfigured, as in a fresh interpreter
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    code = 0
    try:
        kind, what = target
        if kind == "entry":
            module_name, func = what.split(":")
            # replay the module's import-time set-up (fairseq_cli modules configure logging there)
            module = importlib.reload(importlib.import_module(module_name))
            sys.argv = list(argv)
            result = getattr(module, func)()
            if result not in (None, 0):
                raise SystemExit(result)
        else:
            sys.argv = list(argv[1:])
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


def supervise(conn, fds, request, target):
    """Fork the child that runs the request's ``target`` (a ValueError: not a command the
    server runs); report its status to the shim, or kill it if the shim goes away. Runs in a
    fork of the server; never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if isinstance(target, ValueError):
        os.write(fds[2], f"{target}\n".encode())
        conn.sendall(struct.pack("!i", 1))
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for fd, want in zip(fds, (0, 1, 2)):
            os.dup2(fd, want)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        try:
            run_child(target, request["argv"], request["env"], request["cwd"])
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    child = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, child], [], [])
        if child in ready:
            break
        if not conn.recv(1):  # the shim is gone
            os.kill(pid, signal.SIGKILL)
            break
    _, status = os.waitpid(pid, 0)
    try:
        conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
    finally:
        os._exit(0)


def recv_request(conn):
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = struct.unpack("!Q", head)[0]
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("short request")
        body += chunk
    return json.loads(body), fds


def serve(sock_path):
    parent = os.getppid()
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path + ".tmp")
    server.listen(64)
    os.rename(sock_path + ".tmp", sock_path)  # appears only once it listens
    server.settimeout(1.0)
    while os.getppid() == parent:  # serve until whoever started us exits
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        try:
            request, fds = recv_request(conn)
        except Exception:
            conn.close()
            continue
        try:
            target = target_of(request["argv"])
        except ValueError as e:
            target = e
        else:
            try:  # import the entry module here, once, so later children inherit it
                if target[0] == "entry":
                    importlib.import_module(target[1].split(":")[0])
            except Exception:
                pass  # the child imports it again and reports the error as a fresh process would
        if os.fork() == 0:
            server.close()
            supervise(conn, fds, request, target)
        conn.close()
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    sock, shim_dir = sys.argv[1:3]
    write_shims(shim_dir, os.path.dirname(sys.executable))
    serve(sock)
