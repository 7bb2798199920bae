"""Kubernetes backend: kind with Istio, or an existing cluster (in progress)."""
