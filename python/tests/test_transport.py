"""The httpx transports against three real HTTP servers registered in a real muster."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
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


def register_as(
    owner: muster.MusterClient, service: str, backends: list[Backend], names: str
) -> None:
    for b in backends:
        if b.name in names:
            owner.register(service, b.port, address="127.0.0.1", instance_id=f"{service}-{b.name}")


def test_round_robin_turns_are_per_service(server: MusterServer, backends: list[Backend]) -> None:
    # Alternating calls to two services: with one turn counter for both, each
    # service saw every other turn and so always the same instance.
    with muster.MusterClient(server.url) as owner, muster.MusterClient(server.url) as client:
        register_as(owner, "web", backends, "ab")
        register_as(owner, "api", backends, "bc")
        client.wait_for("web", lambda r: len(r) == 2)
        client.wait_for("api", lambda r: len(r) == 2)
        with httpx.Client(transport=muster.MusterTransport(client), trust_env=False) as http:
            seen: dict[str, Counter[str]] = {"web": Counter(), "api": Counter()}
            for _ in range(10):
                for service in ("web", "api"):
                    seen[service][http.get(f"http://{service}/").json()["name"]] += 1
        assert seen == {"web": {"a": 5, "b": 5}, "api": {"b": 5, "c": 5}}


async def test_async_round_robin_turns_are_per_service(
    server: MusterServer, backends: list[Backend]
) -> None:
    with muster.MusterClient(server.url) as owner:
        register_as(owner, "web", backends, "ab")
        register_as(owner, "api", backends, "bc")
        async with muster.AsyncMusterClient(server.url) as client:
            await client.wait_for("web", lambda r: len(r) == 2)
            await client.wait_for("api", lambda r: len(r) == 2)
            transport = muster.AsyncMusterTransport(client)
            async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
                seen: dict[str, Counter[str]] = {"web": Counter(), "api": Counter()}
                for _ in range(10):
                    for service in ("web", "api"):
                        r = await http.get(f"http://{service}/")
                        seen[service][r.json()["name"]] += 1
    assert seen == {"web": {"a": 5, "b": 5}, "api": {"b": 5, "c": 5}}


def test_least_connections_counts_responses_until_closed(
    server: MusterServer, backends: list[Backend]
) -> None:
    with register_all(server, backends), muster.MusterClient(server.url) as client:
        client.wait_for("web", lambda r: len(r) == 3)
        transport = muster.MusterTransport(client, balancer=muster.LeastConnections())
        with httpx.Client(transport=transport, trust_env=False) as http:

            def open_stream() -> httpx.Response:
                return http.send(http.build_request("GET", "http://web/"), stream=True)

            # Three responses held open (not read): one on each instance.
            held = [open_stream() for _ in range(3)]
            instances = client.discover("web").instances
            assert [transport.balancer.in_flight(i) for i in instances] == [1, 1, 1]
            # Reading a response to its end closes it, which frees its instance:
            # the next request goes there.
            freed = json.loads(held[1].read())["name"]
            assert sorted(transport.balancer.in_flight(i) for i in instances) == [0, 1, 1]
            again = open_stream()
            assert [transport.balancer.in_flight(i) for i in instances] == [1, 1, 1]
            assert json.loads(again.read())["name"] == freed
            for r in held:
                r.close()
            assert [transport.balancer.in_flight(i) for i in instances] == [0, 0, 0]
            # Nothing outstanding: plain requests take turns.
            seen = Counter(http.get("http://web/").json()["name"] for _ in range(9))
            assert seen == {"a": 3, "b": 3, "c": 3}


class OnlyC(muster.Balancer):
    """A custom balancer through the public extension point: always `c` when usable."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def choose(self, instances: Sequence[muster.Instance]) -> muster.Instance:
        self.calls += 1
        return next((i for i in instances if i.id.endswith("-c")), instances[0])


def test_a_custom_balancer_implements_choose_and_gets_ejection_for_free(
    server: MusterServer, backends: list[Backend]
) -> None:
    with register_all(server, backends), muster.MusterClient(server.url) as client:
        client.wait_for("web", lambda r: len(r) == 3)
        balancer = OnlyC()
        with httpx.Client(
            transport=muster.MusterTransport(client, balancer=balancer), trust_env=False
        ) as http:
            assert {http.get("http://web/").json()["name"] for _ in range(5)} == {"c"}
            assert balancer.calls == 5
            backends[2].stop()
            # c refuses connections: ejected by the base class, so choose() no
            # longer sees it and the request is retried elsewhere.
            assert http.get("http://web/").json()["name"] in {"a", "b"}
            c = next(i for i in client.discover("web") if i.id == "web-c")
            assert balancer.is_ejected(c)


