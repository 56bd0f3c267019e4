"""Guards the public surface: what `import muster` offers, and nothing by accident."""

from __future__ import annotations

import httpx

import muster

EXPECTED = {
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
}


def test_all_is_the_expected_surface() -> None:
    assert set(muster.__all__) == EXPECTED


def test_every_public_name_exists_is_documented_and_lives_in_a_private_module() -> None:
    for name in muster.__all__:
        obj = getattr(muster, name)
        if name == "__version__":
            continue
        assert obj.__doc__, f"{name} has no docstring"
        assert obj.__module__.startswith("muster._"), f"{name} from {obj.__module__}"


def test_no_public_module_leaks() -> None:
    leaked = {n for n in dir(muster) if not n.startswith("_") and n not in muster.__all__}
    assert leaked == set()


def test_exception_hierarchy() -> None:
    assert issubclass(muster.LeaseNotFoundError, muster.NotFoundError)
    assert issubclass(muster.NotFoundError, muster.RegistryError)
    for e in (muster.StaleDataError, muster.RegistryUnavailableError, muster.NoInstancesError):
        assert issubclass(e, muster.DiscoveryError)
    assert issubclass(muster.ServiceUnreachableError, muster.NoInstancesError)
    assert issubclass(muster.ServiceUnreachableError, httpx.ConnectError)
    for e in (muster.RegistryError, muster.DiscoveryError, muster.ConfigError):
        assert issubclass(e, muster.MusterError)
