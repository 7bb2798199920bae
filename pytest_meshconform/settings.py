"""The plugin's effective configuration: --mesh-* options over mesh_* ini values over defaults.

Everything here is pure (no pytest, no I/O, nothing started) so that it can be resolved and
validated once, in ``pytest_configure`` (``plugin/options.py`` reads the layers from pytest),
and a mistake surfaces as a ``pytest.UsageError`` before collection instead of as a failed
fixture halfway through a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CLUSTER_KINDS",
    "DATAPLANE_CHOICES",
    "DEFAULT_CERT_TTL",
    "FAULT_NAMES",
    "HUMAN_REPORT_SUFFIXES",
    "MAX_CERT_TTL",
    "MIN_TLS_VERSIONS",
    "REPORT_SUFFIXES",
    "ClusterKind",
    "Dataplane",
    "DataplaneChoice",
    "MeshSettings",
    "OptionLayer",
    "ReportFormat",
    "SettingsError",
    "format_duration",
    "parse_cert_ttl",
    "report_format_of",
]

_T = TypeVar("_T")

ClusterKind = Literal["local", "kind", "existing"]
CLUSTER_KINDS: Final[tuple[ClusterKind, ...]] = ("local", "kind", "existing")
_CLUSTER_BY_NAME: Final[dict[str, ClusterKind]] = {name: name for name in CLUSTER_KINDS}

# --mesh-dataplane: the data plane of the built-in topology's mesh namespaces (foo, bar): Envoy
# sidecars, ambient (ztunnel, HBONE), or both, one after the other (the tests that use the mesh
# are parametrized over the data plane, their ids naming it). A backend only ever sees one
# `Dataplane`; "both" is the plugin's parametrization.
Dataplane = Literal["sidecar", "ambient"]
DataplaneChoice = Literal["sidecar", "ambient", "both"]
DATAPLANE_CHOICES: Final[tuple[DataplaneChoice, ...]] = ("sidecar", "ambient", "both")
_DATAPLANE_BY_NAME: Final[dict[str, DataplaneChoice]] = {name: name for name in DATAPLANE_CHOICES}

# Istio's agent SECRET_TTL default and istiod's MAX_WORKLOAD_CERT_TTL.
DEFAULT_CERT_TTL: Final = timedelta(hours=24)
MAX_CERT_TTL: Final = timedelta(days=90)

ReportFormat = Literal["yaml", "json"]
_REPORT_FORMAT_BY_SUFFIX: Final[dict[str, ReportFormat]] = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
}
REPORT_SUFFIXES: Final[tuple[str, ...]] = tuple(_REPORT_FORMAT_BY_SUFFIX)
# Human-readable reports (report.render): a self-contained HTML page, Markdown.
HUMAN_REPORT_SUFFIXES: Final[tuple[str, ...]] = (".html", ".htm", ".md")

FAULT_NAMES: Final = (
    "strict-as-permissive",
    "no-xfcc",
    "no-rotation",
    "wrong-spiffe-id",
    "tls10-allowed",
    "client-cert-optional",
    "authz-ignores-principals",
    "waypoint-ignores-l7",
    "waypoint-forwards-xfcc",
)
"""Test-only ways to break the local mesh, to prove that a suite can fail (never for users)."""

# meshConfig.meshMTLS.minProtocolVersion values (MeshConfig.TLSConfig.TLSProtocol); the same
# tuple as `istio.tls.MIN_PROTOCOL_VERSIONS` (a test checks), kept here so that resolving the
# settings imports nothing of the model.
MIN_TLS_VERSIONS: Final[tuple[str, ...]] = ("TLS_AUTO", "TLSV1_2", "TLSV1_3")

# Units in the order they must appear ("1h30m", never "30m1h"); whole numbers only.
_DURATION_UNIT_SECONDS: Final[dict[str, int]] = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION_RE: Final = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_PLAIN_SECONDS_RE: Final = re.compile(r"[0-9]+")
_CERT_TTL_ACCEPTED: Final = (
    "a duration like 30s, 90m, 24h, 1h30m, 7d (units d, h, m, s in that order) or plain "
    f"seconds, greater than 0 and at most {MAX_CERT_TTL.days}d"
)

_CLI_FLAGS: Final[dict[str, str]] = {
    "cluster": "--mesh-cluster",
    "kube_context": "--mesh-kube-context",
    "keep": "--mesh-keep",
    "cert_ttl": "--mesh-cert-ttl",
    "report": "--mesh-report",
    "artifacts": "--mesh-artifacts",
    "baseline": "--mesh-baseline",
    "min_tls_version": "--mesh-min-tls-version",
    "topology": "--mesh-topology",
    "dataplane": "--mesh-dataplane",
}


class SettingsError(ValueError):
    """A --mesh-* option or mesh_* ini value is invalid; the message names it as the user wrote it.

    The plugin turns it into ``pytest.UsageError`` (exit code 4); backends raise it too, for
    their own options.
    """


def parse_cert_ttl(text: str) -> timedelta:
    """Parse a certificate TTL as Istio spells it (``24h``, ``1h30m``) or as plain seconds.

    Raises SettingsError (naming the offending text) unless 0 < TTL <= 90 days.
    """
    candidate = text.strip()
    seconds: int | None = None
    try:
        if _PLAIN_SECONDS_RE.fullmatch(candidate):
            seconds = int(candidate)
        elif candidate and (match := _DURATION_RE.fullmatch(candidate)):
            seconds = sum(
                int(amount) * unit_seconds
                for amount, unit_seconds in zip(
                    match.groups(), _DURATION_UNIT_SECONDS.values(), strict=True
                )
                if amount is not None
            )
    except ValueError:  # more digits than int() accepts: far beyond the cap anyway
        seconds = MAX_CERT_TTL.days * 86_400 + 1
    if seconds is None:
        raise SettingsError(f"invalid duration {text!r}: expected {_CERT_TTL_ACCEPTED}")
    if not 0 < seconds <= MAX_CERT_TTL.total_seconds():
        raise SettingsError(f"duration {text!r} out of range: expected {_CERT_TTL_ACCEPTED}")
    return timedelta(seconds=seconds)


def report_format_of(path: Path) -> ReportFormat | None:
    """``yaml`` or ``json`` by the path's suffix (any case); None for any other suffix."""
    return _REPORT_FORMAT_BY_SUFFIX.get(path.suffix.lower())


