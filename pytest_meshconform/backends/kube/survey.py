"""Read what ``checkup.py`` judges from a cluster: read-only, but for one dry run.

``survey_cluster(api, request)`` reads the API server's version, istiod's Deployments, its mesh
config and injector ConfigMaps, the MutatingWebhookConfigurations (Istio's injectors and
revision tags), the nodes' kubelet versions, with ambient namespaces the ztunnel and
istio-cni pods and the versions the API server serves the Gateway API's Gateway in, asks a
SelfSubjectAccessReview for every permission of ``RUN_PERMISSIONS``, and creates one of the
run's namespaces with ``dryRun=All`` (the API server authorizes and admits it, Pod Security
included, and stores nothing). A read that fails is kept with its error: the judgement says
what it could not check. Only an unreachable API server raises (``KubeApiError``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any, Final, Protocol

from pytest_meshconform.backends.kube.checkup import (
    RunRequest,
    Survey,
    injector_config_map,
    run_plan,
)
from pytest_meshconform.backends.kube.client import KubeApiError
from pytest_meshconform.backends.kube.control_plane import istiod_revisions
from pytest_meshconform.backends.kube.kind import GATEWAY_API_GROUP
from pytest_meshconform.backends.kube.permissions import RUN_PERMISSIONS
from pytest_meshconform.backends.kube.ztunnel import ISTIO_CNI_LABEL, ZTUNNEL_LABEL

__all__ = ["SURVEY_TIMEOUT_S", "SurveyApi", "installed_kubernetes_client", "survey_cluster"]

SURVEY_TIMEOUT_S: Final = 5.0


class SurveyApi(Protocol):
    """What the survey asks of a cluster (``client.KubeApi``)."""

    context: str

    @property
    def server(self) -> str: ...
    def server_version(self, timeout: float = 10.0) -> str: ...
    def list_deployments(
        self, namespace: str, label_selector: str | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]: ...
    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_mutating_webhooks(self) -> list[dict[str, Any]]: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def can_i(self, verb: str, group: str, resource: str, namespace: str) -> tuple[bool, str]: ...
    def create_namespace(self, manifest: dict[str, Any], *, dry_run: bool = False) -> None: ...
    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...
    def served_versions(self, group: str, kind: str) -> list[str]: ...


def installed_kubernetes_client() -> str | None:
    """The installed kubernetes client's version; None when it is not installed."""
    try:
        return importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        return None


def survey_cluster(api: SurveyApi, request: RunRequest) -> Survey:
    """Everything ``check_survey`` needs, read from ``api``'s cluster.

    Raises KubeApiError only when the API server does not answer ``GET /version``.
    """
    survey = Survey(
        context=api.context,
        server=api.server,
        client_version=installed_kubernetes_client(),
        kube_version=api.server_version(timeout=SURVEY_TIMEOUT_S),
    )
    namespace = request.istio_namespace
    try:
        deployments = tuple(api.list_deployments(namespace, "app=istiod", SURVEY_TIMEOUT_S))
        survey = dataclasses.replace(survey, deployments=deployments)
    except KubeApiError as error:
        survey = dataclasses.replace(survey, deployments_error=str(error))
    config_maps: dict[str, dict[str, Any] | None] = {}
    config_map_errors: dict[str, str] = {}
    for revision in istiod_revisions(survey.deployments):
        mesh_map = "istio" if revision == "default" else f"istio-{revision}"
        for name in (mesh_map, injector_config_map(revision)):
            try:
                config_maps[name] = api.read_config_map(namespace, name)
            except KubeApiError as error:
                config_map_errors[name] = str(error)
    survey = dataclasses.replace(
        survey, config_maps=config_maps, config_map_errors=config_map_errors
    )
    try:
        survey = dataclasses.replace(survey, webhooks=tuple(api.list_mutating_webhooks()))
    except KubeApiError as error:
        survey = dataclasses.replace(survey, webhooks_error=str(error))
    try:
        survey = dataclasses.replace(survey, nodes=tuple(api.list_nodes()))
    except KubeApiError as error:
        survey = dataclasses.replace(survey, nodes_error=str(error))
    if request.ambient:  # the ambient data plane the run's ambient namespaces need
        try:
            survey = dataclasses.replace(
                survey,
                ztunnels=tuple(api.list_pods(namespace, ZTUNNEL_LABEL)),
                istio_cni=tuple(api.list_pods(namespace, ISTIO_CNI_LABEL)),
            )
        except KubeApiError as error:
            survey = dataclasses.replace(survey, data_plane_error=str(error))
        try:  # the waypoint's Gateway (API discovery: every authenticated user may read it)
            served = tuple(api.served_versions(GATEWAY_API_GROUP, "Gateway"))
            survey = dataclasses.replace(survey, gateway_api=served)
        except KubeApiError as error:
            survey = dataclasses.replace(survey, gateway_api_error=str(error))
    plan = run_plan(survey, request)
    access: dict[tuple[str, str, str, str], tuple[bool, str]] = {}
    access_error: str | None = None
    for permission in RUN_PERMISSIONS:
        where = plan.namespace_for(permission.scope, namespace)
        try:
            access[permission.key] = api.can_i(
                permission.verb, permission.group, permission.resource, where
            )
        except KubeApiError as error:
            access_error = str(error)
            break
    survey = dataclasses.replace(survey, access=access, access_error=access_error)
    if plan.istiod is None:
        return survey
    try:
        api.create_namespace(plan.namespaces[0], dry_run=True)
    except KubeApiError as error:
        return dataclasses.replace(
            survey,
            admission_checked=True,
            admission_error=str(error),
            admission_status=error.status,
        )
    return dataclasses.replace(survey, admission_checked=True)
