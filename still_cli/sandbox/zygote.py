"""Host side, processes: the warm zygote that forks workers, per-session cgroups, background cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import sys
import threading
import time

from .core import PR_SET_CHILD_SUBREAPER, Limits, libc_
from .worker import keeper_main

# The zygote: a warm process (numpy, sympy imported) that forks one worker (keeper) per request.
# Written here instead of using multiprocessing's forkserver, which re-imports the caller's __main__
# in every child and pickles preparation data per start (measured: ~9 ms per start vs ~3 ms here).

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def zygote_main(ctl_fd: int) -> None:
    """`python -m still_cli.sandbox --zygote FD`: serve spawn requests on the control socket FD."""
    import importlib

    for mod in ("numpy", "sympy", "linecache", "json", "select"):
        with contextlib.suppress(Exception):
            importlib.import_module(mod)
    import gc

    gc.freeze()  # the preloaded objects are never scanned by gc: a collection in a fork copies no page
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # orphans of killed workers are adopted here (and reaped at once), not by the machine's init
    libc_().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ctl = socket.socket(fileno=ctl_fd)
    ctl.sendall(b"ready\n")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 65536, 1)
        except OSError:
            return
        if not msg:
            return  # the host went away
        req = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            ctl.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                keeper_main(socket.socket(fileno=fds[0]), Limits(**req["limits"]), req["cgroup"])
            finally:
                os._exit(0)
        os.close(fds[0])
        ctl.sendall(json.dumps({"pid": pid}).encode())


class _Zygote:
    def __init__(self):
        import subprocess

        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}  # no secrets in any session's environ
        self.proc = subprocess.Popen([sys.executable, "-m", "still_cli.sandbox", "--zygote", str(child.fileno())],
                                     pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     cwd="/", start_new_session=True)
        child.close()
        self.ctl = host
        self.lock = threading.Lock()
        self.ctl.settimeout(60)
        if self.ctl.recv(16) != b"ready\n":
            raise RuntimeError("sandbox zygote did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, fd: int, limits: Limits, cgroup: str | None) -> int:
        import dataclasses

        req = json.dumps({"limits": dataclasses.asdict(limits), "cgroup": cgroup}).encode()
        with self.lock:
            socket.send_fds(self.ctl, [req], [fd])
            return json.loads(self.ctl.recv(4096))["pid"]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl.close()
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def get_zygote() -> _Zygote:
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            _zygote = _Zygote()
        return _zygote


def cgroup_create(limits: Limits) -> str | None:
    """A cgroup v1 pids + memory group for one session, when the machine lets us make one."""
    name = f"still-sandbox/{os.getpid()}-{time.monotonic_ns()}"
    made = []
    try:
        # the cgroup is the hard backstop (all processes of the session together); the address-space
        # rlimit of each process is lower, so a single greedy process gets a MemoryError first
        hard = str((limits.memory_mb + 256) * 2**20)
        for ctl, settings in (("pids", {"pids.max": str(limits.max_processes)}),
                              ("memory", {"memory.limit_in_bytes": hard, "memory.memsw.limit_in_bytes": hard})):
            path = f"/sys/fs/cgroup/{ctl}/{name}"
            os.makedirs(path, exist_ok=True)
            made.append(path)
            for k, v in settings.items():
                try:
                    with open(f"{path}/{k}", "w") as f:
                        f.write(v)
                except OSError:
                    if k != "memory.memsw.limit_in_bytes":  # absent without swap accounting: no swap limit
                        raise
        return name
    except OSError:
        for p in made:
            with contextlib.suppress(OSError):
                os.rmdir(p)
        return None


def _cgroup_kill_and_remove(name: str | None) -> None:
    if not name:
        return
    path = f"/sys/fs/cgroup/pids/{name}"
    for _ in range(50):  # kill until empty (a fork bomb may add a few while we kill)
        try:
            with open(f"{path}/cgroup.procs") as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
    for ctl in ("pids", "memory"):
        for _ in range(50):
            try:
                os.rmdir(f"/sys/fs/cgroup/{ctl}/{name}")
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


_cleanup_queue: queue.Queue = queue.Queue()


def _cleanup_worker() -> None:
    while True:
        cgroup, scratch = _cleanup_queue.get()
        try:
            _cgroup_kill_and_remove(cgroup)
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        finally:
            _cleanup_queue.task_done()


threading.Thread(target=_cleanup_worker, daemon=True, name="still-sandbox-cleanup").start()


def cleanup_later(cgroup: str | None, scratch: str | None) -> None:
    """Kill and remove a destroyed worker's cgroup and scratch folder in the background thread."""
    _cleanup_queue.put((cgroup, scratch))


def reset_zygote() -> None:
    """Forget a zygote that died (killed from outside); get_zygote() starts a new one."""
    global _zygote
    with _zygote_lock:
        _zygote = None


def stop_zygote() -> None:
    if _zygote is not None:
        _zygote.stop()


def drain_cleanup() -> None:
    """Wait until every destroyed worker's cgroup and scratch folder are gone."""
    _cleanup_queue.join()

