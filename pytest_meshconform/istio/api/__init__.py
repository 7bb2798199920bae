"""The Istio policy kinds meshconform models: parse, validate, build.

One module per kind (``peer_authentication``, ``destination_rule``, ``authorization_policy``:
the dataclass, its validation, its builder), the shared field checks (``fields``), the hardened
YAML loader (``loader``) and the document reader (``parse``). What the policies mean for each
sidecar is :mod:`pytest_meshconform.istio`.
"""

from pytest_meshconform.istio.api.authorization_policy import (
    AuthorizationPolicy,
    AuthzAction,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    authorization_policy,
)
from pytest_meshconform.istio.api.destination_rule import (
    ClientTls,
    DestinationRule,
    PortTrafficPolicy,
    Subset,
    TlsMode,
    TrafficPolicy,
    destination_rule,
)
from pytest_meshconform.istio.api.fields import PolicyError
from pytest_meshconform.istio.api.parse import Policy, PolicyText, parse_policies, parse_policy
from pytest_meshconform.istio.api.peer_authentication import (
    MtlsMode,
    PeerAuthentication,
    peer_authentication,
)

__all__ = [
    "AuthorizationPolicy",
    "AuthzAction",
    "AuthzCondition",
    "AuthzOperation",
    "AuthzRule",
    "AuthzSource",
    "ClientTls",
    "DestinationRule",
    "MtlsMode",
    "PeerAuthentication",
    "Policy",
    "PolicyError",
    "PolicyText",
    "PortTrafficPolicy",
    "Subset",
    "TlsMode",
    "TrafficPolicy",
    "authorization_policy",
    "destination_rule",
    "parse_policies",
    "parse_policy",
    "peer_authentication",
]
