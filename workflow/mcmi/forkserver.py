"""A fork server for the workflow's many short jobs (``launcher: fork_server`` in the config).

Every job is a ``python -m mcmi ...`` process, and each spends 2-3 s of CPU importing torch, torchvision
and the package before it works; the demo's 60 jobs spend minutes on that. With the fork server, one
long-lived process per user, Python, import path and package source digest imports all of it once
and forks a child per job. ``python -m mcmi`` stays the job's command: its entry (``mcmi/__main__.py``)
imports only this module's client half (the standard library), which

1. connects to the server's Unix socket (starting the server when there is none, under a lock, and
   waiting until it listens), sends its argv, working directory, environment and umask, and passes
   its stdin, stdout and stderr as file descriptors (``socket.send_fds``);
2. relays the signals it receives (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2) to the child;
3. exits with the child's exit status (a child killed by a signal kills the client with it).

The child starts as a fresh interpreter would after those imports: the client's descriptors as 0/1/2
(new ``sys.std*`` objects, buffered as Python buffers them), its directory, environment, umask and
``sys.argv``, default signal handlers, and torch's intra-op threads from ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` (a fresh torch reads them when it loads; the server loaded torch without them).
The server never initialises CUDA, never runs a torch op and starts no thread, so forking is safe and
a child may use a GPU. A job's results are the same, bit for bit, as the plain process's (tested).

If the client goes away before its child ends (killed with its process group, say), the server kills
the child. When the server cannot be used (no ``pidfd_open``, it does not start within
``MCMI_FORK_SERVER_WAIT`` seconds, the socket folder is not private), the client says so in one line
on stderr and the job runs in its own process as before. The server exits after
``MCMI_FORK_SERVER_IDLE`` seconds (default 120) without a job, and logs each job's wall and CPU time
(``os.wait4``) to ``<socket>.log``.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_LAUNCHER = "MCMI_LAUNCHER"                      # "fork_server": run `python -m mcmi` through the server
# What a fresh torch reads when it loads; the server is started without them and each child applies its own.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Modules the server imports once for every child (what the stages, tables and figures import).
# The figures' plotting libraries are imported with matplotlib's non-interactive backend selected (what
# report/figures/common.py selects too). None of these starts a thread beyond torch's and scikit-learn's
# BLAS pools; grad-cam is left out: OpenCV starts a thread pool of its own, and one job (Eigen-CAM) uses it.
PRELOAD = ("torch", "torchvision", "mcmi.cli", "mcmi.stages", "mcmi.distill", "mcmi.data.sources",
           "mcmi.pipeline.handrun", "mcmi.report", "mcmi.synthetic", "mcmi.selection", "sklearn.datasets",
           "matplotlib.pyplot", "seaborn", "sklearn.manifold")
_HEADER = struct.Struct("!Q")


class ServerUnavailable(RuntimeError):
    """The fork server cannot be used for this job: it runs in its own process instead."""


# ----------------------------------------------------------------------------------------- naming
def server_key(package_dir: Path) -> str:
    """Who may share one server: the user, the Python, the import path and the package's code."""
    from mcmi.source_digest import package_source_digest

    parts = {"uid": os.getuid(), "python": sys.executable, "version": sys.version, "package": str(package_dir),
             "pythonpath": os.environ.get("PYTHONPATH", ""), "code": package_source_digest(package_dir)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def socket_folder() -> Path:
    """A folder only this user can enter (created 0700; refused if another user owns it or others may write)."""
    folder = Path(tempfile.gettempdir()) / f"mcmi-fork-server-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ServerUnavailable(f"{folder} is not a private folder of this user")
    return folder


# ------------------------------------------------------------------------------------------ client
def run_through_server(argv: list[str]) -> int | None:
    """Run this ``python -m mcmi`` invocation in a child of the fork server when the environment asks
    for it (``MCMI_LAUNCHER=fork_server``) and returns its exit status; ``None``: run it here."""
    if os.environ.get(ENV_LAUNCHER) != "fork_server":
        return None
    try:
        connection = _connect(Path(__file__).resolve().parent)
    except ServerUnavailable as why:
        print(f"mcmi: fork server unavailable ({why}); running the job in its own process", file=sys.stderr,
              flush=True)
        return None
    return _relay(connection, argv)


def _connect(package_dir: Path) -> socket.socket:
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        raise ServerUnavailable("this system has no pidfd_open/send_fds")
    folder = socket_folder()
    key = server_key(package_dir)
    path = folder / f"{key}.sock"
    connection = _try_connect(path)
    if connection is not None:
        return connection
    import fcntl

    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one client starts the server, the others wait for it
        connection = _try_connect(path)
        if connection is not None:
            return connection
        path.unlink(missing_ok=True)              # a server that died left its socket
        server = _start_server(package_dir, path)
        deadline = time.monotonic() + float(os.environ.get("MCMI_FORK_SERVER_WAIT", "120"))
        while time.monotonic() < deadline:
            connection = _try_connect(path)
            if connection is not None:
                return connection
            if server.poll() is not None:
                raise ServerUnavailable(f"the server exited with status {server.returncode}; see {path}.log")
            time.sleep(0.05)
        raise ServerUnavailable(f"the server did not listen within {os.environ.get('MCMI_FORK_SERVER_WAIT', '120')} s")


def _try_connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
        return client
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        return None


def _start_server(package_dir: Path, path: Path) -> Any:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES and k != ENV_LAUNCHER}
    code = (f"import sys; sys.path.insert(0, {str(package_dir.parent)!r}); "
            f"from mcmi.forkserver import serve; serve({str(path)!r})")
    with open(f"{path}.log", "a") as log:
        return subprocess.Popen([sys.executable, "-c", code], cwd="/", env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)


