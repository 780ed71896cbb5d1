"""Run model-written Python safely: one-shot `run_python(code)` and per-rollout `Session`s.

How (all OS mechanisms; each used when the machine allows it, and `protections()` says which are on):
  * Warm start: a zygote process preloaded with numpy and sympy forks *workers*. A worker is isolated
    once (namespaces, cgroup, mounts below); its keeper then forks one fresh session process per
    session and, when the session ends, kills everything it started and mounts empty tmpfs again.
    Reset = a new fork, so nothing a snippet changed in its interpreter (builtins, modules, files)
    survives into the next session. Idle workers wait in a pool (pre-warmed to the cores) and are
    reused; the keeper's reset runs while the caller goes on.
  * Namespaces (Linux, root or unprivileged user namespaces): per worker a PID namespace whose init is
    the keeper (after a session, kill(-1) from init reaches every process the snippet started, and all
    orphans are re-parented to it: none escape), a network namespace with no interfaces (no network at
    all), a mount namespace where every mount is read-only and /tmp, /dev/shm and the scratch folder are
    private, size-capped tmpfs; per session an IPC namespace (SysV / POSIX IPC objects die with it).
  * cgroup v1 `pids` and `memory` (when writable): caps on processes + threads and on memory for the
    whole session tree; the keeper is exempt from the OOM killer (oom_score_adj -1000).
  * rlimits (always): CPU seconds per call, address space, file size, open files, processes, no core dumps.
  * Privileges: when started as root, the snippet runs as `nobody` (uid 65534): it cannot read root's
    files (~/.ssh), signal or ptrace the keeper (root, not dumpable) or the host, or write where
    `nobody` may not.
  * Channels: JSON messages over SOCK_SEQPACKET sockets, one datagram each. A snippet can write into
    its own session's socket, so nothing read from it is ever unpickled: the worst it can forge is its
    own result, and garbage ends its session with an error.
  * Environment: scrubbed to PATH / HOME / TMPDIR / LANG (no API keys or tokens); stdin, stdout and
    stderr are /dev/null (no copy of the host's stdout is reachable); a cell's output goes to a file in
    the scratch tmpfs, read back bounded (head and tail kept), decoded with replacement, so binary
    garbage or a flood cannot hurt the caller.
  * Wall clock: on timeout the keeper kills the session's whole tree and the next cell starts a fresh
    session, replaying the earlier successful cells so the rollout's state persists (as CoRT's executor
    does).

Not isolated between sessions even with every mechanism on: the kernel keyrings of uid `nobody`
(`keyctl`), and CPU caches / timing (side channels).

Fallback where namespaces / cgroups / root are missing (a laptop user): rlimits, a new process group
killed as a whole, a private scratch folder emptied after each session and removed with its
worker, a Python-level socket block. That still
stops loops, floods, memory bombs and crashes, but NOT: network access by means other than `socket`,
writes anywhere the user may write, grandchildren that leave the process group (setsid + double fork),
or reading the user's files. It never protects against kernel exploits or CPU side channels, and a
snippet may still use up to its limits of CPU, memory and disk while it runs.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import ctypes
import io
import json
import os
import queue
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x20000000, 0x40000000, 0x10000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
SCRATCH = "/tmp/sandbox"
MAX_MESSAGE = 256 * 1024  # bytes per message on the sandbox sockets (code in, result out)


@dataclass
class Limits:
    timeout: float = 5.0            # wall-clock seconds per call
    memory_mb: int = 1024           # memory for the session (cgroup) / extra address space (rlimit)
    max_processes: int = 32         # processes + threads in the session
    max_output: int = 4000          # characters of output kept (head and tail)
    disk_mb: int = 64               # scratch tmpfs size / largest file
    isolation: str = "full"         # full: every mechanism the machine allows; basic: rlimits + process group only

    def __post_init__(self):
        if not 0 < self.max_output <= 20_000:
            raise ValueError(f"sandbox max_output must be 1..20000 characters, got {self.max_output}; "
                             "keep what a model is shown short (CoRT shows 800)")
        if self.isolation not in ("full", "basic"):
            raise ValueError(f"sandbox isolation must be 'full' or 'basic', got {self.isolation!r}")


@dataclass
class Result:
    output: str = ""                # stdout (+ stderr), then the last expression's repr
    error: str | None = None        # short traceback, "timed out after N s", "memory limit exceeded", ...
    elapsed: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_text(self) -> str:
        """What a TIR rollout shows the model: output, then the error if any."""
        return "\n".join(x for x in (self.output.rstrip("\n"), self.error or "") if x)


# ---------------------------------------------------------------------------------------------
# worker side: the keeper and its session processes


def _libc():
    return ctypes.CDLL(None, use_errno=True)


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


def _send(sock: Any, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    """One JSON message per SOCK_SEQPACKET datagram. JSON, never pickle: a snippet can write into the
    socket its session uses, and what it writes must not be able to run code in the keeper or the host.
    (json and socket are imported at module level: a snippet's `sys.modules['json'] = None` must not
    break its own session's channel.)"""
    data = _dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv(sock: Any, fds: bool = False) -> tuple[dict[str, Any] | None, list[int]]:
    """(message or None at EOF, passed fds). Raises ValueError on anything that is not our JSON."""
    if fds:
        data, got, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
    else:
        data, got = sock.recv(MAX_MESSAGE), []
    if not data:
        return None, got
    msg = _loads(data)
    if not isinstance(msg, dict):
        raise ValueError("not a message")  # noqa: TRY004 - garbage on the socket, treated like bad JSON
    return msg, got


_dumps, _loads = json.dumps, json.loads


def _keeper_setup(ctl: Any, limits: Limits, cgroup: str | None) -> tuple[str, list[str], bool]:
    """Isolate this worker process once (it then hosts many sessions, one at a time).
    Returns (scratch dir, active protections, namespaced)."""
    active = []
    libc = _libc()
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


def _keeper_main(ctl: Any, limits: Limits, cgroup: str | None) -> None:
    """A worker's keeper: isolated once, then forks one fresh session process per session request,
    and after each session kills whatever the session left running and empties the scratch space.
    Reset = a new fork, so nothing a snippet changed in its Python survives into the next session."""
    try:
        scratch, active, namespaced = _keeper_setup(ctl, limits, cgroup)
    except Exception as e:  # report instead of dying silently
        _send(ctl, {"ready": False, "error": f"SandboxError: sandbox setup failed: {e!r}"})
        return
    _send(ctl, {"ready": True, "protections": active, "scratch": None if scratch == SCRATCH else scratch})
    libc = _libc()
    while True:
        try:
            msg, fds = _recv(ctl, fds=True)
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
        _send(ctl, {"ended": code})


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
            req, _ = _recv(ctl)
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
    libc = _libc()
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
            msg, _ = _recv(sock)
        except (OSError, ValueError):
            break
        if msg is None:
            break
        reply = _run_cell(str(msg.get("code", "")), ns, out_path, limits)
        reply["output"], reply["truncated"] = (("", False) if msg.get("quiet")
                                               else _read_bounded(out_path, limits.max_output))
        try:
            _send(sock, reply)
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


# ---------------------------------------------------------------------------------------------
# host side


# The zygote: a warm process (numpy, sympy imported) that forks one worker (keeper) per request.
# Written here instead of using multiprocessing's forkserver, which re-imports the caller's __main__
# in every child and pickles preparation data per start (measured: ~9 ms per start vs ~3 ms here).

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def _zygote_main(ctl_fd: int) -> None:
    """`python -m still_cli.sandbox --zygote FD`: serve spawn requests on the control socket FD."""
    import importlib

    for mod in ("numpy", "sympy", "linecache", "json", "select"):
        with contextlib.suppress(Exception):
            importlib.import_module(mod)
    import gc

    gc.freeze()  # the preloaded objects are never scanned by gc: a collection in a fork copies no page
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # orphans of killed workers are adopted here (and reaped at once), not by the machine's init
    _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
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
                _keeper_main(socket.socket(fileno=fds[0]), Limits(**req["limits"]), req["cgroup"])
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


def _get_zygote() -> _Zygote:
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            _zygote = _Zygote()
        return _zygote


def _cgroup_create(limits: Limits) -> str | None:
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


def _drain_cleanup() -> None:
    """Wait until every destroyed worker's cgroup and scratch folder are gone."""
    _cleanup_queue.join()


class _SessionDied(Exception):
    pass


class _Worker:
    """One isolated keeper process (namespaces, cgroup and mounts set up once) that hosts one session
    at a time, each a fresh fork of it. Host side of `_keeper_main`."""

    def __init__(self, limits: Limits):

        self.limits = limits
        self.cgroup = _cgroup_create(limits)
        self.scratch: str | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = _get_zygote().spawn(theirs.fileno(), limits, self.cgroup)
        except OSError:  # the zygote died (killed from outside): start a new one once
            global _zygote
            _zygote = None
            self.pid = _get_zygote().spawn(theirs.fileno(), limits, self.cgroup)
        theirs.close()
        self.ctl = ours
        self.data: Any = None          # the current session's socket
        self.ending = False            # a session was closed; its "ended" message is not read yet
        self.protections: list[str] = []
        self.error: str | None = None
        self.ctl.settimeout(30)
        try:
            hello, _ = _recv(self.ctl)
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
            _send(self.ctl, {"session": True}, [theirs.fileno()])
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
            _send(self.data, {"code": code, "quiet": quiet})
        except OSError:  # the session process is already gone (e.g. a thread of the last cell exited it)
            code_ = self.end(kill=True)
            raise _SessionDied(f"SandboxError: the Python process ended (exit code {code_})") from None
        self.data.settimeout(timeout)
        try:
            reply, _ = _recv(self.data)
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
                    _send(self.ctl, {"kill": True})
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
            msg, _ = _recv(self.ctl)
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
        # caller's path; _drain_cleanup() waits for it
        _cleanup_queue.put((self.cgroup, self.scratch))
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
    _drain_cleanup()


@atexit.register
def _shutdown() -> None:
    _stop_pools()
    if _zygote is not None:
        _zygote.stop()


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


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--zygote":
    _zygote_main(int(sys.argv[2]))
