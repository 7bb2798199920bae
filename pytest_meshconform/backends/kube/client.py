"""A thin adapter over the official kubernetes client: the only module that imports it.

Everything the kube backend does to a cluster goes through ``KubeApi``, and everything comes
back in the API's JSON shape (plain dicts, camelCase), so the backend's logic is plain data
handling and its tests can stand in a fake built from the client's own model classes. Errors
become ``KubeApiError`` (a ``MeshError``) carrying the HTTP status.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from kubernetes import client as k8s, config as _k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward, stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL

from pytest_meshconform.backends.kube.execproto import ExecStatus, describe_argv, parse_exec_status
from pytest_meshconform.mesh import MeshError

__all__ = [
    "FIELD_MANAGER",
    "TRANSIENT_STATUSES",
    "ExecSession",
    "KubeApi",
    "KubeApiError",
    "is_transient",
    "kubeconfig_location",
]

k8s_config: Any = _k8s_config  # kubernetes.config and the dynamic client are not annotated

FIELD_MANAGER: Final = "meshconform"
_READ_SLICE_S: Final = 0.2  # how long the reader thread blocks per poll; bounds close() latency


def kubeconfig_location() -> str:
    """$KUBECONFIG (a ``:``-separated list) or ~/.kube/config, read now: the client reads it
    once at import time, which would ignore a KUBECONFIG set later in the process."""
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


# Answers that say "try again": no response at all (0), Too Many Requests (API priority and
# fairness), and the 5xx an API server or its load balancer gives while restarting.
TRANSIENT_STATUSES: Final = frozenset({0, 429, 500, 502, 503, 504})


class KubeApiError(MeshError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def is_transient(error: Exception) -> bool:
    """An API or exec call that may well succeed if tried again (a wait retries it)."""
    return isinstance(error, KubeApiError) and error.status in TRANSIENT_STATUSES


def _chained_interrupt(error: BaseException) -> BaseException | None:
    """A KeyboardInterrupt or SystemExit that ``error`` was raised while handling."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _exec_error(what: str, error: Exception) -> KubeApiError:
    """An exec that never started. The API server refuses it in the WebSocket handshake (404
    for a pod that is gone, 400 for a container that is not running); the client wraps that in
    ``ApiException(status=0)`` (ws_client.websocket_call), so the handshake's own status and
    ``metav1.Status`` body are taken from the exception it chained."""
    cause: BaseException | None = error
    while cause is not None:
        code = getattr(cause, "status_code", None)
        if isinstance(code, int) and code:
            body = getattr(cause, "resp_body", None)
            detail = ""
            if isinstance(body, bytes | str) and body:
                text = body.decode(errors="replace") if isinstance(body, bytes) else body
                try:
                    status = json.loads(text)
                except json.JSONDecodeError:
                    status = None
                message = status.get("message") if isinstance(status, dict) else None
                detail = str(message) if message else text.strip()[:300]
            return KubeApiError(f"{what}: HTTP {code} {detail}".rstrip(), code)
        cause = cause.__cause__ or cause.__context__
    return _api_error(what, error)


def _api_error(what: str, error: Exception) -> KubeApiError:
    if isinstance(error, ApiException):
        status = int(error.status or 0)
        detail = error.reason or ""
        body = error.body if isinstance(error.body, str) else ""
        if body:
            detail = f"{detail}: {body[:300]}"
        return KubeApiError(f"{what}: HTTP {status} {detail}".rstrip(), status)
    return KubeApiError(f"{what}: {type(error).__name__}: {error}")


