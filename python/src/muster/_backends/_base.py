"""The backend interface.

A backend is async, stateless apart from its connections, and knows nothing of
caching, balancing or background renewal: those live in the client, once, for
every backend.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .._checks import Check, CheckStatus
from .._types import Discovered, Instance, Lease, Query, WatchEvent


@dataclass(frozen=True)
class Registration:
    """What to register: everything about an instance except its id and lease."""

    address: str
    """IP address or host name the instance serves on."""
    port: int
    """TCP port."""
    tags: tuple[str, ...] = ()
    """Tags."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """String metadata."""
    version: Optional[str] = None
    """Version (semver when it parses)."""
    zone: Optional[str] = None
    """Zone (failure domain)."""
    weight: Optional[int] = None
    """Load-balancing weight (registry default 100)."""
    checks: tuple[Check, ...] = ()
    """Health checks (run by the registry, or reported for ttl checks)."""

    def to_json(self) -> dict[str, Any]:
        """The registration as the native API's request body (without lease)."""
        body: dict[str, Any] = {"address": self.address, "port": self.port}
        if self.tags:
            body["tags"] = list(self.tags)
        if self.meta:
            body["meta"] = dict(self.meta)
        for k in ("version", "zone", "weight"):
            v = getattr(self, k)
            if v is not None:
                body[k] = v
        if self.checks:
            body["checks"] = [c.to_json() for c in self.checks]
        return body


@dataclass(frozen=True)
class ServiceSummary:
    """A service and its instance counts by health."""

    name: str
    """Service name."""
    instances: int
    """All instances."""
    passing: int = 0
    """Instances passing."""
    warning: int = 0
    """Instances warning."""
    critical: int = 0
    """Instances critical."""


class Backend(abc.ABC):
    """A service registry, as the client needs it.

    Implementations raise :class:`~muster.RegistryUnavailableError` when the
    registry cannot be reached, :class:`~muster.LeaseNotFoundError` when a
    lease is gone, and other :class:`~muster.RegistryError` subclasses for
    refused requests.
    """

    namespace: str
    """Namespace every call works in."""

    @abc.abstractmethod
    async def create_lease(self, ttl: float) -> Lease:
        """Creates a lease of ``ttl`` seconds."""

    @abc.abstractmethod
    async def renew_lease(self, lease_id: str) -> None:
        """Renews a lease; raises ``LeaseNotFoundError`` if it is gone."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: str) -> None:
        """Revokes a lease and so removes its instances; a missing lease is fine."""

    @abc.abstractmethod
    async def register(
        self, service: str, instance_id: str, reg: Registration, lease_id: Optional[str]
    ) -> Instance:
        """Registers (or replaces) an instance, attached to ``lease_id`` if given."""

    @abc.abstractmethod
    async def deregister(self, service: str, instance_id: str) -> bool:
        """Removes an instance; returns whether it existed."""

    @abc.abstractmethod
    async def instances(self, service: str, query: Query) -> Discovered:
        """One discovery query, answered by the registry now."""

    @abc.abstractmethod
    def watch(
        self, service: str, query: Query, last_index: Optional[int] = None
    ) -> AsyncIterator[WatchEvent]:
        """Streams changes of a service: a snapshot first, then deltas.

        With ``last_index``, resumes after that index (the backend may still
        start with a snapshot). Once the registry has accepted a resumed
        watch, a ``current`` event at ``last_index`` may come first: the
        client treats the cache as fresh from then on. The iterator ends or raises
        ``RegistryUnavailableError`` when the connection is lost; the caller
        reconnects.
        """

    @abc.abstractmethod
    def revoke_lease_blocking(self, lease_id: str, timeout: float) -> None:
        """Revokes a lease without an event loop, best effort, within ``timeout``.

        The last word at interpreter exit or on SIGTERM, when the client's
        event loop may be gone or unable to start new work.
        """

    async def report_check(
        self,
        service: str,
        instance_id: str,
        check_id: str,
        status: CheckStatus,
        output: Optional[str] = None,
    ) -> None:
        """Reports the status of a TTL check (a backend without checks refuses)."""
        raise NotImplementedError(f"{type(self).__name__} has no TTL checks")

    async def maintenance(self, service: str, instance_id: str, reason: Optional[str]) -> Instance:
        """Puts an instance in maintenance (``reason``) or takes it out (``None``)."""
        raise NotImplementedError(f"{type(self).__name__} has no maintenance mode")

    async def services(self) -> list[ServiceSummary]:
        """The services of the namespace with their instance counts."""
        raise NotImplementedError(f"{type(self).__name__} cannot list services")

    def advertise_address(self) -> str:
        """The address this host is reachable at from the registry's point of view."""
        return "127.0.0.1"

    async def aclose(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Releases connections."""
