"""A fork server for the suite's ``uiaa`` commands: torch imported once, each command a fresh fork.

Most of the suite's time went into starting Python processes that import torch and torchvision
(about 7 s of CPU each on the project's 2-core VM, against a second or two for the work itself). A
server imports those libraries once; each command then forks it, and the child runs ``python -m
uiaa_cli ARGS`` as the interpreter would: its own pid, cwd and environment, the caller's fds 0-2,
``sys.argv`` and ``__main__`` set by ``runpy`` as for ``-m``, threads joined and atexit handlers run
at the end, and the exit status (or the killing signal) as ``waitpid`` reports it.

A fork cannot change what the preloaded libraries and the interpreter read as they start
(``PYTHON*``, ``OMP_*``, the locale, ...): a command whose environment differs from the server's
there is refused, and the caller runs it in a new interpreter (``no_torch``'s ``PYTHONPATH``, say).
Tests about start-up itself pass ``fresh=True`` to ``run_uiaa``; tests that start ``python -m
uiaa_cli`` with ``subprocess`` themselves (torchrun, signals, import probes) never come here.

    python tests/forkserver.py SOCKET      # serve until killed (conftest and test_docs start these)
    tests/bin/uiaa ARGS                    # the doc-tests' shells: $UIAA_TEST_FORKSERVER's server
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from dataclasses import dataclass

PRELOAD = ("numpy", "PIL.Image", "pandas", "h5py", "pyarrow", "pyarrow.parquet", "torch", "torchvision")

# What the interpreter or the preloaded libraries read as they start.
READ_AT_START = ("PYTHON", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOMP_", "TORCH", "CUDA", "NVIDIA", "LD_",
                 "LANG", "LC_", "MALLOC", "ARROW_", "HDF5_")


def forkable(env: dict[str, str], server_env: dict[str, str]) -> bool:
    """True when a fork of a server started in ``server_env`` runs a command as ``env`` would."""
    changed = {k for k in env.keys() | server_env.keys() if env.get(k) != server_env.get(k)}
    return not any(k.startswith(READ_AT_START) for k in changed)


# ----------------------------------------------------------------------------- the server


def serve(path: str) -> None:
    import gc

    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # the children's collections skip (and so do not copy) the preloaded objects
    started_in = dict(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-command waiters reap themselves
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(message) if message else None
        if request is None or len(fds) != 3 or not forkable(request["env"], started_in):
            conn.send(b"refused")
        elif os.fork() == 0:  # the waiter: forks the command, reports its pid and its status
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            pid = os.fork()
            if pid == 0:
                conn.close()
                run_child(request, fds)
            for fd in fds:
                os.close(fd)
            conn.send(f"pid {pid}".encode())
            _, wait_status = os.waitpid(pid, 0)
            conn.send(f"status {os.waitstatus_to_exitcode(wait_status)}".encode())
            os._exit(0)
        for fd in fds:
            os.close(fd)
        conn.close()


def run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become ``python -m uiaa_cli ARGS`` and exit with its status (never returns)."""
    import atexit
    import io
    import runpy
    import threading

    status = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        streams = []
        for fd, template in ((0, sys.__stdin__), (1, sys.__stdout__), (2, sys.__stderr__)):
            raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
            buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
            streams.append(io.TextIOWrapper(buffered, encoding=template.encoding, errors=template.errors,
                                            line_buffering=fd == 2 or os.isatty(fd)))
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = os.getcwd()  # as -m sets it
        try:
            runpy.run_module("uiaa_cli", run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                status = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                status = 1
        except BaseException:  # noqa: BLE001 - as the interpreter: the traceback, status 1
            sys.excepthook(*sys.exc_info())
            status = 1
        threading._shutdown()  # what the interpreter does at exit, in its order
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the interpreter's status for an unflushable stdout
            status = status or 120
        sys.stderr.flush()
    finally:
        os._exit(status & 0xFF)


# ----------------------------------------------------------------------------- the callers


@dataclass
class Job:
    """A command the server forked: its pid, and the connection its exit status comes back on."""

    pid: int
    conn: socket.socket

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (``-N`` for signal N), as ``subprocess`` gives it; TimeoutError after ``timeout``."""
        self.conn.settimeout(timeout)
        try:
            reply = self.conn.recv(64)
        finally:
            self.conn.settimeout(None)
        self.conn.close()
        return int(reply.split()[1])

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait()


def submit(path: str, args: list[str], cwd: str, env: dict[str, str], fds: list[int]) -> Job | None:
    """Ask the server at ``path`` to run ``uiaa ARGS`` with ``fds`` as its 0-2; None if it cannot."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        socket.send_fds(conn, [json.dumps({"args": args, "cwd": cwd, "env": env}).encode()], fds)
        reply = conn.recv(64)
    except OSError:
        conn.close()
        return None
    if not reply.startswith(b"pid "):
        conn.close()
        return None
    return Job(int(reply.split()[1]), conn)


class Server:
    """A fork server started in ``env`` (the caller's environment by default), and commands run in it
    with captured output, as ``subprocess.run(..., capture_output=True)`` gives them."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="uiaa-forkserver-")
        self.path = os.path.join(self.folder, "socket")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.path],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
        self.ready = self.process.stdout.readline() == b"ready\n"

    def stop(self) -> None:
        import shutil

        self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, command: list[str], *, input: bytes | None, cwd: str, env: dict[str, str],
            timeout: float | None):  # -> subprocess.CompletedProcess | None (refused)
        import subprocess
        import threading

        ends = [os.pipe() for _ in range(3)]
        given = [ends[0][0], ends[1][1], ends[2][1]]
        job = submit(self.path, command[3:], cwd, env, given) if self.ready else None
        for fd in given:
            os.close(fd)
        if job is None:
            for fd in (ends[0][1], ends[1][0], ends[2][0]):
                os.close(fd)
            return None
        captured: dict[int, bytes] = {}

        def feed(fd: int) -> None:
            with open(fd, "wb") as f:
                try:
                    f.write(input or b"")
                except BrokenPipeError:  # the command did not read it all
                    pass

        def drain(fd: int) -> None:
            with open(fd, "rb") as f:
                captured[fd] = f.read()

        threads = [threading.Thread(target=feed, args=(ends[0][1],), daemon=True),
                   *(threading.Thread(target=drain, args=(ends[i][0],), daemon=True) for i in (1, 2))]
        for t in threads:
            t.start()
        try:
            status = job.wait(timeout)
        except TimeoutError:
            job.kill()
            for t in threads:
                t.join(5)
            raise subprocess.TimeoutExpired(command, timeout, captured.get(ends[1][0]),
                                            captured.get(ends[2][0])) from None
        for t in threads:
            t.join()
        return subprocess.CompletedProcess(command, status, captured[ends[1][0]], captured[ends[2][0]])


def shim() -> None:
    """``uiaa ARGS`` on the doc-tests' PATH: the command in the server, with this process's fds 0-2
    and exit status; a new interpreter where the server is absent or refuses."""
    args = sys.argv[1:]
    path = os.environ.get("UIAA_TEST_FORKSERVER")
    job = submit(path, args, os.getcwd(), dict(os.environ), [0, 1, 2]) if path else None
    if job is None:
        python = os.environ.get("UIAA_TEST_PYTHON", sys.executable)
        os.execv(python, [python, "-m", "uiaa_cli", *args])
    status = job.wait()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    serve(sys.argv[1])
