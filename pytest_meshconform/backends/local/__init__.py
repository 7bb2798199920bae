"""The `local` backend: an Istio-compatible mesh on one Linux machine, from real parts.

`backend.LocalMesh` implements the Mesh protocol from rooms: `lifecycle` (the run's processes:
start, exec, close), `network` (pod namespaces wired to a bridge, interception rules from
`iptables`), `delivery` (config files written for Envoy, versions awaited in its stats),
`propagation` (policies pushed and awaited), `capture` (tcpdump in a pod), `logs`, `agent`
(certificate rotation, sidecar health). `topology` and `topology_file` (the pods and Services),
`control` and `xds` are pure (policies -> per-sidecar plans -> Envoy config); `ca` issues the
certificates; `host` holds the machine plumbing (preflight, namespaces, processes, sweeping);
`apps` runs the httpbin apps. `meshconform sweep` removes what dead runs (or kept meshes whose
owner has exited) left behind. `entry` declares the `BACKEND` the registry hands the plugin.
"""
