"""Behaviour of the client, run against both backends (native server and in-memory)."""

from __future__ import annotations

import asyncio
import time

import pytest

import muster
from muster import Registration

from .conftest import Env, MusterServer


async def test_lifecycle_register_discover_deregister(env: Env) -> None:
    async with env.client(ttl=5) as owner, env.client() as reader:
        h = await owner.register(
            "pay",
            8080,
            address="10.0.0.7",
            tags=["v2"],
            meta={"team": "core"},
            version="1.4.2",
            zone="eu-1a",
            weight=50,
        )
        assert h.id.startswith("pay-")
        r = await reader.wait_for("pay", lambda r: len(r) == 1)
        (i,) = r
        assert (i.id, i.address, i.port, i.version, i.zone, i.weight) == (
            h.id,
            "10.0.0.7",
            8080,
            "1.4.2",
            "eu-1a",
            50,
        )
        assert i.tags == {"v2"} and dict(i.meta) == {"team": "core"}
        assert i.lease == owner.lease.id if owner.lease else False
        assert not r.stale and r.age == 0.0

        assert await owner.deregister(h) is True
        await reader.wait_for("pay", lambda r: len(r) == 0)
        assert await owner.deregister(h) is False


async def test_close_removes_every_instance_of_the_client(env: Env) -> None:
    reader = env.client()
    owner = env.client(ttl=30)
    await owner.register("pay", 1001, address="127.0.0.1")
    await owner.register("pay", 1002, address="127.0.0.1")
    await owner.register("cart", 1003, address="127.0.0.1")
    await reader.wait_for("pay", lambda r: len(r) == 2)
    await reader.wait_for("cart", lambda r: len(r) == 1)
    await owner.aclose()
    # Gone at once (lease revoked), far sooner than the 30 s TTL.
    await reader.wait_for("pay", lambda r: len(r) == 0, timeout=5)
    await reader.wait_for("cart", lambda r: len(r) == 0, timeout=5)
    with pytest.raises(muster.ClientClosedError):
        await owner.register("pay", 1004)
    await reader.aclose()


async def test_two_clients_of_one_service_do_not_collide(env: Env) -> None:
    async with env.client() as a, env.client() as b, env.client() as reader:
        ha = await a.register("web", 8000, address="127.0.0.1")
        hb = await b.register("web", 8000, address="127.0.0.1")
        assert ha.id != hb.id
        r = await reader.wait_for("web", lambda r: len(r) == 2)
        assert sorted(r.ids) == sorted([ha.id, hb.id])


async def test_filters_by_tag_meta_version_zone(env: Env) -> None:
    be = env.backend()

    def reg(**kw: object) -> Registration:
        return Registration(address="127.0.0.1", port=9000, **kw)  # type: ignore[arg-type]

    await be.register("pay", "a", reg(tags=("v1",), version="1.3.9", zone="z1"), None)
    await be.register(
        "pay", "b", reg(tags=("v2", "canary"), version="1.4.0", zone="z1", meta={"k": "x"}), None
    )
    await be.register("pay", "c", reg(tags=("v2",), version="1.9.3", zone="z2"), None)
    await be.register("pay", "d", reg(version="2.0.0", zone="z2"), None)
    await be.register("pay", "e", reg(version="blue"), None)
    async with env.client() as c:
        assert (await c.discover("pay")).ids == ["a", "b", "c", "d", "e"]
        assert (await c.discover("pay", tags=["v2"])).ids == ["b", "c"]
        assert (await c.discover("pay", tags=["v2", "canary"])).ids == ["b"]
        assert (await c.discover("pay", tags="v1")).ids == ["a"]
        assert (await c.discover("pay", version="^1.4")).ids == ["b", "c"]
        assert (await c.discover("pay", version=">=1.3.9, <1.5")).ids == ["a", "b"]
        assert (await c.discover("pay", version="blue")).ids == ["e"]
        assert (await c.discover("pay", zone="z2")).ids == ["c", "d"]
        assert (await c.discover("pay", meta={"k": "x"})).ids == ["b"]
        assert (await c.discover("pay", tags=["v2"], zone="z2", version="^1")).ids == ["c"]
        # A filtered watch drops an instance that stops matching.
        await be.register("pay", "c", reg(tags=("v3",), version="1.9.3", zone="z2"), None)
        await c.wait_for("pay", lambda r: r.ids == ["b"], tags=["v2"])


