"""The local mesh's host plumbing without a mesh: preflight, run state, sweeping, processes.

Sweeps run against a state root and namespace directories under tmp_path (the `ip` calls they
would make are recorded, not run), so nothing here needs root or touches the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from local_helpers import alive, wait_for

from pytest_meshconform.backends.local import host
from pytest_meshconform.backends.local.topology import PROXY_ID_BASE, PROXY_ID_BLOCK
from pytest_meshconform.cli import main as cli_main
from pytest_meshconform.mesh import MeshError, MeshUnavailable

# ============================================================================ preflight


def test_preflight_names_every_fix_in_one_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no tool is found

    def no_envoy() -> Path:
        raise host.LocalMeshUnavailable("Envoy is missing: `pip install X`")

    monkeypatch.setattr(host, "envoy_binary", no_envoy)
    real_find_spec = host.importlib.util.find_spec
    monkeypatch.setattr(
        host.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "waitress" else real_find_spec(name, *a),
    )
    with pytest.raises(MeshUnavailable) as caught:
        host.preflight()
    assert str(caught.value) == (
        "the local mesh cannot start on this machine:\n"
        "  - the local mesh needs root (network namespaces, iptables, tcpdump, a uid switch for"
        " Envoy): run pytest as root (e.g. `sudo -E .venv/bin/pytest ...`), or use"
        " --mesh-cluster=kind\n"
        "  - missing commands bash, curl, ip, iptables-restore, setpriv, tcpdump: install them"
        " with `apt-get install -y bash curl iproute2 iptables tcpdump util-linux`\n"
        "  - Envoy is missing: `pip install X`\n"
        "  - Python package 'waitress' is missing: `pip install 'pytest-meshconform[local]'`"
    )


def test_preflight_names_only_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or host.shutil.which("tcpdump") is None:
        pytest.skip("needs root and every tool but the one this test hides")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in host.REQUIRED_COMMANDS:
        if command != "tcpdump":
            found = host.shutil.which(command)
            assert found is not None
            (bin_dir / command).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(host.LocalMeshUnavailable) as caught:
        host.preflight()
    assert str(caught.value) == (  # one problem, one line
        "the local mesh cannot start on this machine: missing commands tcpdump: install them"
        " with `apt-get install -y tcpdump`"
    )


def test_unavailable_is_what_the_fixtures_turn_into_a_usage_error() -> None:
    assert issubclass(host.LocalMeshUnavailable, MeshUnavailable)


# ============================================================================ environment, names


def test_pod_environment_drops_proxies_and_neutralises_home() -> None:
    env = host.pod_environment(
        {"PATH": "/bin", "HOME": "/root", "https_proxy": "http://p:3128", "NO_PROXY": "x", "A": "1"}
    )
    assert env == {"PATH": "/bin", "HOME": "/", "A": "1"}
    assert host.pod_environment({})["PATH"] == (
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("mc-0a1b2c-node", True),
        ("mc-0a1b2c-foo-sleep", True),
        ("mc-0a1b2c-legacy-httpbin", True),
        ("mc-node", False),
        ("mc-0A1B2C-node", False),
        ("mc-0a1b2-node", False),
        ("cni-0a1b2c-node", False),
        ("xmc-0a1b2c-node", False),
    ],
)
def test_only_mc_run_namespaces_are_ours(name: str, ours: bool) -> None:
    assert (host.OUR_NETNS_PATTERN.fullmatch(name) is not None) is ours


# ============================================================================ processes


def test_proc_start_ticks_names_a_live_process_and_not_a_zombie() -> None:
    assert host.proc_start_ticks(os.getpid()) is not None
    child = subprocess.Popen(["true"])
    wait_for(lambda: host.proc_start_ticks(child.pid) is None, 5, "`true` to become a zombie")
    assert os.path.exists(f"/proc/{child.pid}")  # still there, unreaped: a zombie
    child.wait()


def test_kill_recorded_ends_its_processes_and_spares_a_reused_pid() -> None:
    mine = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    other = subprocess.Popen(["sleep", "30"])
    try:
        recorded = [(p.pid, host.proc_start_ticks(p.pid) or 0) for p in mine]
        # `other` with a start time that is not its own: a PID the kernel gave to someone else.
        recorded.append((other.pid, (host.proc_start_ticks(other.pid) or 0) + 1))
        host.kill_recorded(recorded, grace=2.0)
        assert [p.wait(timeout=5) for p in mine] == [-signal.SIGTERM] * 3
        assert alive(other.pid)
    finally:
        other.kill()
        other.wait()
        for p in mine:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_kill_recorded_escalates_to_sigkill() -> None:
    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    try:
        start = host.proc_start_ticks(stubborn.pid)
        assert start is not None
        wait_for(
            lambda: (
                "SigIgn" in Path(f"/proc/{stubborn.pid}/status").read_text()
                and int(
                    next(
                        line.split()[1]
                        for line in Path(f"/proc/{stubborn.pid}/status").read_text().splitlines()
                        if line.startswith("SigIgn")
                    ),
                    16,
                )
                & (1 << (signal.SIGTERM - 1))
            ),
            5,
            "bash to ignore SIGTERM",
        )
        host.kill_recorded([(stubborn.pid, start)], grace=0.2)
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_run_quotes_the_failing_command() -> None:
    with pytest.raises(MeshError, match=r"`bash -c echo nope >&2; exit 3` failed \(exit 3\): nope"):
        host.run(["bash", "-c", "echo nope >&2; exit 3"])
    with pytest.raises(MeshError, match="could not start"):
        host.run(["/nonexistent/tool"])
    with pytest.raises(MeshError, match=r"`bash -c exit 4` failed \(exit 4\)"):
        host.run_all([(["true"], None), (["bash", "-c", "exit 4"], None), (["cat"], b"x")])


# ============================================================================ state and sweeping


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """STATE_ROOT, /run/netns and /etc/netns under tmp_path; `ip` calls recorded and emulated."""
    roots = {"state": tmp_path / "state", "run": tmp_path / "netns", "etc": tmp_path / "etc"}
    for path in roots.values():
        path.mkdir()
    monkeypatch.setattr(host, "STATE_ROOT", roots["state"])
    monkeypatch.setattr(host, "NETNS_RUN", roots["run"])
    monkeypatch.setattr(host, "NETNS_ETC", roots["etc"])
    calls: list[str] = []
    real_run = subprocess.run

    def fake_run(argv: list[str], **kwargs: Any) -> Any:
        if argv[:3] != ["ip", "-force", "-batch"]:
            return real_run(argv, **kwargs)
        for line in kwargs["input"].decode().splitlines():
            calls.append(line)
            (roots["run"] / line.split()[-1]).unlink()
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(host.subprocess, "run", fake_run)
    return {**roots, "calls": calls}


def dead_owner_state(fake_host: dict[str, Any], run_id: str, *, keep: bool = False) -> None:
    directory = fake_host["state"] / run_id
    directory.mkdir(parents=True)
    names = [f"mc-{run_id}-node", f"mc-{run_id}-foo-sleep"]
    (directory / "state.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "owner_pid": os.getpid(),
                "owner_start": (host.proc_start_ticks(os.getpid()) or 0) + 1,  # not us: dead
                "netns": names,
                "pids": [],
                "keep": keep,
            }
        )
    )
    for name in names:
        (fake_host["run"] / name).touch()
        (fake_host["etc"] / name).mkdir()
        (fake_host["etc"] / name / "hosts").write_text("x")


def test_run_state_round_trips_and_knows_its_owner(fake_host: dict[str, Any]) -> None:
    state = host.RunState.create("abc123", keep=True)
    state.add_netns("mc-abc123-node", "mc-abc123-foo-sleep")
    state.add_pid(os.getpid())
    loaded = host.RunState.load(fake_host["state"] / "abc123")
    assert loaded is not None
    assert (loaded.run_id, loaded.netns, loaded.keep) == (
        "abc123",
        ["mc-abc123-node", "mc-abc123-foo-sleep"],
        True,
    )
    assert loaded.pids == [(os.getpid(), host.proc_start_ticks(os.getpid()))]
    assert loaded.owner_alive()
    # Root's, traversable by Envoy's group only; the state itself root's alone (issue 14, #7).
    run_dir = os.stat(fake_host["state"] / "abc123")
    assert (run_dir.st_mode & 0o777, run_dir.st_uid, run_dir.st_gid) == (0o710, 0, 1337)
    assert os.stat(fake_host["state"] / "abc123" / "state.json").st_mode & 0o777 == 0o600


def test_proxy_id_blocks_are_disjoint_and_freed_with_their_run(fake_host: dict[str, Any]) -> None:
    """Issue 23, #8: each run's sidecars get uids of their own, no other live run's."""
    first, second = host.RunState.create("aaa111"), host.RunState.create("bbb222")
    assert host.allocate_proxy_ids(first) == PROXY_ID_BASE
    assert host.allocate_proxy_ids(second) == PROXY_ID_BASE + PROXY_ID_BLOCK
    loaded = host.RunState.load(fake_host["state"] / "bbb222")
    assert loaded is not None and loaded.proxy_id_base == PROXY_ID_BASE + PROXY_ID_BLOCK
    host.teardown_state(first)  # its block is free again: the lowest one is taken
    third = host.RunState.create("ccc333")
    assert host.allocate_proxy_ids(third) == PROXY_ID_BASE


