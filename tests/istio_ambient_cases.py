"""istiod's golden cases for PeerAuthentication in ambient mode, transcribed verbatim.

From istio/istio 86c9f01fd735, pilot/pkg/serviceregistry/ambient/testdata/ (trailing spaces
dropped): each `<name>-in.yaml` (the PeerAuthentications) and `<name>.yaml` (the
Authorization istiod derives for ztunnel with `convertPeerAuthentication`; empty: none), as
`TestRBACConvert` (ambientindex_test.go) reads them: the root namespace is istio-system.
"""

from __future__ import annotations

CASES: dict[str, tuple[str, str]] = {
    "peer-authn-disable": (
        """\

apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: disable-mtls
spec:
  mtls:
    mode: DISABLE
""",
        """\
""",
    ),
    "peer-authn-disable-port-mtls-strict": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: disable-strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: DISABLE
  portLevelMtls:
    9090:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_disable-strict-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-permissive": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: permissive-mtls
spec:
  mtls:
    mode: PERMISSIVE
""",
        """\
""",
    ),
    "peer-authn-permissive-port-mtls-strict": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: permissive-strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9090:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_permissive-strict-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-permissive-port-mtls-strict-and-permissive": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: permissive-strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9090:
      mode: STRICT
    8080:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_permissive-strict-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-permissive-root-permissive-namespace-strict-workload-ports": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-foo
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: STRICT
    8080:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 8080
      notPrincipals:
      - presence: {}
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-permissive-root-permissive-workload": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: PERMISSIVE
""",
        """\
""",
    ),
    "peer-authn-permissive-root-strict-namespace-permissive-workload": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-foo
  namespace: foo
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notDestinationPorts:
      - 9090
  - matches:
    - notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-permissive-root-unset-namespace-mixed-workload-ports": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-foo
  namespace: foo
spec:
  mtls:
    mode: UNSET
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: STRICT
    8080:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-mtls
spec:
  mtls:
    mode: STRICT

""",
        """\
""",
    ),
    "peer-authn-strict-and-disable-port-mtls": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-and-disable-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: STRICT
  portLevelMtls:
    9090:
      mode: DISABLE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notPrincipals:
      - presence: {}
  - matches:
    - notDestinationPorts:
      - 9090
name: converted_peer_authentication_strict-and-disable-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-and-permissive-port-mtls": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-and-permissive-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: STRICT
  portLevelMtls:
    9090:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notPrincipals:
      - presence: {}
  - matches:
    - notDestinationPorts:
      - 9090
name: converted_peer_authentication_strict-and-permissive-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-and-strict-port-mtls": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: STRICT
""",
        """\
""",
    ),
    "peer-authn-strict-port-mtls-strict-and-permissive": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: permissive-strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: STRICT
  portLevelMtls:
    9090:
      mode: STRICT
    8080:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notPrincipals:
      - presence: {}
  - matches:
    - notDestinationPorts:
      - 8080
name: converted_peer_authentication_permissive-strict-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-root-permissive-namespace-strict-workload": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-foo
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 9090
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-root-permissive-workload": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: PERMISSIVE
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notDestinationPorts:
      - 9090
  - matches:
    - notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-root-unset-workload-port-mtls-strict-and-permissive": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default-mesh
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: workload
  namespace: foo
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    9090:
      mode: PERMISSIVE
    8080:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - notDestinationPorts:
      - 9090
  - matches:
    - notPrincipals:
      - presence: {}
name: converted_peer_authentication_workload
namespace: foo
scope: WORKLOAD_SELECTOR
""",
    ),
    "peer-authn-strict-workload": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: STRICT
""",
        """\
""",
    ),
    "peer-authn-unset-port-mtls-strict": (
        """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-mtls
spec:
  selector:
    matchLabels:
      app: a
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: STRICT
""",
        """\
action: DENY
groups:
- rules:
  - matches:
    - destinationPorts:
      - 8080
      notPrincipals:
      - presence: {}
name: converted_peer_authentication_strict-mtls
scope: WORKLOAD_SELECTOR
""",
    ),
}