def _send(connection: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    if fds:
        socket.send_fds(connection, [_HEADER.pack(len(body))], fds)
        connection.sendall(body)
    else:
        connection.sendall(_HEADER.pack(len(body)) + body)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _relay(connection: socket.socket, argv: list[str]) -> int:
    """Send the job, relay signals to its child, and return (or die of) the child's status."""
    child: list[int] = []
    pending: list[int] = []                            # signals that came before the child's pid

    def forward(signum: int, frame: Any) -> None:
        if child:
            os.kill(child[0], signum)
        else:
            pending.append(signum)

    for signum in RELAYED_SIGNALS:
        signal.signal(signum, forward)
    umask = os.umask(0)
    os.umask(umask)
    _send(connection, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}, [0, 1, 2])
    reader = connection.makefile("rb")
    try:
        for line in reader:
            message = json.loads(line)
            if "pid" in message:
                child.append(message["pid"])
                for signum in pending:
                    os.kill(child[0], signum)
            elif "signal" in message:
                for signum in RELAYED_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), message["signal"])
                return 128 + message["signal"]
            elif "exit" in message:
                return int(message["exit"])
    except (OSError, ValueError):
        pass
    print("mcmi: error: the fork server ended before the job did", file=sys.stderr, flush=True)
    return 1


