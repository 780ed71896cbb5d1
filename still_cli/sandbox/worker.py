"""Worker side: the keeper (isolated once: namespaces, mounts, cgroup) and the session processes it forks.

Runs in processes the zygote forked (zygote.py), never in the caller's. See the package docstring for
what each mechanism guards against.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from typing import Any

from .core import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    NOBODY,
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    SCRATCH,
    Limits,
    libc_,
    recv,
    send,
)


def _mounts_readonly(libc) -> None:
    """Inside a fresh mount namespace: every mount read-only, private tmpfs on /tmp and /dev/shm."""
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            points.append(line.split()[4])
    for mp_ in sorted(set(points), key=len):
        if mp_.startswith(("/proc", "/sys", "/dev")):
            continue
        libc.mount(mp_.encode(), mp_.encode(), None, MS_BIND | MS_REC, None)
        libc.mount(None, mp_.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _hide_home(libc) -> bool:
    """Cover the host user's home with an empty tmpfs (so ~/.ssh, tokens, caches are gone), then bind
    back only what Python needs from it (an interpreter or venv installed under the home, e.g. pyenv)."""
    home = os.path.realpath(os.path.expanduser("~"))
    if home in ("/", "") or not os.path.isdir(home):
        return False
    need = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p}
    need = sorted(p for p in need if p.startswith(home + "/") and os.path.isdir(p))
    roots = [p for p in need if not any(p != q and p.startswith(q + "/") for q in need)]
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in roots}  # still reachable once covered
    if libc.mount(b"tmpfs", home.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755") != 0:
        return False
    for p, fd in fds.items():
        os.makedirs(p, mode=0o755, exist_ok=True)
        libc.mount(f"/proc/self/fd/{fd}".encode(), p.encode(), None, MS_BIND | MS_REC, None)
        os.close(fd)
    return True


def _tmpfs(libc, path: str, size_mb: int) -> bool:
    os.makedirs(path, exist_ok=True)
    opts = f"size={size_mb}m,mode=1777".encode()
    return libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0


def _block_sockets() -> None:

    def refuse(*a, **k):
        raise OSError("network access is disabled in the sandbox")

    socket.socket = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]



def _keeper_setup(ctl: Any, limits: Limits, cgroup: str | None) -> tuple[str, list[str], bool]:
    """Isolate this worker process once (it then hosts many sessions, one at a time).
    Returns (scratch dir, active protections, namespaced)."""
    active = []
    libc = libc_()
    os.setsid()
    if cgroup:
        for controller in ("pids", "memory"):
            with contextlib.suppress(OSError):
                with open(f"/sys/fs/cgroup/{controller}/{cgroup}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
                active.append(f"cgroup-{controller}")
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    namespaced = limits.isolation == "full" and libc.unshare(flags) == 0
    if namespaced:
        pid = os.fork()  # the child is pid 1 of the new PID namespace: the keeper
        if pid:
            # this process only waits; whatever ends it ends the namespace (PDEATHSIG below)
            ctl.close()
            os.waitpid(pid, 0)
            os._exit(0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        active += ["pid-namespace", "net-namespace", "ipc-namespace"]  # IPC: one per session
        if os.geteuid() == 0:
            try:
                # a /proc of this PID namespace: host processes are not even listed
                if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | 8, None) == 0:  # 8 = MS_NOEXEC
                    active.append("private-proc")
                if _hide_home(libc):
                    active.append("home-hidden")
                _mounts_readonly(libc)
                if _fresh_tmpfs(libc, limits):
                    active += ["read-only-fs", "private-tmpfs"]
            except Exception:
                pass
    if "private-tmpfs" in active:
        scratch = SCRATCH
    else:
        scratch = tempfile.mkdtemp(prefix="still-sandbox-")  # the host removes it with the worker
        if not namespaced:  # no network namespace: the weak, Python-level block is all there is
            active.append("python-socket-block")
    active.append("rlimits")
    if os.geteuid() == 0 and limits.isolation == "full":
        active.append("uid-nobody")
    with contextlib.suppress(OSError):  # the keeper is root's: a session (uid nobody) cannot ptrace it
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")  # a session's memory bomb gets the OOM kill, never the keeper
    os.chdir("/")
    return scratch, active, namespaced


def _fresh_tmpfs(libc, limits: Limits) -> bool:
    """(Re)mount empty, size-capped tmpfs on /tmp and /dev/shm; the scratch folder lives in /tmp."""
    ok = True
    for p in ("/tmp", "/dev/shm"):
        libc.umount2(p.encode(), 2)  # MNT_DETACH; fails harmlessly the first time (not ours yet)
        ok = _tmpfs(libc, p, limits.disk_mb) and ok
    if ok:
        os.makedirs(SCRATCH)
        if os.geteuid() == 0 and limits.isolation == "full":
            os.chown(SCRATCH, NOBODY, NOBODY)
    return ok


def keeper_main(ctl: Any, limits: Limits, cgroup: str | None) -> None:
    """A worker's keeper: isolated once, then forks one fresh session process per session request,
    and after each session kills whatever the session left running and empties the scratch space.
    Reset = a new fork, so nothing a snippet changed in its Python survives into the next session."""
    try:
        scratch, active, namespaced = _keeper_setup(ctl, limits, cgroup)
    except Exception as e:  # report instead of dying silently
        send(ctl, {"ready": False, "error": f"SandboxError: sandbox setup failed: {e!r}"})
        return
    send(ctl, {"ready": True, "protections": active, "scratch": None if scratch == SCRATCH else scratch})
    libc = libc_()
    while True:
        try:
            msg, fds = recv(ctl, fds=True)
        except (OSError, ValueError):
            msg, fds = None, []
        if msg is None:
            return  # the host went away
        if not fds:
            continue  # a late "kill" for a session that had already ended
        pid = os.fork()
        if pid == 0:
            ctl.close()
            _session_main(fds[0], limits, scratch, namespaced)
            os._exit(0)
        os.close(fds[0])
        host_gone = _wait_session(ctl, pid, namespaced)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        code = code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports
        _kill_session(pid, namespaced, reap=True)  # whatever the session started and left behind
        if host_gone:
            return
        # an empty scratch space for the next session
        if scratch == SCRATCH:
            _fresh_tmpfs(libc, limits)
        else:
            for entry in os.listdir(scratch):
                p = os.path.join(scratch, entry)
                with contextlib.suppress(OSError):
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        send(ctl, {"ended": code})


def _wait_session(ctl: Any, pid: int, namespaced: bool) -> bool:
    """Wait until the session process exits, killing its tree when the host asks (a timeout) or goes
    away. Returns whether the host is gone."""
    import select

    host_gone = False
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    while True:
        if pidfd is not None:
            ready, _, _ = select.select([ctl, pidfd], [], [])
            if pidfd in ready:
                os.close(pidfd)
                return host_gone
        else:  # kernels before 5.3: poll
            ready, _, _ = select.select([ctl], [], [], 0.01)
            if not ready and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return host_gone
            if not ready:
                continue
        try:
            req, _ = recv(ctl)
        except (OSError, ValueError):
            req = None
        host_gone = host_gone or req is None
        _kill_session(pid, namespaced, reap=False)


def _kill_session(pid: int, namespaced: bool, reap: bool) -> None:
    """SIGKILL a session process and everything it started (`reap`: and reap them all)."""
    if namespaced:
        # the keeper is pid 1 of this PID namespace: kill(-1) reaches every other process in it, and
        # every orphan is re-parented to the keeper, so reaping until ECHILD leaves nothing behind
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            if not reap:
                return
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    # basic isolation: the session's process group (grandchildren that left it are a documented gap)
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        with contextlib.suppress(OSError):
            target()
    if reap:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _session_main(fd: int, limits: Limits, scratch: str, namespaced: bool) -> None:
    """A session process (forked from the keeper): drop to the snippet's limits, then run cells."""
    sock = socket.socket(fileno=fd)
    libc = libc_()
    if namespaced:
        libc.unshare(CLONE_NEWIPC)  # SysV / POSIX IPC objects die with the session
    else:
        os.setsid()  # basic isolation: the process group is what gets killed
        _block_sockets()
    vm = _vm_size()
    resource.setrlimit(resource.RLIMIT_AS, (vm + limits.memory_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.disk_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    if os.geteuid() == 0 and limits.isolation == "full":
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    with contextlib.suppress(ValueError, OSError):  # counts per uid (ignored for root): after setuid
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes,) * 2)
    os.chdir(scratch)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=scratch, TMPDIR=scratch, LANG="C.UTF-8")
    tempfile.tempdir = scratch
    # stdin closed; stdout / stderr (inherited from the host through the zygote) replaced, so no
    # saved copy of the host's stdout is left for a snippet to write into
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    os.close(devnull)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", scratch) and not p.startswith(scratch)]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG, not a kill
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    out_path = os.path.join(scratch, ".cell_output")
    while True:
        try:
            msg, _ = recv(sock)
        except (OSError, ValueError):
            break
        if msg is None:
            break
        reply = _run_cell(str(msg.get("code", "")), ns, out_path, limits)
        reply["output"], reply["truncated"] = (("", False) if msg.get("quiet")
                                               else _read_bounded(out_path, limits.max_output))
        try:
            send(sock, reply)
        except OSError:
            break
    os._exit(0)


