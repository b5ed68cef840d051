"""Run untrusted work in a child process that is stopped at its deadline or memory ceiling.

DuckDB bounds what its buffer manager holds (`memory_limit`) and stops a query between
vectors when interrupted, but a function building one huge value (a string grown by
nested `replace`, a pad) allocates outside that limit and cannot be interrupted midway.
So ad-hoc SQL on the embedded warehouse runs in a child process the caller watches: past
its deadline or its memory ceiling the child is killed, and the caller, its connection
and its memory stay as they were.

Children are forked from a small server process of our own (`python -m
tools.isolation`), started on first use, that has imported DuckDB, sqlglot and the guard
once and holds nothing else: no thread, no database. Forking that is safe where forking
the caller (a service with threads and an open DuckDB) is not, and a child costs about
45 ms where a fresh interpreter spends half a second importing. Unlike multiprocessing's
forkserver it never imports the caller's `__main__`, so any script may call it. Each
request hands the server one end of a socket pair; the child answers on it with its pid
and then its result or exception, pickled, without a traceback. At most `MAX_CHILDREN`
run at once; waiting for a slot counts toward the deadline.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MAX_CHILDREN = 2
POLL_S = 0.01  # how often a child's memory is looked at
PRELOAD = ("duckdb", "sqlglot", "tools.guard")
START_TIMEOUT_S = 60.0  # the server's imports, on a loaded machine
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


class ChildTimeout(Exception):
    """The child was still working at its deadline and was killed."""


class ChildOutOfMemory(Exception):
    """The child's memory passed its ceiling and it was killed."""

    def __init__(self, rss_bytes: int, ceiling_bytes: int) -> None:
        """Keep what was measured."""
        super().__init__(rss_bytes, ceiling_bytes)
        self.rss_bytes, self.ceiling_bytes = rss_bytes, ceiling_bytes


class ChildFailed(Exception):
    """The child ended without an answer (it crashed, or could not be started)."""


def rss_bytes(pid: int) -> int:
    """Return the resident memory of process `pid` (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Server:
    """The forking server: started lazily, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, path) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tools.isolation", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the caller is not the server's
        )
        theirs.close()
        ours.settimeout(START_TIMEOUT_S)
        if ours.recv(1) != b"R":  # the server says it is ready
            raise ChildFailed("the query server did not start")
        ours.settimeout(None)
        self._control = ours
        return ours

    def _exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def warm(self) -> None:
        """Start the server now if it is not running (raises ChildFailed if it cannot)."""
        with self._lock:
            if self._control is None or self._exited():
                try:
                    self._start()
                except OSError as e:
                    raise ChildFailed(f"could not start the query server ({e})") from e

    def connect(self) -> Connection:
        """Return a connection to a newly forked child."""
        ours, theirs = socket.socketpair()
        try:
            with self._lock:
                for attempt in (1, 2):
                    control = self._control
                    if control is None or self._exited():
                        control = self._start()
                    try:
                        socket.send_fds(control, [b"F"], [theirs.fileno()])
                        break
                    except OSError:  # the server died since: start another once
                        self._control = None
                        if attempt == 2:
                            raise
        except (OSError, ChildFailed) as e:
            ours.close()
            raise ChildFailed(f"could not start a process for the query ({e})") from e
        finally:
            theirs.close()
        return Connection(ours.detach())


_server = _Server()
_slots = threading.BoundedSemaphore(MAX_CHILDREN)


def warm() -> None:
    """Start the forking server if it is not running, so no query's deadline pays for it."""
    _server.warm()


def run(fn: Callable[..., T], *args: Any, deadline: float, max_rss_bytes: int) -> T:
    """Return `fn(*args)` computed in a child process; raise what it raised.

    `fn` and `args` must pickle (a module-level function, plain values). `deadline` is a
    `time.monotonic()` instant; the clock is system-wide, so `fn` may read it too.
    Raises ChildTimeout past it, ChildOutOfMemory when the child's resident memory passes
    `max_rss_bytes`, ChildFailed when it ends without an answer.
    """
    if not _slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise ChildTimeout()
    try:
        conn = _server.connect()
        pid, answered = 0, False
        try:
            conn.send_bytes(pickle.dumps((fn, args)))
            pid = _receive(conn, deadline)
            value = _await(conn, pid, deadline, max_rss_bytes)
            answered = True
            return value
        finally:
            # Whatever ends the wait (the deadline, Ctrl-C, a cancelled task): a child
            # that has not answered is stopped, never left to run on its own.
            if pid and not answered:
                _kill(pid)
            conn.close()
    finally:
        _slots.release()


def _receive(conn: Connection, deadline: float) -> Any:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise ChildTimeout()
    try:
        return pickle.loads(conn.recv_bytes())
    except EOFError:
        raise ChildFailed("the query's process ended without an answer") from None


def _await(conn: Connection, pid: int, deadline: float, max_rss_bytes: int) -> Any:
    while not conn.poll(POLL_S):
        rss = rss_bytes(pid)
        if rss > max_rss_bytes:
            _kill(pid)
            raise ChildOutOfMemory(rss, max_rss_bytes)
        if time.monotonic() > deadline:
            raise ChildTimeout()
    status, value = _receive(conn, deadline + POLL_S)
    if status == "error":
        raise value
    return value


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass


# -- the server and its children (run in `python -m tools.isolation FD`) -------------------
def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent ends (Linux; elsewhere, skip)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took hold
        os._exit(1)


def _child(conn: Connection) -> None:
    conn.send_bytes(pickle.dumps(os.getpid()))
    try:
        fn, args = pickle.loads(conn.recv_bytes())
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as e:  # everything goes back to the caller, which decides
        outcome = ("error", e)
    try:
        payload = pickle.dumps(outcome)
    except Exception as e:  # a value or exception that does not pickle
        payload = pickle.dumps(("error", ChildFailed(f"{type(e).__name__}: {e}")))
    try:
        conn.send_bytes(payload)
    except OSError:  # the caller stopped waiting
        pass


def serve(control_fd: int) -> None:
    """Fork a child for every socket the caller sends; exit when the caller goes away."""
    for name in PRELOAD:
        importlib.import_module(name)
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control.sendall(b"R")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not message:  # the caller closed its end (or exited)
            return
        for fd in fds:
            server = os.getpid()
            if os.fork() == 0:
                code = 0
                try:
                    # This server ends when its caller does (its control socket closes):
                    # a child still running then is killed with it.
                    _die_with_parent(server)
                    control.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    _child(Connection(fd))
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
