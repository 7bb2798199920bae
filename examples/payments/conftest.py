"""The payments layout's workloads as fixtures, typed with `pytest_meshconform`'s names.

A fixture per workload keeps the tests about the services, not about looking them up;
`skip_if_missing=True` skips a test whose workload the topology in force lacks, and a run in
which every test was skipped that way fails, naming the topology (run this suite with
``--mesh-topology=examples/payments/topology.yaml``).
"""

from __future__ import annotations

import pytest

from pytest_meshconform import WorkloadHandle, WorkloadLookup


@pytest.fixture
def ledger(workload: WorkloadLookup) -> WorkloadHandle:
    """payments/ledger: HTTP on Service port 80 (`http`, pod 8080), TCP on 5432."""
    return workload("ledger", "payments", skip_if_missing=True)


@pytest.fixture
def web(workload: WorkloadLookup) -> WorkloadHandle:
    """checkout/web: a sidecar client, service account `checkout-web`."""
    return workload("web", "checkout", skip_if_missing=True)


@pytest.fixture
def refunds(workload: WorkloadLookup) -> WorkloadHandle:
    """checkout/refunds: a sidecar client, service account `checkout-refunds`."""
    return workload("refunds", "checkout", skip_if_missing=True)


@pytest.fixture
def nightly(workload: WorkloadLookup) -> WorkloadHandle:
    """batch/nightly: a client without a sidecar (plaintext)."""
    return workload("nightly", "batch", skip_if_missing=True)
