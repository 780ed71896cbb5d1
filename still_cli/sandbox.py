"""Run model-written Python safely: one-shot `run_python(code)` and per-rollout `Session`s.

How (all OS mechanisms; each used when the machine allows it, and `protections()` says which are on):
  * Warm start: a multiprocessing *forkserver* preloaded with numpy and sympy. Every session is a fresh
    fork of it, so imports are already done and nothing a snippet did survives into the next session
    (reset = throw the process away). `run_python` takes pre-forked, already-sandboxed sessions from a
    small pool (sized to the cores) that a background thread keeps full.
  * Namespaces (Linux, root or unprivileged user namespaces): a new PID namespace whose init is the
    session process — when it dies the kernel kills every process the snippet started (no orphans, no
    escaped grandchildren); a new network namespace with no interfaces (no network at all); a new
    mount namespace where every mount is read-only and /tmp, /dev/shm and the scratch folder are a
    private, size-capped tmpfs that vanishes with the session.
  * cgroup v1 `pids` and `memory` (when writable): caps on processes + threads and on memory for the
    whole session tree.
  * rlimits (always): CPU seconds per call, address space, file size, open files, processes, no core dumps.
  * Privileges: when started as root, the snippet runs as `nobody` (uid 65534): it cannot read root's
    files (~/.ssh), signal the host or the forkserver, or write where `nobody` may not.
  * Environment: scrubbed to PATH / HOME / TMPDIR / LANG (no API keys or tokens); stdin is /dev/null;
    stdout/stderr go to a file in the scratch tmpfs, read back bounded (head and tail kept), decoded with
    replacement, so binary garbage or a flood cannot hurt the caller.
  * Wall clock: the caller kills the session's whole tree on timeout and starts a fresh one, replaying
    the earlier successful cells so the rollout's state persists (as CoRT's executor does).

Fallback where namespaces / cgroups / root are missing (a laptop user): rlimits, a new process group
killed as a whole, a private scratch folder removed afterwards, a Python-level socket block. That still
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
import os
import queue
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
SCRATCH = "/tmp/sandbox"


@dataclass
class Limits:
    timeout: float = 5.0            # wall-clock seconds per call
    memory_mb: int = 1024           # memory for the session (cgroup) / extra address space (rlimit)
    max_processes: int = 32         # processes + threads in the session
    max_output: int = 4000          # characters of output kept (head and tail)
    disk_mb: int = 64               # scratch tmpfs size / largest file
    isolation: str = "full"         # full: every mechanism the machine allows; basic: rlimits + process group only


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
# child side: runs inside the forked session process


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
    import socket

    def refuse(*a, **k):
        raise OSError("network access is disabled in the sandbox")

    socket.socket = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]


def _setup(conn: Any, limits: Limits, cgroup: str | None, scratch_host: str) -> tuple[str, list[str]]:
    """Isolate this (forked) process; returns (scratch dir, active protections)."""
    active = []
    libc = _libc()
    os.setsid()
    if cgroup:
        for ctl in ("pids", "memory"):
            with contextlib.suppress(OSError):
                with open(f"/sys/fs/cgroup/{ctl}/{cgroup}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
                active.append(f"cgroup-{ctl}")
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    namespaced = limits.isolation == "full" and libc.unshare(flags) == 0
    if namespaced:
        pid = os.fork()  # the child is pid 1 of the new PID namespace
        if pid:
            # this process only waits; whatever ends it ends the namespace (PDEATHSIG below)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports
            with contextlib.suppress(Exception):
                conn.send({"exit": code})
            os._exit(code & 0xFF)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        active += ["pid-namespace", "net-namespace"]
        if os.geteuid() == 0:
            try:
                # a /proc of this PID namespace: host processes are not even listed
                if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | 8, None) == 0:  # 8 = MS_NOEXEC
                    active.append("private-proc")
                if _hide_home(libc):
                    active.append("home-hidden")
                _mounts_readonly(libc)
                ok = all(_tmpfs(libc, p, limits.disk_mb) for p in ("/tmp", "/dev/shm"))
                if ok:
                    active += ["read-only-fs", "private-tmpfs"]
            except Exception:
                pass
    if "private-tmpfs" in active:
        scratch = SCRATCH
        os.makedirs(scratch, exist_ok=True)
    else:
        scratch = scratch_host
        if not namespaced:  # no network namespace: the weak, Python-level block is all there is
            _block_sockets()
            active.append("python-socket-block")
    drop = os.geteuid() == 0 and limits.isolation == "full"
    if drop:
        os.chown(scratch, NOBODY, NOBODY)
    os.chdir(scratch)
    # --- rlimits (CPU per call is set before each cell) -------------------------------------------
    vm = _vm_size()
    resource.setrlimit(resource.RLIMIT_AS, (vm + limits.memory_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.disk_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    active.append("rlimits")
    # --- privileges ---------------------------------------------------------------------------------
    if drop:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        active.append("uid-nobody")
    with contextlib.suppress(ValueError, OSError):  # counts per uid (ignored for root): after setuid
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes,) * 2)
    # --- environment ------------------------------------------------------------------------------
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=scratch, TMPDIR=scratch, LANG="C.UTF-8")
    tempfile.tempdir = scratch
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", scratch) and not p.startswith(scratch)]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG, not a kill
    return scratch, active


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


def _session_main(conn: Any, limits: Limits, cgroup: str | None, scratch_host: str) -> None:
    """Entry point of a session process (forked from the warm forkserver)."""
    try:
        scratch, active = _setup(conn, limits, cgroup, scratch_host)
    except Exception as e:  # report instead of dying silently
        conn.send({"ready": False, "error": f"sandbox setup failed: {e!r}"})
        return
    conn.send({"ready": True, "protections": active})
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    out_path = os.path.join(scratch, ".cell_output")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        code, quiet = msg
        reply = _run_cell(code, ns, out_path, limits)
        reply["output"], reply["truncated"] = ("", False) if quiet else _read_bounded(out_path, limits.max_output)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            break
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# host side


# The zygote: a warm process (numpy, sympy imported) that forks one process per session on request.
# Written here instead of using multiprocessing's forkserver, which re-imports the caller's __main__
# in every child and pickles preparation data per start (measured: ~9 ms per session vs ~3 ms here).

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def _zygote_main(ctl_fd: int) -> None:
    """`python -m still_cli.sandbox --zygote FD`: serve spawn requests on the control socket FD."""
    import importlib
    import json
    import socket

    for mod in ("numpy", "sympy", "multiprocessing.connection", "pickle", "linecache"):
        with contextlib.suppress(Exception):
            importlib.import_module(mod)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # orphans of killed sessions are adopted here (and reaped at once), not by the machine's init
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
                _session_entry(fds[0], Limits(**req["limits"]), req["cgroup"], req["scratch"])
            finally:
                os._exit(0)
        os.close(fds[0])
        ctl.sendall(json.dumps({"pid": pid}).encode())


def _session_entry(fd: int, limits: Limits, cgroup: str | None, scratch_host: str) -> None:
    from multiprocessing.connection import Connection

    _session_main(Connection(fd), limits, cgroup, scratch_host)


class _Zygote:
    def __init__(self):
        import socket
        import subprocess

        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}  # no secrets in any session's environ
        self.proc = subprocess.Popen([sys.executable, "-m", "still_cli.sandbox", "--zygote", str(child.fileno())],
                                     pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
                                     cwd="/", start_new_session=True)
        child.close()
        self.ctl = host
        self.lock = threading.Lock()
        self.ctl.settimeout(60)
        if self.ctl.recv(16) != b"ready\n":
            raise RuntimeError("sandbox zygote did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, fd: int, limits: Limits, cgroup: str | None, scratch: str) -> int:
        import dataclasses
        import json
        import socket

        req = json.dumps({"limits": dataclasses.asdict(limits), "cgroup": cgroup, "scratch": scratch}).encode()
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
            shutil.rmtree(scratch, ignore_errors=True)
        finally:
            _cleanup_queue.task_done()


threading.Thread(target=_cleanup_worker, daemon=True, name="still-sandbox-cleanup").start()


def _drain_cleanup() -> None:
    """Wait until every killed session's cgroup and scratch folder are gone."""
    _cleanup_queue.join()