class ExecSession:
    """One exec stream; a reader thread keeps draining it so a long capture never stalls.

    The remote process writes into a WebSocket: if nobody reads, TCP backpressure blocks it
    (tcpdump would then drop packets), hence the thread. ``wait_for`` waits on a condition
    over the received bytes, with a deadline.
    """

    def __init__(self, ws: Any, description: str) -> None:
        self._ws = ws
        self.description = description
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._status = bytearray()
        self._condition = threading.Condition()
        self._finished = False
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._read, name=f"mc-exec {description[:40]}", daemon=True
        )
        self._thread.start()

    def _drain(self) -> None:
        chunks = [
            (self.stdout, self._ws.read_channel(STDOUT_CHANNEL, timeout=0)),
            (self.stderr, self._ws.read_channel(STDERR_CHANNEL, timeout=0)),
            (self._status, self._ws.read_channel(ERROR_CHANNEL, timeout=0)),
        ]
        if any(data for _, data in chunks):
            with self._condition:
                for buffer, data in chunks:
                    if data:
                        buffer += data if isinstance(data, bytes) else data.encode()
                self._condition.notify_all()

    def _read(self) -> None:
        try:
            while self._ws.is_open():
                self._ws.update(timeout=_READ_SLICE_S)
                self._drain()
            self._drain()
        except Exception as error:
            if not self._closing:
                self._failure = error
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    def write_stdin(self, data: bytes) -> None:
        try:
            self._ws.write_stdin(data)
        except Exception as error:
            raise KubeApiError(f"{self.description}: writing stdin failed: {error}") from error

    def wait_for(self, predicate: Callable[[ExecSession], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds; False when the stream ended or time ran out."""
        with self._condition:
            self._condition.wait_for(lambda: predicate(self) or self._finished, timeout)
            return predicate(self)

    def wait_finished(self, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self._finished, timeout)

    def status(self) -> ExecStatus:
        """The exec's final status; raises KubeApiError when the stream broke without one."""
        if self._failure is not None and not self._status:
            raise KubeApiError(f"{self.description}: exec stream failed: {self._failure}")
        try:
            return parse_exec_status(bytes(self._status))
        except ValueError as error:
            raise KubeApiError(f"{self.description}: {error}") from error

    def close(self) -> None:
        self._closing = True
        try:
            self._ws.close()
        finally:
            self._thread.join(timeout=2 * _READ_SLICE_S + 1)


class KubeApi:
    """The cluster operations the kube backend needs, in API JSON shapes."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        context: str,
        kubeconfig: Path | None,
        *,
        discovery_cache: Path | None = None,
    ) -> None:
        self.api_client = api_client
        self.context = context
        self.kubeconfig = kubeconfig
        self.discovery_cache = discovery_cache  # None: the dynamic client's default file
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self._dynamic: Any = None

    @classmethod
    def connect(
        cls,
        kubeconfig: Path | None,
        context: str | None,
        *,
        retries: int | None = None,
        discovery_cache: Path | None = None,
    ) -> KubeApi:
        """A client for ``context`` of ``kubeconfig`` (None: $KUBECONFIG or ~/.kube/config;
        context None: the kubeconfig's current context). ``retries=0`` makes an unreachable
        server fail at once (preflight)."""
        configuration = k8s.Configuration()
        config_file = str(kubeconfig) if kubeconfig is not None else kubeconfig_location()
        try:
            _, active = k8s_config.list_kube_config_contexts(config_file=config_file)
            k8s_config.load_kube_config(
                config_file=config_file, context=context, client_configuration=configuration
            )
        except (k8s_config.ConfigException, OSError, ValueError) as error:
            raise KubeApiError(f"cannot load kubeconfig: {error}") from error
        if retries is not None:
            configuration.retries = retries
        chosen = context or (active or {}).get("name", "")
        return cls(
            k8s.ApiClient(configuration),
            str(chosen),
            kubeconfig,
            discovery_cache=discovery_cache,
        )

    def to_json(self, model: Any) -> Any:
        """A client model (or list of them) as the API's JSON shape."""
        serializer: Any = self.api_client.sanitize_for_serialization
        return serializer(model)

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)

    # -- cluster ---------------------------------------------------------------------------

    def server_version(self, timeout: float = 10.0) -> str:
        try:
            info = k8s.VersionApi(self.api_client).get_code(_request_timeout=timeout)
        except Exception as error:
            raise _api_error(f"GET /version on {self.server}", error) from error
        return str(info.git_version)

    def can_i(self, verb: str, group: str, resource: str, namespace: str) -> tuple[bool, str]:
        """Whether this user may ``verb`` ``resource`` (``pods/exec``: with its subresource) of
        ``group`` in ``namespace`` ("": cluster-scoped), by a SelfSubjectAccessReview; with the
        authorizer's reason (often empty)."""
        name, _, subresource = resource.partition("/")
        review = k8s.V1SelfSubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SelfSubjectAccessReview",
            spec=k8s.V1SelfSubjectAccessReviewSpec(
                resource_attributes=k8s.V1ResourceAttributes(
                    verb=verb,
                    group=group,
                    resource=name,
                    subresource=subresource or None,
                    namespace=namespace or None,
                )
            ),
        )
        where = f" in {namespace}" if namespace else ""
        try:
            answer = k8s.AuthorizationV1Api(self.api_client).create_self_subject_access_review(
                review
            )
        except Exception as error:
            raise _api_error(f"can-i {verb} {resource}{where}", error) from error
        status = answer.status
        reason = str(
            (status.reason if status else "") or (status.evaluation_error if status else "") or ""
        )
        return bool(status and status.allowed), reason

    def list_mutating_webhooks(self) -> list[dict[str, Any]]:
        """Every MutatingWebhookConfiguration (Istio's injectors and revision tags among them)."""
        try:
            found = k8s.AdmissionregistrationV1Api(
                self.api_client
            ).list_mutating_webhook_configuration()
        except Exception as error:
            raise _api_error("list mutatingwebhookconfigurations", error) from error
        return list(self.to_json(found.items))

    def list_nodes(self) -> list[dict[str, Any]]:
        try:
            found = self.core.list_node()
        except Exception as error:
            raise _api_error("list nodes", error) from error
        return list(self.to_json(found.items))

    # -- namespaces ------------------------------------------------------------------------

    def create_namespace(self, manifest: Mapping[str, Any], *, dry_run: bool = False) -> None:
        """Create a namespace; ``dry_run``: only ask (``dryRun=All``: authorization and every
        admission step, Pod Security's label checks included, nothing stored)."""
        body = k8s.V1Namespace(
            metadata=k8s.V1ObjectMeta(
                name=manifest["metadata"]["name"],
                labels=dict(manifest["metadata"].get("labels") or {}),
                annotations=dict(manifest["metadata"].get("annotations") or {}),
            )
        )
        try:
            self.core.create_namespace(body, dry_run="All" if dry_run else None)
        except Exception as error:
            raise _api_error(f"create namespace {manifest['metadata']['name']}", error) from error

    def delete_namespace(self, name: str) -> bool:
        """Delete in the background; False when it was already gone or going.

        A namespace already terminating answers 409 Conflict ("The system is ensuring all
        content is removed from this namespace", the namespace registry's Delete).
        """
        try:
            self.core.delete_namespace(name, propagation_policy="Background")
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise _api_error(f"delete namespace {name}", error) from error
        return True

    def list_namespaces(self, label_selector: str) -> list[dict[str, Any]]:
        try:
            found = self.core.list_namespace(label_selector=label_selector)
        except Exception as error:
            raise _api_error(f"list namespaces {label_selector}", error) from error
        return list(self.to_json(found.items))

    # -- generic objects (dynamic client, server-side apply) ----------------------------------

    def _dynamic_client(self) -> Any:
        if self._dynamic is None:
            from kubernetes import dynamic

            dynamic_module: Any = dynamic
            cache = str(self.discovery_cache) if self.discovery_cache is not None else None
            try:
                self._dynamic = dynamic_module.DynamicClient(self.api_client, cache_file=cache)
            except Exception as error:
                raise _api_error(f"API discovery on {self.server}", error) from error
        return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self._dynamic_client().resources.get(api_version=api_version, kind=kind)
        except Exception as error:
            raise KubeApiError(
                f"the cluster does not serve {kind} in {api_version} (is Istio installed?):"
                f" {error}",
                404,
            ) from error

    def served_versions(self, group: str, kind: str) -> list[str]:
        """The versions the cluster serves ``kind`` of ``group`` in, preferred first."""
        try:
            found = self._dynamic_client().resources.search(group=group, kind=kind)
        except Exception as error:
            raise _api_error(f"discover {kind} in {group}", error) from error
        ordered = sorted(found, key=lambda r: (not getattr(r, "preferred", False), r.api_version))
        return list(dict.fromkeys(str(r.api_version) for r in ordered))

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager ``meshconform``, conflicts forced); the result."""
        meta = manifest["metadata"]
        what = f"apply {manifest['kind']} {meta.get('namespace', '')}/{meta['name']}"
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            result = self._dynamic.server_side_apply(
                resource,
                body=dict(manifest),
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except Exception as error:
            raise _api_error(what, error) from error
        return dict(result.to_dict())

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource = self._resource(api_version, kind)
        try:
            return dict(self._dynamic.get(resource, name=name, namespace=namespace).to_dict())
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise _api_error(f"get {kind} {namespace}/{name}", error) from error

    def list_objects(
        self, api_version: str, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        resource = self._resource(api_version, kind)
        try:
            found = self._dynamic.get(resource, namespace=namespace, label_selector=label_selector)
        except Exception as error:
            raise _api_error(f"list {kind} in {namespace}", error) from error
        return [dict(item) for item in found.to_dict().get("items", [])]

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete an object; False when it did not exist."""
        resource = self._resource(api_version, kind)
        try:
            self._dynamic.delete(resource, name=name, namespace=namespace)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return False
            raise _api_error(f"delete {kind} {namespace}/{name}", error) from error
        return True

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT an object back as it was (restoring what a test changed)."""
        meta = manifest["metadata"]
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            result = self._dynamic.replace(
                resource, body=dict(manifest), name=meta["name"], namespace=meta.get("namespace")
            )
        except Exception as error:
            raise _api_error(
                f"replace {manifest['kind']} {meta.get('namespace')}/{meta['name']}", error
            ) from error
        return dict(result.to_dict())

    # -- pods and friends --------------------------------------------------------------------

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        try:
            found = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        except Exception as error:
            raise _api_error(f"list pods in {namespace}", error) from error
        return list(self.to_json(found.items))

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return dict(self.to_json(self.core.read_namespaced_pod(name, namespace)))
        except Exception as error:
            raise _api_error(f"read pod {namespace}/{name}", error) from error

    def add_ephemeral_container(
        self, namespace: str, pod: str, container: Mapping[str, Any]
    ) -> None:
        body = {"spec": {"ephemeralContainers": [dict(container)]}}
        try:
            self.core.patch_namespaced_pod_ephemeralcontainers(pod, namespace, body)
        except Exception as error:
            raise _api_error(
                f"add ephemeral container {container.get('name')} to {namespace}/{pod}", error
            ) from error

    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        limit_bytes: int,
        since_seconds: int | None = None,
    ) -> str:
        """A container's log (the first `limit_bytes`); only the last `since_seconds` when given
        (PodLogOptions.sinceSeconds)."""
        options: dict[str, Any] = {"container": container, "limit_bytes": limit_bytes}
        if since_seconds is not None:
            options["since_seconds"] = since_seconds
        try:
            text = self.core.read_namespaced_pod_log(pod, namespace, **options)
        except Exception as error:
            raise _api_error(f"logs of {namespace}/{pod} {container}", error) from error
        return str(text)

    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.to_json(self.core.read_namespaced_config_map(name, namespace)))
        except ApiException as error:
            if error.status == 404:
                return None
            raise _api_error(f"read configmap {namespace}/{name}", error) from error

    def list_deployments(
        self, namespace: str, label_selector: str | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        try:
            found = self.apps.list_namespaced_deployment(
                namespace, label_selector=label_selector, _request_timeout=timeout
            )
        except Exception as error:
            raise _api_error(f"list deployments in {namespace}", error) from error
        return list(self.to_json(found.items))

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        try:
            found = self.core.list_namespaced_event(namespace)
        except Exception as error:
            raise _api_error(f"list events in {namespace}", error) from error
        return list(self.to_json(found.items))

    # -- exec ----------------------------------------------------------------------------------

    def open_exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        argv: Sequence[str],
        *,
        stdin: bool = False,
    ) -> ExecSession:
        """Start ``argv`` in a container; bytes in and out, untouched (``binary=True``)."""
        description = f"`{describe_argv(argv)}` in {namespace}/{pod} [{container}]"
        # kubernetes.stream.stream() swaps the ApiClient's ``call_api`` for a WebSocket
        # transport while it connects and puts back what it found afterwards (stream/stream.py):
        # on a shared client, REST and dynamic calls of other threads (the rotation watcher's
        # request loop) would go out as WebSockets, and two handshakes could leave the swap in
        # place for good. Each exec gets a client of its own (cheap: no connection until used).
        exec_core = k8s.CoreV1Api(k8s.ApiClient(self.api_client.configuration))
        try:
            ws = stream(
                exec_core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                container=container,
                command=list(argv),
                stdin=stdin,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        except Exception as error:
            # websocket_call turns even Ctrl-C into ApiException(status=0): give it back, or
            # an interrupted handshake would read as a failed exec and the run go on.
            interrupt = _chained_interrupt(error)
            if interrupt is not None:
                raise interrupt from None
            raise _exec_error(f"exec {description}", error) from error
        return ExecSession(ws, description)

    # -- port-forward ------------------------------------------------------------------------

    def port_forward_get(
        self,
        namespace: str,
        pod: str,
        port: int,
        path: str,
        *,
        timeout: float = 30.0,
        limit: int = 64 << 20,
    ) -> bytes:
        """``GET path`` from ``port`` inside a pod, through the API server's port-forward (the
        way ``istioctl ztunnel-config`` reaches an admin port bound to the pod's localhost in a
        distroless image, where exec has nothing to run). The body of a 200 answer, at most
        ``limit`` bytes; anything else is a :class:`KubeApiError` naming the pod and port."""
        what = f"GET {path} on port {port} of {namespace}/{pod} (port-forward)"
        core = k8s.CoreV1Api(k8s.ApiClient(self.api_client.configuration))  # see open_exec
        try:
            forward = portforward(
                core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
            )
        except Exception as error:
            interrupt = _chained_interrupt(error)
            if interrupt is not None:
                raise interrupt from None
            raise _exec_error(what, error) from error
        try:
            sock = forward.socket(port)
            sock.settimeout(timeout)
            request = f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n"
            sock.sendall(request.encode("ascii") + b"\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as error:
            problem = forward.error(port)
            reason = problem.strip() if problem else f"{type(error).__name__}: {error}"
            raise KubeApiError(f"{what}: {reason}") from error
        finally:
            forward.close()
        if len(body) > limit:
            raise KubeApiError(f"{what}: the answer is larger than {limit} bytes")
        if response.status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise KubeApiError(f"{what}: HTTP {response.status} {response.reason}: {text}")
        return body
