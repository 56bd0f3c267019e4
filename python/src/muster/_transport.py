"""httpx transports that send ``http://<service>/...`` to a discovered, balanced instance.

``httpx.Client(transport=MusterTransport(client)).get("http://payments/pay")``
looks up ``payments`` in the client's cache, picks an instance with the
balancer, and sends the request to ``address:port`` with the original
``Host: payments`` header. Connect errors eject the instance from the balancer
and, for idempotent methods only, the request is retried on another instance.
An idempotent request whose connection is dropped before any answer
(``ReadError``/``RemoteProtocolError``: typically a kept-alive connection the
server closed just as it was reused) is sent once more, without ejecting the
instance. Hosts that are not a bare service name (dots, ``localhost``, IPs) go
to the inner transport unchanged; a bare name with no instance in the registry
raises :class:`~muster.ServiceUnreachableError`, an ``httpx.ConnectError``.

Every decision is made by :class:`_Router`; the sync and async transports
differ only in how they call the inner transport.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Callable, Optional, cast

import httpx

from . import _metrics, _tracing
from ._balance import Balancer, RoundRobin
from ._client import AsyncMusterClient
from ._exceptions import NoInstancesError, ServiceUnreachableError
from ._sync import MusterClient
from ._types import Discovered, Instance

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods retried on another instance after a connect error."""

_SERVICE_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Errors that prove the request never reached the instance.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
# Errors of a connection dropped before any answer: on a reused keep-alive
# connection, the usual sign that the server closed it while idle.
_DROPPED_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError)


class _Router:
    def __init__(
        self,
        balancer: Optional[Balancer],
        retries: int,
        filters: Optional[Mapping[str, Mapping[str, Any]]],
        namespace: str,
    ) -> None:
        self.balancer = balancer or RoundRobin()
        self.retries = retries
        self.filters = dict(filters or {})
        self.namespace = namespace
        # For the metrics: calls by (service, outcome), and ejections.
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], int] = {}
        self.ejections = [0]
        _metrics.track_router(self)

    def service_of(self, request: httpx.Request) -> Optional[str]:
        host = request.url.host
        if host == "localhost" or not _SERVICE_HOST.match(host) or host.isdigit():
            return None
        return host

    def discover_kwargs(self, service: str) -> Mapping[str, Any]:
        return self.filters.get(service, {})

    def begin(self, request: httpx.Request, service: str) -> _Call:
        """A call to ``service`` starts (its span, when tracing is on)."""
        span = _tracing.CallSpan(request, service) if _tracing.tracer is not None else None
        return _Call(service, span)

    def pick(
        self, request: httpx.Request, found: Discovered, tried: set[tuple[str, str, str]]
    ) -> Instance:
        fresh = [i for i in found if i.key not in tried]
        try:
            inst = self.balancer.pick(fresh or found.instances)
        except NoInstancesError as e:
            ns = found.instances[0].namespace if found.instances else self.namespace
            raise ServiceUnreachableError(found.service, ns, request) from e
        self.balancer.begin(inst)
        return inst

    def rewrite(self, request: httpx.Request, inst: Instance, call: _Call) -> httpx.Request:
        # The Host header was set from the original URL and is kept as is.
        url = request.url.copy_with(host=inst.address, port=inst.port)
        sent = httpx.Request(
            request.method,
            url,
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        call.attempts += 1
        if call.span is not None:
            call.span.attempt(sent, inst.address, inst.port, inst.id)
        return sent

    def _count(self, service: str, outcome: str) -> None:
        with self.lock:
            self.calls[(service, outcome)] = self.calls.get((service, outcome), 0) + 1

    def given_up(self, call: _Call, exc: BaseException) -> None:
        """The call raises ``exc``: no instance, or no answer from the ones tried."""
        outcome = "no_instance" if isinstance(exc, NoInstancesError) else "error"
        self._count(call.service, outcome)
        if call.span is not None:
            call.span.end(outcome, call.attempts, error=exc)

    def failed(self, request: httpx.Request, inst: Instance, exc: Exception, tries: _Call) -> bool:
        """Records a failure; returns whether to send the request again.

        ``tries`` keeps count: an instance that refused the connection is
        added to ``tries.tried`` (the next pick avoids it).
        """
        self.balancer.end(inst)
        idempotent = request.method in IDEMPOTENT_METHODS
        if (
            isinstance(exc, _DROPPED_ERRORS)
            and idempotent
            and not tries.resent
            and isinstance(request.stream, httpx.ByteStream)  # the body can be sent again
        ):
            # Most likely a stale kept-alive connection, not a sick instance:
            # once more, on a new connection, ejecting nobody.
            tries.resent = True
            return True
        if isinstance(exc, httpx.TransportError):
            self.balancer.report_failure(inst)
            with self.lock:
                self.ejections[0] += 1
        if isinstance(exc, _CONNECT_ERRORS) and idempotent and tries.retried < self.retries:
            tries.retried += 1
            tries.tried.add(inst.key)
            return True
        return False

    def answered(
        self, call: _Call, inst: Instance, response: httpx.Response, is_async: bool
    ) -> httpx.Response:
        outcome = "server_error" if response.status_code >= 500 else "ok"
        self._count(call.service, outcome)
        if call.span is not None:
            call.span.end(outcome, call.attempts, status_code=response.status_code)
        self.balancer.report_success(inst)
        end = _Once(lambda: self.balancer.end(inst))
        stream = response.stream
        wrapped: Any
        # Chosen by the transport, not by the stream's type: some streams
        # (httpx.ByteStream, e.g. from MockTransport) are sync and async alike.
        if is_async:
            wrapped = _AsyncTracked(cast(httpx.AsyncByteStream, stream), end)
        else:
            wrapped = _SyncTracked(cast(httpx.SyncByteStream, stream), end)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=wrapped,
            extensions=response.extensions,
        )


