"""The FastAPI and Flask examples as real processes (uvicorn, flask), against a real
registry, called through the transport."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import muster

from .conftest import MusterServer
from .test_transport import Backend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def payments(server: MusterServer) -> Iterator[list[Backend]]:
    """Two `payments` instances the examples' /pay calls."""
    backends = [Backend("a"), Backend("b")]
    owner = muster.MusterClient(server.url)
    for b in backends:
        owner.register("payments", b.port, address="127.0.0.1", instance_id=f"payments-{b.name}")
    yield backends
    owner.close()
    for b in backends:
        b.stop()


class App:
    """An example served by a real server process on a socket bound here (port 0)."""

    def __init__(self, kind: str, registry_url: str, log: Path) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        fd = str(self.sock.fileno())
        env = {
            **os.environ,
            "MUSTER_ADDR": registry_url,
            "PORT": str(self.port),
            "DRAIN": "4",
            "PYTHONUNBUFFERED": "1",
        }
        if kind == "fastapi":
            cmd = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--fd", fd]
        else:
            cmd = [sys.executable, "-m", "flask", "--app", "flask_app", "run", "--no-reload"]
            # How werkzeug's reloader hands its bound socket to the serving process.
            env |= {"WERKZEUG_RUN_MAIN": "true", "WERKZEUG_SERVER_FD": fd}
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=EXAMPLES,
                env=env,
                pass_fds=[self.sock.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.sock.close()

    def get(self, path: str) -> object:
        """A direct request, not through the registry."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    async def exited(self, timeout: float) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SERVICE = {"fastapi": "orders", "flask": "shop"}


@pytest.mark.parametrize("kind", ["fastapi", "flask"])
async def test_example_serves_registers_balances_and_drains(
    kind: str, server: MusterServer, payments: list[Backend], tmp_path: Path
) -> None:
    app = App(kind, server.url, tmp_path / "app.log")
    service = SERVICE[kind]
    try:
        async with muster.AsyncMusterClient(server.url) as client:
            found = await client.wait_for(service, lambda r: len(r) == 1, timeout=60)
            assert found[0].port == app.port, app.log.read_text()
            transport = muster.AsyncMusterTransport(client)
            async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
                # Called through the transport, by service name.
                r = await http.get(f"http://{service}/peers")
                assert r.json() == found.ids
                # The example's own calls to `payments` take turns across requests:
                # it shares one transport instead of making one per request.
                seen = Counter()
                for _ in range(6):
                    seen[(await http.get(f"http://{service}/pay")).json()["name"]] += 1
                assert seen == {"a": 3, "b": 3}
            app.proc.send_signal(signal.SIGTERM)
            await client.wait_for(service, lambda r: len(r) == 0, timeout=3)
            assert app.get("/peers") == []  # deregistered, still serving: draining
            assert await app.exited(30) in (0, -signal.SIGTERM), app.log.read_text()
    finally:
        app.close()


@pytest.mark.parametrize("kind", ["fastapi", "flask"])
async def test_example_starts_while_the_registry_is_down_and_registers_when_it_is_up(
    kind: str, server: MusterServer, tmp_path: Path
) -> None:
    url = server.url
    server.stop()
    app = App(kind, url, tmp_path / "app.log")
    service = SERVICE[kind]
    try:
        # It serves without the registry (a path that needs no registry).
        ok = await asyncio.wait_for(asyncio.to_thread(wait_serving, app), 60)
        assert ok, app.log.read_text()
        server.start(url.removeprefix("http://"))
        async with muster.AsyncMusterClient(url) as client:
            found = await client.wait_for(service, lambda r: len(r) == 1, timeout=30)
            assert found[0].port == app.port
    finally:
        app.close()


def wait_serving(app: App) -> bool:
    """Blocks until the app answers on its socket (the socket is bound already, so a
    connection waits in the backlog until the server accepts it), or the app died."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/nope", timeout=55) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code == 404
    except OSError:
        return False


def cluster_commit_index(server: MusterServer) -> int:
    with urllib.request.urlopen(f"{server.url}/v1/cluster", timeout=10) as r:
        return int(json.loads(r.read())["commit_index"])


def test_flask_routes_never_touches_the_registry(server: MusterServer) -> None:
    def routes(addr: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "flask_app", "routes"],
            cwd=EXAMPLES,
            env={**os.environ, "MUSTER_ADDR": addr, "PORT": "5999"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    before = cluster_commit_index(server)
    done = routes(server.url)
    assert done.returncode == 0 and "/peers" in done.stdout, done.stderr
    assert cluster_commit_index(server) == before  # no lease, no registration: no write
    url = server.url
    server.stop()
    done = routes(url)  # and a registry that is down does not matter
    assert done.returncode == 0 and "/peers" in done.stdout, done.stderr