def format_duration(duration: timedelta) -> str:
    """Spell a whole-second duration the way Go (and Istio) does: ``24h``, ``1h30m``, ``30s``."""
    hours, rest = divmod(int(duration.total_seconds()), 3_600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class OptionLayer:
    """One source of raw option values (the command line or the ini file); None = not given."""

    origin: Literal["cli", "ini"]
    base_dir: Path  # relative paths resolve here: invocation dir (cli) or ini file's dir (ini)
    cluster: str | None = None
    kube_context: str | None = None
    keep: bool | None = None
    cert_ttl: str | None = None
    report: str | None = None
    artifacts: str | None = None
    baseline: str | None = None
    faults: tuple[str, ...] = ()
    topology: str | None = None
    more_reports: tuple[str, ...] = ()  # --mesh-report given again: the 2nd, 3rd... values
    min_tls_version: str | None = None
    dataplane: str | None = None

    def describe(self, field: str) -> str:
        """How the user spelled this field in this layer, for error messages."""
        if self.origin == "cli":
            return _CLI_FLAGS[field]
        return f"mesh_{field} (ini option)"


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """The effective mesh configuration for a test run, resolved CLI-first, then ini, default."""

    cluster: ClusterKind = "local"
    kube_context: str | None = None  # "current" = the kubeconfig's current context
    keep: bool = False
    cert_ttl: timedelta = DEFAULT_CERT_TTL
    report: Path | None = None
    artifacts: Path | None = None
    baseline: Path | None = None  # a previous report to compare this run against
    faults: tuple[str, ...] = ()  # test-only faults of the local mesh (hidden --mesh-fault)
    topology: Path | None = None  # the local mesh's topology file; None = the built-in one
    # Every other --mesh-report: HTML and Markdown renderings, further YAML/JSON copies.
    extra_reports: tuple[Path, ...] = ()
    # the local mesh's meshConfig.meshMTLS.minProtocolVersion; None: TLS_AUTO (kube backends
    # read it from istiod's mesh config instead)
    min_tls_version: str | None = None
    # --mesh-dataplane: the built-in topology's data plane; "both" runs every test that uses the
    # mesh once per data plane (`dataplanes`)
    dataplane: DataplaneChoice = "sidecar"

    @property
    def dataplanes(self) -> tuple[Dataplane, ...]:
        """The data planes the run tests, in order: ``("sidecar", "ambient")`` for ``both``."""
        if self.dataplane == "both":
            return ("sidecar", "ambient")
        return (self.dataplane,)

    @property
    def report_format(self) -> ReportFormat | None:
        """``yaml`` or ``json``, from the report path's suffix; None without a report."""
        return None if self.report is None else report_format_of(self.report)

    @classmethod
    def resolve(cls, cli: OptionLayer, ini: OptionLayer) -> MeshSettings:
        """Take each value from the first layer that gives it, validate it, fill in defaults.

        Raises SettingsError naming the offending option as the user spelled it.
        """
        cluster_pick = _pick(cli, ini, "cluster", _parse_cluster)
        kube_context = _value(_pick(cli, ini, "kube_context", _parse_kube_context))
        if cluster_pick is not None and cluster_pick[1] == "existing" and kube_context is None:
            spelled = (
                "--mesh-cluster=existing"
                if cluster_pick[0].origin == "cli"
                else "mesh_cluster = existing (ini option)"
            )
            raise SettingsError(
                f"{spelled} needs the kube context to run against: pass"
                " --mesh-kube-context=NAME (or set mesh_kube_context in the ini file); use"
                " 'current' for the kubeconfig's current context"
            )
        cert_ttl = _value(_pick(cli, ini, "cert_ttl", _parse_cert_ttl_in_layer))
        topology_pick = _pick(cli, ini, "topology", _parse_topology)
        cluster = cluster_pick[1] if cluster_pick is not None else "local"
        if topology_pick is not None and cluster != "local":
            raise SettingsError(
                f"{topology_pick[0].describe('topology')}: a topology file describes the local"
                f" mesh only; --mesh-cluster={cluster} tests the workloads the run deploys"
            )
        keep = cli.keep if cli.keep is not None else ini.keep
        report, extra_reports = _pick_reports(cli, ini)
        min_tls = _pick(cli, ini, "min_tls_version", _parse_min_tls_version)
        if min_tls is not None and cluster != "local":
            raise SettingsError(
                f"{min_tls[0].describe('min_tls_version')} applies to the local mesh only; on"
                f" --mesh-cluster={cluster} meshconform reads meshMTLS.minProtocolVersion from"
                " istiod's mesh config (set it there, e.g. istioctl install --set"
                " meshConfig.meshMTLS.minProtocolVersion=TLSV1_3)"
            )
        dataplane = _pick(cli, ini, "dataplane", _parse_dataplane)
        if dataplane is not None and topology_pick is not None:
            raise SettingsError(
                f"{dataplane[0].describe('dataplane')} chooses the data plane of the built-in"
                f" topology; the topology file {topology_pick[1]} sets each namespace's own"
                " (dataplane: sidecar | ambient | none, docs/topology.md): drop one of them"
            )
        return cls(
            cluster=cluster_pick[1] if cluster_pick is not None else "local",
            kube_context=kube_context,
            keep=bool(keep),
            cert_ttl=cert_ttl if cert_ttl is not None else DEFAULT_CERT_TTL,
            report=report,
            artifacts=_value(_pick(cli, ini, "artifacts", _parse_path)),
            baseline=_value(_pick(cli, ini, "baseline", _parse_baseline)),
            faults=_parse_faults(cli.faults),
            topology=_value(topology_pick),
            extra_reports=extra_reports,
            min_tls_version=_value(min_tls),
            dataplane=dataplane[1] if dataplane is not None else "sidecar",
        )

    def header_lines(self) -> list[str]:
        """The settings in force, printed after collection, so a CI log says what ran."""
        first = [f"meshconform: cluster={self.cluster}"]
        if self.kube_context is not None:
            unused = "" if self.cluster == "existing" else f" (unused with cluster={self.cluster})"
            first.append(f"kube-context={self.kube_context}{unused}")
        first.append(f"cert-ttl={format_duration(self.cert_ttl)}")
        first.append(f"keep={'yes' if self.keep else 'no'}")
        if self.min_tls_version is not None:
            first.append(f"min-tls-version={self.min_tls_version}")
        if self.topology is not None:
            first.append(f"topology={self.topology}")
        if self.dataplane != "sidecar":
            first.append(f"dataplane={self.dataplane}")
        lines = [" ".join(first)]
        outputs = [
            f"{name}={path}"
            for name, path in (
                ("report", self.report),
                *(("report", extra) for extra in self.extra_reports),
                ("artifacts", self.artifacts),
                ("baseline", self.baseline),
            )
            if path is not None
        ]
        if outputs:
            lines.append("meshconform: " + " ".join(outputs))
        return lines


def _pick(
    cli: OptionLayer,
    ini: OptionLayer,
    field: str,
    parse: Callable[[str, OptionLayer], _T],
) -> tuple[OptionLayer, _T] | None:
    """Parse ``field`` from the first layer that gives it; errors name the option as spelled."""
    for layer in (cli, ini):
        raw = getattr(layer, field)
        if raw is not None:
            try:
                return layer, parse(raw, layer)
            except ValueError as error:
                raise SettingsError(f"{layer.describe(field)}: {error}") from error
    return None


def _value(picked: tuple[OptionLayer, _T] | None) -> _T | None:
    return None if picked is None else picked[1]


def _parse_cluster(value: str, layer: OptionLayer) -> ClusterKind:
    cluster = _CLUSTER_BY_NAME.get(value)
    if cluster is None:
        raise ValueError(f"invalid value {value!r}; accepted values: {', '.join(CLUSTER_KINDS)}")
    return cluster


def _parse_kube_context(value: str, layer: OptionLayer) -> str:
    if not value.strip():
        raise ValueError("expected a kube context name (or 'current'), got an empty value")
    return value


def _parse_cert_ttl_in_layer(value: str, layer: OptionLayer) -> timedelta:
    return parse_cert_ttl(value)


def _parse_path(value: str, layer: OptionLayer) -> Path:
    if not value.strip():
        raise ValueError("expected a path, got an empty value")
    return layer.base_dir / value


def _parse_report(value: str, layer: OptionLayer) -> Path:
    path = _parse_path(value, layer)
    if report_format_of(path) is None:
        raise ValueError(
            f"invalid report path {value!r}; accepted suffixes: {', '.join(REPORT_SUFFIXES)}"
        )
    return path


def _parse_any_report(value: str, layer: OptionLayer) -> Path:
    path = _parse_path(value, layer)
    if report_format_of(path) is None and path.suffix.lower() not in HUMAN_REPORT_SUFFIXES:
        accepted = ", ".join((*REPORT_SUFFIXES, *HUMAN_REPORT_SUFFIXES))
        raise ValueError(f"invalid report path {value!r}; accepted suffixes: {accepted}")
    return path


def _pick_reports(cli: OptionLayer, ini: OptionLayer) -> tuple[Path | None, tuple[Path, ...]]:
    """Every --mesh-report (or the ini's one): the first YAML/JSON one is the report the
    baseline and the evidence paths refer to; the others (HTML, Markdown, copies) follow it."""
    layer = cli if cli.report is not None else ini
    values = [v for v in (layer.report, *layer.more_reports) if v is not None]
    paths = []
    for value in values:
        try:
            paths.append(_parse_any_report(value, layer))
        except ValueError as error:
            raise SettingsError(f"{layer.describe('report')}: {error}") from error
    structured = next((p for p in paths if report_format_of(p) is not None), None)
    return structured, tuple(p for p in paths if p is not structured)


def _parse_baseline(value: str, layer: OptionLayer) -> Path:
    path = _parse_report(value, layer)
    if not path.exists():  # a FIFO or a directory: userfiles.read_text says what it is
        raise ValueError(f"baseline report {value!r} does not exist (resolved to {path})")
    return path


def _parse_min_tls_version(value: str, layer: OptionLayer) -> str:
    if value not in MIN_TLS_VERSIONS:
        raise ValueError(
            f"invalid value {value!r}; accepted values: {', '.join(MIN_TLS_VERSIONS)}"
            " (meshMTLS.minProtocolVersion: Istio has no TLS 1.0 or 1.1 setting)"
        )
    return value


def _parse_dataplane(value: str, layer: OptionLayer) -> DataplaneChoice:
    choice = _DATAPLANE_BY_NAME.get(value)
    if choice is None:
        raise ValueError(
            f"invalid value {value!r}; accepted values: {', '.join(DATAPLANE_CHOICES)}"
            f" (e.g. {layer.describe('dataplane')}{'=' if layer.origin == 'cli' else ' = '}both"
            " tests sidecars and ambient, one after the other)"
        )
    return choice


def _parse_topology(value: str, layer: OptionLayer) -> Path:
    path = _parse_path(value, layer)
    if not path.exists():  # a FIFO or a directory: userfiles.read_text says what it is
        raise ValueError(f"topology file {value!r} does not exist (resolved to {path})")
    return path


def _parse_faults(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in FAULT_NAMES:
            raise SettingsError(
                f"--mesh-fault: invalid value {name!r}; accepted values: {', '.join(FAULT_NAMES)}"
            )
    return tuple(dict.fromkeys(names))