class _Call:
    """One call through a transport: instances refused, retries, a resend, its span."""

    __slots__ = ("attempts", "resent", "retried", "service", "span", "tried")

    def __init__(self, service: str, span: Optional[_tracing.CallSpan]) -> None:
        self.service = service
        self.span = span
        self.tried: set[tuple[str, str, str]] = set()
        self.retried = 0
        self.resent = False
        self.attempts = 0


class _Once:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Optional[Callable[[], None]] = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


class _SyncTracked(httpx.SyncByteStream):
    """Ends the balancer's in-flight count when the response is closed."""

    def __init__(self, inner: httpx.SyncByteStream, end: _Once) -> None:
        self._inner, self._end = inner, end

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end()


class _AsyncTracked(httpx.AsyncByteStream):
    """Ends the balancer's in-flight count when the response is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, end: _Once) -> None:
        self._inner, self._end = inner, end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end()


class MusterTransport(httpx.BaseTransport):
    """Sync httpx transport resolving service names through a :class:`MusterClient`.

    ``filters`` maps a service to discovery filters, e.g.
    ``{"payments": {"version": "^1.4"}}``. ``retries`` is how many other
    instances an idempotent request may try after connect errors.
    ``balancer`` (default :class:`RoundRobin`) keeps its state per service, so
    one transport, made once and shared, serves every service: build it at
    start-up, not per request.
    """

    def __init__(
        self,
        client: MusterClient,
        *,
        balancer: Optional[Balancer] = None,
        retries: int = 2,
        filters: Optional[Mapping[str, Mapping[str, Any]]] = None,
        inner: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.client = client
        """The muster client used for discovery."""
        self._router = _Router(balancer, retries, filters, client.config.namespace)
        self._inner = inner or httpx.HTTPTransport()

    @property
    def balancer(self) -> Balancer:
        """The balancer choosing instances."""
        return self._router.balancer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self._router
        service = r.service_of(request)
        if service is None:
            return self._inner.handle_request(request)
        call = r.begin(request, service)
        try:
            while True:
                found = self.client.discover(service, **r.discover_kwargs(service))
                inst = r.pick(request, found, call.tried)
                try:
                    response = self._inner.handle_request(r.rewrite(request, inst, call))
                except Exception as e:
                    if not r.failed(request, inst, e, call):
                        raise
                    continue
                return r.answered(call, inst, response, is_async=False)
        except BaseException as e:
            r.given_up(call, e)
            raise

    def close(self) -> None:
        self._inner.close()


class AsyncMusterTransport(httpx.AsyncBaseTransport):
    """Async httpx transport resolving service names through an :class:`AsyncMusterClient`.

    Same options as :class:`MusterTransport`.
    """

    def __init__(
        self,
        client: AsyncMusterClient,
        *,
        balancer: Optional[Balancer] = None,
        retries: int = 2,
        filters: Optional[Mapping[str, Mapping[str, Any]]] = None,
        inner: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.client = client
        """The muster client used for discovery."""
        self._router = _Router(balancer, retries, filters, client.config.namespace)
        self._inner = inner or httpx.AsyncHTTPTransport()

    @property
    def balancer(self) -> Balancer:
        """The balancer choosing instances."""
        return self._router.balancer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = self._router
        service = r.service_of(request)
        if service is None:
            return await self._inner.handle_async_request(request)
        call = r.begin(request, service)
        try:
            while True:
                found = await self.client.discover(service, **r.discover_kwargs(service))
                inst = r.pick(request, found, call.tried)
                try:
                    response = await self._inner.handle_async_request(
                        r.rewrite(request, inst, call)
                    )
                except Exception as e:
                    if not r.failed(request, inst, e, call):
                        raise
                    continue
                return r.answered(call, inst, response, is_async=True)
        except BaseException as e:
            r.given_up(call, e)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()
