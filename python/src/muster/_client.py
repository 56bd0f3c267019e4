"""The asyncio client: the one implementation of registration and discovery.

:class:`AsyncMusterClient` owns

- **registrations**: one lease per client, renewed by a background task every
  ~ttl/3 (with jitter); when the registry says the lease is gone, a new lease
  is created and every registration is repeated; ``aclose()`` revokes the
  lease, which removes every instance at once; an ``atexit`` hook and an
  optional SIGTERM handler (with a drain delay) do the same when the program
  ends without it; ``register(..., defer=True)`` does not need the registry
  to be up: the renewal task registers as soon as it can be reached;
- **discovery**: one multiplexed watch (:meth:`Backend.watch_many`, one SSE
  stream for every ``(service, filters)`` lookup, see :class:`_Mux`) keeps
  the cached answers fresh; lookups read the cache without I/O; lookups
  unused for ``lookup_idle_timeout`` are evicted; while the registry
  is unreachable the cache answers ``stale`` with its age, up to
  ``max_staleness``, then :class:`StaleDataError`.

The sync :class:`~muster.MusterClient` runs this client on a background event
loop; it shares the lock-free cache read (:meth:`AsyncMusterClient._cached`).

**Fork safety.** A client is per process. In a child made by ``os.fork()``
(gunicorn ``--preload``, multiprocessing) every client becomes a fresh one
with the same settings: no lease, no registrations, an empty cache, new
connections. The parent's registrations stay the parent's: the child never
renews nor revokes them, at exit or on a signal.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import signal
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Callable, Optional, Union

from . import _metrics, _tracing
from ._backends import (
    Backend,
    MusterBackend,
    Registration,
    ServiceSummary,
    WatchQuery,
    WatchQueryRefused,
)
from ._checks import Check, CheckStatus
from ._config import Config, backoff_delay
from ._exceptions import (
    ClientClosedError,
    ConfigError,
    LeaseNotFoundError,
    MusterError,
    RegistryError,
    RegistryUnavailableError,
    StaleDataError,
)
from ._state import ConnectionListener, ConnectionState, _Session
from ._tls import CertFiles, Verify
from ._types import (
    RANGE_OPERATORS,
    Discovered,
    HealthFilter,
    Instance,
    Lease,
    Query,
    WatchEvent,
    sanitize_id,
)

log = logging.getLogger("muster")

# Every client of this process, for the fork hook below.
_CLIENTS: weakref.WeakSet[AsyncMusterClient] = weakref.WeakSet()
# What a forked child inherited from its parent (watch tasks of the parent's
# loop, ...): kept referenced in the child so that nothing of it is collected,
# closed or run there.
_INHERITED: list[object] = []


def _after_fork_in_child() -> None:
    _metrics.after_fork_in_child()
    for client in list(_CLIENTS):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

Tags = Union[Sequence[str], str, None]


def _lookup_key(
    service: str,
    tags: Tags,
    meta: Optional[Mapping[str, str]],
    version: Optional[str],
    zone: Optional[str],
    health: str,
) -> tuple[Any, ...]:
    # Cheap, hashable form of the raw arguments: the warm lookup path costs
    # one tuple and one dict probe.
    if tags is not None and not isinstance(tags, (str, tuple)):
        tags = tuple(tags)
    m = tuple(sorted(meta.items())) if meta else None
    return (service, tags, m, version, zone, health)


@dataclass(frozen=True)
class Registered:
    """A registration made by this client; pass it to ``deregister``."""

    service: str
    """Service name."""
    id: str
    """Instance id (unique per process)."""
    registration: Registration
    """What was registered."""

    @property
    def key(self) -> tuple[str, str]:
        """``(service, id)``."""
        return (self.service, self.id)


@dataclass
class Stats:
    """Counters of one client, for metrics."""

    cache_hits: int = 0
    """Lookups answered from the cache."""
    cache_misses: int = 0
    """Lookups that had to start a watch and wait for the registry."""
    stale_answers: int = 0
    """Lookups answered from a cache the registry no longer confirms."""
    renewals: int = 0
    """Successful lease renewals."""
    renewal_failures: int = 0
    """Renewals that failed (registry unreachable or refusing)."""
    reregistrations: int = 0
    """Instances registered again under a new lease after the registry lost
    the lease (one per instance, as the Rust client counts)."""
    watch_reconnects: int = 0
    """Times a watch stream was lost and opened again."""
    evictions: int = 0
    """Lookups dropped from the cache after ``lookup_idle_timeout`` unused."""


class _Watch:
    """The cached answer for one ``(service, query)``, kept fresh by the client's watch."""

    def __init__(self, id: str, service: str, query: Query) -> None:
        self.id = id
        self.service = service
        self.query = query
        self.result: Optional[Discovered] = None
        # monotonic time since which the registry no longer confirms the
        # answer; None while the watch stream is up and confirmed it.
        self.down_since: Optional[float] = None
        self.first_error: Optional[BaseException] = None
        # Set by every cache read (a plain store, safe from any thread);
        # the eviction sweep turns it into last_used.
        self.used = True
        self.last_used = time.monotonic()
        # changes()/wait_for() following the answer: never evicted meanwhile.
        self.followers = 0
        self.done = False
        self._instances: dict[str, Instance] = {}
        self._index: Optional[int] = None
        self._changed: Optional[asyncio.Event] = None

    def changed(self) -> asyncio.Event:
        """An event set at the next change (of answer or of freshness)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def apply(self, ev: WatchEvent) -> None:
        # The registry filters the watch by the query and sends a delete when
        # an instance stops matching: events are applied as sent, never
        # filtered again here (client-side semver could disagree with the
        # registry's; spec/client/version_filter_trusts_server.toml).
        if ev.kind == "snapshot":
            self._instances = {i.id: i for i in ev.instances}
        elif ev.kind == "upsert" and ev.instance is not None:
            self._instances[ev.instance.id] = ev.instance
        elif ev.kind == "delete" and ev.instance_id is not None:
            self._instances.pop(ev.instance_id, None)
        self._index = ev.index
        ordered = tuple(self._instances[k] for k in sorted(self._instances))
        # The answer is confirmed (fresh) once the query got a snapshot or a
        # `current` on the stream; deltas of a resumed query come before its
        # `current` and leave a stale answer stale until then.
        confirmed = ev.kind in ("snapshot", "current")
        # Followers wake on a change of answer or of freshness, not on a
        # re-sent snapshot or a `current` (as after every re-open of the
        # watch with a new set of lookups).
        changed = (
            self.result is None
            or ordered != self.result.instances
            or (confirmed and self.down_since is not None)
        )
        self.result = Discovered(self.service, ordered, ev.index)
        if confirmed:
            self.down_since = None
        if changed:
            self._notify()

    def mark_down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            self._notify()

    def refuse(self, error: BaseException) -> None:
        self.first_error = error
        self.done = True
        self._notify()

    def watch_query(self) -> WatchQuery:
        return WatchQuery(self.id, self.service, self.query, self._index)


class _Following:
    """The lookup a ``changes()``/``wait_for()`` follows, counted in its followers."""

    def __init__(self) -> None:
        self.watch: Optional[_Watch] = None

    def set(self, w: Optional[_Watch]) -> Optional[_Watch]:
        if w is not self.watch:
            if self.watch is not None:
                self.watch.followers -= 1
            if w is not None:
                w.followers += 1
            self.watch = w
        return w


# How long the set of lookups must stay unchanged before their streams are
# merged into one; and how many streams beyond that one may be open before
# they are merged anyway (as the Rust client does).
_QUIET = 0.1
_MAX_EXTRA_STREAMS = 4


class _Stream:
    """One watch stream carrying a fixed set of lookups, reconnecting by itself."""

    def __init__(self, mux: _Mux, watches: list[_Watch]) -> None:
        self.watches = watches
        self.task = asyncio.get_running_loop().create_task(mux.follow(self))


class _Mux:
    """Every lookup of one client, kept fresh over as few watch streams as possible.

    A new lookup goes out at once on a stream of its own (its first answer
    waits for no one); once the set of lookups has been quiet for
    ``_QUIET`` (or more than ``_MAX_EXTRA_STREAMS`` extra streams are open),
    the driver re-opens everything as one :meth:`Backend.watch_many`, each
    query resuming from its index (so resumed answers stay fresh), and closes
    the rest. Evicted lookups leave the same way. Lookups unused for
    ``lookup_idle_timeout`` are evicted by a periodic sweep.
    """

    def __init__(self, client: AsyncMusterClient) -> None:
        self.client = client
        self.watches: dict[str, _Watch] = {}
        self.streams: list[_Stream] = []
        self.last_change: Optional[float] = None
        self.next_id = 0
        self.closed = False
        self.driver: Optional[asyncio.Task[None]] = None
        self._wake: Optional[asyncio.Event] = None

    def new_watch(self, service: str, query: Query) -> _Watch:
        self.next_id += 1
        w = _Watch(str(self.next_id), service, query)
        self.watches[w.id] = w
        self.wake()
        if self.driver is None or self.driver.done():
            self.driver = asyncio.get_running_loop().create_task(self.run())
        return w

    def remove(self, w: _Watch) -> None:
        if self.watches.get(w.id) is w:
            del self.watches[w.id]
            w.done = True
            self.wake()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        # The flag ends the driver even when Python 3.11's wait_for swallows
        # its cancellation (a wake-up and the cancel in the same loop turn).
        self.closed = True
        tasks = [s.task for s in self.streams]
        if self.driver is not None:
            tasks.append(self.driver)
        self.streams = []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        idle = self.client.config.lookup_idle_timeout
        period = min(max(idle / 4, 0.05), 60.0)
        next_sweep = time.monotonic() + period
        self._wake = asyncio.Event()
        while not self.closed:
            self._wake.clear()
            due = self.arrange()
            now = time.monotonic()
            wait = next_sweep - now if due is None else min(due, next_sweep) - now
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))
            except asyncio.TimeoutError:
                pass
            if time.monotonic() >= next_sweep:
                self.client._evict(idle)
                next_sweep = time.monotonic() + period

    def arrange(self) -> Optional[float]:
        """Opens a stream for lookups none carries; merges streams once quiet.

        Returns when to look again, if it must."""
        carried = {w.id for s in self.streams for w in s.watches}
        new = [w for w in self.watches.values() if w.id not in carried]
        now = time.monotonic()
        if new:
            self.streams.append(_Stream(self, new))
            self.last_change = now
        evicted = any(i not in self.watches for i in carried)
        self.streams = [s for s in self.streams if not s.task.done()]
        if len(self.streams) <= 1 and not evicted:
            self.last_change = None
            return None
        due = now if self.last_change is None else self.last_change + _QUIET
        if len(self.streams) > 1 + _MAX_EXTRA_STREAMS or now >= due:
            # Close first: each query resumes on the new stream from the last
            # event the old one delivered.
            for s in self.streams:
                s.task.cancel()
            self.streams = []
            if self.watches:
                self.streams.append(_Stream(self, list(self.watches.values())))
            self.last_change = None
            return None
        return due

    async def follow(self, stream: _Stream) -> None:
        """Applies a stream's events until it is closed, reconnecting with back-off."""
        client = self.client
        config = client.config
        failures = 0
        while True:
            watches = [w for w in stream.watches if self.watches.get(w.id) is w]
            if not watches:
                return
            by_id = {w.id: w for w in watches}
            try:
                async for qid, ev in client.backend.watch_many([w.watch_query() for w in watches]):
                    w = by_id.get(qid)
                    if w is not None:
                        w.apply(ev)
                        failures = 0
                error: BaseException = RegistryUnavailableError("the registry closed the watch")
            except asyncio.CancelledError:
                raise
            except WatchQueryRefused as e:
                # One query refused (a bad filter): its lookups get the
                # registry's error, the others go on without it.
                w = by_id.get(e.query_id)
                if w is not None:
                    w.refuse(e.error)
                    self.remove(w)
                continue
            except RegistryError as e:
                # The registry refused the whole stream: every lookup gets it.
                for w in watches:
                    w.refuse(e)
                    self.remove(w)
                return
            except Exception as e:  # every other failure means: reconnect later
                error = e
            log.debug("watch of %d lookup(s) lost: %r", len(watches), error)
            now = time.monotonic()
            for w in watches:
                if w.result is None:
                    # Never answered: the first lookup fails now rather than
                    # waiting out initial_wait for an unreachable registry.
                    w.refuse(error)
                    self.remove(w)
                else:
                    w.mark_down(now)
            client.stats.watch_reconnects += 1
            # Pacing between reconnection attempts, with jitter so that many
            # clients do not reconnect in lock-step after a registry restart;
            # the ceiling (500 ms by default) brings the watch back within 1 s
            # of the registry.
            await asyncio.sleep(backoff_delay(failures, config.backoff_initial, config.backoff_max))
            failures += 1


