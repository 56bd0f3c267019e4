"""Exceptions raised by muster.

Every exception the library raises on purpose derives from :class:`MusterError`::

    MusterError
    ├── ConfigError               bad configuration (arguments or MUSTER_* variables)
    ├── ClientClosedError         the client was used after close()
    ├── RegistryError             the registry answered with an API error
    │   ├── InvalidRequestError       400/413/422: the request was refused as invalid
    │   └── NotFoundError             404: no such instance or lease
    │       └── LeaseNotFoundError        the lease expired or was revoked
    └── DiscoveryError            no usable answer for a service
        ├── RegistryUnavailableError  no registry address could be reached
        ├── StaleDataError            the registry has been unreachable for longer
        │                             than max_staleness: the cached answer is too old
        └── NoInstancesError          the service has no instance to send a request to
            └── ServiceUnreachableError   the same, raised by the httpx transports: it is
                                          also an ``httpx.ConnectError``

``RegistryUnavailableError`` is also raised by writes (register, renew) when
every registry address fails. Errors of the transports (``httpx.ConnectError``
and friends) pass through unchanged once retries are exhausted, so that httpx
users handle them as they always do; a request to a service with no instance
raises :class:`ServiceUnreachableError`, which is an ``httpx.ConnectError`` too.
"""

from __future__ import annotations

from typing import Optional

import httpx


class MusterError(Exception):
    """Base class of every error raised by muster."""


class ConfigError(MusterError, ValueError):
    """A setting (argument or ``MUSTER_*`` environment variable) is invalid."""


class ClientClosedError(MusterError, RuntimeError):
    """The client was used after ``close()``."""


class RegistryError(MusterError):
    """The registry refused a request; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (field {field!r})" if field else ""))
        self.status = status
        """HTTP status of the answer."""
        self.code = code
        """Machine-readable error code, e.g. ``invalid_field``."""
        self.message = message
        """Human-readable explanation from the registry."""
        self.field = field
        """The offending input field, when one is to blame."""


class InvalidRequestError(RegistryError):
    """The registry refused the request as invalid (400, 413, 422)."""


class NotFoundError(RegistryError):
    """The instance or lease does not exist (404)."""


class LeaseNotFoundError(NotFoundError):
    """The lease expired or was revoked; the client registers again under a new one."""


class DiscoveryError(MusterError):
    """No usable discovery answer for a service."""


class RegistryUnavailableError(DiscoveryError):
    """None of the registry addresses could be reached."""


class StaleDataError(DiscoveryError):
    """The registry has been unreachable longer than ``max_staleness``."""

    def __init__(self, service: str, age: float, max_staleness: float) -> None:
        super().__init__(
            f"registry unreachable: the cached answer for {service!r} is {age:.1f}s old, "
            f"more than max_staleness={max_staleness:g}s"
        )
        self.service = service
        """The service asked for."""
        self.age = age
        """Age of the cached answer in seconds."""


class NoInstancesError(DiscoveryError):
    """The service has no (non-ejected) instance to send a request to."""


class ServiceUnreachableError(NoInstancesError, httpx.ConnectError):
    """A transport found no instance of the request's service to send it to.

    The host of ``http://<host>/...`` is a bare name, so the transports take it
    for a service, and the registry has no passing instance of it (unknown
    service, a typo, or every instance gone). It is an ``httpx.ConnectError``
    (the request reached nothing), so httpx error handling applies, and a
    :class:`NoInstancesError`. To call a host that is no muster service, use a
    name with a dot (``db.internal``) or an IP address: those pass through.
    """

    def __init__(self, service: str, namespace: str, request: httpx.Request) -> None:
        super().__init__(
            f"no instance of service {service!r} (namespace {namespace!r}) in the registry "
            f"to send {request.method} {request.url} to"
        )
        self.request = request
        self.service = service
        """The service (the request's host)."""


def error_from_response(status: int, body: object) -> RegistryError:
    """Maps an API error answer to the matching exception class."""
    code, message, field = "http_error", f"HTTP {status}", None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        code = str(e.get("code", code))
        message = str(e.get("message", message))
        field = e.get("field")
    cls: type[RegistryError]
    if code == "lease_not_found":
        cls = LeaseNotFoundError
    elif status == 404:
        cls = NotFoundError
    elif status in (400, 413, 422):
        cls = InvalidRequestError
    else:
        cls = RegistryError
    return cls(status, code, message, field)