async def test_watch_keeps_the_cache_fresh(env: Env) -> None:
    async with env.client() as reader, env.client() as writer:
        empty = await reader.discover("orders")
        assert len(empty) == 0
        assert reader.stats.cache_misses == 1
        h = await writer.register("orders", 7000, address="127.0.0.1")
        r = await reader.wait_for("orders", lambda r: r.ids == [h.id])
        # Answered from the cache: the very same object, no request.
        hits = reader.stats.cache_hits
        assert await reader.discover("orders") is r
        assert reader.stats.cache_hits == hits + 1
        assert reader.stats.cache_misses == 1
        # Changes keep flowing into the cache.
        h2 = await writer.register("orders", 7001, address="127.0.0.1", tags=["b"])
        await reader.wait_for("orders", lambda r: sorted(r.ids) == sorted([h.id, h2.id]))
        await writer.deregister(h)
        await reader.wait_for("orders", lambda r: r.ids == [h2.id])
        # changes() yields the current answer, then one per change.
        it = reader.changes("orders").__aiter__()
        assert (await it.__anext__()).ids == [h2.id]
        await writer.deregister(h2)
        assert (await asyncio.wait_for(it.__anext__(), 5)).ids == []


async def test_unrenewed_lease_expires_within_ttl_plus_one_second(env: Env) -> None:
    be = env.backend()
    lease = await be.create_lease(1.0)
    await be.register("eph", "x", Registration("127.0.0.1", 9000), lease.id)
    t0 = time.monotonic()
    async with env.client() as reader:
        await reader.wait_for("eph", lambda r: r.ids == ["x"])
        await reader.wait_for("eph", lambda r: len(r) == 0, timeout=5)
    assert time.monotonic() - t0 <= 1.0 + 1.0


async def test_renewal_keeps_instances_alive_and_lost_lease_is_reregistered(env: Env) -> None:
    async with env.client(ttl=1) as owner, env.client() as reader:
        h = await owner.register("pay", 8080, address="127.0.0.1")
        assert owner.lease is not None
        first = owner.lease.id
        await reader.wait_for("pay", lambda r: r.ids == [h.id])
        # The registry loses the lease (revoked behind the client's back): the
        # next renewal finds out and registers everything again, same id.
        await env.backend().revoke_lease(first)
        await reader.wait_for("pay", lambda r: r.ids == [h.id] and r[0].lease != first, timeout=5)
        assert owner.stats.reregistrations >= 1
        # Several TTLs later it is still there: renewal works.
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            await asyncio.sleep(0.25)  # pacing while checking, not waiting for state
            assert (await reader.discover("pay")).ids == [h.id]
        assert owner.stats.renewals >= 3


async def test_stale_answers_then_error_after_max_staleness(env: Env) -> None:
    be = env.backend()
    await be.register("pay", "p1", Registration("127.0.0.1", 9000), None)
    async with env.client(max_staleness=1.5) as c:
        fresh = await c.discover("pay")
        assert fresh.ids == ["p1"] and not fresh.stale
        env.outage()
        stale = await c.wait_for("pay", lambda r: r.stale, timeout=10)
        assert stale.ids == ["p1"]
        assert 0.0 <= stale.age <= 1.5
        # A service never looked up has no cache to fall back on.
        with pytest.raises(muster.RegistryUnavailableError):
            await c.discover("never-seen")
        deadline = time.monotonic() + 10
        while True:
            try:
                r = await c.discover("pay")
            except muster.StaleDataError as e:
                assert e.age > 1.5
                break
            assert r.stale and r.age <= 1.5
            assert time.monotonic() < deadline, "never became too stale"
            await asyncio.sleep(0.1)  # pacing: the age grows with the clock


async def test_fresh_again_once_the_registry_is_back_after_a_restart(server: MusterServer) -> None:
    """A restart on the same data resumes the watch with nothing missed: the
    registry confirms it at once, so answers are fresh again, and stay
    answers (never StaleDataError) long after max_staleness."""
    async with muster.AsyncMusterClient(server.url, max_staleness=1.5) as c:
        be = muster.MusterBackend([server.url])
        try:
            await be.register("pay", "p1", Registration("127.0.0.1", 9000), None)
        finally:
            await be.aclose()
        assert (await c.wait_for("pay", lambda r: r.ids == ["p1"] and not r.stale)).ids == ["p1"]
        server.stop()
        await c.wait_for("pay", lambda r: r.stale, timeout=10)
        server.start(server.url.removeprefix("http://"))
        fresh = await c.wait_for("pay", lambda r: not r.stale, timeout=10)
        assert fresh.ids == ["p1"]
        # Past max_staleness with no change to the service: still fresh.
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            await asyncio.sleep(0.25)  # pacing while checking, not waiting for state
            r = await c.discover("pay")
            assert r.ids == ["p1"] and not r.stale


async def test_balancing_over_discovered_instances(env: Env) -> None:
    be = env.backend()
    for n, zone in [("a", "z1"), ("b", "z1"), ("c", "z2")]:
        await be.register("pay", n, Registration("127.0.0.1", 9000, zone=zone), None)
    async with env.client() as c:
        found = await c.discover("pay")
        rr = muster.RoundRobin()
        assert [rr.pick(found).id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
        za = muster.ZoneAware("z2")
        assert {za.pick(found).id for _ in range(10)} == {"c"}
