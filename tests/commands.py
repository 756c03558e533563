"""Running a command from a test: the test fails with the command's own output whenever the command did not do its
job, whatever its exit code, and a process group that lost a connection under load is started again.

    done = commands.run([...], env=env, check=lambda done: (out / "result.json").exists())

A command did its job when it exited 0 (or with one of `codes`) and `check(done)` is true (or returns None); `check`
may also raise AssertionError. Otherwise the test fails with the command line, the exit code, what was missing and
the tails of stdout and stderr. Some failures are the machine's, not the code's: a gloo or TCPStore rendezvous
dropped or refused while other jobs load the CPU (`Gloo connectFullMesh failed ... Connection closed by peer`), or a
port taken between choosing it and binding it. Those, and only those (TRANSIENT), are retried `attempts` times in
all; pass the command as a function of the attempt number to draw a fresh port each time.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from typing import Callable, Optional, Sequence, Union

import pytest

def free_port() -> int:
    """An unused TCP port on localhost (a torch.distributed rendezvous, a server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Connection failures of torch.distributed's gloo backend and TCP rendezvous that come from the machine (load,
# a port grabbed by another process), not from the code under test.
TRANSIENT = re.compile(
    r"Gloo connectFullMesh failed"
    r"|Connection closed by peer"
    r"|Connection reset by peer"
    r"|Address already in use"
    r"|EADDRINUSE"
    r"|The server socket has failed to listen on any local network address"
    r"|The client socket has failed to connect to any network address"
    r"|DistNetworkError"
)
TAIL = 4000

Command = Union[Sequence, Callable[[int], Sequence]]
Check = Optional[Callable[[subprocess.CompletedProcess], object]]


def loopback_env(env: Optional[dict] = None) -> dict:
    """`env` (default: this process's) with torch.distributed kept on the loopback interface: gloo binds to `lo`
    instead of whatever the host name resolves to, and the rendezvous address is 127.0.0.1."""
    env = dict(os.environ if env is None else env)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return env


def tail(text: Optional[Union[str, bytes]], limit: int = TAIL) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else "..." + text[-limit:]


def describe(command: Sequence, code, reason: str, stdout, stderr) -> str:
    """The failure message: what ran, how it ended, why that is a failure, and the ends of its output."""
    line = " ".join(shlex.quote(str(part)) for part in command)
    return (
        f"command did not do its job: {reason}\n$ {line}\nexit code: {code}\n"
        f"--- stdout (end) ---\n{tail(stdout) or '(empty)'}\n--- stderr (end) ---\n{tail(stderr) or '(empty)'}"
    )


def is_transient(text: str) -> bool:
    return bool(TRANSIENT.search(text or ""))


def _verdict(done: subprocess.CompletedProcess, codes: Sequence[int], check: Check) -> Optional[str]:
    """None when the command did its job, else the reason it did not."""
    if done.returncode not in codes:
        return f"exit code {done.returncode} (expected {' or '.join(map(str, codes))})"
    if check is None:
        return None
    try:
        ok = check(done)
    except AssertionError as err:
        return f"exit code {done.returncode}, but {err or 'its result check failed'}"
    except (OSError, ValueError, StopIteration, KeyError) as err:  # a missing or malformed output file
        return f"exit code {done.returncode}, but its output could not be read: {type(err).__name__}: {err}"
    if ok is None or ok:
        return None
    return f"exit code {done.returncode}, but its result check failed"


def run(
    command: Command,
    *,
    env: Optional[dict] = None,
    timeout: float = 600,
    check: Check = None,
    codes: Sequence[int] = (0,),
    attempts: int = 1,
    cwd=None,
) -> subprocess.CompletedProcess:
    """Run `command` (a list, or a function of the attempt number 0, 1, ... giving one) and return its completed
    process (text stdout and stderr); fail the test with the command's output unless it did its job."""
    for attempt in range(attempts):
        argv = [str(part) for part in (command(attempt) if callable(command) else command)]
        try:
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            pytest.fail(describe(argv, None, f"still running after {timeout:.0f} s (killed)", err.stdout, err.stderr),
                        pytrace=False)
        reason = _verdict(done, codes, check)
        if reason is None:
            return done
        if attempt + 1 < attempts and done.returncode != 0 and is_transient(done.stdout + done.stderr):
            print(f"retrying after a transient connection failure (attempt {attempt + 1} of {attempts}): {argv[:4]}")
            continue
        pytest.fail(describe(argv, done.returncode, reason, done.stdout, done.stderr), pytrace=False)
    raise AssertionError("unreachable")
