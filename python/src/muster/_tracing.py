"""OpenTelemetry spans of the clients and transports (the ``otel`` extra).

Off until :func:`enable_tracing`: until then every hook below is one check of
a module global, and ``opentelemetry`` is never imported (``import muster``
does not import it either).

Spans, once enabled:

- one ``CLIENT`` span per call through :class:`~muster.MusterTransport` /
  :class:`~muster.AsyncMusterTransport`, named after the HTTP method, with the
  attributes of the OpenTelemetry HTTP client conventions that apply
  (``http.request.method``, ``url.full`` (the logical URL,
  ``http://payments/pay``), ``server.address`` and ``server.port`` of the
  instance chosen last, ``http.response.status_code``,
  ``http.request.resend_count``, ``error.type``) and muster's own
  (``muster.service``, ``muster.instance.id``, ``muster.attempts``,
  ``muster.outcome``, as in ``muster_client_requests_total``). The trace
  context goes to the called instance in the request headers, through the
  globally configured propagator (W3C ``traceparent`` by default);
- one ``CLIENT`` span per registry call that matters: ``muster register``,
  ``muster renew`` and ``muster discover`` (a lookup the cache could not
  answer), with ``muster.service``, ``muster.instance.id`` and
  ``muster.lease.id`` where they apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import httpx

# The tracer, once enable_tracing() was called.
tracer: Optional[Any] = None


def enable_tracing(tracer_provider: Optional[Any] = None) -> None:
    """Turns on OpenTelemetry spans in the clients and transports of the process.

    ``tracer_provider``: an ``opentelemetry.trace.TracerProvider`` (default:
    the global one the application configured with the SDK). Needs the
    ``otel`` extra (``pip install 'muster-client[otel]'``, the API only: the
    application brings the SDK and its exporter); without it, raises
    ``ImportError`` saying so.
    """
    global tracer
    try:
        from opentelemetry import trace
    except ImportError as e:
        raise ImportError(
            "muster.enable_tracing needs opentelemetry-api: pip install 'muster-client[otel]'"
        ) from e
    from . import __version__

    tracer = trace.get_tracer("muster", __version__, tracer_provider=tracer_provider)


def disable_tracing() -> None:
    """Turns spans off again (for tests)."""
    global tracer
    tracer = None


@contextlib.contextmanager
def _registry_span(name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    attrs = {k: v for k, v in attributes.items() if v is not None}
    # Records an exception and sets the error status by itself.
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs):
        yield


def registry_span(
    name: str, attributes: Mapping[str, Any]
) -> contextlib.AbstractContextManager[None]:
    """A span around one registry call, or nothing while tracing is off."""
    if tracer is None:
        return contextlib.nullcontext()
    return _registry_span(name, attributes)


class CallSpan:
    """The span of one call through a transport, current while the call runs."""

    __slots__ = ("_span", "_token")

    def __init__(self, request: httpx.Request, service: str) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        assert tracer is not None
        self._span = tracer.start_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": str(request.url),
                "muster.service": service,
            },
        )
        self._token = context.attach(trace.set_span_in_context(self._span))

    def attempt(self, request: httpx.Request, address: str, port: int, instance_id: str) -> None:
        """One attempt, to this instance: its address, and the trace context in its headers."""
        from opentelemetry import propagate

        self._span.set_attributes(
            {"server.address": address, "server.port": port, "muster.instance.id": instance_id}
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        for k, v in carrier.items():
            request.headers[k] = v

    def end(
        self,
        outcome: str,
        attempts: int,
        status_code: Optional[int] = None,
        error: Optional[BaseException] = None,
    ) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        span.set_attribute("muster.outcome", outcome)
        span.set_attribute("muster.attempts", attempts)
        if attempts > 1:
            span.set_attribute("http.request.resend_count", attempts - 1)
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
            if status_code >= 500:
                span.set_attribute("error.type", str(status_code))
                span.set_status(Status(StatusCode.ERROR))
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        try:
            context.detach(self._token)
        finally:
            span.end()