def test_sync_transport_works_with_httpx_mock_transport(server: MusterServer) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with muster.MusterClient(server.url) as owner, muster.MusterClient(server.url) as client:
        owner.register("web", 8123, address="10.1.2.3", instance_id="web-1")
        client.wait_for("web", lambda r: len(r) == 1)
        transport = muster.MusterTransport(client, inner=httpx.MockTransport(handler))
        with httpx.Client(transport=transport, trust_env=False) as http:
            assert http.get("http://web/pay").json() == {"ok": True}
        (req,) = seen
        assert (req.url.host, req.url.port, req.url.path) == ("10.1.2.3", 8123, "/pay")
        assert req.headers["host"] == "web"
        assert transport.balancer.in_flight(client.discover("web")[0]) == 0


def test_a_host_that_is_no_service_is_an_httpx_error_naming_it(server: MusterServer) -> None:
    with (
        muster.MusterClient(server.url) as client,
        httpx.Client(transport=muster.MusterTransport(client), trust_env=False) as http,
        pytest.raises(muster.ServiceUnreachableError) as e,
    ):
        http.get("http://nosuchservice/x")
    assert isinstance(e.value, httpx.ConnectError)  # handled as httpx users do
    assert isinstance(e.value, muster.NoInstancesError)
    assert "nosuchservice" in str(e.value) and e.value.service == "nosuchservice"
    assert e.value.request.url.host == "nosuchservice"


async def test_async_a_host_that_is_no_service_is_an_httpx_error_naming_it(
    server: MusterServer,
) -> None:
    async with (
        muster.AsyncMusterClient(server.url) as client,
        httpx.AsyncClient(transport=muster.AsyncMusterTransport(client), trust_env=False) as http,
    ):
        with pytest.raises(httpx.ConnectError, match="nosuchservice"):
            await http.get("http://nosuchservice/x")


class DropsReusedConnections:
    """An HTTP/1.1 server that answers the first request of a connection (keep-alive) and
    drops the connection when a second request arrives on it, as a server whose idle
    timeout closed a connection just as the client reused it. ``reset``: with a TCP RST
    (the client reads ECONNRESET: ``httpx.ReadError``), else with a FIN (no answer at all:
    ``httpx.RemoteProtocolError``)."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.connections = 0
        self.answered = 0
        self._stop = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            if self._stop:
                conn.close()
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            requests = 0
            while True:
                head = []
                while (line := f.readline()) not in (b"\r\n", b""):
                    head.append(line)
                if not head:
                    return
                fields = dict(h.rstrip().lower().split(b": ", 1) for h in head[1:])
                length = int(fields.get(b"content-length", b"0"))
                f.read(length)
                requests += 1
                if requests > 1:
                    if self.reset:
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    return
                self.answered += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def stop(self) -> None:
        self._stop = True
        socket.create_connection(("127.0.0.1", self.port)).close()  # wakes accept()
        self._thread.join(5)
        self._listener.close()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_idempotent_request_retried_once_on_a_dropped_reused_connection(
    server: MusterServer, reset: bool
) -> None:
    flaky = DropsReusedConnections(reset)
    try:
        with muster.MusterClient(server.url) as owner, muster.MusterClient(server.url) as client:
            owner.register("flaky", flaky.port, address="127.0.0.1", instance_id="flaky-1")
            (inst,) = client.wait_for("flaky", lambda r: len(r) == 1)
            transport = muster.MusterTransport(client)
            with httpx.Client(transport=transport, trust_env=False) as http:
                assert http.get("http://flaky/1").text == "ok"
                # Reuses the first connection, which the server drops: sent again
                # once on a new connection; a stale connection ejects nobody.
                assert http.get("http://flaky/2").text == "ok"
                assert (flaky.connections, flaky.answered) == (2, 2)
                assert not transport.balancer.is_ejected(inst)
                assert transport.balancer.in_flight(inst) == 0
                # Not idempotent: never sent twice.
                expected = httpx.ReadError if reset else httpx.RemoteProtocolError
                with pytest.raises(expected):
                    http.post("http://flaky/pay", content=b"once")
                assert (flaky.connections, flaky.answered) == (2, 2)
    finally:
        flaky.stop()


async def test_async_idempotent_request_retried_once_on_a_dropped_reused_connection(
    server: MusterServer,
) -> None:
    flaky = DropsReusedConnections(reset=False)
    try:
        with muster.MusterClient(server.url) as owner:
            owner.register("flaky", flaky.port, address="127.0.0.1", instance_id="flaky-1")
            async with muster.AsyncMusterClient(server.url) as client:
                await client.wait_for("flaky", lambda r: len(r) == 1)
                transport = muster.AsyncMusterTransport(client)
                async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
                    assert (await http.get("http://flaky/1")).text == "ok"
                    assert (await http.get("http://flaky/2")).text == "ok"
                    assert (flaky.connections, flaky.answered) == (2, 2)
    finally:
        flaky.stop()
