"""Prometheus metrics (the `prometheus` extra) read from a CollectorRegistry after
real traffic: a real registry, a real called service, a registry restart; and
the client without the extras installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Callable, Optional

import httpx
import pytest
from prometheus_client import CollectorRegistry

import muster
from muster._metrics import _COUNTERS

from ._called import CalledService, closed_port
from .conftest import MusterServer

TICK = 0.02  # poll interval of waits on counters; every wait has a deadline


@pytest.fixture
def called() -> Iterator[CalledService]:
    s = CalledService()
    yield s
    s.close()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        muster.enable_prometheus(self.registry)
        muster.enable_prometheus(self.registry)  # again: no duplicate collector

    def get(self, name: str, labels: Optional[dict[str, str]] = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def snapshot(self) -> dict[str, float]:
        return {m: self.get(m) for m, _ in _COUNTERS.values()}

    async def until(
        self, name: str, cond: Callable[[float], bool], within: float = 15, **labels: str
    ) -> float:
        deadline = time.monotonic() + within
        while not cond(got := self.get(name, labels)):
            assert time.monotonic() < deadline, f"{name}{labels} stayed {got}"
            await asyncio.sleep(TICK)
        return got


def test_every_stats_counter_is_exported() -> None:
    assert set(_COUNTERS) == set(muster.Stats.__dataclass_fields__)


async def test_counters_and_gauges_after_real_traffic(
    server: MusterServer, called: CalledService
) -> None:
    m = Metrics()
    before = m.snapshot()
    connected = m.get("muster_client_connection_state", {"state": "connected"})
    streams = m.get("muster_client_watch_streams")

    def delta(name: str) -> float:
        return m.get(name) - before[name]

    async with muster.AsyncMusterClient(server.url, ttl=1, max_staleness=60) as c:
        await c.register("m-web", called.port, address="127.0.0.1")
        await c.register("m-dead", closed_port(), address="127.0.0.1")
        assert m.get("muster_client_connection_state", {"state": "connected"}) == connected + 1
        async with httpx.AsyncClient(
            transport=muster.AsyncMusterTransport(c, retries=0), trust_env=False
        ) as http:
            for _ in range(3):
                assert (await http.get("http://m-web/ok")).status_code == 200
            assert (await http.get("http://m-web/fail")).status_code == 503
            with pytest.raises(muster.ServiceUnreachableError):
                await http.get("http://m-nothing/")
            with pytest.raises(httpx.ConnectError):
                await http.get("http://m-dead/")

        def calls(service: str, outcome: str) -> float:
            labels = {"service": service, "outcome": outcome}
            return m.get("muster_client_requests_total", labels)

        assert calls("m-web", "ok") == 3
        assert calls("m-web", "server_error") == 1
        assert calls("m-nothing", "no_instance") == 1
        assert calls("m-dead", "error") == 1
        assert m.get("muster_client_ejections_total") >= 1
        # Three lookups (m-web, m-nothing, m-dead) missed once each, then hits.
        assert delta("muster_client_cache_misses_total") == 3
        assert delta("muster_client_cache_hits_total") == 3
        assert m.get("muster_client_lookups") >= 3
        # One stream for every lookup, once they are merged.
        await m.until("muster_client_watch_streams", lambda v: v == streams + 1)
        await m.until(
            "muster_client_lease_renewals_total",
            lambda v: v > before["muster_client_lease_renewals_total"],
        )

        # The registry goes away: stale answers, then it comes back without
        # the lease (fresh data): re-registered, the watch reconnected.
        server.stop(kill=True)
        await c.wait_for("m-web", lambda r: r.stale, timeout=10)
        assert (await c.discover("m-web")).stale
        assert delta("muster_client_stale_answers_total") >= 1
        await m.until(
            "muster_client_lease_renewal_failures_total",
            lambda v: v > before["muster_client_lease_renewal_failures_total"],
        )
        assert (
            sum(
                m.get("muster_client_connection_state", {"state": s}) for s in ("suspended", "lost")
            )
            >= 1
        )
        shutil.rmtree(os.path.join(server.dir, "data"))
        server.start(server.url.removeprefix("http://"))
        await m.until(
            "muster_client_reregistrations_total",
            lambda v: v == before["muster_client_reregistrations_total"] + 2,
        )
        assert delta("muster_client_watch_reconnects_total") >= 1
        await m.until(
            "muster_client_connection_state", lambda v: v == connected + 1, state="connected"
        )

    # Closed: out of the gauges, its counts kept.
    assert m.get("muster_client_connection_state", {"state": "connected"}) == connected
    assert delta("muster_client_cache_misses_total") >= 3


async def test_evictions_are_counted(server: MusterServer) -> None:
    m = Metrics()
    before = m.get("muster_client_evictions_total")
    async with muster.AsyncMusterClient(server.url, lookup_idle_timeout=0.2) as c:
        await c.discover("m-idle")
        await m.until("muster_client_evictions_total", lambda v: v == before + 1)


NO_EXTRAS = r"""
import importlib.abc, sys

class HideExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideExtras())
import httpx, muster

with muster.MusterClient(sys.argv[1]) as c:
    c.register("plain", 9000, address="127.0.0.1")
    assert c.discover("plain").ids == [c.registrations[0].id]
    http = httpx.Client(transport=muster.MusterTransport(c), trust_env=False)
    try:
        http.get("http://plain-nothing/")
    except muster.ServiceUnreachableError:
        pass
for enable, extra in ((muster.enable_prometheus, "prometheus"), (muster.enable_tracing, "otel")):
    try:
        enable()
    except ImportError as e:
        assert f"pip install 'muster-client[{extra}]'" in str(e), e
    else:
        raise SystemExit(f"{enable.__name__} worked without its extra")
leaked = [m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry")]
assert not leaked, leaked
print("works without the extras")
"""


def test_the_client_works_without_the_extras_installed(server: MusterServer) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS, server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "works without the extras"


def test_import_muster_imports_no_extra() -> None:
    code = (
        "import sys, muster; "
        "print([m for m in sys.modules "
        "if m.split('.')[0] in ('prometheus_client', 'opentelemetry')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
