"""Health checks of a registration, in the shape Consul users know.

A :class:`Check` is run by the registry (HTTP, TCP, gRPC) or reported by the
service (TTL, with :meth:`AsyncMusterClient.report`). An instance with checks
is ``critical`` until its first check passes (unless ``status`` says
otherwise), so callers never get an instance that is not serving yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ._config import format_duration

CheckStatus = Literal["pass", "warn", "fail"]
"""What a service reports for a TTL check."""


@dataclass(frozen=True)
class Check:
    """One health check; build it with :meth:`http`, :meth:`tcp`, :meth:`grpc` or :meth:`ttl`.

    ::

        Check.http("http://10.0.0.5:8080/health", interval=10, timeout=2)
        Check.ttl(30, id="worker")
    """

    kind: Literal["http", "tcp", "grpc", "ttl"]
    """What the check probes."""
    target: str
    """URL (http), ``host:port`` (tcp), ``host:port[/service]`` (grpc); empty for ttl."""
    interval: Optional[float] = None
    """Seconds between runs (for ttl: the TTL)."""
    id: Optional[str] = None
    """Id within the instance (default ``check-N`` by position); what :meth:`report` names."""
    name: Optional[str] = None
    """Human-readable name."""
    timeout: Optional[float] = None
    """Seconds a run may take (default the smaller of 10 s and the interval)."""
    method: Optional[str] = None
    """HTTP method of an http check (default GET)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers of an http check."""
    status: Optional[Literal["passing", "warning", "critical"]] = None
    """Status before the first result (default critical)."""
    deregister_critical_after: Optional[float] = None
    """Seconds critical after which the registry removes the instance."""
    success_before_passing: Optional[int] = None
    """Consecutive successes before passing (default 1)."""
    failures_before_critical: Optional[int] = None
    """Consecutive failures before critical (default 1)."""
    notes: Optional[str] = None
    """Free-form notes for operators."""

    @classmethod
    def http(cls, url: str, *, interval: float = 10.0, **options: Any) -> Check:
        """An HTTP request: 2xx passing, 429 warning, anything else critical."""
        return cls("http", url, interval, **options)

    @classmethod
    def tcp(cls, addr: str, *, interval: float = 10.0, **options: Any) -> Check:
        """A TCP connect to ``host:port``."""
        return cls("tcp", addr, interval, **options)

    @classmethod
    def grpc(cls, target: str, *, interval: float = 10.0, **options: Any) -> Check:
        """``grpc.health.v1.Health/Check`` against ``host:port`` or ``host:port/service``."""
        return cls("grpc", target, interval, **options)

    @classmethod
    def ttl(cls, ttl: float, **options: Any) -> Check:
        """Passing only while the service reports within ``ttl`` seconds."""
        return cls("ttl", "", ttl, **options)

    def to_json(self) -> dict[str, Any]:
        """The check as the native API's ``checks`` entry."""
        body: dict[str, Any] = {}
        if self.kind == "ttl":
            if self.interval is None:
                raise ValueError("a ttl check needs its TTL")
            body["ttl"] = format_duration(self.interval)
        else:
            body[self.kind] = self.target
            if self.interval is not None:
                body["interval"] = format_duration(self.interval)
        for key in ("id", "name", "method", "status", "notes"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.headers:
            body["headers"] = dict(self.headers)
        if self.timeout is not None:
            body["timeout"] = format_duration(self.timeout)
        if self.deregister_critical_after is not None:
            body["deregister_critical_after"] = format_duration(self.deregister_critical_after)
        for key in ("success_before_passing", "failures_before_critical"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


@dataclass(frozen=True)
class CheckState:
    """A check of a registered instance as the registry reports it."""

    id: str
    """Id within the instance."""
    name: str
    """Name."""
    type: str
    """``http``, ``tcp``, ``grpc``, ``ttl`` or ``command``."""
    status: str
    """``passing``, ``warning`` or ``critical``."""
    output: str = ""
    """Output of the run (or report) that set the status."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckState:
        """From the registry's JSON shape."""
        kind = d.get("kind")
        return cls(
            id=str(d.get("id", "")),
            name=str(d.get("name", "")),
            type=str(kind.get("type", "")) if isinstance(kind, Mapping) else "",
            status=str(d.get("status", "critical")),
            output=str(d.get("output", "")),
        )
