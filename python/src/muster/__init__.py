"""muster: register, discover, balance and call services through the muster registry.

Quick start::

    import httpx, muster

    client = muster.MusterClient()                     # MUSTER_ADDR, MUSTER_NAMESPACE...
    client.register("payments", port=8080, version="1.4.2")
    print(client.discover("payments", version="^1.4"))
    http = httpx.Client(transport=muster.MusterTransport(client))
    http.get("http://payments/pay")

Map of the package (all modules private; public names are re-exported here):

- ``_client``: :class:`AsyncMusterClient`, the one implementation (asyncio).
- ``_sync``: :class:`MusterClient`, the blocking wrapper over it.
- ``_backends``: the :class:`Backend` interface, :class:`MusterBackend`,
  :class:`InMemoryBackend`/:class:`InMemoryRegistry`.
- ``_balance``: balancers and failure ejection.
- ``_checks``: :class:`Check` (health checks of a registration) and :class:`CheckState`.
- ``_transport``: httpx transports.
- ``_state``: :class:`ConnectionState`, the client's session with the registry.
- ``_metrics``, ``_tracing``: :func:`enable_prometheus` and :func:`enable_tracing`,
  the optional extras (their libraries imported only when enabled).
- ``_integrations``: FastAPI lifespan and Flask extension.
- ``_config``, ``_types``, ``_exceptions``, ``_semver``: settings, values, errors, version ranges.
"""

from ._backends import (
    Backend,
    InMemoryBackend,
    InMemoryRegistry,
    MusterBackend,
    Registration,
    ServiceSummary,
)
from ._balance import (
    Balancer,
    LeastConnections,
    PowerOfTwo,
    RandomBalancer,
    RoundRobin,
    Weighted,
    ZoneAware,
    make_balancer,
)
from ._checks import Check, CheckState
from ._client import AsyncMusterClient, Registered, Stats
from ._config import Config
from ._exceptions import (
    ClientClosedError,
    ConfigError,
    DiscoveryError,
    InvalidRequestError,
    LeaseNotFoundError,
    MusterError,
    NoInstancesError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    ServiceUnreachableError,
    StaleDataError,
)
from ._integrations import FlaskMuster, get_client, muster_lifespan
from ._metrics import enable_prometheus
from ._semver import version_matches
from ._state import ConnectionState
from ._sync import MusterClient
from ._tracing import enable_tracing
from ._transport import AsyncMusterTransport, MusterTransport
from ._types import Discovered, Instance, Lease, Query, WatchEvent

__version__ = "0.1.0"

__all__ = [
    "AsyncMusterClient",
    "AsyncMusterTransport",
    "Backend",
    "Balancer",
    "Check",
    "CheckState",
    "ClientClosedError",
    "Config",
    "ConfigError",
    "ConnectionState",
    "Discovered",
    "DiscoveryError",
    "FlaskMuster",
    "InMemoryBackend",
    "InMemoryRegistry",
    "Instance",
    "InvalidRequestError",
    "Lease",
    "LeaseNotFoundError",
    "LeastConnections",
    "MusterBackend",
    "MusterClient",
    "MusterError",
    "MusterTransport",
    "NoInstancesError",
    "NotFoundError",
    "PowerOfTwo",
    "Query",
    "RandomBalancer",
    "Registered",
    "Registration",
    "RegistryError",
    "RegistryUnavailableError",
    "RoundRobin",
    "ServiceSummary",
    "ServiceUnreachableError",
    "StaleDataError",
    "Stats",
    "WatchEvent",
    "Weighted",
    "ZoneAware",
    "__version__",
    "enable_prometheus",
    "enable_tracing",
    "get_client",
    "make_balancer",
    "muster_lifespan",
    "version_matches",
]
