"""The `local` backend: an Istio-compatible mesh on one Linux machine, from real parts.

`backend.LocalMesh` implements the Mesh protocol; `topology`, `control` and `xds` are pure (the
conformance topology, policies -> per-sidecar plans, plans -> Envoy config); `ca` issues the
certificates; `host` holds the machine plumbing (preflight, namespaces, processes, sweeping);
`apps` runs the httpbin apps. `meshconform sweep` removes what dead runs (or kept meshes whose
owner has exited) left behind. `entry` declares the `BACKEND` the registry hands the plugin.
"""