class _Proc:
    """One sandboxed session process (not yet used, or in use by one Session)."""

    def __init__(self, limits: Limits):
        import socket
        from multiprocessing.connection import Connection

        self.limits = limits
        self.cgroup = _cgroup_create(limits)
        self.scratch_host = tempfile.mkdtemp(prefix="still-sandbox-")
        ours, theirs = socket.socketpair()
        try:
            self.pid = _get_zygote().spawn(theirs.fileno(), limits, self.cgroup, self.scratch_host)
        except OSError:  # the zygote died (killed from outside): start a new one once
            global _zygote
            _zygote = None
            self.pid = _get_zygote().spawn(theirs.fileno(), limits, self.cgroup, self.scratch_host)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.protections: list[str] = []
        self.error: str | None = None
        if self.conn.poll(30):
            try:
                hello = self.conn.recv()
                self.protections = hello.get("protections", [])
                self.error = hello.get("error")
            except (EOFError, OSError):
                self.error = "sandbox process died during setup"
        else:
            self.error = "sandbox process did not start within 30 s"

    def call(self, code: str, timeout: float, quiet: bool = False) -> Result:
        t = time.perf_counter()
        if self.error:
            return Result(error=self.error)
        try:
            self.conn.send((code, quiet))
            if not self.conn.poll(timeout):
                self.kill()
                return Result(error=f"TimeoutError: timed out after {timeout:g} s", elapsed=time.perf_counter() - t)
            reply = self.conn.recv()
            if "exit" in reply:  # the session process ended; its waiter reports the exit code
                raise EOFError(reply["exit"])
        except (EOFError, OSError, BrokenPipeError) as e:
            code_ = e.args[0] if isinstance(e, EOFError) and e.args and isinstance(e.args[0], int) else None
            oom = self._oom_killed()
            self.kill()
            if oom:
                return Result(error="MemoryError: memory limit exceeded (the sandbox was killed)",
                              elapsed=time.perf_counter() - t)
            why = ("CPU time limit exceeded" if code_ == 128 + signal.SIGXCPU else
                   f"the Python process ended (exit code {code_})")
            return Result(error=f"SandboxError: {why}", elapsed=time.perf_counter() - t)
        return Result(output=reply["output"], error=reply["error"], truncated=reply["truncated"],
                      elapsed=time.perf_counter() - t)

    def _oom_killed(self) -> bool:
        if not self.cgroup:
            return False
        try:
            with open(f"/sys/fs/cgroup/memory/{self.cgroup}/memory.oom_control") as f:
                return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in f)
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            os.killpg(self.pid, signal.SIGKILL)  # the session's process group (it called setsid)
        with contextlib.suppress(Exception):
            os.kill(self.pid, signal.SIGKILL)  # its PID-namespace init follows by PDEATHSIG
        with contextlib.suppress(Exception):
            self.conn.close()
        # the rest (kill whatever is left in the cgroup, remove it and the scratch folder) is off the
        # caller's path; _drain_cleanup() waits for it
        _cleanup_queue.put((self.cgroup, self.scratch_host))
        self.cgroup = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.kill()


