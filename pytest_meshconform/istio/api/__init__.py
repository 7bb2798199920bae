"""The Istio policy kinds meshconform models: parse, validate, build.

One module per kind (``peer_authentication``, ``destination_rule``, ``authorization_policy``:
the dataclass, its validation, its builder), the shared field checks (``fields``), the hardened
YAML loader (``loader``) and the document reader (``parse``). What the policies mean for each
sidecar is :mod:`pytest_meshconform.istio`.

The builders (``peer_authentication()``, ...) are imported from their kind's module: re-exported
here they would shadow the module of the same name as an attribute of this package.
"""

from pytest_meshconform.istio.api.authorization_policy import (
    AuthorizationPolicy,
    AuthzAction,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
)
from pytest_meshconform.istio.api.destination_rule import (
    ClientTls,
    DestinationRule,
    PortTrafficPolicy,
    Subset,
    TlsMode,
    TrafficPolicy,
)
from pytest_meshconform.istio.api.fields import PolicyError
from pytest_meshconform.istio.api.parse import (
    POLICY_KINDS,
    Policy,
    PolicyText,
    parse_policies,
    parse_policy,
)
from pytest_meshconform.istio.api.peer_authentication import (
    MtlsMode,
    PeerAuthentication,
)

__all__ = [
    "POLICY_KINDS",
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
    "parse_policies",
    "parse_policy",
]