# ------------------------------------------------------------------------------------------ server
def serve(path: str) -> None:
    """Import everything the jobs use, listen on ``path`` and fork a child per job until idle."""
    import importlib
    import selectors

    tic = time.time()
    os.environ.setdefault("MPLBACKEND", "Agg")      # before matplotlib.pyplot: no display, as the figures use
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as error:                 # an optional module (scikit-learn) may be missing
            print(f"preload: {name} not imported ({error})", flush=True)
    from mcmi.distill import registry

    registry()                                       # every method's module
    idle_after = float(os.environ.get("MCMI_FORK_SERVER_IDLE", "120"))
    server_pid = os.getpid()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))     # `kill` ends it cleanly
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = f"{path}.{os.getpid()}.tmp"
    listener.bind(temporary)
    listener.listen(64)
    os.replace(temporary, path)                      # clients connect only once everything is imported
    inode = os.stat(path).st_ino
    print(f"[{time.strftime('%H:%M:%S')}] pid {os.getpid()} listening on {path} after {time.time() - tic:.1f} s "
          f"of imports", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("accept", None))
    jobs: dict[int, dict[str, Any]] = {}             # child pid -> its connection, pidfd, label, start
    served = 0
    try:
        while True:
            events = selector.select(None if jobs else idle_after)
            if not events and not jobs:
                break
            for event, _ in events:
                kind, pid = event.data
                if kind == "accept":
                    job = _accept(listener, selector, jobs)
                    served += job is not None
                elif kind == "child":
                    _reap(pid, selector, jobs)
                elif kind == "client":                # the client went away (or broke the protocol)
                    with _suppress():
                        os.kill(pid, signal.SIGKILL)      # as if it had been killed with the client's group
                    selector.unregister(jobs[pid]["connection"])
                    jobs[pid]["client_gone"] = True
    finally:
        if os.getpid() != server_pid:                # a child between fork and exec of its job: never the server's exit
            os._exit(1)
        with _suppress():
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        own = os.times()
        print(f"[{time.strftime('%H:%M:%S')}] exiting after {served} jobs; CPU s: server {own.user + own.system:.2f}, "
              f"jobs {own.children_user + own.children_system:.2f}", flush=True)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def _accept(listener: socket.socket, selector: Any, jobs: dict[int, dict[str, Any]]) -> int | None:
    connection, _ = listener.accept()
    fds: list[int] = []
    try:
        connection.settimeout(30)
        peer = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if peer[1] != os.getuid():
            raise ValueError(f"a client of uid {peer[1]}")
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        if len(header) < _HEADER.size:
            header += _receive_exactly(connection, _HEADER.size - len(header))
        request = json.loads(_receive_exactly(connection, _HEADER.unpack(header)[0]))
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} descriptors instead of 3")
    except (OSError, ValueError, EOFError) as error:
        print(f"refused a request: {error}", flush=True)
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    connection.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                      # the child: never returns
        try:
            for other in jobs.values():               # what only the server uses
                other["connection"].close()
                os.close(other["pidfd"])
            selector.close()
            listener.close()
            connection.close()
            _run_child(request, fds)
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    jobs[pid] = {"connection": connection, "pidfd": pidfd, "start": time.time(), "client_gone": False,
                 "label": _label(request["argv"])}
    selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
    selector.register(connection, selectors.EVENT_READ, ("client", pid))
    with _suppress():
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def _label(argv: list[str]) -> str:
    """What a job is, for the log: the command, and a stage's name and number of members."""
    words = argv[1:3]
    if words[:2] == ["stage", "--spec"] and len(argv) > 3:
        try:
            spec = json.loads(argv[3])
            return f"stage {spec.get('stage', '?')}" + (f" ({len(spec['members'])} members)" if "members" in spec else "")
        except (ValueError, AttributeError):
            pass
    return " ".join(words)[:80]


def _reap(pid: int, selector: Any, jobs: dict[int, dict[str, Any]]) -> None:
    job = jobs.pop(pid)
    _, status, usage = os.wait4(pid, 0)
    selector.unregister(job["pidfd"])
    os.close(job["pidfd"])
    connection = job["connection"]
    if not job["client_gone"]:
        selector.unregister(connection)
    message = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.waitstatus_to_exitcode(status)})
    with _suppress():
        connection.sendall(json.dumps(message).encode() + b"\n")
    connection.close()
    print(f"job {pid} {job['label']}: {message} wall {time.time() - job['start']:.2f} s "
          f"cpu {usage.ru_utime + usage.ru_stime:.2f} s", flush=True)


def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """Become the job: the client's descriptors, directory, environment, umask and argv, then run it."""
    import io

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV_LAUNCHER, None)            # a job that runs `python -m mcmi` itself runs it plainly
        sys.argv = list(request["argv"])
        sys.path[0] = request["cwd"]                  # `python -m` puts the working directory first
        encoding = sys.stdout.encoding if sys.stdout else "utf-8"
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                     encoding=encoding)
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                       encoding=encoding, line_buffering=os.isatty(1))
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                       encoding=encoding, errors="backslashreplace",
                                                       line_buffering=True)
        _apply_threads(request["env"])
        _reseed_process_randomness()
        code = _run_main()
    except KeyboardInterrupt:                         # as Python exits on an unhandled SIGINT
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:                             # noqa: BLE001 - the child must never return to the server
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _apply_threads(env: dict[str, str]) -> None:
    """torch's intra-op threads as a fresh torch would pick them from this job's environment."""
    import torch

    for name in THREAD_VARIABLES:
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            torch.set_num_threads(int(value))
            return


def _reseed_process_randomness() -> None:
    """Unseeded generators differ between fresh processes; forked children would share the server's."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _run_main() -> int:
    """``sys.exit(mcmi.cli.main())`` as ``python -m mcmi`` runs it, returning the exit status."""
    from mcmi.cli import main

    try:
        result = main()
    except SystemExit as done:
        result = done.code
    if result is None:
        return 0
    if isinstance(result, int):
        return result
    print(result, file=sys.stderr)
    return 1
