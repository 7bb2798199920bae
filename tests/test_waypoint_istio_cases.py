"""Istio's documented waypoint outcomes, reproduced through the public fixtures on the local
mesh (issue 20). Each case names its source; the policies are Istio's, the expectations
literal, with the substitutions the local apps need (said where made).

- istio.io, ambient getting started, "Enforce authorization policies"
  (content/en/docs/ambient/getting-started/enforce-auth-policies/index.md): the L4 policy
  `productpage-viewer` admits only the gateway's service account, so `curl` from the `curl`
  pod ends with exit code 56; after `istioctl waypoint apply --enroll-namespace` the policy is
  replaced by one bound with ``targetRefs`` to the Service, allowing GET from `curl`: a DELETE,
  and a call from `reviews-v1`, get ``RBAC: access denied``; GET from `curl` works. (httpbin
  plays productpage: `/anything/productpage` stands in for the page, whose title httpbin does
  not serve.)
- istio.io, "Use Layer 4 security policy" (content/en/docs/ambient/usage/l4-policy/index.md):
  an L7 ALLOW policy enforced by ztunnel (no waypoint) denies even the allowed identity
  ("command terminated with exit code 56"); with a waypoint, a namespace-scoped policy sees
  the waypoint's identity, a ``targetRefs`` policy the client pod's ("Authorization policy
  attachment").
- Istio's ambient integration tests (tests/integration/ambient/baseline_test.go at the commit
  docs/istio-model.md names): ``TestAuthorizationL7`` (the workload admits the waypoint, the
  waypoint enforces the L7 rules; a captured client's calls; an uncaptured client is always
  denied), ``TestAuthorizationServiceAttached`` (a Service-bound policy denies its Service and
  not another Service of the same waypoint; the header rule), and
  ``TestAuthorizationWaypointDefaultDeny`` (a mesh-wide allow-nothing, the workload admitting
  the waypoint, then allow-nothing bound to the GatewayClass `istio-waypoint`). ``CheckDeny``
  there accepts a 403, a reset or a 503; each row below names the one the local mesh gives.
  (Istio's echo app answers any path; httpbin answers `/anything/<path>`, so the policies'
  paths are prefixed `/anything`.)
"""

from __future__ import annotations

import pytest
from local_helpers import assert_runs_left_nothing, needs_local_mesh

pytestmark = needs_local_mesh

BOOKINFO = """\
namespaces:
  - name: default
    dataplane: ambient
{waypoint}    workloads:
      - name: productpage-v1
        kind: httpbin
        serviceAccount: bookinfo-productpage
        labels: {{app: productpage}}
        ports: [9080]
      - name: reviews-v1
        kind: httpbin
        serviceAccount: bookinfo-reviews
        labels: {{app: reviews}}
        ports: [9080]
      - {{name: curl, kind: sleep}}
    services:
      - {{name: productpage, selector: {{app: productpage}}, ports: [{{name: http, port: 9080}}]}}
      - {{name: reviews, selector: {{app: reviews}}, ports: [{{name: http, port: 9080}}]}}
  - name: ambient-demo
    dataplane: ambient
    workloads:
      - {{name: sleep, kind: sleep}}
      - {{name: httpbin, kind: httpbin}}
    services:
      - name: httpbin
        selector: {{app: httpbin}}
        ports: [{{name: http, port: 8000, targetPort: 8080}}]
"""

GETTING_STARTED_L4 = r'''
from pytest_meshconform import PolicyApplier, WorkloadLookup


def test_l4_policy_denies_curl(apply_policy: PolicyApplier, workload: WorkloadLookup) -> None:
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
""")
    result = workload("curl", "default").exec(
        ["curl", "-s", "http://productpage:9080/productpage"]
    )
    # istio.io: "command terminated with exit code 56"; ztunnel drops the connection, which
    # curl reads as a reset (56) when its request had arrived, else an empty reply (52)
    assert result.returncode in (56, 52), result
'''

