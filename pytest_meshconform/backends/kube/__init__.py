"""Kubernetes backend: Istio on kind (``--mesh-cluster=kind``) or on a cluster the user names
(``--mesh-cluster=existing --mesh-kube-context=NAME``).

The plugin's ``mesh`` fixture calls ``entry.preflight`` at collection time (one clear
``MeshUnavailable`` within seconds when this machine cannot run the backend) and
``entry.open_mesh`` once per session; ``options`` declares and resolves the backend's options.

Workloads live in per-run namespaces (``mc-<run id>-foo``/``-bar``/``-legacy``):
``mesh.workload("sleep", "foo")`` accepts the logical name, the returned ``Workload.namespace``
is the real one (so SPIFFE IDs and Service FQDNs are the real ones), and ``mesh.apply`` rewrites
a manifest's logical namespace to the real one. A policy in Istio's root namespace raises
``MeshWideNotAllowed`` unless mesh-wide changes are allowed (always on kind, whose cluster
meshconform owns; with ``--mesh-allow-mesh-wide`` on an existing cluster).
"""
