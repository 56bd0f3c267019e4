"""An in-process registry with the native API's semantics, for tests of user code.

:class:`InMemoryRegistry` holds the state (thread-safe, shared by any number of
clients and event loops); :class:`InMemoryBackend` is one client's view of it.
Leases expire on a background timer thread, exactly as on a real registry, and
:meth:`InMemoryRegistry.set_available` simulates an outage.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Optional, Union

from .._exceptions import (
    InvalidRequestError,
    LeaseNotFoundError,
    RegistryUnavailableError,
)
from .._types import Discovered, Instance, Lease, Query, WatchEvent
from ._base import Backend, Registration

_Key = tuple[str, str, str]  # namespace, service, id
_Sink = Callable[[Union[WatchEvent, BaseException]], None]


class _LeaseState:
    __slots__ = ("deadline", "instances", "ttl")

    def __init__(self, ttl: float, now: float) -> None:
        self.ttl = ttl
        self.deadline = now + ttl
        self.instances: set[_Key] = set()


class InMemoryRegistry:
    """The state of an in-memory registry; pass it to :class:`InMemoryBackend`.

    ``MusterClient(backend=InMemoryBackend(registry))`` gives user code a
    working registry without a server.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._index = itertools.count(1)
        self._last_index = 0
        self._instances: dict[_Key, Instance] = {}
        self._leases: dict[str, _LeaseState] = {}
        self._watchers: dict[tuple[str, str], list[tuple[Query, _Sink]]] = {}
        self._available = True
        self._sweeper: Optional[threading.Thread] = None

    # -- outage simulation -------------------------------------------------
    def set_available(self, available: bool) -> None:
        """Simulates the registry going down (``False``) or coming back.

        While down every call raises ``RegistryUnavailableError`` and open
        watches break. Leases do not expire while down: like a restarted
        registry, every lease gets a fresh full TTL when it comes back.
        """
        with self._lock:
            self._available = available
            now = time.monotonic()
            for lease in self._leases.values():
                lease.deadline = now + lease.ttl
            if not available:
                err = RegistryUnavailableError("in-memory registry is unavailable")
                for sinks in self._watchers.values():
                    for _, sink in sinks:
                        sink(err)
                self._watchers.clear()
            self._wake.notify_all()

    def _check(self) -> None:
        if not self._available:
            raise RegistryUnavailableError("in-memory registry is unavailable")

    # -- leases ---------------------------------------------------------------
    def create_lease(self, ttl: float) -> Lease:
        """Creates a lease."""
        if not 1.0 <= ttl <= 3600.0:
            raise InvalidRequestError(400, "invalid_field", "ttl must be 1s to 1h", "ttl")
        with self._lock:
            self._check()
            lid = secrets.token_hex(8)
            self._leases[lid] = _LeaseState(ttl, time.monotonic())
            self._last_index = next(self._index)
            self._ensure_sweeper()
            self._wake.notify_all()
            return Lease(lid, ttl)

    def renew_lease(self, lease_id: str) -> None:
        """Renews a lease."""
        with self._lock:
            self._check()
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseNotFoundError(404, "lease_not_found", f"lease {lease_id} not found")
            lease.deadline = time.monotonic() + lease.ttl

    def revoke_lease(self, lease_id: str) -> int:
        """Revokes a lease, removing its instances; returns how many."""
        with self._lock:
            self._check()
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                return 0
            for key in sorted(lease.instances):
                self._remove(key)
            return len(lease.instances)

    # -- instances ------------------------------------------------------------
    def register(
        self,
        namespace: str,
        service: str,
        instance_id: str,
        reg: Registration,
        lease_id: Optional[str],
    ) -> Instance:
        """Registers or replaces an instance."""
        with self._lock:
            self._check()
            if lease_id is not None and lease_id not in self._leases:
                raise LeaseNotFoundError(404, "lease_not_found", f"lease {lease_id} not found")
            key = (namespace, service, instance_id)
            old = self._instances.get(key)
            if old is not None and old.lease is not None and old.lease in self._leases:
                self._leases[old.lease].instances.discard(key)
            index = next(self._index)
            self._last_index = index
            inst = Instance(
                id=instance_id,
                service=service,
                address=reg.address,
                port=reg.port,
                namespace=namespace,
                tags=frozenset(reg.tags),
                meta=dict(reg.meta),
                version=reg.version,
                zone=reg.zone,
                weight=100 if reg.weight is None else reg.weight,
                lease=lease_id,
                create_index=old.create_index if old else index,
                modify_index=index,
            )
            self._instances[key] = inst
            if lease_id is not None:
                self._leases[lease_id].instances.add(key)
            for query, sink in self._watchers.get((namespace, service), ()):
                if query.matches(inst):
                    sink(WatchEvent("upsert", index, instance=inst))
                else:
                    sink(WatchEvent("delete", index, instance_id=instance_id))
            return inst

    def deregister(self, namespace: str, service: str, instance_id: str) -> bool:
        """Removes an instance; returns whether it existed."""
        with self._lock:
            self._check()
            return self._remove((namespace, service, instance_id))

    def _remove(self, key: _Key) -> bool:
        inst = self._instances.pop(key, None)
        if inst is None:
            return False
        if inst.lease is not None and inst.lease in self._leases:
            self._leases[inst.lease].instances.discard(key)
        index = next(self._index)
        self._last_index = index
        for _, sink in self._watchers.get(key[:2], ()):
            sink(WatchEvent("delete", index, instance_id=key[2]))
        return True

    def snapshot(self, namespace: str, service: str, query: Query) -> Discovered:
        """The matching instances now."""
        with self._lock:
            self._check()
            found = sorted(
                (
                    i
                    for (ns, svc, _), i in self._instances.items()
                    if ns == namespace and svc == service and query.matches(i)
                ),
                key=lambda i: i.id,
            )
            return Discovered(service, tuple(found), self._last_index)

    def subscribe(
        self, namespace: str, service: str, query: Query, sink: _Sink
    ) -> Callable[[], None]:
        """Sends a snapshot and then every change to ``sink``; returns an unsubscribe function."""
        with self._lock:
            self._check()
            snap = self.snapshot(namespace, service, query)
            sink(WatchEvent("snapshot", snap.index, instances=snap.instances))
            entry = (query, sink)
            self._watchers.setdefault((namespace, service), []).append(entry)

        def unsubscribe() -> None:
            with self._lock:
                sinks = self._watchers.get((namespace, service), [])
                if entry in sinks:
                    sinks.remove(entry)

        return unsubscribe

    # -- expiry ------------------------------------------------------------------
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep, name="muster-memory-expiry", daemon=True
            )
            self._sweeper.start()

    def _sweep(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                if self._available:
                    for lid, lease in list(self._leases.items()):
                        if lease.deadline <= now:
                            del self._leases[lid]
                            for key in sorted(lease.instances):
                                self._remove(key)
                deadlines = [lease.deadline for lease in self._leases.values()]
                self._wake.wait(timeout=(min(deadlines) - now) if deadlines else None)


class InMemoryBackend(Backend):
    """A :class:`Backend` over an :class:`InMemoryRegistry` (no server, no I/O)."""

    def __init__(self, registry: Optional[InMemoryRegistry] = None, namespace: str = "default"):
        self.registry = registry if registry is not None else InMemoryRegistry()
        """The shared state."""
        self.namespace = namespace

    def revoke_lease_blocking(self, lease_id: str, timeout: float) -> None:
        try:
            self.registry.revoke_lease(lease_id)
        except RegistryUnavailableError:
            pass

    async def create_lease(self, ttl: float) -> Lease:
        return self.registry.create_lease(ttl)

    async def renew_lease(self, lease_id: str) -> None:
        self.registry.renew_lease(lease_id)

    async def revoke_lease(self, lease_id: str) -> None:
        self.registry.revoke_lease(lease_id)

    async def register(
        self, service: str, instance_id: str, reg: Registration, lease_id: Optional[str]
    ) -> Instance:
        return self.registry.register(self.namespace, service, instance_id, reg, lease_id)

    async def deregister(self, service: str, instance_id: str) -> bool:
        return self.registry.deregister(self.namespace, service, instance_id)

    async def instances(self, service: str, query: Query) -> Discovered:
        return self.registry.snapshot(self.namespace, service, query)

    async def watch(
        self, service: str, query: Query, last_index: Optional[int] = None
    ) -> AsyncIterator[WatchEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Union[WatchEvent, BaseException]] = asyncio.Queue()

        def sink(item: Union[WatchEvent, BaseException]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the watcher's loop is closed
                pass

        unsubscribe = self.registry.subscribe(self.namespace, service, query, sink)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            unsubscribe()
