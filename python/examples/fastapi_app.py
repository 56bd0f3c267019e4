"""A FastAPI service that registers itself in muster and calls another service.

    muster agent --dev &                       # a registry on 127.0.0.1:7700
    PORT=8080 uvicorn fastapi_app:app --port 8080
    curl localhost:8080/peers

Start-up registers ``orders`` (port from $PORT); shutdown, SIGTERM included
(uvicorn turns it into a lifespan shutdown), deregisters it.
"""

from __future__ import annotations

import os

import httpx
from fastapi import Depends, FastAPI

import muster

app = FastAPI(
    lifespan=muster.muster_lifespan(
        "orders", port=int(os.environ.get("PORT", "8080")), tags=["http"], version="1.0.0"
    )
)


@app.get("/peers")
async def peers(client: muster.AsyncMusterClient = Depends(muster.get_client)) -> list[str]:  # noqa: B008
    """Instances of this service the registry knows."""
    return (await client.discover("orders")).ids


@app.get("/pay")
async def pay(client: muster.AsyncMusterClient = Depends(muster.get_client)) -> object:  # noqa: B008
    """Calls `payments` on a discovered, balanced instance."""
    async with httpx.AsyncClient(transport=muster.AsyncMusterTransport(client)) as http:
        return (await http.get("http://payments/pay")).json()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
