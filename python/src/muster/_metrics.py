"""Prometheus metrics of every muster client of the process (the ``prometheus`` extra).

:func:`enable_prometheus` registers one collector in a ``prometheus_client``
registry. It reads the clients' own counters (:class:`~muster.Stats`, the
transports' call counts) when the registry is scraped, so the lookup path
pays nothing for metrics, and ``prometheus_client`` is imported only by
:func:`enable_prometheus`: ``import muster`` never imports it.

Names carry the ``muster_client_`` prefix and are the Rust client's where it
has the same metric (``muster_client::metrics``). Counters are the sum over
every client of the process, including clients already closed and collected
(their last counts are kept), so they never go backwards.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from ._state import ConnectionState

if TYPE_CHECKING:
    from ._client import AsyncMusterClient, Stats
    from ._transport import _Router

# Stats field -> (metric name, help); in the Rust client's names where it has them.
_COUNTERS = {
    "cache_hits": ("muster_client_cache_hits_total", "Lookups answered from a warm cache entry."),
    "cache_misses": (
        "muster_client_cache_misses_total",
        "Lookups that had to start a watch and wait for the registry's first answer.",
    ),
    "stale_answers": (
        "muster_client_stale_answers_total",
        "Lookups answered from a cache the registry no longer confirms (stale=True).",
    ),
    "renewals": ("muster_client_lease_renewals_total", "Successful lease renewals."),
    "renewal_failures": (
        "muster_client_lease_renewal_failures_total",
        "Failed lease renewal attempts (registry unreachable or refusing).",
    ),
    "reregistrations": (
        "muster_client_reregistrations_total",
        "Instances registered again after the registry lost the lease.",
    ),
    "watch_reconnects": (
        "muster_client_watch_reconnects_total",
        "Times a watch stream was lost and opened again.",
    ),
    "evictions": (
        "muster_client_evictions_total",
        "Lookups evicted from the cache after lookup_idle_timeout unused.",
    ),
}

_lock = threading.Lock()
# Counts of clients and transports that were garbage-collected.
_retired_stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
_retired_calls: dict[tuple[str, str], int] = {}
_retired_ejections = 0
_routers: weakref.WeakSet[_Router] = weakref.WeakSet()
# Registries given a collector already (enable_prometheus is idempotent).
_enabled: list[Any] = []


def _retire_stats(stats: Stats) -> None:
    with _lock:
        for name in _COUNTERS:
            _retired_stats[name] += getattr(stats, name)


def _retire_router(calls: dict[tuple[str, str], int], ejections: list[int]) -> None:
    global _retired_ejections
    with _lock:
        for k, n in calls.items():
            _retired_calls[k] = _retired_calls.get(k, 0) + n
        _retired_ejections += ejections[0]


def track_client(client: AsyncMusterClient) -> weakref.finalize[Any, Any]:
    """Keeps the counts of ``client`` once it is collected; returns the finalizer."""
    f = weakref.finalize(client, _retire_stats, client.stats)
    f.atexit = False
    return f


def track_router(router: _Router) -> None:
    """Counts ``router``'s calls in the metrics, also once it is collected."""
    _routers.add(router)
    weakref.finalize(router, _retire_router, router.calls, router.ejections).atexit = False


def after_fork_in_child() -> None:
    """A forked child counts from zero, as its clients do."""
    global _lock, _retired_ejections
    _lock = threading.Lock()
    for name in _retired_stats:
        _retired_stats[name] = 0
    _retired_calls.clear()
    _retired_ejections = 0
    for r in _live(_routers):
        with r.lock:
            r.calls.clear()
            r.ejections[0] = 0


def _live(items: Iterable[Any]) -> list[Any]:
    # A WeakSet may change size while another thread adds to it: try again.
    for _ in range(10):
        try:
            return list(items)
        except RuntimeError:
            continue
    return []


def enable_prometheus(registry: Optional[Any] = None) -> None:
    """Exports the metrics of every muster client of the process to Prometheus.

    ``registry`` is a ``prometheus_client.CollectorRegistry`` (default: its
    global ``REGISTRY``, the one ``prometheus_client.start_http_server`` and
    ``make_asgi_app`` serve). Calling it again for the same registry does
    nothing. Needs the ``prometheus`` extra
    (``pip install 'muster-client[prometheus]'``); without it, raises
    ``ImportError`` saying so. The metrics are listed in the README.
    """
    try:
        import prometheus_client
    except ImportError as e:
        raise ImportError(
            "muster.enable_prometheus needs prometheus_client: "
            "pip install 'muster-client[prometheus]'"
        ) from e
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        if any(r is registry for r in _enabled):
            return
        _enabled.append(registry)
    registry.register(_Collector())


class _Collector:
    """Reads every client's counters at scrape time (a prometheus_client custom collector)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from ._client import _CLIENTS

        clients = _live(_CLIENTS)
        with _lock:
            totals = dict(_retired_stats)
            calls = dict(_retired_calls)
            ejections = _retired_ejections
        for c in clients:
            for name in _COUNTERS:
                totals[name] += getattr(c.stats, name)
        for name, (metric, help) in _COUNTERS.items():
            yield CounterMetricFamily(metric, help, value=totals[name])

        for r in _live(_routers):
            with r.lock:
                for k, n in r.calls.items():
                    calls[k] = calls.get(k, 0) + n
                ejections += r.ejections[0]
        requests = CounterMetricFamily(
            "muster_client_requests_total",
            "Calls through MusterTransport/AsyncMusterTransport, by service and outcome "
            "(ok: a response below 500; server_error: a 5xx response; error: no "
            "response, the transport error raised; no_instance: no instance to call).",
            labels=["service", "outcome"],
        )
        for (service, outcome), n in sorted(calls.items()):
            requests.add_metric([service, outcome], n)
        yield requests
        yield CounterMetricFamily(
            "muster_client_ejections_total",
            "Instances ejected by a transport's balancer after a failed call.",
            value=ejections,
        )

        open_clients = [c for c in clients if not c.closed]
        yield GaugeMetricFamily(
            "muster_client_watch_streams",
            "Watch streams the clients hold open (one for all the lookups of a "
            "client, more only past the per-stream limits or while lookups are added).",
            value=sum(c._watch_streams() for c in open_clients),
        )
        yield GaugeMetricFamily(
            "muster_client_lookups",
            "Distinct lookups (service and filters) the clients keep fresh.",
            value=sum(len(c._mux.watches) for c in open_clients),
        )
        states = GaugeMetricFamily(
            "muster_client_connection_state",
            "Clients in each connection state (idle, connected, suspended, lost).",
            labels=["state"],
        )
        for s in ConnectionState:
            states.add_metric([s.value], sum(1 for c in open_clients if c.connection_state is s))
        yield states
