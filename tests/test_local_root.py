"""What the local mesh needs of the machine, said in one line (issue 23, findings 5 and 7): a
state root (`/run/meshconform`) it can write, and root to sweep.

pytest and the ``meshconform`` command run in subprocesses: an unwritable state root is a
tmpfs mounted in a mount namespace of the subprocess's own (no other run on the machine sees
it); a sweep without root runs as the real user ``nobody`` (``setpriv``), next to a run this
test recorded itself with a real network namespace, which it removes itself (never a sweep:
other runs on the machine are not this test's to remove).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_meshconform.backends.local import host
from pytest_meshconform.exit_status import ExitStatus

MESH_SUITE = """
import pathlib


def test_a(mesh):
    pathlib.Path("ran").write_text("a test ran")


def test_b(mesh):
    pathlib.Path("ran").write_text("a test ran")
"""

PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly")
MESHCONFORM = (sys.executable, "-m", "pytest_meshconform.cli")
# `meshconform sweep` run by the real user nobody: the modules are imported first, as root,
# because a fresh clone may sit in a directory only root can read (mktemp -d is 0700); then the
# process drops to nobody for good and the sweep runs as nobody.
SWEEP_AS_NOBODY = """
import os, pwd, sys
import pytest_meshconform.audit.cli, pytest_meshconform.doctor.cli  # what the parser loads
import pytest_meshconform.backends.local.host
import pytest_meshconform.cli as cli
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
assert os.getresuid() == (nobody.pw_uid,) * 3
sys.exit(cli.main(["sweep"]))
"""

# The state root as each case leaves it, inside the subprocess's own mount namespace only.
STATE_ROOTS = {
    "read-only": f"mount -t tmpfs -o ro tmpfs {host.STATE_ROOT}",
    # a fresh /run (this namespace's only) where the state root is a file
    "a-file": f"mount -t tmpfs tmpfs {host.STATE_ROOT.parent} && : > {host.STATE_ROOT}",
}
REASONS = {"read-only": "read-only file system", "a-file": "file exists"}


def needs_root() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux)")


def with_state_root(case: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    host.STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)  # where the tmpfs goes
    script = f'{STATE_ROOTS[case]} && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation=private", "sh", "-c", script, "sh", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def state_root_line(case: str) -> str:
    return (
        f"the local mesh cannot start on this machine: cannot record the run under"
        f" {host.STATE_ROOT} ({REASONS[case]}): every local run writes there what it creates,"
        f" so a killed run can be swept; make {host.STATE_ROOT} a directory root can write"
        f" (e.g. `rm -f {host.STATE_ROOT} && mkdir -p {host.STATE_ROOT}`, on a writable /run)"
    )


@pytest.mark.parametrize("case", sorted(STATE_ROOTS))
def test_an_unwritable_state_root_stops_the_run_in_one_line(tmp_path: Path, case: str) -> None:
    needs_root()
    (tmp_path / "test_mesh.py").write_text(MESH_SUITE)
    result = with_state_root(case, [*PYTEST, "-q", "test_mesh.py"], tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert lines == [f"ERROR: meshconform: {state_root_line(case)}"]
    assert "Traceback" not in result.stdout and "OSError" not in result.stdout
    assert not (tmp_path / "ran").exists()


def test_the_audit_says_it_in_one_line_too(tmp_path: Path) -> None:
    needs_root()
    result = with_state_root("read-only", [*MESHCONFORM, "audit"], tmp_path)
    assert (result.returncode, result.stdout) == (ExitStatus.USAGE, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"meshconform audit: error: {state_root_line('read-only')}"
    ]


def test_a_sweep_without_root_says_it_needs_root_and_removes_nothing() -> None:
    """A run's namespace and files are there; ``nobody`` cannot remove them, so the sweep must
    not say "nothing to sweep" (exit 0). The run's owner is a live process of this test, so
    that no other run's start sweeps it meanwhile; the sweep refuses before it looks."""
    needs_root()
    run_id = secrets.token_hex(3)
    owner = subprocess.Popen(["sleep", "300"])
    state = host.RunState(
        run_id=run_id,
        directory=host.make_run_directory(run_id),
        owner_pid=owner.pid,
        owner_start=host.proc_start_ticks(owner.pid),
    )
    netns = f"{host.NETNS_PREFIX}{run_id}-node"
    try:
        state.save()
        state.add_netns(netns)
        host.create_netns([netns])
        result = subprocess.run(
            [sys.executable, "-c", SWEEP_AS_NOBODY],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout) == (ExitStatus.USAGE, ""), result.stderr
        assert result.stderr.splitlines() == [
            "meshconform sweep: error: sweeping needs root: local meshes' network namespaces"
            f" ({host.NETNS_RUN}/mc-*), processes and files ({host.STATE_ROOT}) are root's;"
            " run it as root, e.g. `sudo meshconform sweep`"
        ]
        assert (host.NETNS_RUN / netns).exists() and state.path.is_file()
    finally:
        owner.kill()
        owner.wait()
        host.teardown_state(state)  # this test's run only
    assert host.leftovers(state) == []
