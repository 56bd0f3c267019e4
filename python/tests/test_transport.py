"""The httpx transports against three real HTTP servers registered in a real muster."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import muster

from .conftest import MusterServer


class Backend:
    """A tiny HTTP server in a thread that answers with its name and the Host it saw."""

    def __init__(self, name: str) -> None:
        self.name = name

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"name": name, "host": self.headers["Host"]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    bs = [Backend(n) for n in ("a", "b", "c")]
    yield bs
    for b in bs:
        if b.httpd.socket.fileno() != -1:
            b.stop()


def register_all(server: MusterServer, backends: list[Backend]) -> muster.MusterClient:
    owner = muster.MusterClient(server.url)
    for b in backends:
        owner.register("web", b.port, address="127.0.0.1", instance_id=f"web-{b.name}")
    return owner


def test_sync_transport_spreads_requests_and_skips_a_stopped_instance(
    server: MusterServer, backends: list[Backend]
) -> None:
    with register_all(server, backends), muster.MusterClient(server.url) as client:
        client.wait_for("web", lambda r: len(r) == 3)
        transport = muster.MusterTransport(client)
        with httpx.Client(transport=transport, trust_env=False) as http:
            seen = Counter()
            for _ in range(30):
                r = http.get("http://web/hello")
                assert r.status_code == 200
                assert r.json()["host"] == "web"  # the Host header is kept
                seen[r.json()["name"]] += 1
            assert seen == {"a": 10, "b": 10, "c": 10}

            backends[1].stop()  # still registered, but refuses connections
            seen.clear()
            for _ in range(30):
                seen[http.get("http://web/hello").json()["name"]] += 1
            assert set(seen) == {"a", "c"} and sum(seen.values()) == 30
            b = next(i for i in client.discover("web") if i.id == "web-b")
            assert transport.balancer.is_ejected(b)


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


def test_only_idempotent_methods_are_retried(server: MusterServer, backends: list[Backend]) -> None:
    with register_all(server, backends), muster.MusterClient(server.url) as client:
        client.wait_for("web", lambda r: len(r) == 3)
        for b in backends:
            b.stop()
        inner = CountingTransport()
        with httpx.Client(
            transport=muster.MusterTransport(client, inner=inner, retries=2), trust_env=False
        ) as http:
            with pytest.raises(httpx.ConnectError):
                http.get("http://web/x")
            assert inner.calls == 3  # one try and two retries, on different instances
            inner.calls = 0
            with pytest.raises(httpx.ConnectError):
                http.post("http://web/x", content=b"pay once")
            assert inner.calls == 1


def test_non_service_hosts_pass_through(server: MusterServer, backends: list[Backend]) -> None:
    with (
        muster.MusterClient(server.url) as client,
        httpx.Client(transport=muster.MusterTransport(client), trust_env=False) as http,
    ):
        r = http.get(f"http://127.0.0.1:{backends[0].port}/")
        assert r.json()["name"] == "a"
        assert client.stats.cache_misses == 0


async def test_async_transport_with_p2c(server: MusterServer, backends: list[Backend]) -> None:
    with register_all(server, backends):
        async with muster.AsyncMusterClient(server.url) as client:
            await client.wait_for("web", lambda r: len(r) == 3)
            transport = muster.AsyncMusterTransport(client, balancer=muster.PowerOfTwo())
            async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
                seen = Counter()
                for _ in range(60):
                    r = await http.get("http://web/hello")
                    seen[r.json()["name"]] += 1
                assert set(seen) == {"a", "b", "c"}
                backends[2].stop()
                seen.clear()
                for _ in range(30):
                    seen[(await http.get("http://web/hello")).json()["name"]] += 1
                assert set(seen) <= {"a", "b"} and sum(seen.values()) == 30
                # Responses were read and closed: nothing left in flight.
                for i in await client.discover("web"):
                    assert transport.balancer.in_flight(i) == 0
