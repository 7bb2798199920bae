"""Topologies the waypoint tests share (model tests and live runs read the same file text)."""

from __future__ import annotations

# depot: a Service with its own istio.io/use-waypoint label beside one without; yard: a
# namespace waypoint and a Service opting out of it with `none`.
DEPOT_TOPOLOGY = """\
namespaces:
  - name: depot
    dataplane: ambient
    waypoints: [inspector]
    workloads:
      - {name: courier, kind: sleep}
      - {name: parcels, kind: httpbin}
      - {name: ledger, kind: httpbin}
    services:
      - name: parcels
        labels: {istio.io/use-waypoint: inspector}
        selector: {app: parcels}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: ledger
        selector: {app: ledger}
        ports: [{name: http, port: 80, targetPort: 8080}]
  - name: yard
    dataplane: ambient
    waypoint: gatekeeper
    workloads:
      - {name: forklift, kind: httpbin}
      - {name: crane, kind: httpbin}
    services:
      - name: forklift
        selector: {app: forklift}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: crane
        labels: {istio.io/use-waypoint: none}
        selector: {app: crane}
        ports: [{name: http, port: 80, targetPort: 8080}]
"""