DOCS = r'''
from pytest_meshconform import PolicyApplier, WorkloadLookup

L7_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/curl
    to:
    - operation:
        methods: ["GET"]
"""


def curl(workload, *args: str) -> tuple[int, bytes]:
    result = workload.exec(["curl", "-s", *args])
    return result.returncode, result.stdout


def test_getting_started_l7_policy_through_the_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    apply_policy(L7_POLICY)
    page = "http://productpage:9080/anything/productpage"
    # "This fails with an RBAC error because you're not using a GET operation"
    assert curl(workload("curl", "default"), page, "-X", "DELETE") == (0, b"RBAC: access denied")
    # "This fails with an RBAC error because the identity of the reviews-v1 service is not
    # allowed"
    assert curl(workload("reviews-v1", "default"), page) == (0, b"RBAC: access denied")
    # "This works as we're explicitly allowing GET requests from the curl pod"
    code, body = curl(workload("curl", "default"), page, "-o", "/dev/null", "-w", "%{http_code}")
    assert (code, body) == (0, b"200")


def test_l7_rules_on_ztunnel_deny_even_the_allowed_identity(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    apply_policy("""
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
 namespace: ambient-demo
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
   to:
   - operation:
       methods: ["GET"]
""")
    result = workload("sleep", "ambient-demo").exec(["curl", "-s", "http://httpbin:8000/get"])
    # istio.io: "command terminated with exit code 56"; ztunnel drops the connection, which
    # curl reads as a reset (56) when its request had arrived, else an empty reply (52)
    assert result.returncode in (56, 52), result


def test_attachment_namespace_scope_sees_the_waypoint(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    """"Authorization policy attachment": with a waypoint, a namespace-scoped policy is
    enforced by the destination ztunnel with Source Identity "waypoint"."""
    curl_pod = workload("curl", "default")
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: namespace-callers
  namespace: default
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
""")
    page = "http://productpage:9080/anything/productpage"
    code, status = curl(curl_pod, page, "-o", "/dev/null", "-w", "%{http_code}")
    assert status != b"200", (code, status)  # the waypoint's identity is not curl's
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: namespace-callers
  namespace: default
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/waypoint"]
""")
    assert curl(curl_pod, page, "-o", "/dev/null", "-w", "%{http_code}") == (0, b"200")
'''

ECHO = """\
namespaces:
  - name: echo
    dataplane: ambient
    waypoint: waypoint
    workloads:
      - {name: captured, kind: sleep}
      - name: service-addressed-waypoint
        kind: httpbin
        ports: [8080, {port: 9000, serves: tcp-echo}]
      - {name: other, kind: httpbin}
    services:
      - name: service-addressed-waypoint
        selector: {app: service-addressed-waypoint}
        ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: tcp, port: 9000}
      - {name: other, selector: {app: other}, ports: [{name: http, port: 80, targetPort: 8080}]}
  - name: echo-wl
    dataplane: ambient
    waypoint: {name: workload-waypoint, for: workload}
    workloads:
      - {name: workload-addressed-waypoint, kind: httpbin}
    services:
      - name: workload-addressed-waypoint
        selector: {app: workload-addressed-waypoint}
        ports: [{name: http, port: 80, targetPort: 8080}]
  - name: plain
    dataplane: none
    workloads:
      - {name: uncaptured, kind: sleep}
"""