def test_starts_and_teardowns_at_once_never_lose_the_run_root(fake_host: dict[str, Any]) -> None:
    """Issue 14, #4: a start's mkdir of its run dir raced with another run's teardown removing
    the empty shared parent (FileNotFoundError in 325 of 10,000 starts). Teardowns no longer
    remove it, and a start re-makes a parent an older version removed meanwhile."""
    root = fake_host["state"]
    errors: list[BaseException] = []
    stop = threading.Event()

    def runs(worker: int) -> None:
        try:
            for n in range(500):
                state = host.RunState.create(f"{worker:x}{n:05x}")
                host.teardown_state(state)
                assert not state.directory.exists()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def old_version_teardowns() -> None:  # what every teardown and sweep did before
        while not stop.wait(0.0002):
            with contextlib.suppress(OSError):
                root.rmdir()

    remover = threading.Thread(target=old_version_teardowns)
    remover.start()
    workers = [threading.Thread(target=runs, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    remover.join()
    assert errors == []
    # And teardowns and sweeps of this version leave the shared parent in place.
    host.teardown_state(host.RunState.create("abc999"))
    assert host.sweep_stale_runs() == []
    assert root.is_dir()


def test_sweep_removes_dead_runs_and_spares_live_ones(fake_host: dict[str, Any]) -> None:
    dead_owner_state(fake_host, "dead01", keep=True)
    live = host.RunState.create("aaaa01")
    live.add_netns("mc-aaaa01-node")
    (fake_host["run"] / "mc-aaaa01-node").touch()
    assert host.sweep_stale_runs() == ["run dead01 (kept)"]
    assert sorted(fake_host["calls"]) == [
        "netns delete mc-dead01-foo-sleep",
        "netns delete mc-dead01-node",
    ]
    assert sorted(p.name for p in fake_host["run"].iterdir()) == ["mc-aaaa01-node"]
    assert list(fake_host["etc"].iterdir()) == []
    assert sorted(p.name for p in fake_host["state"].iterdir()) == ["aaaa01"]


def test_sweep_removes_orphan_namespaces_of_runs_without_state(fake_host: dict[str, Any]) -> None:
    (fake_host["run"] / "mc-0rphan-node").touch()  # not a run id (has 'r'): never ours
    (fake_host["run"] / "mc-abcdef-node").touch()
    (fake_host["etc"] / "mc-abcdef-bar-sleep").mkdir()
    (fake_host["run"] / "other-ns").touch()
    assert host.sweep_stale_runs() == ["orphan namespaces mc-abcdef-bar-sleep, mc-abcdef-node"]
    assert sorted(p.name for p in fake_host["run"].iterdir()) == ["mc-0rphan-node", "other-ns"]
    assert list(fake_host["etc"].iterdir()) == []


def test_sweep_waits_for_a_run_dir_without_state_to_be_abandoned(
    fake_host: dict[str, Any],
) -> None:
    starting = fake_host["state"] / "abc001"
    starting.mkdir()  # a run between mkdir and its first save
    (fake_host["run"] / "mc-abc001-node").touch()
    assert host.sweep_stale_runs() == []
    assert starting.exists() and (fake_host["run"] / "mc-abc001-node").exists()
    os.utime(starting, (0, 0))  # long abandoned
    assert host.sweep_stale_runs() == ["orphan namespaces mc-abc001-node"]
    assert not starting.exists()


def test_meshconform_sweep(fake_host: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`meshconform sweep` removes what dead runs left; without a command it is a usage error."""
    assert cli_main(["sweep"]) == 0
    assert capsys.readouterr().out == "nothing to sweep\n"
    dead_owner_state(fake_host, "dead03")
    assert cli_main(["sweep"]) == 0
    assert capsys.readouterr().out == "swept: run dead03\n"


# ============================================================================ Envoy's binary


def test_runnable_by_others_checks_the_file_and_every_parent(tmp_path: Path) -> None:
    assert host.runnable_by_others(Path("/usr/bin/env"))
    tool = tmp_path / "open" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    tool.parent.chmod(0o755)
    for directory in [tool.parent, *tool.parent.parents]:
        if directory.stat().st_mode & 0o001 == 0:  # e.g. pytest's mode-700 basetemp
            assert not host.runnable_by_others(tool)
            break
    else:
        assert host.runnable_by_others(tool)
    tool.parent.chmod(0o700)
    assert not host.runnable_by_others(tool)
    tool.parent.chmod(0o755)
    tool.chmod(0o750)
    assert not host.runnable_by_others(tool)
    assert not host.runnable_by_others(tmp_path / "missing")
