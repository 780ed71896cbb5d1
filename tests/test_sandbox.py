"""Hostile snippets against the sandbox, each checked from the host's side: the host is alive, no
process of the snippet survives, nothing was written outside, no secret reached the output."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_until
from still_cli import sandbox
from still_cli.sandbox import pool as sandbox_pool
from still_cli.sandbox import Limits, Session, run_python

SECRET = "sk-host-secret-7f3a9c"


@pytest.fixture(autouse=True)
def contained(tmp_path):
    """Around every test: a secret in the host environment; afterwards no sandbox process is left."""
    os.environ["STILL_TEST_SECRET"] = SECRET
    yield
    del os.environ["STILL_TEST_SECRET"]
    sandbox_pool._stop_pools()  # kills the pre-forked, unused sessions and waits for cleanup

    def strays():
        return [p.info["cmdline"] for p in psutil.process_iter(["uids", "cmdline"])
                if p.info["uids"] and p.info["uids"].real == 65534]

    assert wait_until(lambda: not strays(), 5), f"stray sandbox processes: {strays()}"


def full() -> bool:
    return "pid-namespace" in sandbox.protections()


def fresh_pool(limits: Limits, **kw) -> sandbox_pool._Pool:
    """An empty pool for `limits` (no pre-warmed workers), so one session after another gets the same worker."""
    sandbox_pool._stop_pools()
    pool = sandbox_pool._pools[sandbox_pool._pool_key(limits)] = sandbox_pool._Pool(limits, warm=0, **kw)
    return pool


def test_result_shape_and_notebook_semantics():
    r = run_python("x = 6 * 7\nprint('hi')\nx")
    assert r.ok and r.output == "hi\n42\n"
    with Session() as s:
        assert s.run("import sympy\nv = sympy.Rational(1, 3)").ok
        assert s.run("v * 3").output == "1\n"  # later cells see earlier cells' variables
    assert "NameError" in run_python("v").error  # a new session starts empty


@pytest.mark.parametrize("code,expect", [
    ("while True: pass", "timed out after 1 s"),
    ("import time\ntime.sleep(60)", "timed out after 1 s"),
    ("def f(): return f()\nf()", "RecursionError"),
    ("import sys\nsys.setrecursionlimit(10**6)\ndef f(): return f()\nf()", "SandboxError|MemoryError|timed out"),
    ("import ctypes\nctypes.string_at(0)", "SandboxError"),
    ("raise SystemExit(3)", "SystemExit: 3"),
    ("import os\nos._exit(0)", "SandboxError"),
    ("input()", "EOFError"),
    ("x = bytearray(10**11)", "MemoryError"),
])
def test_each_hostile_snippet_fails_alone(code, expect):
    r = run_python(code, timeout=1)
    assert r.error and any(e in r.error for e in expect.split("|")), r
    assert run_python("1 + 1").output == "2\n"  # and the next call is fine


def test_memory_bomb_growing_slowly_is_stopped():
    r = run_python("a = []\nwhile True: a.append(bytearray(10**7))", timeout=10)
    assert r.error and ("MemoryError" in r.error or "memory" in r.error), r
    assert psutil.virtual_memory().available > 2 * 2**30


def test_fork_and_thread_bombs_are_capped():
    r = run_python("import os\npids = []\nwhile True: pids.append(os.fork())", timeout=3)
    assert r.error and ("BlockingIOError" in r.error or "timed out" in r.error or "SandboxError" in r.error), r
    r = run_python("import threading, time\nwhile True: threading.Thread(target=time.sleep, args=(60,)).start()",
                   timeout=3)
    assert r.error and ("can't start new thread" in r.error or "timed out" in r.error or "RuntimeError" in r.error)


def test_grandchildren_die_with_the_session():
    with Session(Limits(timeout=2)) as s:
        r = s.run("import subprocess\np = subprocess.Popen(['setsid', 'sleep', '1234'])\nprint(p.pid)")
        assert r.ok, r

        def sleeper_alive():
            return any("sleep" in (p.info["cmdline"] or [""])[0] and "1234" in (p.info["cmdline"] or [])
                       for p in psutil.process_iter(["cmdline"]))

        # Popen returns once forked; the exec into `sleep` may come a moment later on a loaded machine
        assert wait_until(sleeper_alive, 5)

    # the keeper kills the session's tree once the session process has exited (off the caller's path)
    assert wait_until(lambda: not sleeper_alive(), 5)


def test_subprocess_that_hangs_is_killed_with_its_tree():
    r = run_python("import subprocess\nsubprocess.run(['sleep', '4321'])", timeout=1)
    assert "timed out" in r.error
    time.sleep(0.3)
    assert not any("4321" in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_no_writes_outside_and_scratch_is_removed(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')")
    assert r.error and not target.exists()
    r = run_python("import os\nopen('/tmp/planted.txt', 'w').write('x')\nopen('note.txt', 'w').write('y')\nos.getcwd()")
    assert r.ok, r
    cwd = r.output.strip().strip("'")
    assert not Path("/tmp/planted.txt").exists() and not Path(cwd, "note.txt").exists()
    r = run_python("open('big', 'wb').write(b'0' * 200 * 2**20)")  # fill the disk: capped
    assert r.error and ("No space" in r.error or "File too large" in r.error), r


def test_secrets_and_home_are_out_of_reach():
    secret_file = Path.home() / ".still-test-secret"
    secret_file.write_text(SECRET)
    try:
        code = ("import os, glob\nfor p in ['~/.still-test-secret', '/proc/self/environ', '/proc/1/environ']:\n"
                "    try: print(open(os.path.expanduser(p), 'rb').read())\n    except Exception as e: print(type(e).__name__)\n"
                "print(dict(os.environ))\nprint(glob.glob(os.path.expanduser('~') + '/*'))")
        r = run_python(code)
    finally:
        secret_file.unlink()
    assert SECRET not in r.output + (r.error or "")
    assert "STILL_TEST_SECRET" not in r.output


def test_no_network_not_even_the_hosts_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    r = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')")
    assert "connected" not in r.output and r.error
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()


def test_killing_parents_and_signals_do_not_reach_the_host():
    me = os.getpid()
    code = (f"import os, signal\nfor pid in ({me}, os.getppid(), 1, -1):\n"
            f"    try: os.kill(pid, signal.SIGKILL)\n    except Exception as e: print(type(e).__name__)")
    run_python(code)
    assert run_python("print('still here')").output == "still here\n"  # host and forkserver alive


def test_output_flood_and_binary_garbage():
    r = run_python("print('x' * 10**7)")
    assert r.ok and r.truncated and len(r.output) < 5000 and "characters cut" in r.output
    r = run_python("import os\nos.write(1, bytes(range(256)) * 50)")
    assert r.ok and isinstance(r.output, str) and "\ufffd" in r.output
    r = run_python("while True: print('y' * 1000)", timeout=3)
    assert "timed out" in r.error or "File too large" in r.error  # the output file is capped (disk_mb)
    assert r.truncated and len(r.output) < 5000


def test_tampering_does_not_leak_into_the_next_call():
    r = run_python("import builtins, math, sys\nbuiltins.print = None\nmath.pi = 3\nsys.modules['json'] = None\n"
                   "open('evil_mod.py', 'w').write('import os; os.system(\"touch /tmp/pwned\")')")
    assert r.ok, r
    r = run_python("import math, json\nprint(math.pi)\nprint(json.dumps(1))")
    assert r.output == "3.141592653589793\n1\n"
    with Session() as s:
        assert s.run("open('evil_mod.py', 'w').write('X = 1')").ok
        r = s.run("import evil_mod")  # a planted file in the scratch folder is not importable
        assert r.error and "ModuleNotFoundError" in r.error


def test_session_survives_a_crash_by_replaying_earlier_cells():
    with Session(Limits(timeout=1)) as s:
        assert s.run("a = 5").ok
        assert "timed out" in s.run("while True: pass").error
        assert s.run("a * 2").output == "10\n"  # state restored in the fresh process
        assert [c["error"] is None for c in s.calls] == [True, False, True]


def test_basic_isolation_still_contains_the_common_failures(tmp_path):
    lim = Limits(timeout=1, isolation="basic")
    assert "timed out" in run_python("while True: pass", timeout=1, limits=lim).error
    assert "MemoryError" in run_python("x = bytearray(10**11)", timeout=1, limits=Limits(timeout=1, isolation="basic")).error
    # the next session on the same worker starts with its scratch folder emptied
    fresh_pool(Limits(isolation="basic"))
    with Session(Limits(isolation="basic")) as s:
        r = s.run("import os\nopen('f', 'w').write('x')\nos.getcwd()")
        assert r.ok
        pid = s._worker.pid
    with Session(Limits(isolation="basic")) as s:
        assert s.run("import os\n(os.getcwd(), [f for f in os.listdir('.') if f != '.cell_output'])").output == \
            f"({r.output.strip()}, [])\n"
        assert s._worker.pid == pid
    sandbox_pool._stop_pools()
    assert not Path(r.output.strip().strip("'")).exists()  # and removed with its worker
    r = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))", limits=Limits(isolation="basic"))
    assert "network access is disabled" in r.error


def test_many_concurrent_sessions_from_threads():
    out = {}

    def work(i):
        out[i] = run_python(f"import numpy as np\nint(np.arange({i + 1}).sum())").output

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert out == {i: f"{(i + 1) * i // 2}\n" for i in range(8)}


def test_memory_bomb_spread_over_processes_hits_the_session_cap():
    before = psutil.virtual_memory().available
    code = ("import os, time\nfor i in range(6):\n    if os.fork() == 0:\n        a = bytearray(500 * 2**20)\n"
            "        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)")
    r = run_python(code, timeout=4)
    assert r.error, r
    assert psutil.virtual_memory().available > before - 2 * 2**30  # 3 GB asked; the session got <= ~1.3 GB


def test_forged_messages_on_inherited_sockets_cannot_run_code_in_the_host(tmp_path):
    """The snippet can write into every socket it holds; the host reads JSON only (a pickle here would
    run `touch` in the host), so the worst it gets is an error for its own session."""
    marker = tmp_path / "pwned"
    code = ("import os, pickle, struct, stat\nclass P:\n    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            "blob = pickle.dumps(P())\nfor fd in range(3, 64):\n"
            "    try:\n        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
            "            os.write(fd, struct.pack('!i', len(blob)) + blob)\n            os.write(fd, blob)\n"
            "            os.write(fd, b'\\xff' * 100)\n    except OSError:\n        pass\nprint('done')")
    with Session() as s:
        r = s.run(code)
        r2 = s.run("1 + 1")
    assert not marker.exists()
    assert r.error is None or "SandboxError" in r.error
    assert r2.output == "2\n" or (r2.error and "SandboxError" in r2.error)
    assert run_python("1 + 1").output == "2\n"


def test_snippet_cannot_write_into_the_hosts_stdout():
    """Every file descriptor but its own channel gets junk: only the snippet's own output shows it."""
    code = ("import os, stat\nfor fd in range(0, 256):\n    try:\n"
            "        if not stat.S_ISSOCK(os.fstat(fd).st_mode): os.write(fd, b'GARBAGE')\n"
            "    except OSError: pass\nprint('ok')")
    prog = f"from still_cli.sandbox import run_python\nr = run_python({code!r})\nprint('RESULT', r.output.strip()[-2:])"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout == "RESULT ok\n" and "GARBAGE" not in out.stderr, out


