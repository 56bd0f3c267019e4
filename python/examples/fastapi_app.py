"""A FastAPI service that registers itself in muster and calls another service.

    muster agent &                             # a registry on 127.0.0.1:7700
    PORT=8080 uvicorn fastapi_app:app --port 8080
    curl localhost:8080/peers
    curl localhost:8080/pay                    # calls a registered `payments` instance

Start-up registers ``orders`` (port from $PORT), even when the registry is not
up yet (``defer=True``: it registers once the registry answers). On SIGTERM it
deregisters, goes on serving for $DRAIN seconds (default 5) while callers'
caches drop it, then uvicorn shuts down.

One httpx client and one transport serve every request: built once, in the
app's own lifespan, so the balancer's turns and connections are shared (a
transport per request would start every request on the same instance).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI, Request

import muster


@asynccontextmanager
async def calls(app: FastAPI) -> AsyncIterator[None]:
    """The app's own lifespan: one httpx client for calls to other services."""
    transport = muster.AsyncMusterTransport(app.state.muster)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as http:
        app.state.http = http
        yield


app = FastAPI(
    lifespan=muster.muster_lifespan(
        "orders",
        port=int(os.environ.get("PORT", "8080")),
        tags=["http"],
        version="1.0.0",
        defer=True,
        deregister_on_signals=True,
        drain=float(os.environ.get("DRAIN", "5")),
        lifespan=calls,
    )
)


@app.get("/peers")
async def peers(client: muster.AsyncMusterClient = Depends(muster.get_client)) -> list[str]:  # noqa: B008
    """Instances of this service the registry knows."""
    return (await client.discover("orders")).ids


@app.get("/pay")
async def pay(request: Request) -> object:
    """Calls `payments` on a discovered, balanced instance."""
    http: httpx.AsyncClient = request.app.state.http
    return (await http.get("http://payments/pay")).json()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
