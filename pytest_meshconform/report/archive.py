"""Stable test ids and the evidence archive of each test (``--mesh-artifacts``).

``assign_test_ids`` maps pytest node ids to ids that survive a change of checkout;
``safe_name`` makes portable file names; the archive helpers copy each test's evidence (files,
data, texts) into a fresh directory of its own; ``evidence_record`` says, once the run is over,
which of them the report can point at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

from pytest_meshconform.outputs import DIRECTORY_MODE, copy_into, make_directory, write_file
from pytest_meshconform.report.model import EvidenceRecord

if TYPE_CHECKING:
    from pytest_meshconform.report.exhibits import Evidence

_MAX_SECTION_LINES: Final = 80
_EVIDENCE_MARKER: Final = ".meshconform-evidence"


# --- Test ids and evidence archives ---------------------------------------------------------


def _split_nodeid(nodeid: str) -> tuple[str, tuple[str, ...], str]:
    """``file::Class::test[param]`` -> (file, classes, name)."""
    parts = nodeid.split("::")
    if len(parts) == 1:
        return nodeid, (), PurePosixPath(nodeid).name or nodeid
    return parts[0], tuple(parts[1:-1]), parts[-1]


def _module_suite_name(file: str) -> str:
    stem = PurePosixPath(file).stem
    if stem.startswith("test_") and len(stem) > len("test_"):
        return stem[len("test_") :]
    if stem.endswith("_test") and len(stem) > len("_test"):
        return stem[: -len("_test")]
    return stem or file


def assign_test_ids(nodeids: Sequence[str]) -> dict[str, tuple[str, str, str, str]]:
    """Map node ids to (suite, test id, test name, file) that survive a change of checkout.

    A suite is the module name without its ``test_`` prefix (``conformance/test_strict.py`` ->
    ``strict``), plus ``::Class`` for tests in a class; a test id is ``suite::name``. Node ids
    depend on the rootdir (an installed wheel puts the suites under site-packages), these do not.
    Modules that share a name in one run fall back to their path (without ``.py``).
    """
    files_by_name: dict[str, set[str]] = {}
    for nodeid in nodeids:
        file = _split_nodeid(nodeid)[0]
        files_by_name.setdefault(_module_suite_name(file), set()).add(file)
    assigned: dict[str, tuple[str, str, str, str]] = {}
    taken: set[str] = set()
    for nodeid in nodeids:
        file, classes, name = _split_nodeid(nodeid)
        module = _module_suite_name(file)
        if len(files_by_name[module]) > 1:
            module = file.removesuffix(PurePosixPath(file).suffix) or file
        suite = "::".join((module, *classes))
        test_id = f"{suite}::{name}"
        unique, n = test_id, 2
        while unique in taken:
            unique, n = f"{test_id} #{n}", n + 1
        taken.add(unique)
        assigned[nodeid] = (suite, unique, name, file)
    return assigned


_UNSAFE_NAME_RE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_length: int = 120) -> str:
    """A file name made from text (a node id, an evidence label): portable, never empty.

    Too-long names keep their start and end in a hash of the whole, so they stay distinct.
    """
    cleaned = _UNSAFE_NAME_RE.sub("_", text.replace("::", "__")).strip("._") or "_"
    if len(cleaned) > max_length:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        cleaned = f"{cleaned[: max_length - len(digest) - 1]}-{digest}"
    return cleaned


def _file_name_for(label: str, source: Path | None, taken: set[str]) -> str:
    """A file name for one piece of evidence: the label, with the source's suffix (.pcap)."""
    suffix = ".txt" if source is None else source.suffix
    base = safe_name(label, max_length=100).removesuffix(suffix)
    name, n = f"{base}{suffix}", 2
    while name in taken or name == _EVIDENCE_MARKER:
        name, n = f"{base}-{n}{suffix}", n + 1
    taken.add(name)
    return name


@dataclass
class EvidenceArchive:
    """Evidence already handled for one test item: files by label, and what could not be kept."""

    directory: Path | None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    # label -> where the fixture left a file (the original of a copy, under --mesh-artifacts)
    sources: dict[str, Path] = dataclasses.field(default_factory=dict)
    texts: set[str] = dataclasses.field(default_factory=set)
    unavailable: set[str] = dataclasses.field(default_factory=set)
    names: set[str] = dataclasses.field(default_factory=set)