class _Pool:
    """Ready, already-sandboxed session processes, refilled in the background (sized to the cores)."""

    def __init__(self, limits: Limits, size: int):
        self.limits, self.size = limits, size
        self.ready: queue.Queue[_Proc] = queue.Queue()
        self.want = threading.Semaphore(0)
        self.stopped = False
        for _ in range(size):
            self.want.release()
        self.threads = [threading.Thread(target=self._fill, daemon=True) for _ in range(size)]
        for t in self.threads:
            t.start()

    def _fill(self) -> None:
        while True:
            self.want.acquire()
            if self.stopped:
                return
            proc = _Proc(self.limits)
            if self.stopped:  # stop() ran while this one was being made
                proc.kill()
                return
            self.ready.put(proc)

    def take(self) -> _Proc:
        p = self.ready.get()
        self.want.release()
        return p

    def stop(self) -> None:
        self.stopped = True
        for _ in self.threads:
            self.want.release()
        while not self.ready.empty():
            self.ready.get_nowait().kill()


_pools: dict[tuple, _Pool] = {}
_pools_lock = threading.Lock()


def _pool_for(limits: Limits) -> _Pool:
    key = (limits.memory_mb, limits.max_processes, limits.max_output, limits.disk_mb, limits.isolation)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = _Pool(limits, size=max(1, os.cpu_count() or 1))
        return _pools[key]


def _stop_pools() -> None:
    """Kill the pre-forked, unused sessions (e.g. before checking that nothing is left running)."""
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
        self._proc: _Proc | None = None
        self.history: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def _ensure(self) -> _Proc:
        if self._proc is None:
            self._proc = _pool_for(self.limits).take()
            for cell in self.history:  # restore state after a crash
                self._proc.call(cell, self.limits.timeout, quiet=True)
        return self._proc

    def run(self, code: str, timeout: float | None = None) -> Result:
        timeout = self.limits.timeout if timeout is None else timeout
        try:
            proc = self._ensure()
            res = proc.call(code, timeout)
        except Exception as e:  # never raise into the rollout
            res = Result(error=f"SandboxError: {e!r}")
        if res.error and (res.error.startswith(("TimeoutError: timed out", "SandboxError"))):
            if self._proc is not None:
                self._proc.kill()
            self._proc = None
        elif res.ok:
            self.history.append(code)
        self.calls.append({"code": code, "output": res.output, "error": res.error, "elapsed": res.elapsed})
        return res

    @property
    def protections(self) -> list[str]:
        return self._ensure().protections

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_python(code: str, timeout: float = 5.0, limits: Limits | None = None) -> Result:
    """Run one snippet in a fresh sandboxed process; never raises. See the module docstring."""
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
