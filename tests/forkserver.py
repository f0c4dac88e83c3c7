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
directory, fds 0-2 (encoding, errors and buffering as Python sets them up), sys.path,
logging set up by the entry module as at its import, Python's default warning filters,
the temp directory (TMPDIR), torch's and numpy's random seeds, exit status (SystemExit
codes, the exception hook and 1 for an uncaught exception). The server is a plain Python
process that imported what the commands import, so the exit handlers the child inherits
and runs are the ones a fresh process would have (multiprocessing's, which stops
DataLoader workers, logging's, fairseq's).

Of the request's ``PYTHON*`` variables the child applies those whose whole effect can be
set after start-up (APPLIED: PYTHONPATH, PYTHONWARNINGS, PYTHONUNBUFFERED,
PYTHONIOENCODING, PYTHONDONTWRITEBYTECODE, PYTHONFAULTHANDLER, PYTHONBREAKPOINT). The
others act while the interpreter starts (PYTHONHASHSEED, PYTHONOPTIMIZE, PYTHONDEVMODE,
PYTHONUTF8, ...): if one differs from the server's own, the server does not serve the
request and the shim execs the real program, as it does when the request's PYTHONPATH
holds another copy of a module the server has imported, when ``--user-dir`` (or hydra's
``common.user_dir=``) names another directory than the preloaded ``tarm_plugin``, when
it cannot reach the server, and for a command it does not serve (``python -c``, python
with options such as ``-O`` or ``-X``).

If the shim dies (a timeout, torchrun stopping a rank), the child and everything it
started are killed: the supervisor that forked the child is its subreaper, so processes
that left the child's process group or session (torchrun starts its ranks in new
sessions) still end up as the supervisor's children once their parents are gone.

A test run from a checkout whose PYTHONPATH names it (a second ``git worktree`` sharing a
venv whose editable install is another checkout) passes that PYTHONPATH as PRELOAD_PATH:
the server imports ``tarm_plugin`` from there, and serves the requests whose PYTHONPATH
holds the same entries (a request without them would import another copy: not served).

    python tests/forkserver.py SOCKET SHIM_DIR [PRELOAD_PATH]   # serve until the parent process exits
"""

import atexit
import ctypes
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
import tempfile
import traceback
import warnings
from importlib.metadata import entry_points

# Python's filters and sys.path as a fresh interpreter has them (the server starts
# without the APPLIED variables, so these are the baseline the request's are applied to)
_FRESH_FILTERS = list(warnings.filters)
_FRESH_PATH = list(sys.path[1:])  # [0] is a script's directory, set per request
_FRESH_ENV = dict(os.environ)
_FRESH_STDIO = [(f.encoding, f.errors) for f in (sys.__stdin__, sys.__stdout__, sys.__stderr__)]
COMMANDS = ("fairseq-train", "fairseq-eval-lm", "fairseq-generate", "fairseq-interactive",
            "fairseq-preprocess", "fairseq-hydra-train", "torchrun")
PRELOAD = ("fairseq_cli.train", "tarm_plugin")
_PRELOAD_PATH = []  # the PYTHONPATH entries the preloads were imported with (serve)
# PYTHON* variables the child applies after the fork (see run_child); any other one that
# differs from the server's makes the shim run the real program
APPLIED = ("PYTHONPATH", "PYTHONWARNINGS", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
           "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER", "PYTHONBREAKPOINT")
FALLBACK = -(2 ** 31)  # status that tells the shim to exec the real program
PR_SET_CHILD_SUBREAPER = 36

SHIM = """#!{python} -IS
# fork-server client (tests/forkserver.py); stdlib only, so it starts in milliseconds; -I:
# the request's PYTHON* variables are for the command, not for the shim (a PYTHONPATH json.py)
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
if code == {fallback}:  # the server cannot run it as a fresh process would
    s.close()
    real()
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
            f.write(SHIM.format(python=sys.executable, real=real, is_python=is_python, fallback=FALLBACK))
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


def python_path(env, cwd):
    """The request's PYTHONPATH entries as a fresh interpreter puts them on sys.path
    (absolute; an empty entry is the working directory)."""
    value = env.get("PYTHONPATH")
    return [os.path.normpath(os.path.join(cwd, p)) for p in value.split(os.pathsep)] if value else []


def user_dirs(argv):
    """The values of ``--user-dir X``, ``--user-dir=X`` and hydra's ``common.user_dir=X``."""
    for i, arg in enumerate(argv):
        if arg == "--user-dir" and i + 1 < len(argv):
            yield argv[i + 1]
        elif arg.startswith("--user-dir="):
            yield arg.split("=", 1)[1]
        elif arg.lstrip("+").startswith("common.user_dir="):
            yield arg.split("=", 1)[1]


def imported_from(module, directory):
    """Whether ``module`` was loaded from a file below ``directory``."""
    where = getattr(module, "__file__", None)
    return bool(where) and os.path.realpath(where).startswith(os.path.realpath(directory) + os.sep)