def test_nothing_survives_into_the_next_session_of_the_same_worker():
    if not full():
        pytest.skip("needs namespaces")
    plant = ("import ctypes, os, subprocess\nlibc = ctypes.CDLL(None)\n"
             "print(libc.shmget(0x5717, 4096, 0o1666) >= 0)\n"  # a SysV shared memory segment
             "open('/tmp/left.txt', 'w').write('x'); open('/dev/shm/left', 'w').write('x')\n"
             "p = subprocess.Popen(['setsid', 'sleep', '777'])")
    probe = ("import ctypes, os, glob\nlibc = ctypes.CDLL(None)\n"
             "print(libc.shmget(0x5717, 0, 0), os.path.exists('/tmp/left.txt'), os.path.exists('/dev/shm/left'),"
             " [p for p in glob.glob('/proc/[0-9]*') if 'sleep' in open(p + '/cmdline').read()])")
    fresh_pool(Limits())  # one worker, handed out again and again
    for _ in range(3):
        with Session() as s:
            assert s.run(plant).output == "True\n"
            pid = s._worker.pid
        with Session() as s:
            assert s.run(probe).output == "-1 False False []\n"
            assert s._worker.pid == pid


def test_the_pool_keeps_as_many_workers_as_a_batch_held():
    """A batch of TIR rollouts holds a session each; the next batch reuses every worker (with a fixed
    pool of 64, 6 of 70 were built and destroyed again each batch). Capped at max_keep."""
    def batch(n):
        sessions = [Session() for _ in range(n)]
        for s in sessions:
            assert s.run("1").output == "1\n"
        pids = {s._worker.pid for s in sessions}
        for s in sessions:
            s.close()
        return pids

    pool = fresh_pool(Limits())
    first = batch(70)
    assert len(first) == 70 and len(pool.idle) == 70
    assert batch(70) == first
    assert pool.out == 0 and pool.peak == 70
    pool = fresh_pool(Limits(), keep=2, max_keep=3)
    batch(5)
    assert len(pool.idle) == 3
    sandbox_pool._stop_pools()


def test_a_session_that_exits_between_cells_is_replaced():
    deadline = time.time() + 0.45  # the replayed copy of the first cell (after 0.6 s) must not exit
    with Session(Limits(timeout=2)) as s:
        assert s.run("a = 3\nimport os, threading, time\n"
                     f"threading.Thread(target=lambda: (time.sleep(0.2), time.time() < {deadline} and os._exit(7)))"
                     ".start()").ok
        time.sleep(0.6)
        r = s.run("a + 1")  # the process died after the last reply: an error, then a fresh session
        assert r.output == "4\n" or (r.error and "SandboxError" in r.error), r
        assert s.run("a * 2").output == "6\n"  # earlier cells replayed
