"""Framework helpers: a FastAPI (Starlette) lifespan and a Flask extension.

Neither imports its framework: they use only the ``app.state`` /
``app.extensions`` conventions, so ``muster`` keeps httpx as its only
dependency.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("muster")


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
    drain: float = 0.0,
    **register: Any,
) -> Lifespan:
    """A FastAPI/Starlette lifespan that registers on start-up and deregisters on shutdown.

    ``FastAPI(lifespan=muster_lifespan("payments", port=8080, tags=["v2"]))``.
    The client is on ``app.state.muster`` (see :func:`get_client`) for
    handlers that discover or call other services. ``register`` takes the
    keyword arguments of :meth:`AsyncMusterClient.register`: with
    ``defer=True`` the application starts even while the registry is down,
    and registers once it is up. ``lifespan`` wraps the application's own
    lifespan, which runs inside the registration (build shared clients and
    transports there). ``deregister_on_signals`` deregisters on SIGTERM
    first, then waits ``drain`` seconds while still serving, then lets the
    server shut down. A client passed in is deregistered from but not closed
    at shutdown.
    """

    @asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[Any]:
        c = client or AsyncMusterClient()
        handle = await c.register(service, _port(port), **register)
        if deregister_on_signals:
            c.deregister_on_signals(drain=drain)
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
            elif not c.closed and handle in c.registrations:
                await c.deregister(handle)

    return _lifespan


def get_client(request: HTTPConnection) -> AsyncMusterClient:
    """FastAPI dependency: the app's muster client (``Depends(get_client)``)."""
    client: AsyncMusterClient = request.app.state.muster
    return client


def _flask_command() -> Optional[str]:
    """The ``flask`` command line's command now running (``run``, ``routes``...), if any."""
    try:
        import click
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - flask absent
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.find_object(ScriptInfo) is None:
        return None
    return ctx.command.name


class FlaskMuster:
    """Flask extension: registers the app's service when the app is served.

    ``FlaskMuster(app, service="payments", port=8080)`` or, with an app
    factory, ``ext = FlaskMuster(); ext.init_app(app)`` reading
    ``MUSTER_SERVICE``/``MUSTER_PORT`` from ``app.config``. The client is
    ``app.extensions["muster"].client``.

    When it registers: ``init_app`` registers at once when the app is served
    (``python app.py``, gunicorn, uWSGI, ``flask run``), but **not** when a
    ``flask`` command other than ``run`` loaded the app (``flask routes``,
    ``flask shell``, ``flask db ...``): those never reach the registry. With
    ``autoregister=False`` nothing registers until :meth:`register` is called
    (e.g. from a gunicorn ``post_worker_init`` hook). With ``defer=True`` a
    registry that is down does not stop the app: it registers once the
    registry is up.

    Deregistration happens on :meth:`close`, at interpreter exit, and on
    SIGTERM when ``deregister_on_signals`` is true, then after ``drain``
    seconds of serving the signal ends the process.
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
        drain: float = 0.0,
        defer: bool = False,
        autoregister: bool = True,
    ) -> None:
        self.client: Optional[MusterClient] = client
        """The sync muster client (made at the first registration if not given)."""
        self.registration: Optional[Registered] = None
        """This app's registration, once registered."""
        self._service, self._port = service, port
        self._tags, self._meta, self._version = tuple(tags), meta, version
        self._signals, self._drain, self._defer = deregister_on_signals, drain, defer
        self._autoregister = autoregister
        self._app: Any = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Stores the extension in ``app.extensions`` and registers when the app is served.

        See the class documentation for when that is.
        """
        self._app = app
        app.extensions["muster"] = self
        command = _flask_command()
        if not self._autoregister:
            return
        if command not in (None, "run"):
            log.info("flask %s: not registering in muster (only a served app registers)", command)
            return
        self.register()

    def register(self) -> Registered:
        """Registers the app's service (once; later calls return the same registration)."""
        if self.registration is not None:
            return self.registration
        if self._app is None:
            raise RuntimeError("FlaskMuster.register() needs init_app(app) first")
        cfg = self._app.config
        service = self._service or cfg.get("MUSTER_SERVICE") or self._app.name
        port = self._port or cfg.get("MUSTER_PORT")
        if self.client is None:
            self.client = MusterClient()
        self.registration = self.client.register(
            str(service),
            _port(int(port) if port else None),
            tags=self._tags or tuple(cfg.get("MUSTER_TAGS", ())),
            meta=self._meta,
            version=self._version or cfg.get("MUSTER_VERSION"),
            defer=self._defer,
        )
        if self._signals:
            self.client.deregister_on_signals(drain=self._drain)
        return self.registration

    def close(self) -> None:
        """Deregisters and closes the client."""
        if self.client is not None:
            self.client.close()
