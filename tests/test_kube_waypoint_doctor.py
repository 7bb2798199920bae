"""``meshconform doctor`` and the existing-cluster preflight on the waypoint of an ambient run:
whether the cluster serves the Gateway API's ``Gateway`` (``gateway.networking.k8s.io/v1``, what
``istioctl waypoint apply`` writes), and the fix as istio.io's ambient install guide gives it
(``kubectl apply -f .../standard-install.yaml`` of a Gateway API release)."""

from __future__ import annotations

from pytest_meshconform.backends.kube.checkup import Finding, RunRequest, Survey, check_survey

FIX = (
    "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.4.0/"
    "standard-install.yaml"
)
BREAKS = "the run has no waypoint: the tests that need the waypoint feature are skipped"


def waypoint_finding(survey: Survey, *, ambient: bool = True) -> list[Finding]:
    return [f for f in check_survey(survey, RunRequest(ambient=ambient)) if f.check == "waypoint"]


def survey(**read: object) -> Survey:
    return Survey("prod", "https://10.0.0.1:6443", "37.0.3", **read)  # type: ignore[arg-type]


def test_a_cluster_serving_the_gateway_api_gets_the_waypoint() -> None:
    assert waypoint_finding(survey(gateway_api=("v1", "v1beta1"))) == [
        Finding(
            "waypoint",
            "ok",
            "Gateway API served (Gateway v1, v1beta1): the run gives bar the namespace waypoint"
            " `waypoint`",
        )
    ]


def test_a_cluster_without_the_gateway_api_is_told_the_fix() -> None:
    assert waypoint_finding(survey(gateway_api=())) == [
        Finding(
            "waypoint",
            "warn",
            "the Gateway API CRDs are not installed (the API server serves no Gateway kind)",
            BREAKS,
            FIX,
        )
    ]


def test_gateway_api_before_1_0_is_named() -> None:
    (found,) = waypoint_finding(survey(gateway_api=("v1beta1",)))
    assert (found.status, found.found, found.fix) == (
        "warn",
        "the Gateway API CRDs serve Gateway v1beta1 only, not gateway.networking.k8s.io/v1 (a"
        " release before 1.0)",
        FIX,
    )


def test_an_unread_gateway_api_is_a_warning_naming_the_error() -> None:
    (found,) = waypoint_finding(survey(gateway_api_error="discover Gateway: HTTP 503"))
    assert (found.status, found.found) == (
        "warn",
        "could not tell whether the cluster serves the Gateway API: discover Gateway: HTTP 503",
    )
    assert found.breaks == f"without it {BREAKS}"


def test_a_sidecar_run_asks_nothing_of_the_gateway_api() -> None:
    assert waypoint_finding(survey(gateway_api=()), ambient=False) == []
