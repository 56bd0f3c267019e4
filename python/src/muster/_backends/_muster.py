"""The native muster backend: the v1 HTTP API, with failover across addresses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Optional

import httpx

from .._checks import CheckStatus
from .._config import backoff_delay, format_duration
from .._exceptions import (
    MusterError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    error_from_response,
)
from .._tls import CertFiles, Verify, ssl_context
from .._types import Discovered, Instance, Lease, Query, WatchEvent
from ._base import (
    Backend,
    Registration,
    ServiceSummary,
    WatchQuery,
    WatchQueryRefused,
    merge_streams,
)

# The server sends an SSE comment every 15 s; three missed ones mean the
# connection is dead even if TCP has not noticed.
_WATCH_READ_TIMEOUT = 45.0
log = logging.getLogger("muster")
# Connection pools inherited by a forked child: the parent's sockets. Kept
# referenced (never closed nor collected in the child), so nothing the child
# does can touch the parent's connections.
_INHERITED: list[httpx.AsyncClient] = []
# Statuses that say "this node cannot serve now; another may".
_FAILOVER_STATUSES = frozenset({502, 503, 504})
# The registry's 64 KiB body limit less room for the envelope: a larger set of
# queries goes over several multiplexed watch streams (POST /v1/watch).
_BODY_BUDGET = 64 * 1024 - 1024
_FIELD_OF_QUERY = re.compile(r"^queries\[(\d+)\](?:\.(.+))?$")
# Failures of one attempt at one address. httpx's asyncio transport lets a
# TLS alert read after the handshake (a registry refusing the client's
# certificate, in TLS 1.3) escape as a bare ssl.SSLError: it is the same kind
# of failure, and must fail over and end as RegistryUnavailableError too.
_TRANSPORT_ERRORS = (httpx.TransportError, ssl.SSLError)


class MusterBackend(Backend):
    """Talks to muster's native HTTP API.

    Requests go to the address that last answered; when it cannot be reached
    (or answers 502/503/504) the next one is tried. A call makes ``retries``
    passes over the list, separated by a jittered back-off that starts at
    ``backoff_initial`` and doubles up to ``backoff_max`` seconds. A refusal
    (any other 4xx/5xx) is raised at once. System proxy settings are ignored
    (``trust_env=False``): a registry is always reached directly.

    ``https://`` addresses are checked with ``verify`` and present ``cert``
    (as :attr:`Config.verify` and :attr:`Config.cert`): one TLS context,
    built here, serves every connection to the registry, so a CA file or
    client certificate that cannot be used is a :class:`ConfigError` now.

    Watch streams use a connection pool of their own: however many are open,
    lease renewal and the other calls always get a connection. All lookups
    of a client share one multiplexed stream (:meth:`watch_many`), so that
    pool holds one connection (one more per ``watch_queries_per_stream``
    queries, 1,000 by default, halved each time the registry refuses a
    stream as too large: it caps them with ``watch_max_queries``).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        namespace: str = "default",
        *,
        timeout: float = 5.0,
        headers: Optional[Mapping[str, str]] = None,
        retries: int = 3,
        backoff_initial: float = 0.1,
        backoff_max: float = 0.5,
        watch_queries_per_stream: int = 1000,
        verify: Verify = True,
        cert: Optional[CertFiles] = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one registry address is needed")
        if retries < 1:
            raise ValueError("retries must be at least 1")
        self._retries = retries
        self._per_stream = max(1, watch_queries_per_stream)
        # Watch streams open now (for the client's metrics).
        self._open_streams = 0
        self._backoff = (backoff_initial, backoff_max)
        self.addresses = tuple(a.rstrip("/") for a in addresses)
        """Registry base URLs."""
        self.namespace = namespace
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._ssl = ssl_context(verify, cert)
        self._has_cert = cert is not None or isinstance(verify, ssl.SSLContext)
        if verify is False:
            log.warning(
                "TLS certificate verification of the registry is OFF (verify=False): anyone "
                "on the path can impersonate it; give its CA instead (MUSTER_CACERT)"
            )
        self._current = 0
        self._pid = os.getpid()
        self._http_client = self._new_http()
        self._stream_client = self._new_streams()

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._timeout,
            trust_env=False,
            verify=self._ssl,
            headers=self._headers,
            limits=httpx.Limits(max_keepalive_connections=8, max_connections=64),
        )

    def _new_streams(self) -> httpx.AsyncClient:
        # Unbounded: a stream holds its connection for as long as it is open,
        # and the client opens only as many as its lookups need.
        return httpx.AsyncClient(
            timeout=self._timeout,
            trust_env=False,
            verify=self._ssl,
            headers=self._headers,
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=None),
        )

    def _after_fork(self) -> None:
        # After fork() the child must not use (nor close) the parent's
        # connections: it gets pools of its own on first use.
        if self._pid != os.getpid():
            _INHERITED.extend((self._http_client, self._stream_client))
            self._http_client = self._new_http()
            self._stream_client = self._new_streams()
            self._pid = os.getpid()

    @property
    def _http(self) -> httpx.AsyncClient:
        self._after_fork()
        return self._http_client

    @property
    def _streams(self) -> httpx.AsyncClient:
        self._after_fork()
        return self._stream_client

    def revoke_lease_blocking(self, lease_id: str, timeout: float) -> None:
        # A plain blocking client: at interpreter exit the event loop may be
        # gone and thread pools (used by async DNS) refuse new work.
        with httpx.Client(
            timeout=timeout, trust_env=False, verify=self._ssl, headers=self._headers
        ) as http:
            for i in self._order():
                try:
                    r = http.delete(f"{self.addresses[i]}/v1/leases/{lease_id}")
                except _TRANSPORT_ERRORS:
                    continue
                if r.status_code not in _FAILOVER_STATUSES:
                    return

    def advertise_address(self) -> str:
        # The local end of a (never sent) UDP "connection" to the registry is
        # the interface the registry, and likely its other clients, reach us on.
        url = httpx.URL(self.addresses[self._current])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((url.host, url.port or 80))
                return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._streams.aclose()

    def _order(self) -> list[int]:
        n = len(self.addresses)
        return [(self._current + k) % n for k in range(n)]

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Optional[list[tuple[str, Any]]] = None,
    ) -> Any:
        # Leases are not namespaced: only service routes take the parameter.
        ns = [("namespace", self.namespace)] if path.startswith("/v1/services") else []
        qp = httpx.QueryParams([*ns, *(params or [])])
        last: Optional[BaseException] = None
        for attempt in range(self._retries):
            if attempt > 0:
                await asyncio.sleep(backoff_delay(attempt - 1, *self._backoff))
            for i in self._order():
                url = self.addresses[i] + path
                try:
                    r = await self._http.request(method, url, json=body, params=qp)
                except _TRANSPORT_ERRORS as e:
                    last = e
                    continue
                if r.status_code in _FAILOVER_STATUSES:
                    last = error_from_response(r.status_code, _json(r))
                    continue
                self._current = i
                data = _json(r)
                if r.status_code >= 400:
                    raise error_from_response(r.status_code, data)
                return data
        raise RegistryUnavailableError(
            f"no registry reachable at {', '.join(self.addresses)}: {last!r}{self._tls_hint(last)}"
        ) from last

    def _tls_hint(self, e: Optional[BaseException]) -> str:
        """What to change when ``e`` is a TLS failure this client's settings
        caused: the error alone (an OpenSSL reason) does not say."""
        text = str(e)
        if "CERTIFICATE_VERIFY_FAILED" in text and "Hostname mismatch" not in text:
            return (
                " (the registry's certificate is not signed by a CA this client trusts: "
                "give its CA as verify= or MUSTER_CACERT)"
            )
        give_cert = "give one as cert= or MUSTER_CLIENT_CERT and MUSTER_CLIENT_KEY"
        if "CERTIFICATE_REQUIRED" in text:
            return f" (the registry requires a client certificate: {give_cert})"
        # A refusal read while the request body was still being written
        # loses the alert: only an empty ReadError is left.
        https = any(a.startswith("https://") for a in self.addresses)
        if isinstance(e, httpx.ReadError) and not text and https and not self._has_cert:
            return (
                " (the registry closed the TLS connection: if it requires "
                f"a client certificate, {give_cert})"
            )
        return ""

    async def create_lease(self, ttl: float) -> Lease:
        d = await self._call("POST", "/v1/leases", body={"ttl": format_duration(ttl)})
        return Lease(id=d["id"], ttl=d["ttl_ms"] / 1000.0)

    async def renew_lease(self, lease_id: str) -> None:
        await self._call("PUT", f"/v1/leases/{lease_id}/renew")

    async def revoke_lease(self, lease_id: str) -> None:
        try:
            await self._call("DELETE", f"/v1/leases/{lease_id}")
        except NotFoundError:
            pass

    async def register(
        self, service: str, instance_id: str, reg: Registration, lease_id: Optional[str]
    ) -> Instance:
        body = reg.to_json()
        if lease_id is not None:
            body["lease"] = lease_id
        d = await self._call("PUT", f"/v1/services/{service}/instances/{instance_id}", body=body)
        return Instance.from_json(d)

    async def deregister(self, service: str, instance_id: str) -> bool:
        try:
            d = await self._call("DELETE", f"/v1/services/{service}/instances/{instance_id}")
        except NotFoundError:
            return False
        return bool(d.get("removed", 1))

    async def report_check(
        self,
        service: str,
        instance_id: str,
        check_id: str,
        status: CheckStatus,
        output: Optional[str] = None,
    ) -> None:
        body = {"output": output} if output is not None else None
        await self._call(
            "PUT",
            f"/v1/services/{service}/instances/{instance_id}/checks/{check_id}/{status}",
            body=body,
        )

    async def maintenance(self, service: str, instance_id: str, reason: Optional[str]) -> Instance:
        body: dict[str, Any] = {"enabled": reason is not None}
        if reason is not None:
            body["reason"] = reason
        d = await self._call(
            "PUT", f"/v1/services/{service}/instances/{instance_id}/maintenance", body=body
        )
        return Instance.from_json(d)

    async def services(self) -> list[ServiceSummary]:
        d = await self._call("GET", "/v1/services")
        return [
            ServiceSummary(
                name=str(x["name"]),
                instances=int(x["instances"]),
                passing=int(x.get("passing", 0)),
                warning=int(x.get("warning", 0)),
                critical=int(x.get("critical", 0)),
            )
            for x in d["services"]
        ]

    async def instances(self, service: str, query: Query) -> Discovered:
        d = await self._call("GET", f"/v1/services/{service}/instances", params=query.params())
        return Discovered(
            service=service,
            instances=tuple(Instance.from_json(x) for x in d["instances"]),
            index=int(d["index"]),
        )

    async def watch(
        self, service: str, query: Query, last_index: Optional[int] = None
    ) -> AsyncIterator[WatchEvent]:
        params = httpx.QueryParams(
            [("service", service), ("namespace", self.namespace), *query.params()]
        )
        headers = {"accept": "text/event-stream"}
        if last_index is not None:
            headers["last-event-id"] = str(last_index)
        timeout = httpx.Timeout(self._timeout, read=_WATCH_READ_TIMEOUT)
        last: Optional[BaseException] = None
        delivered = False
        for i in self._order():
            try:
                async with self._http.stream(
                    "GET",
                    self.addresses[i] + "/v1/watch",
                    params=params,
                    headers=headers,
                    timeout=timeout,
                ) as r:
                    if r.status_code in _FAILOVER_STATUSES:
                        await r.aread()
                        last = error_from_response(r.status_code, _json(r))
                        continue
                    if r.status_code >= 400:
                        await r.aread()
                        raise error_from_response(r.status_code, _json(r))
                    self._current = i
                    if last_index is not None:
                        # The registry accepted the resumed watch: what was
                        # missed follows on this stream, so the watcher's
                        # cache is current again now (as the Rust client
                        # treats a reconnected watch), whether or not the
                        # registry confirms it with a `current` event.
                        delivered = True
                        yield WatchEvent("current", last_index)
                    async for ev in _parse_sse(r.aiter_lines()):
                        delivered = True
                        yield ev
                    break  # the server ended the stream (shutdown): caller reconnects
            except _TRANSPORT_ERRORS as e:
                last = e
                # Once events were delivered the caller resumes from its own
                # last index; this generator does not re-open the stream.
                if delivered:
                    break
        raise RegistryUnavailableError(
            f"watch of {service!r} lost: {last!r}{self._tls_hint(last)}"
        ) from last

    def watch_many(self, queries: Sequence[WatchQuery]) -> AsyncIterator[tuple[str, WatchEvent]]:
        return merge_streams([self._watch_stream(c) for c in self._chunks(queries)])

    def _chunks(self, queries: Sequence[WatchQuery]) -> list[list[WatchQuery]]:
        """The queries in as few streams as the limits allow."""
        chunks: list[list[WatchQuery]] = []
        size = 0
        for q in queries:
            n = len(json.dumps(_watch_query(q))) + 1
            if chunks and len(chunks[-1]) < self._per_stream and size + n <= _BODY_BUDGET:
                chunks[-1].append(q)
                size += n
            else:
                chunks.append([q])
                size = n
        return chunks

    async def _watch_stream(
        self, queries: Sequence[WatchQuery]
    ) -> AsyncIterator[tuple[str, WatchEvent]]:
        """One ``POST /v1/watch`` stream, on the first address that takes it."""
        body = {"queries": [_watch_query(q) for q in queries]}
        params = httpx.QueryParams([("namespace", self.namespace)])
        headers = {"accept": "text/event-stream"}
        timeout = httpx.Timeout(self._timeout, read=_WATCH_READ_TIMEOUT)
        last: Optional[BaseException] = None
        for i in self._order():
            try:
                async with self._streams.stream(
                    "POST",
                    self.addresses[i] + "/v1/watch",
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=timeout,
                ) as r:
                    if r.status_code in _FAILOVER_STATUSES:
                        await r.aread()
                        last = error_from_response(r.status_code, _json(r))
                        continue
                    if r.status_code >= 400:
                        await r.aread()
                        refused = error_from_response(r.status_code, _json(r))
                        if _too_large(refused) and len(queries) > 1:
                            break  # split below, out of this response
                        raise _refusal(queries, refused)
                    self._current = i
                    self._open_streams += 1
                    try:
                        async for item in _parse_sse_many(r.aiter_lines()):
                            yield item
                    finally:
                        self._open_streams -= 1
                    return  # the server ended the stream (shutdown): caller reconnects
            except _TRANSPORT_ERRORS as e:
                last = e
        else:
            raise RegistryUnavailableError(f"watch lost: {last!r}{self._tls_hint(last)}") from last
        # The registry takes fewer queries per stream (its `watch_max_queries`
        # is lower, or the body too large): halve, remember it for the next
        # streams, and carry these queries over several.
        self._per_stream = min(self._per_stream, max(1, len(queries) // 2))
        log.info(
            "the registry refused %d queries on one watch: %d per stream from now on",
            len(queries),
            self._per_stream,
        )
        async for item in merge_streams([self._watch_stream(c) for c in self._chunks(queries)]):
            yield item


def _watch_query(q: WatchQuery) -> dict[str, Any]:
    d: dict[str, Any] = {"id": q.id, "service": q.service}
    for name, value in q.query.params():
        if name in ("tag", "meta"):
            d.setdefault(name, []).append(value)
        else:
            d[name] = value
    if q.index is not None:
        d["index"] = q.index
    return d


def _too_large(e: RegistryError) -> bool:
    """Whether the registry refused a watch for carrying too many queries."""
    return e.code == "too_many_queries" or e.status == 413


def _refusal(queries: Sequence[WatchQuery], e: RegistryError) -> MusterError:
    """A refusal naming one query (field ``queries[i].name``) as that query's."""
    m = _FIELD_OF_QUERY.match(e.field or "")
    if m is None or int(m[1]) >= len(queries):
        return e
    own = type(e)(e.status, e.code, e.message, m[2])
    return WatchQueryRefused(queries[int(m[1])].id, own)


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


async def _parse_sse_many(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, WatchEvent]]:
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                d = json.loads("\n".join(data))
                data = []
                ev = _event(d)
                if ev is not None:
                    yield (str(d.get("query")), ev)
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[WatchEvent]:
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                ev = _event(json.loads("\n".join(data)))
                data = []
                if ev is not None:
                    yield ev
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def _event(d: dict[str, Any]) -> Optional[WatchEvent]:
    kind = d.get("type")
    index = int(d.get("index", 0))
    if kind == "snapshot":
        return WatchEvent(
            "snapshot", index, instances=tuple(Instance.from_json(x) for x in d["instances"])
        )
    if kind == "upsert":
        return WatchEvent("upsert", index, instance=Instance.from_json(d["instance"]))
    if kind == "delete":
        return WatchEvent("delete", index, instance_id=str(d["id"]))
    if kind == "current":
        # A resumed watch that missed nothing: the cache is fresh again.
        return WatchEvent("current", index)
    return None  # unknown event kinds from a newer server are skipped
