"""Host side, sessions: workers (one keeper each), the pool that reuses them, and the public `Session`,
`run_python` and `protections`."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any

from . import zygote as _zyg
from .core import MAX_MESSAGE, Limits, Result, recv, send


class _SessionDied(Exception):
    pass


class _Worker:
    """One isolated keeper process (namespaces, cgroup and mounts set up once) that hosts one session
    at a time, each a fresh fork of it. Host side of `keeper_main`."""

    def __init__(self, limits: Limits):

        self.limits = limits
        self.cgroup = _zyg.cgroup_create(limits)
        self.scratch: str | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = _zyg.get_zygote().spawn(theirs.fileno(), limits, self.cgroup)
        except OSError:  # the zygote died (killed from outside): start a new one once
            _zyg.reset_zygote()
            self.pid = _zyg.get_zygote().spawn(theirs.fileno(), limits, self.cgroup)
        theirs.close()
        self.ctl = ours
        self.data: Any = None          # the current session's socket
        self.ending = False            # a session was closed; its "ended" message is not read yet
        self.protections: list[str] = []
        self.error: str | None = None
        self.ctl.settimeout(30)
        try:
            hello, _ = recv(self.ctl)
            if hello is None:
                raise EOFError
            self.protections, self.error = hello.get("protections", []), hello.get("error")
            self.scratch = hello.get("scratch")
        except (OSError, ValueError, EOFError):
            self.error = "SandboxError: the sandbox worker died or did not start within 30 s"
        self._oom_seen = self._oom_count()

    # -- sessions --------------------------------------------------------------------------------
    def open(self) -> None:
        """Start a fresh session process (a fork of the keeper) and connect to it."""

        self.settle()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send(self.ctl, {"session": True}, [theirs.fileno()])
        finally:
            theirs.close()
        self.data = ours

    def call(self, code: str, timeout: float, quiet: bool = False) -> Result:
        """Run one cell in the open session. A timeout kills the session's tree; a dead session
        raises _SessionDied with the reason."""
        t = time.perf_counter()
        if len(code.encode()) > MAX_MESSAGE - 1024:
            return Result(error=f"ValueError: the code is longer than {MAX_MESSAGE - 1024} bytes")
        try:
            send(self.data, {"code": code, "quiet": quiet})
        except OSError:  # the session process is already gone (e.g. a thread of the last cell exited it)
            code_ = self.end(kill=True)
            raise _SessionDied(f"SandboxError: the Python process ended (exit code {code_})") from None
        self.data.settimeout(timeout)
        try:
            reply, _ = recv(self.data)
        except TimeoutError:
            self.end(kill=True)
            return Result(error=f"TimeoutError: timed out after {timeout:g} s", elapsed=time.perf_counter() - t)
        except (OSError, ValueError):  # not our JSON: the snippet wrote into the socket
            self.end(kill=True)
            raise _SessionDied("SandboxError: the session's channel was tampered with") from None
        if reply is None:  # the session process ended
            code_ = self.end(kill=False)
            if self._oom_count() > self._oom_seen:
                self._oom_seen = self._oom_count()
                raise _SessionDied("MemoryError: memory limit exceeded (the sandbox was killed)")
            why = ("CPU time limit exceeded" if code_ == 128 + signal.SIGXCPU else
                   f"the Python process ended (exit code {code_})")
            raise _SessionDied(f"SandboxError: {why}")
        return Result(output=str(reply.get("output", "")), error=reply.get("error"),
                      truncated=bool(reply.get("truncated")), elapsed=time.perf_counter() - t)

    def end(self, kill: bool, wait: bool = True) -> int | None:
        """End the open session (closing its socket lets it exit; `kill` kills its tree at once).
        With `wait`, block until the keeper has cleaned up and return the session's exit code."""
        if self.data is not None:
            with contextlib.suppress(OSError):
                if kill:
                    send(self.ctl, {"kill": True})
            self.data.close()
            self.data = None
            self.ending = True
        return self.settle() if wait else None

    def settle(self) -> int | None:
        """Read the keeper's "ended" message of the last session, if not read yet."""
        if not self.ending:
            return None
        self.ending = False
        try:
            msg, _ = recv(self.ctl)
            if msg is None or "ended" not in msg:
                raise ValueError("keeper gone")
            return int(msg["ended"])
        except (OSError, ValueError, TypeError):
            self.error = "SandboxError: the sandbox worker died"
            return None

    @property
    def usable(self) -> bool:
        return self.error is None

    def _oom_count(self) -> int:
        if not self.cgroup:
            return 0
        try:
            with open(f"/sys/fs/cgroup/memory/{self.cgroup}/memory.oom_control") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("oom_kill "))
        except (OSError, ValueError):
            return 0

    def destroy(self) -> None:
        for close in (self.data, self.ctl):
            with contextlib.suppress(Exception):
                close.close()  # the keeper sees EOF and kills its session
        with contextlib.suppress(Exception):
            os.killpg(self.pid, signal.SIGKILL)  # the worker's process group (it called setsid)
        # the rest (kill whatever is left in the cgroup, remove it and the scratch folder) is off the
        # caller's path; _zyg.drain_cleanup() waits for it
        _zyg.cleanup_later(self.cgroup, self.scratch)
        self.cgroup = self.scratch = None


