"""Every lookup of a client on one multiplexed watch (POST /v1/watch), renewal
on a pool that watch streams cannot exhaust, and eviction of unused lookups."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import httpx
import pytest

import muster

from .conftest import Env, MusterServer

# A poll interval for waits on state the tests cannot subscribe to (the
# server's gauges, the client's counters); every wait has a deadline.
TICK = 0.02


async def metric(server: MusterServer, name: str) -> float:
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(f"{server.url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metric_becomes(server: MusterServer, name: str, want: float, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while True:
        got = await metric(server, name)
        if got == want:
            return
        assert time.monotonic() < deadline, f"{name} stayed {got}, not {want}"
        await asyncio.sleep(TICK)


async def until(what: str, cond: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(TICK)


async def test_two_hundred_lookups_share_one_watch_connection(server: MusterServer) -> None:
    async with (
        muster.AsyncMusterClient(server.url) as writer,
        muster.AsyncMusterClient(server.url) as caller,
    ):
        await writer.register("svc-7", 9007, address="127.0.0.1")
        # Half of them at once, half one after the other.
        first = await asyncio.gather(*(caller.discover(f"svc-{i}") for i in range(100)))
        for i in range(100, 200):
            await caller.discover(f"svc-{i}")
        assert [len(r) for r in first][7] == 1
        await metric_becomes(server, "muster_watch_streams", 1)
        assert await metric(server, "muster_watch_queries") == 200
        # The merged stream carries every query: changes to the first and
        # the last lookup arrive, and nothing went stale meanwhile.
        await writer.register("svc-0", 9000, address="127.0.0.1")
        await writer.register("svc-199", 9199, address="127.0.0.1")
        for svc in ("svc-0", "svc-199"):
            r = await caller.wait_for(svc, lambda r: len(r) == 1, timeout=10)
            assert not r.stale
        assert caller.stats.stale_answers == 0
        assert await metric(server, "muster_watch_streams") == 1


async def test_lease_renews_with_a_hundred_lookups_open(server: MusterServer) -> None:
    # Before: one stream per lookup in the 64-connection pool shared with
    # renewal; the 65th lookup timed out and renewal failed with PoolTimeout.
    async with muster.AsyncMusterClient(server.url, ttl="1s") as client:
        await client.register("me", 8000, address="127.0.0.1")
        got = await asyncio.gather(
            *(client.discover(f"other-{i}") for i in range(100)), return_exceptions=True
        )
        errors = [g for g in got if isinstance(g, BaseException)]
        assert errors == [], f"{len(errors)} lookups failed: {errors[:1]!r}"
        start = client.stats.renewals
        # Ten renewals (about three TTLs) with every lookup's stream open.
        await until("ten renewals", lambda: client.stats.renewals >= start + 10)
        assert client.stats.renewal_failures == 0
        r = await client.discover("me")
        assert len(r) == 1 and not r.stale
        # A new lookup still gets its answer too.
        assert len(await client.discover("other-100")) == 0


async def test_unused_lookups_are_evicted_and_leave_the_watch(server: MusterServer) -> None:
    async with muster.AsyncMusterClient(server.url, lookup_idle_timeout=1.0) as client:
        await client.discover("used")
        await client.discover("unused")
        await metric_becomes(server, "muster_watch_queries", 2)

        async def keep_using() -> None:
            while True:
                await client.discover("used")
                await asyncio.sleep(TICK)

        user = asyncio.get_running_loop().create_task(keep_using())
        try:
            await until("an eviction", lambda: client.stats.evictions >= 1)
            # Evicted: its query left the watch, the used one stays.
            await metric_becomes(server, "muster_watch_queries", 1)
            assert client.stats.evictions == 1
            await metric_becomes(server, "muster_watch_streams", 1)
        finally:
            user.cancel()
        # The next lookup starts it again, from the registry.
        misses = client.stats.cache_misses
        assert len(await client.discover("unused")) == 0
        assert client.stats.cache_misses == misses + 1
        await metric_becomes(server, "muster_watch_queries", 2)


async def test_followed_lookups_are_not_evicted(env: Env) -> None:
    client = env.client(lookup_idle_timeout=0.1)
    writer = env.client()
    try:
        changes = client.changes("followed")
        assert len(await changes.__anext__()) == 0
        await client.discover("dropped")
        await until("an eviction", lambda: client.stats.evictions >= 1)
        # Never evicted while followed: a change long after the timeout arrives.
        await writer.register("followed", 9000, address="127.0.0.1")
        r = await asyncio.wait_for(changes.__anext__(), 10)
        assert len(r) == 1
        assert client.stats.evictions == 1
        await changes.aclose()
    finally:
        await client.aclose()
        await writer.aclose()


async def test_a_refused_query_fails_alone(server: MusterServer) -> None:
    async with muster.AsyncMusterClient(server.url) as client:
        assert len(await client.discover("good")) == 0
        with pytest.raises(muster.InvalidRequestError):
            await client.discover("Not_A_Label")
        # The other lookup stays on the watch and fresh.
        async with muster.AsyncMusterClient(server.url) as writer:
            await writer.register("good", 9000, address="127.0.0.1")
            r = await client.wait_for("good", lambda r: len(r) == 1, timeout=10)
        assert not r.stale


def test_lookup_idle_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSTER_LOOKUP_IDLE_TIMEOUT", "90s")
    assert muster.Config.from_env().lookup_idle_timeout == 90.0
    assert muster.Config.from_env(lookup_idle_timeout="2m").lookup_idle_timeout == 120.0
    with pytest.raises(muster.ConfigError):
        muster.Config(lookup_idle_timeout=0)


async def test_a_registry_taking_fewer_queries_per_stream_gets_them_over_several() -> None:
    """The registry's `watch_max_queries` is 4: a watch of 10 lookups is refused
    as too large (`too_many_queries`), so the client halves its streams until
    they pass (10 -> 5 -> 2 per stream), keeps that size, and every lookup
    stays answered and fresh."""
    server = MusterServer(config="watch_max_queries = 4\n")
    try:
        async with (
            muster.AsyncMusterClient(server.url) as writer,
            muster.AsyncMusterClient(server.url) as caller,
        ):
            await writer.register("svc-3", 9003, address="127.0.0.1")
            found = await asyncio.gather(*(caller.discover(f"svc-{i}") for i in range(10)))
            assert [len(r) for r in found] == [1 if i == 3 else 0 for i in range(10)]
            await metric_becomes(server, "muster_watch_queries", 10)
            await metric_becomes(server, "muster_watch_streams", 6)  # 2+2+1, twice
            # Changes still arrive, and no lookup was dropped and started again.
            misses = caller.stats.cache_misses
            await writer.register("svc-9", 9009, address="127.0.0.1")
            await caller.wait_for("svc-9", lambda r: len(r) == 1, timeout=10)
            for i in range(10):
                assert not (await caller.discover(f"svc-{i}")).stale
            assert caller.stats.cache_misses == misses
            # Lookups added later are merged in with the size learned: 2 per stream.
            await caller.discover("svc-10")
            await caller.discover("svc-11")
            await metric_becomes(server, "muster_watch_queries", 12)
            await metric_becomes(server, "muster_watch_streams", 6)
    finally:
        server.close()


async def test_close_just_as_the_watch_driver_wakes_returns_at_once(server: MusterServer) -> None:
    """close() cancels the watch's driver just as a change of lookups (one
    refused or evicted) woke it: Python 3.11's wait_for then swallows the
    cancellation, and the driver went back to sleep for its sweep period (up
    to 60 s) while close() waited for it. Closing a client right after a
    refused lookup hit it; here the wake-up comes from the driver's own hook."""
    c = muster.AsyncMusterClient(server.url)
    await c.discover("anything")
    c._mux.wake()
    await asyncio.wait_for(c.aclose(), 5)
