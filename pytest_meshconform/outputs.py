"""Files meshconform writes about a run, written one way (pure: the standard library only).

Every report, page, record and piece of evidence the plugin or the ``meshconform`` command
writes (``--mesh-report``, ``--mesh-artifacts``, ``meshconform audit --report`` and its
evidence, ``meshconform doctor --report``, the kube backend's captures and config dumps) goes
through :func:`write_file`, :func:`copy_into` and :func:`make_directory`:

- the path is checked before the run starts (:func:`check_output_file`,
  :func:`check_output_directory`): an existing directory where a file goes (or a file where a
  directory goes), a device, a FIFO or a socket, a parent that is not a directory, a place
  where no file can be created (a read-only filesystem, ``/proc``, another user's directory)
  is an :class:`OutputPathError`: one line naming the path and the fix. A symlink is followed
  (the file it leads to is replaced, the link stays) and its end is checked the same way;
- a file is written to a temporary file in its own directory (``.NAME.XXXX.partial``, made
  0600 whatever the umask) and renamed over the target: a reader never sees half a file, a
  FIFO is never opened, a device never written to, and no temporary file is left behind on
  any failure;
- files are 0600 and the directories meshconform creates 0700, whatever the umask: evidence
  holds payloads, certificates and configuration (README "File modes"). Directories that
  existed before are left as they are.

A missing parent directory is made (0700) when the file is written; the check only proves
that it can be: its nearest existing ancestor must be a directory where files can be created.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "OutputPathError",
    "append_file",
    "check_output_directory",
    "check_output_file",
    "copy_into",
    "make_directory",
    "write_file",
]

FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700

_KINDS: Final = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class OutputPathError(ValueError):
    """A path meshconform cannot write to; one line: the option, the path, why, the fix."""


def _kind(mode: int) -> str:
    return next((label for test, label in _KINDS if test(mode)), "not a regular file")


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a parent is missing, or is a file
        return None


def _end_of(path: Path) -> Path:
    """Where writing ``path`` lands: its symlinks followed (what exists of them)."""
    return Path(os.path.realpath(path))


def _where(path: Path, end: Path) -> str:
    return str(path) if end == Path(os.path.abspath(path)) else f"{path} (a link to {end})"


def _nearest_directory(what: str, path: Path, end: Path) -> Path:
    """The nearest existing ancestor of ``end``, which must be a directory."""
    for ancestor in end.parents:
        found = _lstat(ancestor)
        if found is None:
            continue
        if not stat.S_ISDIR(found.st_mode):
            raise OutputPathError(
                f"{what} {_where(path, end)}: {ancestor} is {_kind(found.st_mode)}, not a"
                f" directory: name a path under a directory, or remove {ancestor}"
            )
        return ancestor
    raise AssertionError("unreachable: / exists")  # pragma: no cover


def _probe(what: str, path: Path, end: Path, directory: Path) -> None:
    """Prove that a file can be created in ``directory`` (what the write will do)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{end.name or 'meshconform'}.", dir=directory)
    except OSError as exc:
        fix = (
            "name a path on a writable filesystem"
            if exc.errno == errno.EROFS
            else "name a path in a directory you can write to"
        )
        raise OutputPathError(
            f"{what} {_where(path, end)}: cannot create a file in {directory}:"
            f" {_reason(exc)}: {fix}"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_file(what: str, path: Path) -> None:
    """Raise :class:`OutputPathError` unless meshconform can write the file ``path``.

    ``what`` names where the path came from (``--mesh-report``): the message starts with it.
    Nothing is created but a probe file, removed at once.
    """
    end = _end_of(path)
    found = _lstat(end)
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise OutputPathError(
            f"{what} {_where(path, end)}: is a directory: name a file, e.g."
            f" {path.joinpath('report' + (path.suffix or '.yaml'))}"
        )
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise OutputPathError(
            f"{what} {_where(path, end)}: is {_kind(found.st_mode)}, not a regular file:"
            " meshconform writes only regular files; name a new path"
        )
    directory = end.parent if found is not None else _nearest_directory(what, path, end)
    _probe(what, path, end, directory)


def check_output_directory(what: str, path: Path) -> None:
    """Raise :class:`OutputPathError` unless meshconform can make files under ``path`` (a
    directory, made when it is missing)."""
    end = _end_of(path)
    found = _lstat(end)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise OutputPathError(
            f"{what} {_where(path, end)}: is {_kind(found.st_mode)}, not a directory: name a"
            " directory (it is made when missing)"
        )
    directory = end if found is not None else _nearest_directory(what, path, end)
    _probe(what, path, end, directory)


def make_directory(path: Path) -> Path:
    """``mkdir -p``, each directory made here 0700 whatever the umask; returns ``path``.

    Raises OSError (``NotADirectoryError`` when a component is a file).
    """
    missing: list[Path] = []
    current = Path(os.path.abspath(path))
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIRECTORY_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by someone else: theirs, left as it is
        os.chmod(directory, DIRECTORY_MODE)
    return path


def write_file(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, mode 0600, creating missing
    parents (0700).

    A symlink is followed, the link kept. Raises OSError when it cannot be written (then
    nothing of this write is left behind) and ``IsADirectoryError`` when ``path`` now names
    something other than a regular file.
    """
    end = _end_of(path)
    found = _lstat(end)
    if found is not None and not stat.S_ISREG(found.st_mode):  # swapped since the check
        raise IsADirectoryError(
            errno.EISDIR, f"is {_kind(found.st_mode)}, not a regular file", str(path)
        )
    make_directory(end.parent)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(prefix=f".{end.name}.", suffix=".partial", dir=end.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(payload)
        os.replace(temporary, end)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def append_file(path: Path, text: str) -> None:
    """Append ``text`` to a file someone else keeps (``GITHUB_STEP_SUMMARY``): made 0600 when
    missing; opened without blocking and written only when it is a regular file (a FIFO swapped
    in since the check raises ``IsADirectoryError`` instead of blocking the run's end)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise IsADirectoryError(
                errno.EISDIR, f"is {_kind(found.st_mode)}, not a regular file", str(path)
            )
        os.set_blocking(fd, True)
        payload = text.encode("utf-8")
        while payload:
            payload = payload[os.write(fd, payload) :]
    finally:
        os.close(fd)


def copy_into(source: Path, target: Path) -> None:
    """Copy a file (atomically, 0600) or a directory tree (files 0600, directories 0700)."""
    if source.is_dir():
        shutil.copytree(source, target)
        os.chmod(target, DIRECTORY_MODE)
        for root, directories, files in os.walk(target):
            for name in directories:
                os.chmod(os.path.join(root, name), DIRECTORY_MODE)
            for name in files:
                os.chmod(os.path.join(root, name), FILE_MODE)
        return
    with open(source, "rb") as original:  # evidence files are small: pcaps, texts, dumps
        write_file(target, original.read())
