"""The local mesh's long-lived gRPC clients: one Python per client pod, not one per call.

Every gRPC call used to start ``python -m pytest_meshconform.backends.local.grpc_echo`` in the
pod, and importing grpcio alone cost 0.3-0.6 s a call. Now the mesh starts one client process
per pod the first time that pod makes a call (`GrpcClients`, with the same command line a
per-call process had: the pod's network namespace, root, so its traffic is intercepted as
before) and hands it each call's arguments; the process (`main`, run with ``python -m
pytest_meshconform.backends.local.grpc_client``) runs `grpc_echo.main` with them exactly as the
one-shot command does, a fresh channel and so a new TCP connection per call, closed after it,
and answers with what that command would have returned: its exit status, stdout and stderr.

The protocol is one JSON object per line (as `apps.py`'s): ``{"args": [...]}`` on stdin,
``{"returncode": N, "stdout": "...", "stderr": "..."}`` on stdout (bytes as latin-1 text). The
call's output is the call's alone: its file descriptors 1 and 2 (grpc core's own logging
included) point to memory files while it runs; between calls they point to the client's log.

A call that does not answer within its timeout is the same MeshError as before: its process is
killed by its PID and the pod's next call starts a new one, as it does after a client died.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_meshconform.backends.local import host
from pytest_meshconform.mesh import ExecResult, MeshError

__all__ = ["GrpcClients", "main"]

LOG_TAIL_BYTES = 2000


@dataclass(eq=False)  # one process each: compared and hashed by identity
class _Client:
    """One running client: its process, the log its stderr goes to and where its part begins."""

    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int
    unread: bytes = field(default=b"")


# Starts a client process for a pod: (the process with stdin and stdout piped, its log, the
# log's size before it started).
Start = Callable[[], tuple[subprocess.Popen[bytes], Path, int]]


class GrpcClients:
    """The mesh's gRPC client processes by pod key: started on a pod's first call, reused
    for its next ones (one call at a time each; a call while all are busy starts another),
    killed by their PID when a call times out and at `close`."""

    def __init__(self) -> None:
        self._idle: dict[str, list[_Client]] = {}
        self._busy: set[_Client] = set()
        self._lock = threading.Lock()

    def call(self, key: str, args: Sequence[str], timeout: float, start: Start) -> ExecResult:
        """Run one call with ``args`` (`grpc_echo`'s command line) in ``key``'s client;
        ``start`` makes a client when the pod has no idle live one."""
        deadline = time.monotonic() + timeout
        client = self._take(key)
        if client is None:
            client = _Client(*start())
            with self._lock:
                self._busy.add(client)
        try:
            answer = _ask(client, args, deadline)
        except TimeoutError:
            self._discard(client)
            raise MeshError(
                f"`grpc_echo {' '.join(args)}` in {key} did not finish within {timeout}s;"
                f" its gRPC client (pid {client.proc.pid}) was killed, the pod's next call"
                f" starts a new one; client log: {_log_since(client)[-200:]!r}"
            ) from None
        except BaseException:  # Ctrl-C, a broken answer: it must not outlive the call
            self._discard(client)
            raise
        if answer is None:  # it ended before answering: what a crashed process returns
            self._discard(client)
            return ExecResult(client.proc.returncode, b"", _log_since(client))
        with self._lock:
            self._busy.discard(client)
            self._idle.setdefault(key, []).append(client)
        return answer

    def pids(self) -> list[int]:
        """The PIDs of the running clients (idle or in a call)."""
        with self._lock:
            clients = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        return [c.proc.pid for c in clients if _running(c)]

    def close(self) -> None:
        """Kill every client by its PID and reap it."""
        with self._lock:
            clients = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
            self._busy.clear()
            self._idle.clear()
        for client in clients:
            _kill(client)

    def _take(self, key: str) -> _Client | None:
        """An idle client of this pod that is still running, now busy; dead ones are reaped on
        the way."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                client = idle.pop()
                if _running(client):
                    self._busy.add(client)
                    return client
            _kill(client)

    def _discard(self, client: _Client) -> None:
        with self._lock:
            self._busy.discard(client)
        _kill(client)


def _running(client: _Client) -> bool:
    """Still running: not reaped, and not a zombie either. A killed client (grpcio runs threads)
    shows as a zombie while its other threads are still exiting, and until they have, waitpid
    cannot reap it and `poll` says None: handed a call then, it answered with its -9."""
    return client.proc.poll() is None and host.proc_start_ticks(client.proc.pid) is not None


def _ask(client: _Client, args: Sequence[str], deadline: float) -> ExecResult | None:
    """Send one call and read its answer: the result, or None when the client ended before
    answering; TimeoutError when it has not answered by ``deadline``."""
    proc = client.proc
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps({"args": list(args)}).encode() + b"\n")
        proc.stdin.flush()
    except OSError:  # it has died: its exit status and log say why
        _reap(proc, deadline)
        return None
    fd = proc.stdout.fileno()
    while b"\n" not in client.unread:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            _reap(proc, deadline)
            return None
        client.unread += chunk
    line, client.unread = client.unread.split(b"\n", 1)
    answer = json.loads(line)
    return ExecResult(
        int(answer["returncode"]),
        answer["stdout"].encode("latin-1"),
        answer["stderr"].encode("latin-1"),
    )


def _reap(proc: subprocess.Popen[bytes], deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))


def _kill(client: _Client) -> None:
    proc = client.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.wait()


def _log_since(client: _Client) -> bytes:
    """What the client's stderr wrote since it started (its last LOG_TAIL_BYTES)."""
    try:
        with client.log.open("rb") as log:
            log.seek(client.log_start)
            return log.read()[-LOG_TAIL_BYTES:]
    except OSError:
        return b""


# -- the client process, in the pod ---------------------------------------------------------------


def main() -> int:
    """Answer each call on stdin (one JSON line) with its result on stdout, until stdin ends."""
    protocol = os.fdopen(os.dup(1), "w", encoding="ascii", buffering=1)
    os.dup2(2, 1)  # between calls, anything printed goes to the client's log
    for line in sys.stdin:
        if not line.strip():
            continue
        returncode, stdout, stderr = _run_captured(json.loads(line)["args"])
        answer = {
            "returncode": returncode,
            "stdout": stdout.decode("latin-1"),
            "stderr": stderr.decode("latin-1"),
        }
        protocol.write(json.dumps(answer) + "\n")
    return 0


def _run_captured(args: list[str]) -> tuple[int, bytes, bytes]:
    """`grpc_echo.main(args)` as its own process would run: its exit status, and what it wrote
    to file descriptors 1 and 2 (Python's and grpc core's), an uncaught exception's traceback
    included."""
    from pytest_meshconform.backends.local.grpc_echo import main as grpc_echo_main

    saved = os.dup(1), os.dup(2)
    out, err = os.memfd_create("grpc-stdout"), os.memfd_create("grpc-stderr")
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        try:
            returncode = grpc_echo_main(args)
        except SystemExit as exc:
            returncode = _exit_status(exc)
        except Exception:
            traceback.print_exc()
            returncode = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        return returncode, _read_all(out), _read_all(err)
    finally:
        for fd in (out, err, *saved):
            os.close(fd)


def _exit_status(exc: SystemExit) -> int:
    """The exit status Python gives ``sys.exit(code)``: an int as is, None 0, else printed, 1."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    sys.exit(main())
