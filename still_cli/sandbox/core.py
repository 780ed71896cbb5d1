"""The sandbox's shared pieces: limits, results, and the JSON channel between host, keeper and session."""

from __future__ import annotations

import ctypes
import json
import socket
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


def libc_():
    return ctypes.CDLL(None, use_errno=True)



def send(sock: Any, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    """One JSON message per SOCK_SEQPACKET datagram. JSON, never pickle: a snippet can write into the
    socket its session uses, and what it writes must not be able to run code in the keeper or the host.
    (json and socket are imported at module level: a snippet's `sys.modules['json'] = None` must not
    break its own session's channel.)"""
    data = _dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv(sock: Any, fds: bool = False) -> tuple[dict[str, Any] | None, list[int]]:
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