_repr = repr


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _short_tb(exc: BaseException) -> str:
    """The traceback from the snippet's first frame on (our own frames dropped), at most 4 frames."""
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)
    first = next((i for i, f in enumerate(frames) if f.filename == "<cell>"), len(frames))
    te.stack = traceback.StackSummary.from_list(frames[first:][-4:])
    return "".join(te.format()).strip()[-1500:]


def _run_cell(code: str, ns: dict[str, Any], out_path: str, limits: Limits) -> dict[str, Any]:
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_now = int(used.ru_utime + used.ru_stime)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_now + max(1, int(limits.timeout + 1)), resource.RLIM_INFINITY))
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb", buffering=0), encoding="utf-8",
                                  errors="replace", line_buffering=True, write_through=True)
    sys.stderr = out = sys.stdout
    error = None
    import linecache

    linecache.cache["<cell>"] = (len(code), None, code.splitlines(True), "<cell>")  # source in tracebacks
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), ns)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
            if value is not None:  # builtins the snippet may have replaced are not used here
                out.write(_repr(value) + "\n")
    except MemoryError:
        error = "MemoryError: memory limit exceeded"
    except RecursionError:
        error = "RecursionError: maximum recursion depth exceeded"
    except SystemExit as e:
        error = f"SystemExit: {e.code}"
    except BaseException as e:  # noqa: BLE001 - the snippet's exception is its result
        error = _short_tb(e)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stdout = sys.__stdout__
        sys.stderr = sys.__stderr__
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    return {"error": error}


def _read_bounded(path: str, limit: int) -> tuple[str, bool]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size <= limit * 4:
                data = f.read()
            else:
                head = f.read(limit * 2)
                f.seek(size - limit * 2)
                data = head + b"\n...\n" + f.read()
    except OSError:
        return "", False
    text = data.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text, size > limit * 4
    half = limit // 2
    return text[:half] + f"\n... [{len(text) - limit} characters cut] ...\n" + text[-half:], True