def why_not_served(request):
    """Why a forked child could not behave as a fresh process for this request, or None."""
    env, cwd = request["env"], request["cwd"]
    for name in sorted({k for k in (*env, *_FRESH_ENV) if k.startswith("PYTHON")} - set(APPLIED)):
        want, have = env.get(name), _FRESH_ENV.get(name)
        if name == "PYTHONHASHSEED" and want in (None, "random"):
            continue  # any seed, the server's included, is one a fresh process may draw
        if want != have:
            return f"{name}={want!r} acts at start-up (the server has {have!r})"
    for entry in python_path(env, cwd):
        try:
            names = {n.split(".")[0] for n in os.listdir(entry)}
        except OSError:
            continue
        for name in sorted(names):
            module = sys.modules.get(name)
            if getattr(module, "__file__", None) and not imported_from(module, entry):
                return f"PYTHONPATH entry {entry} holds {name}, imported here from {module.__file__}"
    wanted = {os.path.realpath(p) for p in python_path(env, cwd)}
    for entry in _PRELOAD_PATH:
        if os.path.realpath(entry) not in wanted:
            for name, module in list(sys.modules.items()):
                if imported_from(module, entry):
                    return f"{name} was imported here from {entry}, not on the request's PYTHONPATH"
    plugin = os.path.dirname(os.path.realpath(sys.modules["tarm_plugin"].__file__))
    for user_dir in user_dirs(request["argv"][1:]):
        if os.path.realpath(os.path.join(cwd, user_dir)) != plugin:
            return f"--user-dir {user_dir} is not the preloaded {plugin}"
    return None


def stdio(fd, mode, encoding, errors, env):
    """fd 0, 1 or 2 as Python's start-up wraps it: block-buffered unless a terminal (stderr:
    always line-buffered), unbuffered with PYTHONUNBUFFERED, PYTHONIOENCODING's encoding
    and (not for stderr) error handler."""
    enc, _, err = env.get("PYTHONIOENCODING", "").partition(":")
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    binary = io.open(fd, mode + "b", buffering=0 if unbuffered and mode == "w" else -1, closefd=False)
    return io.TextIOWrapper(binary, encoding=enc or encoding, errors=(err or errors) if fd != 2 else errors,
                            line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered)


def run_child(target, argv, env, cwd):
    """Runs in the forked child with fds 0-2 in place; never returns."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.stdin, sys.stdout, sys.stderr = (stdio(fd, mode, enc, err, env) for fd, mode, (enc, err)
                                         in zip((0, 1, 2), "rww", _FRESH_STDIO))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    kind, what = target
    script = what if kind == "script" else argv[0]
    sys.path[:] = [os.path.dirname(os.path.realpath(script)), *python_path(env, cwd), *_FRESH_PATH]
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    if env.get("PYTHONFAULTHANDLER"):
        import faulthandler

        faulthandler.enable()
    tempfile.tempdir = None  # found again from TMPDIR
    threads = os.environ.get("OMP_NUM_THREADS")
    import numpy
    import torch

    torch.seed()  # a fresh process draws its own seeds; children would share the server's
    numpy.random.seed()
    if threads:
        torch.set_num_threads(int(threads))
    warnings.filters[:] = _FRESH_FILTERS
    sys.warnoptions[:] = [w for w in env.get("PYTHONWARNINGS", "").split(",") if w]
    warnings._processoptions(sys.warnoptions)
    warnings._filters_mutated()
    root = logging.getLogger()  # unconfigured, as in a fresh interpreter
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    code = 0
    try:
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


def children():
    """Pids of this process's children (from /proc)."""
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
        except OSError:
            continue
        if ppid == me:
            found.append(int(pid))
    return found


def kill_tree():
    """SIGKILL every descendant. This process is their subreaper, so the children of a
    killed process become its children: kill the children until none are left."""
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def supervise(conn, fds, request, target):
    """Fork the child that runs the request's ``target`` (a ValueError: not a command the
    server runs); report its status to the shim (FALLBACK: run it yourself), or kill the
    child and what it started if the shim goes away. Runs in a fork of the server; never
    returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if isinstance(target, ValueError):
        os.write(fds[2], f"{target}\n".encode())
        conn.sendall(struct.pack("!i", 1))
        os._exit(0)
    reason = why_not_served(request)
    if reason:
        print(f"forkserver: not served, {reason}: {request['argv']}", flush=True)
        conn.sendall(struct.pack("!i", FALLBACK))
        os._exit(0)
    # orphans of the child's tree are re-parented here, wherever their process group or session
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
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
            kill_tree()
            os._exit(0)
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


def serve(sock_path, preload_path=""):
    parent = os.getppid()
    _PRELOAD_PATH[:] = python_path({"PYTHONPATH": preload_path}, os.getcwd())
    sys.path[1:1] = _PRELOAD_PATH  # for the preloads only: a request brings its own PYTHONPATH
    for name in PRELOAD:
        importlib.import_module(name)
    del sys.path[1:1 + len(_PRELOAD_PATH)]
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
    if set(APPLIED) & set(os.environ):
        sys.exit(f"forkserver: start without {', '.join(sorted(set(APPLIED) & set(os.environ)))} "
                 "(the server applies each request's own)")
    sock, shim_dir = sys.argv[1:3]
    write_shims(shim_dir, os.path.dirname(sys.executable))
    serve(sock, *sys.argv[3:4])