class _Pool:
    """Idle workers for one set of limits: taken by a session, given back when it closes (the keeper
    resets in the background), destroyed when broken or beyond the pool's size. Pre-warmed with
    `warm` workers built in a background thread. Measured cost of an idle worker (its process and
    keeper; numpy and sympy pages shared with the zygote): about 9 MB proportional set size (10 idle
    workers and the zygote: 95 MB).

    Size: it keeps as many idle workers as were ever out at once (a batch of TIR rollouts holds one per
    rollout), at least `keep` and at most `max_keep` (256: about 2.3 GB). A fixed size below a
    workload's batch made every batch build and destroy the difference: each worker costs two forks of
    the numpy + sympy zygote and a set of namespaces. `still hint-engineer` on 1,600 traces (77 rollouts
    per batch, 64 kept) took 13.1 s against 9.8 s with the workers kept and the longest-idle one taken
    first (means of 3, alternating); benchmarks/sandbox.py measures both pools side by side."""

    def __init__(self, limits: Limits, warm: int, keep: int = 64, max_keep: int = 256):
        self.limits, self.keep, self.max_keep = limits, keep, max_keep
        self.idle: list[_Worker] = []
        self.out = self.peak = 0  # workers taken and not yet given back or dropped; the most at once
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=lambda: [self._idle(_Worker(limits)) for _ in range(warm)], daemon=True).start()

    def take(self) -> _Worker:
        with self.lock:
            self.out += 1
            self.peak = max(self.peak, self.out)
        while True:
            with self.lock:
                # the longest-idle worker first: its keeper has most likely finished resetting, so
                # settle() below does not wait (taking the one just given back did, every time)
                w = self.idle.pop(0) if self.idle else None
            if w is None:
                try:
                    return _Worker(self.limits)
                except BaseException:
                    with self.lock:
                        self.out -= 1
                    raise
            w.settle()
            if w.usable:
                return w
            w.destroy()

    def give(self, w: _Worker) -> None:
        with self.lock:
            self.out -= 1
        self._idle(w)

    def drop(self, w: _Worker) -> None:
        """A taken worker that broke: destroyed, not given back."""
        with self.lock:
            self.out -= 1
        w.destroy()

    def _idle(self, w: _Worker) -> None:
        with self.lock:
            if w.usable and not self.stopped and len(self.idle) < min(max(self.keep, self.peak), self.max_keep):
                self.idle.append(w)
                return
        w.destroy()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            idle, self.idle = self.idle, []
        for w in idle:
            w.destroy()


_pools: dict[tuple, _Pool] = {}
_pools_lock = threading.Lock()


def _pool_key(limits: Limits) -> tuple:
    """Sessions whose limits differ only in the timeout (applied per call) share a pool."""
    return limits.memory_mb, limits.max_processes, limits.max_output, limits.disk_mb, limits.isolation


def _pool_for(limits: Limits) -> _Pool:
    key = _pool_key(limits)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = _Pool(limits, warm=max(1, os.cpu_count() or 1))
        return _pools[key]


def _stop_pools() -> None:
    """Destroy the idle workers (e.g. before checking that nothing is left running)."""
    with _pools_lock:
        for p in _pools.values():
            p.stop()
        _pools.clear()
    _zyg.drain_cleanup()


@atexit.register
def _shutdown() -> None:
    _stop_pools()
    _zyg.stop_zygote()


class Session:
    """One rollout's Python: later cells see earlier cells' variables. Close it when the rollout ends.

    If a cell times out or kills its process, the next cell runs in a fresh process that first
    re-runs the earlier successful cells (quietly), so state persists as in CoRT's executor."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._worker: _Worker | None = None
        self._pool: _Pool | None = None  # the pool the worker came from (given back there)
        self.history: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def _ensure(self) -> _Worker:
        if self._worker is None:
            self._pool = _pool_for(self.limits)
            self._worker = self._pool.take()
        if self._worker.data is None and self._worker.usable:  # no session open (first cell, or it died)
            self._worker.open()
            for cell in self.history:  # restore state after a crash
                self._worker.call(cell, self.limits.timeout, quiet=True)
        return self._worker

    def run(self, code: str, timeout: float | None = None) -> Result:
        timeout = self.limits.timeout if timeout is None else timeout
        t = time.perf_counter()
        try:
            w = self._ensure()
            res = w.call(code, timeout) if w.usable else Result(error=w.error)
        except _SessionDied as e:
            res = Result(error=str(e), elapsed=time.perf_counter() - t)
        except Exception as e:  # never raise into the rollout; the next cell starts a fresh session
            res = Result(error=f"SandboxError: {e!r}")
            if self._worker is not None and self._worker.data is not None:
                self._worker.end(kill=True)
        # a timeout or a dead session has already ended the session (worker.data is None): the next cell
        # opens a fresh one and replays the history
        if self._worker is not None and not self._worker.usable:
            assert self._pool is not None
            self._pool.drop(self._worker)
            self._worker = None
        if res.ok:
            self.history.append(code)
        self.calls.append({"code": code, "output": res.output, "error": res.error, "elapsed": res.elapsed})
        return res

    @property
    def protections(self) -> list[str]:
        return self._ensure().protections

    def close(self) -> None:
        if self._worker is not None:
            self._worker.end(kill=False, wait=False)  # the keeper resets while the caller goes on
            assert self._pool is not None
            self._pool.give(self._worker)
            self._worker = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_python(code: str, timeout: float = 5.0, limits: Limits | None = None) -> Result:
    """Run one snippet in a fresh sandboxed session; never raises. See the module docstring."""
    lim = limits or Limits(timeout=timeout)
    lim.timeout = timeout
    with Session(lim) as s:
        return s.run(code, timeout)


def protections(limits: Limits | None = None) -> list[str]:
    """The protections active on this machine (e.g. for logs): pid-namespace, net-namespace, ..."""
    with Session(limits) as s:
        return s.protections
