"""Lifecycle in production: closed clients, bad arguments, a registry down at start-up,
draining on SIGTERM, and fork()."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import muster
from muster import Query

from .conftest import MusterServer
from .test_processes import read_id, reap

HERE = Path(__file__).parent


def start_python(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_a_closed_async_client_raises_client_closed_error_everywhere(
    server: MusterServer,
) -> None:
    client = muster.AsyncMusterClient(server.url)
    h = await client.register("pay", 8080, address="127.0.0.1")
    assert (await client.discover("pay")).ids == [h.id]  # cached from now on
    transport = muster.AsyncMusterTransport(client)
    await client.aclose()
    calls = {
        "cached discover": client.discover("pay"),
        "uncached discover": client.discover("cart"),
        "wait_for": client.wait_for("pay", lambda r: True),
        "register": client.register("pay", 8081),
        "deregister": client.deregister(h),
    }
    for name, call in calls.items():
        with pytest.raises(muster.ClientClosedError):
            await call
            pytest.fail(name)
    with pytest.raises(muster.ClientClosedError):
        await client.changes("pay").__anext__()
    with pytest.raises(muster.ClientClosedError):
        client.deregister_on_signals()
    async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
        with pytest.raises(muster.ClientClosedError):
            await http.get("http://pay/")
    await client.aclose()  # closing twice is fine


def test_a_closed_sync_client_raises_client_closed_error_everywhere(server: MusterServer) -> None:
    client = muster.MusterClient(server.url)
    h = client.register("pay", 8080, address="127.0.0.1")
    assert client.discover("pay").ids == [h.id]
    transport = muster.MusterTransport(client)
    client.close()
    for call in (
        lambda: client.discover("pay"),
        lambda: client.discover("cart"),
        lambda: client.wait_for("pay", lambda r: True),
        lambda: client.register("pay", 8081),
        lambda: client.deregister(h),
        lambda: client.deregister_on_signals(),
    ):
        with pytest.raises(muster.ClientClosedError):
            call()
    with (
        httpx.Client(transport=transport, trust_env=False) as http,
        pytest.raises(muster.ClientClosedError),
    ):
        http.get("http://pay/")
    client.close()


async def test_register_refuses_a_str_for_tags_and_a_range_for_a_version() -> None:
    registry = muster.InMemoryRegistry()
    async with muster.AsyncMusterClient(backend=muster.InMemoryBackend(registry)) as c:
        with pytest.raises(muster.ConfigError, match=r"tags=\['v1'\]"):
            await c.register("pay", 80, tags="v1")
        with pytest.raises(muster.ConfigError, match="tags"):
            await c.register("pay", 80, tags=["v1", 2])  # type: ignore[list-item]
        with pytest.raises(muster.ConfigError, match=r"'\^\^1'"):
            await c.register("pay", 80, version="^^1")
        with pytest.raises(muster.ConfigError, match=r"'\^1.4'"):
            await c.register("pay", 80, version="^1.4")
        assert c.registrations == [] and c.lease is None  # nothing was sent
        # Plain versions, semver or not, are fine.
        await c.register("pay", 80, address="127.0.0.1", tags=["v1"], version="blue-2024")
        assert (await c.discover("pay", version="blue-2024"))[0].tags == {"v1"}


async def test_discover_names_a_version_filter_that_is_no_range(server: MusterServer) -> None:
    async with muster.AsyncMusterClient(server.url) as c:
        await c.register("pay", 80, address="127.0.0.1", version="1.4.2")
        with pytest.raises(muster.ConfigError, match=r"'\^\^1'"):
            await c.discover("pay", version="^^1")
        with pytest.raises(muster.ConfigError, match=r"'>=1,,<2'"):
            await c.discover("pay", version=">=1,,<2")
        assert len(await c.discover("pay", version="^1.4")) == 1
        assert len(await c.discover("pay", version="1.4.2")) == 1
        assert len(await c.discover("pay", version="blue")) == 0  # a literal: no match
    with pytest.raises(muster.ConfigError):
        Query.build(version="^^1")


def stopped_server_url(server: MusterServer) -> str:
    """Stops the server, keeping its port: the registry is down, to come back there."""
    url = server.url
    server.stop()
    return url


async def test_deferred_registration_waits_for_the_registry(server: MusterServer) -> None:
    url = stopped_server_url(server)
    client = muster.AsyncMusterClient(url)
    try:
        with pytest.raises(muster.RegistryUnavailableError):
            await client.register("pay", 8080, address="127.0.0.1")
        h = await client.register("pay", 8080, address="127.0.0.1", defer=True)
        assert client.pending == [h] and client.registrations == [h]
        gone = await client.register("pay", 8081, address="127.0.0.1", defer=True)
        assert await client.deregister(gone) is False  # never reached the registry
        assert client.pending == [h]
        server.start(url.removeprefix("http://"))  # the registry comes up
        async with muster.AsyncMusterClient(url) as reader:
            r = await reader.wait_for("pay", lambda r: len(r) == 1, timeout=15)
            assert r.ids == [h.id] and r[0].lease == client.lease.id  # type: ignore[union-attr]
            # And it is kept alive and removed as any other registration.
            await client.aclose()
            await reader.wait_for("pay", lambda r: len(r) == 0, timeout=5)
    finally:
        await client.aclose()


def test_sync_deferred_registration(server: MusterServer) -> None:
    url = stopped_server_url(server)
    with muster.MusterClient(url) as client:
        h = client.register("pay", 8080, address="127.0.0.1", defer=True)
        assert client.pending == [h]
        server.start(url.removeprefix("http://"))
        with muster.MusterClient(url) as reader:
            assert reader.wait_for("pay", lambda r: len(r) == 1, timeout=15).ids == [h.id]


async def test_sigterm_deregisters_then_serves_through_the_drain_then_exits(
    server: MusterServer,
) -> None:
    drain = 3.0
    child = start_python(HERE / "_drainer.py", server.url, str(drain))
    try:
        iid, port = (await read_id(child)).split()
        async with muster.AsyncMusterClient(server.url) as reader:
            await reader.wait_for("drainer", lambda r: r.ids == [iid])
            t0 = time.monotonic()
            child.send_signal(signal.SIGTERM)
            await reader.wait_for("drainer", lambda r: len(r) == 0, timeout=drain)
            # Deregistered, and still serving those who have not heard yet.
            async with httpx.AsyncClient(trust_env=False) as http:
                assert (await http.get(f"http://127.0.0.1:{port}/")).text == "hello"
            assert child.poll() is None
            code = await asyncio.wait_for(asyncio.to_thread(child.wait), drain + 20)
            assert code == -signal.SIGTERM  # the signal's own action, after the drain
            assert time.monotonic() - t0 >= drain
    finally:
        reap(child)


async def test_a_forked_child_is_a_fresh_client_and_leaves_the_parent_registered(
    server: MusterServer,
) -> None:
    proc = start_python(HERE / "_forker.py", server.url)
    try:
        kind, parent_id = (await read_id(proc)).split()
        assert kind == "parent"
        line = await read_id(proc)
        assert line.startswith("child "), f"the child failed: {line}"
        _, _, child_saw = line.split()
        assert child_saw == parent_id  # an uncached discover() in the child worked
        assert (await read_id(proc)) == "child-exit 0"
        backend = muster.MusterBackend([server.url])
        try:
            # Asked of the registry now, not of a cache: the child's exit
            # revoked its own lease only.
            assert (await backend.instances("child", Query())).ids == []
            assert (await backend.instances("parent", Query())).ids == [parent_id]
            assert proc.poll() is None and proc.stdin is not None
            proc.stdin.close()  # the parent exits: now its instance goes
            assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 20) == 0
            assert (await backend.instances("parent", Query())).ids == []
        finally:
            await backend.aclose()
    finally:
        reap(proc)