class AsyncMusterClient:
    """The asyncio muster client: register, discover, watch.

    ``AsyncMusterClient()`` reads ``MUSTER_*`` environment variables; keyword
    arguments override them (see :class:`Config`). Pass ``backend=`` to use
    another registry, e.g. ``InMemoryBackend()`` in tests. For ``https://``
    registries, ``verify=`` (a CA file) and ``cert=`` (a client certificate)
    are :attr:`Config.verify` and :attr:`Config.cert`; ``token=`` is the ACL
    token (:attr:`Config.token`).

    Use it as ``async with AsyncMusterClient() as client:`` or call
    :meth:`aclose`; either way this client's instances are deregistered.
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
        self.config = config or Config.from_env(
            addresses=addresses,
            namespace=namespace,
            ttl=ttl,
            max_staleness=max_staleness,
            zone=zone,
            lookup_idle_timeout=lookup_idle_timeout,
            verify=verify,
            cert=cert,
            token=token,
        )
        """The settings in force."""
        self._owns_backend = backend is None
        self.backend: Backend = backend or MusterBackend(
            self.config.addresses,
            self.config.namespace,
            timeout=self.config.timeout,
            headers=self.config.request_headers(),
            retries=self.config.retries,
            backoff_initial=self.config.backoff_initial,
            backoff_max=self.config.backoff_max,
            watch_queries_per_stream=self.config.watch_queries_per_stream,
            verify=self.config.verify,
            cert=self.config.cert,
        )
        """The registry backend."""
        self.stats = Stats()
        """Counters (cache hits, renewals, ...)."""
        self._watches: dict[tuple[Any, ...], _Watch] = {}
        self._by_query: dict[tuple[str, Query], _Watch] = {}
        self._mux = _Mux(self)
        self._registered: dict[tuple[str, str], Registered] = {}
        # What the service said of its registrations since (TTL reports,
        # maintenance), applied again after a re-registration.
        self._reports: dict[tuple[str, str], dict[str, tuple[CheckStatus, Optional[str]]]] = {}
        self._maintenance: dict[tuple[str, str], str] = {}
        # Registrations made with defer=True that the registry has not seen yet.
        self._pending: set[tuple[str, str]] = set()
        self._lease: Optional[Lease] = None
        self._renewer: Optional[asyncio.Task[None]] = None
        self._reg_lock: Optional[asyncio.Lock] = None
        self._session = _Session(self.config.ttl)
        self._closed = False
        self._atexit_installed = False
        self._pid = os.getpid()
        self._id_prefix = sanitize_id(f"{socket.gethostname()}-{self._pid}")
        self._metrics_finalizer = _metrics.track_client(self)
        _CLIENTS.add(self)

    def _after_fork_in_child(self) -> None:
        """In a child made by ``fork()``: become a fresh client with the same settings.

        Runs in the child right after the fork, with one thread. Only drops
        state: the parent's lease (the child must never renew nor revoke it),
        registrations, cached answers and the watch tasks of the parent's event
        loop. The backend replaces the parent's connections on its next use.
        """
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        _INHERITED.append((self._watches, self._by_query, self._mux, self._renewer, self._reg_lock))
        self._watches = {}
        self._by_query = {}
        self._mux = _Mux(self)
        self._registered = {}
        self._reports = {}
        self._maintenance = {}
        self._pending = set()
        self._lease = None
        self._renewer = None
        self._reg_lock = None
        # No lease in the child: Idle again, heard by the same listeners.
        session = _Session(self.config.ttl)
        session.listeners = self._session.listeners
        self._session = session
        self.stats = Stats()
        self._metrics_finalizer.detach()
        self._metrics_finalizer = _metrics.track_client(self)
        self._uninstall_atexit()
        self._id_prefix = sanitize_id(f"{socket.gethostname()}-{self._pid}")

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> AsyncMusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def lease(self) -> Optional[Lease]:
        """The lease holding this client's instances, once something is registered."""
        return self._lease

    @property
    def connection_state(self) -> ConnectionState:
        """The client's session with the registry, as its lease renewals see it.

        ``IDLE`` until something is registered, then ``CONNECTED``,
        ``SUSPENDED`` while renewals fail for less than a TTL, ``LOST`` once
        the lease is gone or may be; see :class:`ConnectionState`.
        """
        return self._session.state

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Calls ``listener(state)`` on every change of :attr:`connection_state`.

        Listeners run on the client's event loop (for :class:`MusterClient`,
        its background thread), so they must return quickly and never block.
        An exception in a listener is logged and swallowed.
        """
        if listener not in self._session.listeners:
            self._session.listeners.append(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        """Stops calling a listener given to :meth:`add_connection_listener`."""
        if listener in self._session.listeners:
            self._session.listeners.remove(listener)

    async def aclose(self) -> None:
        """Deregisters every instance of this client (revoking its lease) and stops watches."""
        if self._closed:
            return
        self._closed = True
        await self._mux.close()
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                await asyncio.wait_for(self.backend.revoke_lease(lease.id), self.config.timeout)
            except (MusterError, asyncio.TimeoutError) as e:
                log.warning("could not revoke lease %s on close: %r", lease.id, e)
        self._registered.clear()
        self._uninstall_atexit()
        if self._owns_backend:
            await self.backend.aclose()

    def _watch_streams(self) -> int:
        """Watch streams open now (for the metrics)."""
        n = getattr(self.backend, "_open_streams", None)
        return n if isinstance(n, int) else len(self._mux.streams)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the muster client is closed")

    # -- registration --------------------------------------------------------------
    def new_instance_id(self, service: str) -> str:
        """An instance id unique to this process: ``service-host-pid-random``."""
        return sanitize_id(f"{service}-{self._id_prefix}-{random.getrandbits(24):06x}")

    async def register(
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
        """Registers an instance under this client's lease and keeps it alive.

        ``checks`` are health checks (:class:`Check`: http, tcp, grpc run by
        the registry, ttl reported with :meth:`report`); an instance with
        checks is out of passing answers until its first check passes.

        ``address`` defaults to ``MUSTER_ADVERTISE_ADDR`` or the interface that
        reaches the registry; ``zone`` to ``MUSTER_ZONE``; ``instance_id`` to a
        new id unique to this process. Registering the same ``instance_id``
        again replaces it. ``tags`` is a list of strings (a lone ``str`` is
        refused: ``tags="v1"`` would be the tags ``v`` and ``1``); ``version``
        is the instance's own version, not a range.

        With ``defer=True``, a registry that cannot be reached is no error:
        the handle is returned at once, listed in :attr:`pending`, and the
        background task registers it as soon as the registry answers (retrying
        about every second). A service can so start serving before the
        registry is up. Refusals by the registry (invalid input) still raise.
        """
        self._check_open()
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(
                f"tags must be a list of strings, got {tags!r}"
                + (f" (did you mean tags=[{tags!r}]?)" if isinstance(tags, str) else "")
            )
        if version is not None and any(c in version for c in RANGE_OPERATORS):
            raise ConfigError(
                f"version {version!r} is not a version: register the instance's own "
                "version, such as '1.4.2' (ranges like '^1.4' are for discover())"
            )
        reg = Registration(
            address=address or self.config.advertise_address or self.backend.advertise_address(),
            port=port,
            tags=tuple(tags),
            meta=dict(meta or {}),
            version=version,
            zone=zone if zone is not None else self.config.zone,
            weight=weight,
            checks=tuple(checks),
        )
        handle = Registered(service, instance_id or self.new_instance_id(service), reg)
        attrs = {"muster.service": service, "muster.instance.id": handle.id}
        with _tracing.registry_span("muster register", attrs):
            async with self._lock():
                try:
                    lease = await self._ensure_lease()
                    try:
                        await self.backend.register(service, handle.id, reg, lease.id)
                    except LeaseNotFoundError:
                        lease = await self._new_lease()
                        await self.backend.register(service, handle.id, reg, lease.id)
                    self._pending.discard(handle.key)
                    self._session.reached()
                except RegistryUnavailableError as e:
                    if not defer:
                        raise
                    self._pending.add(handle.key)
                    log.warning(
                        "registry unreachable, %s/%s registers once it is: %r", *handle.key, e
                    )
                self._registered[handle.key] = handle
        self._install_atexit()
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return handle

    async def deregister(self, handle: Union[Registered, tuple[str, str]]) -> bool:
        """Removes one registration of this client; returns whether the registry had it."""
        self._check_open()
        key = handle.key if isinstance(handle, Registered) else handle
        async with self._lock():
            self._registered.pop(key, None)
            self._reports.pop(key, None)
            self._maintenance.pop(key, None)
            if key in self._pending:  # the registry never had it
                self._pending.discard(key)
                return False
            return await self.backend.deregister(*key)

    async def report(
        self,
        handle: Union[Registered, tuple[str, str]],
        check_id: str,
        status: CheckStatus,
        output: Optional[str] = None,
    ) -> None:
        """Reports a TTL check of one of this client's registrations.

        ``status`` is ``"pass"``, ``"warn"`` or ``"fail"``; ``output`` is kept
        by the registry (at most 4 KiB). The last report of each check is sent
        again if the client registers the instance anew after the registry
        lost its lease.
        """
        self._check_open()
        key = handle.key if isinstance(handle, Registered) else handle
        if status not in ("pass", "warn", "fail"):
            raise ConfigError(f"status must be 'pass', 'warn' or 'fail', got {status!r}")
        await self.backend.report_check(*key, check_id, status, output)
        if key in self._registered:
            self._reports.setdefault(key, {})[check_id] = (status, output)

    async def set_maintenance(
        self, handle: Union[Registered, tuple[str, str]], reason: Optional[str]
    ) -> Instance:
        """Takes an instance out of passing answers without deregistering it
        (``reason`` given), or puts it back (``None``); kept across
        re-registrations."""
        self._check_open()
        key = handle.key if isinstance(handle, Registered) else handle
        inst = await self.backend.maintenance(*key, reason)
        if key in self._registered:
            if reason is None:
                self._maintenance.pop(key, None)
            else:
                self._maintenance[key] = reason
        return inst

    async def services(self) -> list[ServiceSummary]:
        """The services of the namespace with their instance counts (not cached)."""
        self._check_open()
        return await self.backend.services()

    async def _apply_said(self, key: tuple[str, str]) -> None:
        """Sends a re-registered instance's maintenance and last reports again."""
        reason = self._maintenance.get(key)
        if reason is not None:
            await self.backend.maintenance(*key, reason)
        # The registry accepts a report sent right after the registration
        # that added the check, and answers once it is committed.
        for check_id, (status, output) in self._reports.get(key, {}).items():
            await self.backend.report_check(*key, check_id, status, output)

    @property
    def registrations(self) -> list[Registered]:
        """This client's live registrations (pending ones included)."""
        return list(self._registered.values())

    @property
    def pending(self) -> list[Registered]:
        """Registrations made with ``defer=True`` that the registry has not seen yet."""
        return [h for k, h in list(self._registered.items()) if k in self._pending]

    async def _register_pending(self) -> None:
        try:
            async with self._lock():
                lease = await self._ensure_lease()
                for key in list(self._pending):
                    h = self._registered.get(key)
                    if h is not None:
                        await self.backend.register(h.service, h.id, h.registration, lease.id)
                    self._pending.discard(key)
                    log.info("registered %s/%s: the registry is reachable", *key)
                    self._session.reached()
        except LeaseNotFoundError:
            # The lease was lost meanwhile: everything again, under a new one.
            await self._reregister_all()
            self._pending.clear()

    def _lock(self) -> asyncio.Lock:
        if self._reg_lock is None:
            self._reg_lock = asyncio.Lock()
        return self._reg_lock

    async def _ensure_lease(self) -> Lease:
        return self._lease or await self._new_lease()

    async def _new_lease(self) -> Lease:
        self._lease = await self.backend.create_lease(self.config.ttl)
        return self._lease

    async def _reregister_all(self) -> None:
        async with self._lock():
            if self._closed:
                return
            lease = await self._new_lease()
            for h in list(self._registered.values()):
                # One per instance, as the Rust client counts; counted before
                # the instance reappears (so whoever sees it back also sees
                # the count) and taken back if its registration fails.
                self.stats.reregistrations += 1
                try:
                    await self.backend.register(h.service, h.id, h.registration, lease.id)
                    await self._apply_said(h.key)
                except BaseException:
                    self.stats.reregistrations -= 1
                    raise
            log.info("lease lost: re-registered %d instance(s)", len(self._registered))
            self._session.reached()

    async def _renew_forever(self) -> None:
        ttl = self.config.ttl
        retry_soon = bool(self._pending)
        while not self._closed:
            # Pacing, not waiting for state: ttl/3 with jitter, sooner after a failure.
            base = min(ttl / 10, 1.0) if retry_soon else ttl / 3
            await asyncio.sleep(base * random.uniform(0.8, 1.0))
            if self._closed:
                break
            if self._pending:
                try:
                    await self._register_pending()
                except MusterError as e:
                    retry_soon = True
                    self._session.missed(isinstance(e, LeaseNotFoundError))
                    log.debug("deferred registration still waits for the registry: %r", e)
                    continue
                retry_soon = False
            lease = self._lease
            # Nothing registered (e.g. deregistered by a signal, draining):
            # nothing to keep alive.
            if lease is None or not self._registered:
                continue
            try:
                with _tracing.registry_span("muster renew", {"muster.lease.id": lease.id}):
                    await self.backend.renew_lease(lease.id)
                self.stats.renewals += 1
                self._session.reached()
                retry_soon = False
            except LeaseNotFoundError:
                self._session.missed(lost=True)
                try:
                    await self._reregister_all()
                    self._pending.clear()
                    retry_soon = False
                except MusterError as e:
                    self.stats.renewal_failures += 1
                    self._session.missed(isinstance(e, LeaseNotFoundError))
                    retry_soon = True
                    log.warning("re-registration failed: %r", e)
            except MusterError as e:
                self.stats.renewal_failures += 1
                self._session.missed(lost=False)
                retry_soon = True
                log.warning("lease renewal failed: %r", e)

    # -- exit hooks ------------------------------------------------------------------
    def _last_gasp(self) -> None:
        """Revokes the lease without the event loop (interpreter exit, signals)."""
        self._closed = True
        self._deregister_blocking()

    def _deregister_blocking(self) -> None:
        """Forgets every registration and revokes the lease, without the event loop.

        The client stays usable for discovery (a draining service still calls
        others); the renewal task has nothing left to renew or re-register.
        """
        self._registered.clear()
        self._pending.clear()
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                self.backend.revoke_lease_blocking(lease.id, min(self.config.timeout, 2.0))
            except Exception as e:  # at exit, never raise
                log.warning("could not revoke lease %s at exit: %r", lease.id, e)

    def _install_atexit(self) -> None:
        if not self._atexit_installed:
            atexit.register(self._last_gasp)
            self._atexit_installed = True

    def _uninstall_atexit(self) -> None:
        if self._atexit_installed:
            atexit.unregister(self._last_gasp)
            self._atexit_installed = False

    def deregister_on_signals(
        self, signals: Sequence[int] = (signal.SIGTERM,), *, drain: float = 0.0
    ) -> None:
        """On these signals, deregister first, then let the previous handler act.

        Call from the main thread. When the previous handler is the default,
        the signal is re-raised with the default action, so the process still
        ends with the status of that signal.

        ``drain`` (seconds): time between deregistering and letting the signal
        act. The process goes on serving meanwhile, so callers whose cached
        answers still hold this instance are served while their watches drop
        it; the client still discovers other services. Then the previous
        handler runs (or the default action ends the process). A second signal
        during the drain acts at once.
        """
        self._check_open()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        if drain < 0:
            raise ConfigError(f"drain must be >= 0 seconds, got {drain}")
        for sig in signals:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Optional[FrameType], previous: Any = previous) -> None:
                if drain > 0 and previous != signal.SIG_IGN:
                    self._deregister_blocking()
                    # Hand the signal back to its previous handler, and send it
                    # again once the drain is over: it then acts in the main
                    # thread as it would have (a second signal acts at once).
                    signal.signal(signum, signal.SIG_DFL if previous is None else previous)
                    timer = threading.Timer(drain, os.kill, (os.getpid(), signum))
                    timer.daemon = True
                    timer.start()
                    return
                self._last_gasp()
                if callable(previous):
                    previous(signum, frame)
                elif previous != signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            signal.signal(sig, handler)

    # -- discovery -----------------------------------------------------------------
    def _cached(self, key: tuple[Any, ...]) -> Optional[Discovered]:
        """The cached answer for a lookup key, with no I/O; None on a miss.

        Raises :class:`StaleDataError` when the answer is older than allowed.
        Thread-safe (reads one immutable snapshot), so the sync client calls it
        from any thread.
        """
        if self._closed:
            raise ClientClosedError("the muster client is closed")
        w = self._watches.get(key)
        if w is None or w.result is None:
            return None
        w.used = True
        down = w.down_since
        if down is None:
            self.stats.cache_hits += 1
            return w.result
        age = time.monotonic() - down
        if age > self.config.max_staleness:
            raise StaleDataError(w.service, age, self.config.max_staleness)
        self.stats.stale_answers += 1
        return replace(w.result, stale=True, age=age)

    async def discover(
        self,
        service: str,
        *,
        tags: Tags = None,
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        health: HealthFilter = "passing",
    ) -> Discovered:
        """Instances of ``service`` matching every filter, from the watch-fed cache.

        The first lookup of a ``(service, filters)`` starts a watch and waits
        (up to ``initial_wait``) for the registry's answer; later lookups read
        the cache. Raises :class:`RegistryUnavailableError` when the first
        answer cannot be had, :class:`StaleDataError` when the registry has
        been unreachable for longer than ``max_staleness``.
        """
        key = _lookup_key(service, tags, meta, version, zone, health)
        hit = self._cached(key)
        if hit is not None:
            return hit
        w = await self._start_watch(key, service, Query.build(tags, meta, version, zone, health))
        assert w.result is not None  # _start_watch returns only once answered
        return w.result

    async def _start_watch(self, key: tuple[Any, ...], service: str, query: Query) -> _Watch:
        self._check_open()
        self.stats.cache_misses += 1
        w = self._by_query.get((service, query))
        if w is None or w.done:
            # Joins the client's one multiplexed watch.
            w = self._mux.new_watch(service, query)
            self._by_query[(service, query)] = w
        self._watches[key] = w
        with _tracing.registry_span("muster discover", {"muster.service": service}):
            return await self._first_answer(key, w)

    async def _first_answer(self, key: tuple[Any, ...], w: _Watch) -> _Watch:
        """Waits for a new lookup's first answer (up to ``initial_wait``)."""
        service = w.service
        deadline = time.monotonic() + self.config.initial_wait
        while w.result is None:
            if w.first_error is not None or w.done:
                self._forget(key, w)
                # A refusal (400: a bad filter or name) is the caller's to fix,
                # never an outage: raised as the registry said it.
                if isinstance(w.first_error, RegistryError):
                    raise w.first_error
                raise RegistryUnavailableError(
                    f"no answer for {service!r} from the registry: {w.first_error!r}"
                ) from w.first_error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._forget(key, w)
                raise RegistryUnavailableError(
                    f"no answer for {service!r} within {self.config.initial_wait:g}s"
                )
            try:
                await asyncio.wait_for(w.changed().wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return w

    def _forget(self, key: tuple[Any, ...], w: _Watch) -> None:
        self._watches.pop(key, None)
        if self._by_query.get((w.service, w.query)) is w:
            del self._by_query[(w.service, w.query)]
        self._mux.remove(w)

    def _evict(self, idle: float) -> None:
        """Drops lookups unused for ``idle`` seconds that nothing follows.

        Called by the watch's driver every ``idle / 4`` (50 ms to 60 s): a
        lookup is evicted between ``idle`` and ``idle`` plus one period after
        its last use; its query leaves the watch.
        """
        now = time.monotonic()
        gone: set[str] = set()
        for w in list(self._mux.watches.values()):
            if w.used:
                w.used = False
                w.last_used = now
            if w.followers == 0 and now - w.last_used >= idle:
                gone.add(w.id)
                self._mux.remove(w)
        if not gone:
            return
        for key, w in list(self._watches.items()):
            if w.id in gone:
                self._watches.pop(key, None)
        for q, w in list(self._by_query.items()):
            if w.id in gone:
                self._by_query.pop(q, None)
        self.stats.evictions += len(gone)
        log.debug("evicted %d lookup(s) unused for %gs", len(gone), idle)

    async def wait_for(
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
        """Waits until the cached answer for ``service`` satisfies ``predicate``.

        E.g. ``await client.wait_for("payments", lambda r: len(r) > 0)``.
        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        key = _lookup_key(service, tags, meta, version, zone, health)
        follow = _Following()
        try:
            while True:
                r = await self.discover(
                    service, tags=tags, meta=meta, version=version, zone=zone, health=health
                )
                if predicate(r):
                    return r
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{service!r} did not reach the expected state in {timeout}s"
                    )
                w = follow.set(self._watches.get(key))
                if w is None:
                    continue
                try:
                    await asyncio.wait_for(w.changed().wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            follow.set(None)

    async def changes(
        self,
        service: str,
        *,
        tags: Tags = None,
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        health: HealthFilter = "passing",
    ) -> AsyncIterator[Discovered]:
        """Yields the current answer, then a new one after every change."""
        key = _lookup_key(service, tags, meta, version, zone, health)
        # Followed lookups are never evicted, however long between changes.
        follow = _Following()
        try:
            while True:
                r = await self.discover(
                    service, tags=tags, meta=meta, version=version, zone=zone, health=health
                )
                w = follow.set(self._watches.get(key))
                # Taken before yielding, so a change while the consumer is busy
                # is not missed (several changes coalesce into the latest answer).
                changed = w.changed() if w is not None else None
                yield r
                if changed is not None:
                    await changed.wait()
        finally:
            follow.set(None)
