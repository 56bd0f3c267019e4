"""FastAPI lifespan and Flask extension, registering in a real muster."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask

import muster

from .conftest import MusterServer


async def test_fastapi_lifespan_registers_and_deregisters(
    server: MusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSTER_ADDR", server.url)
    app = FastAPI(lifespan=muster.muster_lifespan("api", port=8123, tags=["http"]))

    @app.get("/peers")
    async def peers(
        client: muster.AsyncMusterClient = Depends(muster.get_client),  # noqa: B008
    ) -> list[str]:
        return (await client.discover("api")).ids

    async with muster.AsyncMusterClient(server.url) as reader:
        # The lifespan exactly as a server runs it: start-up, requests, shutdown.
        async with app.router.lifespan_context(app):
            handle = app.state.muster_registration
            r = await reader.wait_for("api", lambda r: r.ids == [handle.id])
            assert r[0].port == 8123 and r[0].tags == {"http"}
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as http:
                assert (await http.get("/peers")).json() == [handle.id]
        assert app.state.muster.closed
        await reader.wait_for("api", lambda r: len(r) == 0, timeout=5)


def test_flask_extension_registers_and_deregisters(server: MusterServer) -> None:
    app = Flask("shop")
    app.config["MUSTER_PORT"] = 5001
    ext = muster.FlaskMuster(app, client=muster.MusterClient(server.url), version="2.0.0")

    @app.get("/peers")
    def peers() -> list[str]:
        c: muster.MusterClient = app.extensions["muster"].client
        return c.discover("shop").ids

    with muster.MusterClient(server.url) as reader:
        assert ext.registration is not None
        reader.wait_for("shop", lambda r: r.ids == [ext.registration.id])  # type: ignore[union-attr]
        assert app.test_client().get("/peers").json == [ext.registration.id]
        ext.close()
        reader.wait_for("shop", lambda r: len(r) == 0, timeout=5)


def test_flask_extension_without_autoregister_registers_when_told(server: MusterServer) -> None:
    app = Flask("shop")
    app.config["MUSTER_PORT"] = 5002
    with muster.MusterClient(server.url) as client, muster.MusterClient(server.url) as reader:
        ext = muster.FlaskMuster(app, client=client, autoregister=False)
        assert ext.registration is None and client.registrations == []
        h = ext.register()  # e.g. from a gunicorn post_worker_init hook
        assert ext.register() is h  # once
        assert reader.wait_for("shop", lambda r: len(r) == 1).ids == [h.id]
