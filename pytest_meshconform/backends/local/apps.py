"""The pods' httpbin apps, from one Python: import httpbin once, fork one server per pod.

Importing Flask and httpbin costs ~0.4 s of CPU; three pods starting three Pythons at once on a
two-core machine took ~0.8 s, the longest step of bringing the mesh up. This launcher starts
(in the root namespace) while the namespaces are being built, imports once, then for every pod
named on its stdin forks a child that enters the pod's network namespace (setns), sends its
output to the pod's log and serves httpbin with waitress, as `waitress-serve httpbin:app` would.
Each child is a process of its own, in its pod's namespace only, whose PID the launcher prints
(`{"key": ..., "pid": ...}` per line) for the mesh to record.

The children die with the launcher (PR_SET_PDEATHSIG), which dies with the mesh's process
unless the mesh is kept; on SIGTERM the launcher ends its children and exits. Run with
`python -m pytest_meshconform.backends.local.apps`; the protocol is one JSON object per stdin line:
`{"key", "netns", "serves", "log", "pdeathsig"}` (``serves``: app kind -> ``host:port`` items,
space-separated, e.g. ``{"httpbin": "0.0.0.0:8080", "tcp-echo": "0.0.0.0:5432"}``; ``grpc-echo``
is `grpc_echo.start_grpc_echo`, grpcio imported after the fork by its pods only): a pod whose
ports are served by several apps (a topology file's ``{port: 5432, serves: tcp-echo}``) runs
them in its one app process).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
from typing import Any

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
WAITRESS_THREADS = 8


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _serve(spec: dict[str, Any], app: Any, launcher_pid: int) -> None:
    """In the forked child: become the pod's app process; never returns."""
    import logging

    import waitress  # type: ignore[import-untyped]

    libc = _libc()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if spec.get("pdeathsig", True):
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # evidence: root only
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    netns = os.open(f"/run/netns/{spec['netns']}", os.O_RDONLY)
    _check(libc.setns(netns, CLONE_NEWNET), f"setns({spec['netns']})")
    os.close(netns)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    serves: dict[str, str] = spec["serves"]
    unknown = set(serves) - {"httpbin", "tcp-echo", "tcp-banner", "grpc-echo"}
    if unknown:
        raise ValueError(f"unknown app kinds {sorted(unknown)}")
    try:
        echo = start_tcp_echo(serves["tcp-echo"]) if "tcp-echo" in serves else []
        if "tcp-banner" in serves:
            echo += start_tcp_echo(serves["tcp-banner"], banner=TCP_BANNER)
        if "grpc-echo" in serves:  # grpcio is imported by the pods that serve gRPC only
            from pytest_meshconform.backends.local.grpc_echo import start_grpc_echo

            echo += start_grpc_echo(serves["grpc-echo"])
        if "httpbin" in serves:
            waitress.serve(app, listen=serves["httpbin"], threads=WAITRESS_THREADS)
        for thread in echo:
            thread.join()
    finally:
        os._exit(0)


TCP_ECHO_PREFIX = "hello"
# What the server-first `tcp-banner` app sends as soon as a connection is accepted, before
# reading anything (as an SMTP server's greeting: "220 <domain> Service ready", RFC 5321 4.2)
TCP_BANNER = b"220 tcp-banner ready\r\n"


def start_tcp_echo(listen: str, banner: bytes = b"") -> list[threading.Thread]:
    """Istio's samples/tcp-echo server: every line received is answered with
    ``hello <line>``, on each ``host:port`` of ``listen`` (space-separated, as waitress's).
    With ``banner``, a server-first protocol: the banner is sent first, on every connection.
    Returns the serving threads (daemons), already started."""
    import socketserver

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            if banner:
                self.wfile.write(banner)
                self.wfile.flush()
            for line in self.rfile:
                self.wfile.write(TCP_ECHO_PREFIX.encode() + b" " + line)
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    servers = []
    for address in listen.split():
        host, _, port = address.rpartition(":")
        servers.append(Server((host, int(port)), Echo))
        print(f"Serving on {'tcp-banner' if banner else 'tcp-echo'} {address}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    return threads


def import_httpbin() -> Any:
    """httpbin's WSGI app, imported quietly: without the optional flasgger, httpbin warns on
    import that it serves no Swagger UI, which the pods do not need."""
    import logging

    logging.getLogger("httpbin.core").setLevel(logging.ERROR)  # Flask's app.logger
    import httpbin  # type: ignore[import-untyped]  # the slow part, once for every pod

    return httpbin.app


def main() -> int:
    app = import_httpbin()
    launcher_pid = os.getpid()
    children: dict[int, str] = {}

    def end_children(signum: int, frame: object) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                children.pop(pid, None)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, end_children)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            spec = json.loads(line)
            pid = os.fork()
            if pid == 0:
                try:
                    _serve(spec, app, launcher_pid)
                except BaseException as exc:  # the child must never return into the loop
                    print(f"app of {spec.get('key')}: {exc!r}", file=sys.stderr, flush=True)
                finally:
                    os._exit(1)
            children[pid] = spec["key"]
            print(json.dumps({"key": spec["key"], "pid": pid}), flush=True)
        while children:
            pid, status = os.wait()
            key = children.pop(pid, "?")
            print(f"app of {key} (pid {pid}) exited: status {status}", file=sys.stderr, flush=True)
    except SystemExit:
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
