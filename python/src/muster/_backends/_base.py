"""The backend interface.

A backend is async, stateless apart from its connections, and knows nothing of
caching, balancing or background renewal: those live in the client, once, for
every backend.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .._checks import Check, CheckStatus
from .._exceptions import MusterError, RegistryError, RegistryUnavailableError
from .._types import Discovered, Instance, Lease, Query, WatchEvent


@dataclass(frozen=True)
class WatchQuery:
    """One query of a multiplexed watch (:meth:`Backend.watch_many`)."""

    id: str
    """The caller's name for the query; every event of it carries it back."""
    service: str
    """Service watched."""
    query: Query
    """Filters."""
    index: Optional[int] = None
    """Resume after this index (the last event received for the query)."""


class WatchQueryRefused(MusterError):
    """The registry refused one query of a multiplexed watch (e.g. a bad filter).

    Raised by :meth:`Backend.watch_many`; the caller drops that query (its
    lookups get :attr:`error`) and watches the others again.
    """

    def __init__(self, query_id: str, error: RegistryError) -> None:
        super().__init__(f"watch query {query_id!r} refused: {error}")
        self.query_id = query_id
        """The refused query's id."""
        self.error = error
        """The registry's refusal, with the field as the single query names it."""


async def merge_streams(
    streams: Sequence[AsyncIterator[tuple[str, WatchEvent]]],
) -> AsyncIterator[tuple[str, WatchEvent]]:
    """Events of several streams as one; the first to fail (or end) ends it all.

    Ending is a failure (``RegistryUnavailableError``): a watch never ends
    while the registry serves it, and the caller resumes every query.
    """
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        raise RegistryUnavailableError("the registry closed the watch")
    out: asyncio.Queue[Union[tuple[str, WatchEvent], BaseException]] = asyncio.Queue()

    async def pump(s: AsyncIterator[tuple[str, WatchEvent]]) -> None:
        try:
            async for item in s:
                out.put_nowait(item)
            out.put_nowait(RegistryUnavailableError("the registry closed the watch"))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            out.put_nowait(e)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(pump(s)) for s in streams]
    try:
        while True:
            got = await out.get()
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _tagged(backend: Backend, q: WatchQuery) -> AsyncIterator[tuple[str, WatchEvent]]:
    try:
        async for ev in backend.watch(q.service, q.query, q.index):
            yield (q.id, ev)
    except RegistryError as e:
        raise WatchQueryRefused(q.id, e) from e


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

    def watch_many(self, queries: Sequence[WatchQuery]) -> AsyncIterator[tuple[str, WatchEvent]]:
        """Streams the changes of many queries at once, as ``(query id, event)``.

        The client keeps all its lookups fresh through this one call, re-made
        with the new set (each query resuming from its ``index``) when
        lookups are added or evicted. A query is fresh once it got a
        ``snapshot`` or ``current`` on the stream. The iterator raises
        ``RegistryUnavailableError`` (or ends) when the stream is lost, and
        :class:`WatchQueryRefused` when the registry refuses one query.

        The default runs one :meth:`watch` per query; a backend whose
        registry can carry many queries over one connection overrides it
        (:class:`MusterBackend` uses ``POST /v1/watch``).
        """
        return merge_streams([_tagged(self, q) for q in queries])

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