INTEGRATION = r'''
import pytest

from pytest_meshconform import PolicyApplier, WorkloadLookup

POLICY_SPEC = """
  rules:
  - to:
    - operation:
        paths: ["/anything/allowed"]
        methods: ["GET"]
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/captured"]
    to:
    - operation:
        paths: ["/anything/allowed-identity"]
        methods: ["GET"]
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/someone-else"]
    to:
    - operation:
        paths: ["/anything/denied-identity"]
        methods: ["GET"]
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/anything/allowed-wildcard*"]
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/headers"]
    when:
    - key: request.headers[x-test-header]
      values: ["match"]
      notValues: ["do-not-match"]
  - to:
    - operation:
        methods: ["POST"]
"""
DENY_SPEC = """
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/anything/explicit-deny"]
"""
L7_POLICIES = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy
  namespace: echo
spec:
  selector:
    matchLabels:
      app: service-addressed-waypoint
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/waypoint"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy-waypoint
  namespace: echo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
{POLICY_SPEC}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-policy
  namespace: echo
spec:
  selector:
    matchLabels:
      app: service-addressed-waypoint
{DENY_SPEC}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-policy-waypoint
  namespace: echo
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
{DENY_SPEC}
"""
FORBIDDEN = (403, b"RBAC: access denied")
OK = 200


CLOSED = "closed by ztunnel"


def call(client, server, path, method="GET", headers=None):
    if isinstance(server, str):  # a pod address: http://<ip>:<port>
        result = client.curl(server + path, method=method, headers=headers)
    else:
        result = client.curl(server, path=path, method=method, headers=headers)
    if result.status == 403:
        return (403, result.body)
    if result.status is None and result.exit_code in (52, 56):
        # ztunnel drops the connection: curl sees a reset (56) when its request had arrived,
        # else an empty reply (52), as with the local ztunnel (docs/istio-model.md)
        return CLOSED
    return result.status if result.status is not None else result


# TestAuthorizationL7, a captured client towards a Service-addressed waypoint's Service:
# (subtest, path, method, headers, expected)
L7_ROWS = [
    ("simple deny", "/anything/deny", "GET", None, FORBIDDEN),
    ("simple allow", "/anything/allowed", "GET", None, OK),
    ("identity deny", "/anything/denied-identity", "GET", None, FORBIDDEN),
    ("identity allow", "/anything/allowed-identity", "GET", None, OK),
    ("explicit deny", "/anything/explicit-deny", "POST", None, FORBIDDEN),
    ("wildcard allow", "/anything/allowed-wildcardtest", "GET", None, OK),
    ("headers allow", "/headers", "GET", {"x-test-header": "match"}, OK),
    ("headers deny", "/headers", "GET", {"x-test-header": "do-not-match"}, FORBIDDEN),
]


def test_authorization_l7(apply_policy: PolicyApplier, workload: WorkloadLookup) -> None:
    apply_policy(L7_POLICIES)
    captured, uncaptured = workload("captured", "echo"), workload("uncaptured", "plain")
    dst = workload("service-addressed-waypoint", "echo")
    seen = {
        name: call(captured, dst, path, method, headers)
        for name, path, method, headers, _ in L7_ROWS
    }
    assert seen == {name: want for name, *_, want in L7_ROWS}
    # "Always denied, doesn't respect the waypoint and the policies require waypoint": the
    # uncaptured client's plaintext goes to the workload, which admits only the waypoint
    for name, path, method, headers, _ in L7_ROWS:
        assert call(uncaptured, dst, path, method, headers) == CLOSED, name


def test_authorization_l7_workload_addressed(
    apply_policy: PolicyApplier, workload: WorkloadLookup, mesh
) -> None:
    """TestAuthorizationL7 towards a workload-addressed waypoint's workload: "send traffic to
    the workload instead of the service so it will redirect to the WL waypoint"; the same
    policies, in the waypoint's namespace, bound to its Gateway."""
    policies = (
        L7_POLICIES.replace("namespace: echo\n", "namespace: echo-wl\n")
        .replace("app: service-addressed-waypoint", "app: workload-addressed-waypoint")
        .replace("name: waypoint\n", "name: workload-waypoint\n")
        .replace("ns/echo/sa/waypoint", "ns/echo-wl/sa/workload-waypoint")
    )
    apply_policy(policies)
    captured, uncaptured = workload("captured", "echo"), workload("uncaptured", "plain")
    dst = workload("workload-addressed-waypoint", "echo-wl")
    address = f"http://{mesh.pod_ip(dst.workload)}:8080"
    seen = {
        name: call(captured, address, path, method, headers)
        for name, path, method, headers, _ in L7_ROWS
    }
    assert seen == {name: want for name, *_, want in L7_ROWS}
    for name, path, method, headers, _ in L7_ROWS:
        assert call(uncaptured, address, path, method, headers) == CLOSED, name
    # its Service's traffic skips a waypoint for workload traffic only (no Service waypoint):
    # the workload admits the waypoint alone, so the direct tunnel is refused
    assert call(captured, dst, "/anything/allowed") == CLOSED


def test_authorization_service_attached(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    captured = workload("captured", "echo")
    authz_dst = workload("service-addressed-waypoint", "echo")
    other_dst = workload("other", "echo")
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy-waypoint
  namespace: echo
spec:
  targetRefs:
  - kind: Service
    group: core
    name: service-addressed-waypoint
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/something/sa/else"]
""")
    assert call(captured, authz_dst, "/get") == FORBIDDEN  # authz target deny
    assert call(captured, other_dst, "/get") == OK  # non-authz target allow
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy-header-match
  namespace: echo
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: service-addressed-waypoint
  action: ALLOW
  rules:
  - when:
    - key: request.headers[x-foo]
      values: ["x-bar"]
""")
    # with both policies the header rule is the one that can allow
    assert call(captured, authz_dst, "/get", headers={"x-foo": "x-bar"}) == OK
    assert call(captured, authz_dst, "/get", headers={"x-foo": "wrong-value"}) == FORBIDDEN


L4_POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy-waypoint
  namespace: echo
spec:
  targetRefs:
  # affects Waypoints
  - kind: Service
    group: core
    name: service-addressed-waypoint
{spec}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: policy
  namespace: echo
spec:
  # affects zTunnels and Sidecars
  selector:
    matchLabels:
      app: service-addressed-waypoint
{spec}
"""
ALLOW_SPEC = """
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/captured", "cluster.local/ns/echo/sa/waypoint"]
"""
NOT_ALLOW_SPEC = """
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/something/sa/else"]
"""


def test_authorization_l4(apply_policy: PolicyApplier, workload: WorkloadLookup) -> None:
    """TestAuthorizationL4 on the TCP port: "allow" passes the waypoint and the workload,
    "not allow" is denied (the waypoint closes the connection: Istio's "EOF", TCP envoy); an
    uncaptured client is denied by the destination's ztunnel ("Expect deny if the dest is in
    the mesh (enforcing policy) but src is not")."""
    captured, uncaptured = workload("captured", "echo"), workload("uncaptured", "plain")
    dst = workload("service-addressed-waypoint", "echo")
    apply_policy(L4_POLICIES.format(spec=ALLOW_SPEC))
    echoed = captured.tcp(dst, port="tcp", send=b"ping\n")
    assert echoed.received == b"hello ping\n", echoed
    refused = uncaptured.tcp(dst, port="tcp", send=b"ping\n")
    assert refused.outcome in ("reset", "closed") and not refused.received, refused
    apply_policy(L4_POLICIES.format(spec=NOT_ALLOW_SPEC))
    denied = captured.tcp(dst, port="tcp", send=b"ping\n")
    assert denied.outcome in ("reset", "closed") and not denied.received, denied


@pytest.mark.mesh_wide
def test_authorization_waypoint_default_deny(
    apply_policy: PolicyApplier, workload: WorkloadLookup
) -> None:
    captured, dst = workload("captured", "echo"), workload("service-addressed-waypoint", "echo")
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: istio-system
spec:
  {}
""")
    denied = call(captured, dst, "/get")  # allow-nothing: ztunnel refuses the waypoint
    assert denied == 503, denied
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-from-waypoint
  namespace: echo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/waypoint"]
""")
    # "These should always succeed since waypoint doesn't enforce workload-selected policy"
    assert call(captured, dst, "/get") == OK
    apply_policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing-waypoint
  namespace: istio-system
spec:
  targetRefs:
  - group: "gateway.networking.k8s.io"
    kind: "GatewayClass"
    name: "istio-waypoint"
""")
    assert call(captured, dst, "/get") == FORBIDDEN
'''


def _run(pytester: pytest.Pytester, topology: str, suite: str) -> pytest.RunResult:
    pytester.makefile(".yaml", topology=topology)
    pytester.makepyfile(test_cases=suite)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--mesh-topology=topology.yaml")
    assert_runs_left_nothing(result.stdout.str())
    return result


def test_getting_started_l4_step_before_the_waypoint(pytester: pytest.Pytester) -> None:
    _run(pytester, BOOKINFO.format(waypoint=""), GETTING_STARTED_L4).assert_outcomes(passed=1)


def test_istio_io_waypoint_outcomes(pytester: pytest.Pytester) -> None:
    topology = BOOKINFO.format(waypoint="    waypoint: waypoint\n")
    _run(pytester, topology, DOCS).assert_outcomes(passed=3)


def test_istio_ambient_integration_waypoint_authorization(pytester: pytest.Pytester) -> None:
    _run(pytester, ECHO, INTEGRATION).assert_outcomes(passed=5)
