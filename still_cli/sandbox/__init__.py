"""Run model-written Python safely: one-shot `run_python(code)` and per-rollout `Session`s.

Modules: core.py (limits, results, the JSON channel), worker.py (the keeper and session processes: the
isolation itself), zygote.py (the warm process that forks workers; cgroups; cleanup), pool.py (workers,
the pool that reuses them, `Session`, `run_python`, `protections`).

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

from .core import Limits, Result
from .pool import Session, protections, run_python

__all__ = ["Limits", "Result", "Session", "protections", "run_python"]
