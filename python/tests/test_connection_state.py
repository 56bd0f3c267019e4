"""The connection-state listener: the client's session with the registry as its
lease sees it (Idle, Connected, Suspended, Lost), with the Rust client's
transitions, against a real registry that is killed and started again."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil

import pytest

import muster
from muster import ConnectionState

from .conftest import MusterServer

S = ConnectionState


class Events:
    """Collects the states a listener is called with; waits on them with a deadline."""

    def __init__(self) -> None:
        self.seen: list[ConnectionState] = []
        self._q: queue.Queue[ConnectionState] = queue.Queue()

    def __call__(self, state: ConnectionState) -> None:
        self._q.put(state)

    def next(self, within: float) -> ConnectionState:
        state = self._q.get(timeout=within)
        self.seen.append(state)
        return state

    async def anext(self, within: float) -> ConnectionState:
        return await asyncio.get_running_loop().run_in_executor(None, self.next, within)

    def empty(self) -> bool:
        return self._q.empty()


def broken_listener(state: ConnectionState) -> None:
    raise RuntimeError(f"a listener's bug ({state})")


async def test_killed_registry_suspends_then_loses_and_a_restart_reconnects(
    server: MusterServer, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    async with muster.AsyncMusterClient(server.url, ttl=1) as c:
        # A listener that raises is logged and never breaks the renewals
        # (the states after it still reach the next listener).
        c.add_connection_listener(broken_listener)
        c.add_connection_listener(events)
        assert c.connection_state is S.IDLE
        await c.register("me", 8000, address="127.0.0.1")
        assert await events.anext(5) is S.CONNECTED
        assert c.connection_state is S.CONNECTED

        server.stop(kill=True)
        # The first failed renewal, within a TTL of the last accepted one:
        # the instance is still there.
        assert await events.anext(5) is S.SUSPENDED
        # A whole TTL without a renewal: the lease may have expired.
        assert await events.anext(10) is S.LOST
        assert c.connection_state is S.LOST

        server.start(server.url.removeprefix("http://"))
        assert await events.anext(10) is S.CONNECTED
        assert events.seen == [S.CONNECTED, S.SUSPENDED, S.LOST, S.CONNECTED]
        # And the instance is registered again (same data: the lease got a
        # fresh TTL on restart, or the client registered anew).
        found = await c.wait_for("me", lambda r: len(r) == 1, timeout=10)
        assert found.ids == [c.registrations[0].id]
    assert "connection listener" in caplog.text and "a listener's bug" in caplog.text


async def test_a_lost_lease_goes_lost_then_connected_once_registered_again(
    server: MusterServer,
) -> None:
    """The registry restarted on fresh data (it lost the lease): Lost at the
    first renewal that hears so, Connected once the instance is back."""
    events = Events()
    async with muster.AsyncMusterClient(server.url, ttl=1) as c:
        await c.register("me", 8000, address="127.0.0.1")
        c.add_connection_listener(events)
        server.stop(kill=True)
        shutil.rmtree(os.path.join(server.dir, "data"))
        server.start(server.url.removeprefix("http://"))
        states = [await events.anext(10)]
        while states[-1] is not S.CONNECTED:
            states.append(await events.anext(10))
        # Suspended first only if a renewal found the registry down.
        assert states[-2:] == [S.LOST, S.CONNECTED], states
        assert c.stats.reregistrations == 1
        assert (await c.wait_for("me", lambda r: len(r) == 1, timeout=10)).ids == [
            c.registrations[0].id
        ]


async def test_idle_stays_idle_and_removed_listeners_are_not_called(server: MusterServer) -> None:
    events = Events()
    async with muster.AsyncMusterClient(server.url, ttl=1) as c:
        c.add_connection_listener(events)
        c.remove_connection_listener(events)
        await c.register("me", 8000, address="127.0.0.1")
        assert c.connection_state is S.CONNECTED
        assert events.empty()
    # Nothing registered: no lease to be suspended or lost, whatever the registry does.
    async with muster.AsyncMusterClient(server.url, ttl=1) as idle:
        await idle.discover("anything")
        assert idle.connection_state is S.IDLE


def test_the_sync_client_reports_the_same_states(server: MusterServer) -> None:
    events = Events()
    logging.getLogger("muster").setLevel(logging.INFO)
    with muster.MusterClient(server.url, ttl=1) as c:
        c.add_connection_listener(events)
        assert c.connection_state is S.IDLE
        c.register("me", 8000, address="127.0.0.1")
        assert events.next(5) is S.CONNECTED
        server.stop(kill=True)
        assert events.next(5) is S.SUSPENDED
        assert events.next(10) is S.LOST
        assert c.connection_state is S.LOST
        server.start(server.url.removeprefix("http://"))
        assert events.next(10) is S.CONNECTED
        assert str(S.CONNECTED) == "connected"
