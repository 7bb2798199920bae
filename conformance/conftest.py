"""Defaults of the built-in suites.

Rotation is only observable with short-lived certificates, so unless the user chose a TTL
(--mesh-cert-ttl or mesh_cert_ttl), the built-in suites run with 10 s certificates: Istio then
rotates at ~5 s, so the rotation watch waits at most that long and the whole built-in set stays
within its 20 s budget (benchmarks/bench_conformance.py). The kube backend applies it to the
run's own pods.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from pytest_meshconform import mesh_settings_key

SUITE_CERT_TTL = timedelta(seconds=10)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    settings = config.stash.get(mesh_settings_key, None)
    chosen = config.getoption("mesh_cert_ttl") is not None or bool(config.getini("mesh_cert_ttl"))
    if settings is not None and not chosen:
        config.stash[mesh_settings_key] = dataclasses.replace(settings, cert_ttl=SUITE_CERT_TTL)