def archive_directory(root: Path, nodeid: str, used: dict[Path, str]) -> Path:
    """``<artifacts>/<safe nodeid>/``: fresh, never shared with another test of the run.

    A directory left by an earlier run (it holds our marker file) is cleared, since stale
    evidence misleads; one that is not ours is never touched: a hashed name is used instead.
    """
    base = safe_name(nodeid)
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    names = itertools.chain(
        (base, f"{base}-{digest}"), (f"{base}-{digest}-{n}" for n in itertools.count(2))
    )
    for name in names:
        candidate = root / name
        owner = used.get(candidate)
        if owner == nodeid:
            return candidate
        marker = candidate / _EVIDENCE_MARKER
        if owner is not None or (candidate.exists() and not marker.is_file()):
            continue
        if candidate.exists():
            shutil.rmtree(candidate)
        make_directory(root)  # 0700 where made: evidence (payloads, certs) is the user's only
        os.mkdir(candidate, DIRECTORY_MODE)
        os.chmod(candidate, DIRECTORY_MODE)  # whatever the umask
        write_file(marker, nodeid + "\n")
        used[candidate] = nodeid
        return candidate
    raise AssertionError("unreachable: itertools.count never ends")  # pragma: no cover


def section_tail(text: str, where: Path | None) -> str:
    """The last lines of a text shown with a failure, saying where the whole text is."""
    lines = text.splitlines()
    if len(lines) <= _MAX_SECTION_LINES:
        return text.rstrip("\n")
    omitted = len(lines) - _MAX_SECTION_LINES
    note = f"[{omitted} earlier lines omitted; "
    note += f"full text in {where}]" if where is not None else "keep it with --mesh-artifacts=DIR]"
    return "\n".join([note, *lines[-_MAX_SECTION_LINES:]])


def archive_new_evidence(
    evidence: Evidence, archive: EvidenceArchive
) -> tuple[list[str], dict[str, str]]:
    """Copy the files and write the texts not yet archived for this test.

    Returns a "label: path" line per new piece of evidence (or why it could not be kept) and the
    new texts, to be shown with the failure.
    """
    listing: list[str] = []
    for label, source in evidence.files.items():
        if label in archive.files or label in archive.unavailable:
            continue
        archive.sources[label] = source
        target = source
        try:
            if archive.directory is not None:
                target = archive.directory / _file_name_for(label, source, archive.names)
                copy_into(source, target)  # 0600 files, 0700 directories
            elif not source.exists():
                raise FileNotFoundError(f"no such file: {source}")
        except OSError as error:
            archive.unavailable.add(label)
            listing.append(f"{label}: {source} (not kept: {error})")
            continue
        archive.files[label] = target
        listing.append(f"{label}: {target}")
    for label, (data, suffix) in evidence.blobs.items():
        # Data too large for the terminal (config dumps): files under --mesh-artifacts only.
        if archive.directory is None or label in archive.files:
            continue
        target = archive.directory / _file_name_for(label, Path(f"data{suffix}"), archive.names)
        write_file(target, data)
        archive.files[label] = target
        listing.append(f"{label}: {target}")
    new_texts: dict[str, str] = {}
    for text_label, text in evidence.texts.items():
        if text_label in archive.texts:
            continue
        archive.texts.add(text_label)
        # Files and texts are labelled independently: keep a text apart from a file's label.
        label = text_label if text_label not in evidence.files else f"{text_label} (text)"
        new_texts[label] = text
        if archive.directory is not None:
            target = archive.directory / _file_name_for(label, None, archive.names)
            write_file(target, text)
            archive.files[label] = target
            listing.append(f"{label}: {target}")
    return listing, new_texts


def evidence_record(
    archive: EvidenceArchive, shown: Callable[[Path], str]
) -> tuple[EvidenceRecord, dict[str, str]]:
    """What the report says of a test's evidence, once the run is over (the mesh has removed
    its own files then, unless kept): each file that exists, by the path ``shown`` gives; the
    labels of those that do not (never a path that no longer exists); and, for each path the
    fixtures gave (a failure message may quote it: ``assert ..., cap``), what to say instead:
    its copy, or that it was not kept.
    """
    record = EvidenceRecord(
        directory=None if archive.directory is None else shown(archive.directory),
        files=tuple((label, shown(path)) for label, path in archive.files.items() if path.exists()),
    )
    not_kept = [label for label, path in archive.files.items() if not path.exists()]
    not_kept += sorted(archive.unavailable - set(not_kept))
    record = dataclasses.replace(record, not_kept=tuple(not_kept))
    instead: dict[str, str] = {}
    for label, source in archive.sources.items():
        copy = archive.files.get(label)
        if copy is not None and copy.exists():
            if copy != source:
                instead[str(source)] = shown(copy)
        elif not source.exists():
            instead[str(source)] = f"<{label}: not kept: {record.not_kept_reason}>"
    return record, instead


def replace_paths(text: str | None, instead: Mapping[str, str]) -> str | None:
    """``text`` with each path of ``instead`` replaced (longest first: a path is never
    replaced inside a longer one)."""
    if text is None:
        return None
    for path in sorted(instead, key=len, reverse=True):
        text = text.replace(path, instead[path])
    return text
