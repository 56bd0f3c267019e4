"""Framework helpers: a FastAPI (Starlette) lifespan and a Flask extension.

Neither imports its framework: they use only the ``app.state`` /
``app.extensions`` conventions, so ``muster`` keeps httpx as its only
dependency.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Callable, Optional

from ._client import AsyncMusterClient, Registered
from ._sync import MusterClient

try:  # only for FastAPI to recognise get_client's parameter; optional
    from starlette.requests import HTTPConnection
except ImportError:  # pragma: no cover - starlette absent
    HTTPConnection = Any  # type: ignore[misc,assignment]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def _port(port: Optional[int]) -> int:
    if port is not None:
        return port
    if os.environ.get("PORT"):
        return int(os.environ["PORT"])
    raise ValueError("give port= (or set PORT): the port this service listens on")


def muster_lifespan(
    service: str,
    port: Optional[int] = None,
    *,
    client: Optional[AsyncMusterClient] = None,
    lifespan: Optional[Lifespan] = None,
    deregister_on_signals: bool = False,
    **register: Any,
) -> Lifespan:
    """A FastAPI/Starlette lifespan that registers on start-up and deregisters on shutdown.

    ``FastAPI(lifespan=muster_lifespan("payments", port=8080, tags=["v2"]))``.
    The client is on ``app.state.muster`` (see :func:`get_client`) for
    handlers that discover or call other services. ``register`` takes the
    keyword arguments of :meth:`AsyncMusterClient.register`; ``lifespan``
    wraps the application's own lifespan, which runs inside the registration.
    A client passed in is deregistered from but not closed at shutdown.
    """

    @asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[Any]:
        c = client or AsyncMusterClient()
        handle = await c.register(service, _port(port), **register)
        if deregister_on_signals:
            c.deregister_on_signals()
        app.state.muster = c
        app.state.muster_registration = handle
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            if client is None:
                await c.aclose()
            elif not c.closed:
                await c.deregister(handle)

    return _lifespan


def get_client(request: HTTPConnection) -> AsyncMusterClient:
    """FastAPI dependency: the app's muster client (``Depends(get_client)``)."""
    client: AsyncMusterClient = request.app.state.muster
    return client


class FlaskMuster:
    """Flask extension: registers the app's service when initialised.

    ``FlaskMuster(app, service="payments", port=8080)`` or, with an app
    factory, ``ext = FlaskMuster(); ext.init_app(app)`` reading
    ``MUSTER_SERVICE``/``MUSTER_PORT`` from ``app.config``. The client is
    ``app.extensions["muster"].client``. Deregistration happens on
    :meth:`close`, at interpreter exit, and on SIGTERM when
    ``deregister_on_signals`` is true.
    """

    def __init__(
        self,
        app: Any = None,
        *,
        service: Optional[str] = None,
        port: Optional[int] = None,
        client: Optional[MusterClient] = None,
        tags: Sequence[str] = (),
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        deregister_on_signals: bool = False,
    ) -> None:
        self.client: Optional[MusterClient] = client
        """The sync muster client, once initialised."""
        self.registration: Optional[Registered] = None
        """This app's registration, once initialised."""
        self._service, self._port = service, port
        self._tags, self._meta, self._version = tuple(tags), meta, version
        self._signals = deregister_on_signals
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Registers ``app``'s service and stores the extension in ``app.extensions``."""
        cfg = app.config
        service = self._service or cfg.get("MUSTER_SERVICE") or app.name
        port = self._port or cfg.get("MUSTER_PORT")
        if self.client is None:
            self.client = MusterClient()
        self.registration = self.client.register(
            str(service),
            _port(int(port) if port else None),
            tags=self._tags or tuple(cfg.get("MUSTER_TAGS", ())),
            meta=self._meta,
            version=self._version or cfg.get("MUSTER_VERSION"),
        )
        if self._signals:
            self.client.deregister_on_signals()
        app.extensions["muster"] = self

    def close(self) -> None:
        """Deregisters and closes the client."""
        if self.client is not None:
            self.client.close()
