"""OpenTelemetry spans (the `otel` extra), exported by the SDK's in-memory exporter,
against a real registry and a real called service that sees the propagated context."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import muster
from muster import _tracing

from ._called import CalledService, closed_port
from .conftest import MusterServer


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    muster.enable_tracing(tracer_provider=provider)
    yield provider, exporter
    _tracing.disable_tracing()
    provider.shutdown()


@pytest.fixture
def called() -> Iterator[CalledService]:
    s = CalledService()
    yield s
    s.close()


class _OnEnd(SpanProcessor):
    """Sets ``event`` (on its loop) when a span called ``name`` ends."""

    def __init__(self, name: str, event: asyncio.Event) -> None:
        self.name, self.event = name, event
        self.loop = asyncio.get_running_loop()

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == self.name:
            self.loop.call_soon_threadsafe(self.event.set)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_one_span_per_call_with_the_context_propagated_to_the_instance(
    server: MusterServer,
    called: CalledService,
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    with muster.MusterClient(server.url) as c:
        h = c.register("t-web", called.port, address="127.0.0.1")
        with (
            httpx.Client(transport=muster.MusterTransport(c), trust_env=False) as http,
            tp.get_tracer("app").start_as_current_span("handle order") as parent,
        ):
            assert http.get("http://t-web/ok?x=1").status_code == 200
            assert http.get("http://t-web/fail").status_code == 503

    ok, failed = named(exporter, "GET")
    assert ok.kind is SpanKind.CLIENT
    assert ok.attributes is not None and failed.attributes is not None
    assert dict(ok.attributes) == {
        "http.request.method": "GET",
        "url.full": "http://t-web/ok?x=1",
        "muster.service": "t-web",
        "server.address": "127.0.0.1",
        "server.port": called.port,
        "muster.instance.id": h.id,
        "muster.outcome": "ok",
        "muster.attempts": 1,
        "http.response.status_code": 200,
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["error.type"] == "503"
    assert failed.attributes["muster.outcome"] == "server_error"
    assert failed.status.status_code is StatusCode.ERROR
    # A child of the caller's span, and the called service got its context.
    parent_ctx = parent.get_span_context()
    assert ok.parent is not None and ok.parent.span_id == parent_ctx.span_id
    assert ok.context is not None
    trace_id, span_id = f"{ok.context.trace_id:032x}", f"{ok.context.span_id:016x}"
    assert called.headers[0]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert called.headers[0]["host"] == "t-web"


async def test_a_retried_call_is_one_span_counting_its_attempts(
    server: MusterServer,
    called: CalledService,
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    async with muster.AsyncMusterClient(server.url) as c:
        # Ids sort the instances, so round robin tries the dead one first.
        await c.register("t-pay", closed_port(), address="127.0.0.1", instance_id="a-dead")
        await c.register("t-pay", called.port, address="127.0.0.1", instance_id="b-live")
        async with httpx.AsyncClient(
            transport=muster.AsyncMusterTransport(c), trust_env=False
        ) as http:
            assert (await http.get("http://t-pay/ok")).status_code == 200
            with pytest.raises(muster.ServiceUnreachableError):
                await http.get("http://t-none/")

    (call, unreachable) = named(exporter, "GET")
    assert call.attributes is not None and unreachable.attributes is not None
    assert call.attributes["muster.attempts"] == 2
    assert call.attributes["http.request.resend_count"] == 1
    assert call.attributes["muster.instance.id"] == "b-live"
    assert call.attributes["server.port"] == called.port
    assert unreachable.attributes["muster.outcome"] == "no_instance"
    assert unreachable.attributes["error.type"] == "ServiceUnreachableError"
    assert unreachable.status.status_code is StatusCode.ERROR
    assert len(called.headers) == 1 and "traceparent" in called.headers[0]


async def test_registry_calls_register_renew_and_discover_miss(
    server: MusterServer, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    renewed = asyncio.Event()
    tracer_provider.add_span_processor(_OnEnd("muster renew", renewed))
    async with muster.AsyncMusterClient(server.url, ttl=1) as c:
        h = await c.register("t-me", 8000, address="127.0.0.1")
        await c.discover("t-me")
        await c.discover("t-me")  # from the cache: no span
        lease = c.lease
        assert lease is not None
        # Renewals run on the client's schedule: wait for the first span's end.
        await asyncio.wait_for(renewed.wait(), timeout=10)
        assert named(exporter, "muster renew")
        with pytest.raises(muster.InvalidRequestError):
            await c.discover("Not_A_Service")

    (reg,) = named(exporter, "muster register")
    assert reg.kind is SpanKind.CLIENT and reg.attributes is not None
    assert dict(reg.attributes) == {"muster.service": "t-me", "muster.instance.id": h.id}
    renew = named(exporter, "muster renew")[0]
    assert renew.attributes is not None and renew.attributes["muster.lease.id"] == lease.id
    hit, *refused = named(exporter, "muster discover")
    assert hit.attributes is not None and hit.attributes["muster.service"] == "t-me"
    assert hit.status.status_code is StatusCode.UNSET
    # A refused lookup is an error span with the exception recorded.
    assert [s.status.status_code for s in refused] == [StatusCode.ERROR] * len(refused)


def test_spans_are_off_until_enabled(server: MusterServer) -> None:
    assert _tracing.tracer is None
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tp)  # the global one: muster still makes none
    with muster.MusterClient(server.url) as c:
        c.register("t-off", 8000, address="127.0.0.1")
        c.discover("t-off")
    assert exporter.get_finished_spans() == ()
