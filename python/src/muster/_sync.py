"""The sync client: :class:`AsyncMusterClient` run on a background event loop.

Nothing here decides anything: every operation is the async client's, either
submitted to the loop thread or, for the warm lookup path, the same lock-free
cache read the async client does (so a cached ``discover`` costs no thread
hop).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union

from ._backends import Backend, ServiceSummary
from ._checks import Check, CheckStatus
from ._client import _INHERITED, AsyncMusterClient, Registered, Stats, Tags, _lookup_key
from ._config import Config
from ._exceptions import ClientClosedError
from ._state import ConnectionListener, ConnectionState
from ._tls import CertFiles, Verify
from ._types import Discovered, HealthFilter, Instance, Lease

T = TypeVar("T")

_CLIENTS: weakref.WeakSet[MusterClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The loop thread does not exist in the child: its loop (never closed nor
    # run here) is kept aside, and the next call starts a new thread.
    for client in list(_CLIENTS):
        if client._loop is not None:
            _INHERITED.append(client._loop)
            client._loop = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="muster-client-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync muster call cannot be made from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


class MusterClient:
    """The blocking muster client; same arguments and semantics as :class:`AsyncMusterClient`.

    Registrations are renewed by a background thread (the client's event
    loop). Use ``with MusterClient() as client:`` or call :meth:`close`; at
    interpreter exit the instances are deregistered in any case. After
    ``os.fork()`` the child's client is a fresh one (see
    :class:`AsyncMusterClient`), with a loop thread of its own.
    """

    def __init__(
        self,
        addresses: Union[str, Sequence[str], None] = None,
        *,
        namespace: Optional[str] = None,
        ttl: Union[float, str, None] = None,
        max_staleness: Union[float, str, None] = None,
        zone: Optional[str] = None,
        backend: Optional[Backend] = None,
        config: Optional[Config] = None,
        lookup_idle_timeout: Union[float, str, None] = None,
        verify: Optional[Verify] = None,
        cert: Optional[CertFiles] = None,
        token: Optional[str] = None,
    ) -> None:
        self._loop: Optional[_LoopThread] = _LoopThread()
        try:
            aio = AsyncMusterClient(
                addresses,
                namespace=namespace,
                ttl=ttl,
                max_staleness=max_staleness,
                zone=zone,
                backend=backend,
                config=config,
                lookup_idle_timeout=lookup_idle_timeout,
                verify=verify,
                cert=cert,
                token=token,
            )
        except BaseException:
            # A refused configuration (a CA file that cannot be read...) must
            # not leave the loop thread running.
            self._loop.stop()
            raise
        self.aio = aio
        """The asyncio client doing the work (on the background loop)."""
        _CLIENTS.add(self)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        if self.aio.closed:
            coro.close()
            raise ClientClosedError("the muster client is closed")
        if self._loop is None:  # a forked child's first call
            self._loop = _LoopThread()
        return self._loop.run(coro, timeout)

    @property
    def config(self) -> Config:
        """The settings in force."""
        return self.aio.config

    @property
    def stats(self) -> Stats:
        """Counters (cache hits, renewals, ...)."""
        return self.aio.stats

    @property
    def lease(self) -> Optional[Lease]:
        """The lease holding this client's instances."""
        return self.aio.lease

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.aio.closed

    @property
    def connection_state(self) -> ConnectionState:
        """See :attr:`AsyncMusterClient.connection_state`."""
        return self.aio.connection_state

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """See :meth:`AsyncMusterClient.add_connection_listener`: called on the
        client's background thread, so it must return quickly."""
        self.aio.add_connection_listener(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        """See :meth:`AsyncMusterClient.remove_connection_listener`."""
        self.aio.remove_connection_listener(listener)

    @property
    def registrations(self) -> list[Registered]:
        """This client's live registrations (pending ones included)."""
        return self.aio.registrations

    @property
    def pending(self) -> list[Registered]:
        """Registrations made with ``defer=True`` that the registry has not seen yet."""
        return self.aio.pending

    def __enter__(self) -> MusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Deregisters this client's instances and stops its background thread."""
        if not self.aio.closed:
            self._run(self.aio.aclose())
        if self._loop is not None:
            self._loop.stop()

    def register(
        self,
        service: str,
        port: int,
        *,
        address: Optional[str] = None,
        tags: Sequence[str] = (),
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        weight: Optional[int] = None,
        instance_id: Optional[str] = None,
        checks: Sequence[Check] = (),
        defer: bool = False,
    ) -> Registered:
        """See :meth:`AsyncMusterClient.register`."""
        return self._run(
            self.aio.register(
                service,
                port,
                address=address,
                tags=tags,
                meta=meta,
                version=version,
                zone=zone,
                weight=weight,
                instance_id=instance_id,
                checks=checks,
                defer=defer,
            )
        )

    def report(
        self,
        handle: Union[Registered, tuple[str, str]],
        check_id: str,
        status: CheckStatus,
        output: Optional[str] = None,
    ) -> None:
        """See :meth:`AsyncMusterClient.report`."""
        self._run(self.aio.report(handle, check_id, status, output))

    def set_maintenance(
        self, handle: Union[Registered, tuple[str, str]], reason: Optional[str]
    ) -> Instance:
        """See :meth:`AsyncMusterClient.set_maintenance`."""
        return self._run(self.aio.set_maintenance(handle, reason))

    def services(self) -> list[ServiceSummary]:
        """See :meth:`AsyncMusterClient.services`."""
        return self._run(self.aio.services())

    def deregister(self, handle: Union[Registered, tuple[str, str]]) -> bool:
        """See :meth:`AsyncMusterClient.deregister`."""
        return self._run(self.aio.deregister(handle))

    def deregister_on_signals(
        self, signals: Optional[Sequence[int]] = None, *, drain: float = 0.0
    ) -> None:
        """See :meth:`AsyncMusterClient.deregister_on_signals` (default: SIGTERM)."""
        if signals is None:
            self.aio.deregister_on_signals(drain=drain)
        else:
            self.aio.deregister_on_signals(signals, drain=drain)

    def discover(
        self,
        service: str,
        *,
        tags: Tags = None,
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        health: HealthFilter = "passing",
    ) -> Discovered:
        """See :meth:`AsyncMusterClient.discover`."""
        hit = self.aio._cached(_lookup_key(service, tags, meta, version, zone, health))
        if hit is not None:
            return hit
        return self._run(
            self.aio.discover(
                service, tags=tags, meta=meta, version=version, zone=zone, health=health
            )
        )

    def wait_for(
        self,
        service: str,
        predicate: Callable[[Discovered], bool],
        *,
        timeout: float = 10.0,
        tags: Tags = None,
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        health: HealthFilter = "passing",
    ) -> Discovered:
        """See :meth:`AsyncMusterClient.wait_for`."""
        return self._run(
            self.aio.wait_for(
                service,
                predicate,
                timeout=timeout,
                tags=tags,
                meta=meta,
                version=version,
                zone=zone,
                health=health,
            )
        )
