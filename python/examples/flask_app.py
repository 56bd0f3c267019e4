"""A Flask service that registers itself in muster and calls another service.

    muster agent &
    PORT=5000 flask --app flask_app run --port 5000   # or: PORT=5000 python flask_app.py
    curl localhost:5000/peers
    curl localhost:5000/pay                    # calls a registered `payments` instance
    flask --app flask_app routes               # never touches the registry

Serving registers ``shop`` (port from $PORT), even when the registry is not up
yet (``defer=True``); other ``flask`` commands do not register. On SIGTERM it
deregisters, serves $DRAIN more seconds (default 5), then exits; a clean exit
deregisters too (atexit).
"""

from __future__ import annotations

import os

import httpx
from flask import Flask

import muster

app = Flask("shop")
app.config["MUSTER_PORT"] = int(os.environ.get("PORT", "5000"))
client = muster.MusterClient()  # MUSTER_ADDR, ... from the environment; no I/O yet
muster_ext = muster.FlaskMuster(
    app,
    client=client,
    tags=["http"],
    version="2.0.0",
    defer=True,
    deregister_on_signals=True,
    drain=float(os.environ.get("DRAIN", "5")),
)
# One httpx client and transport for every request: the balancer's turns and
# the connections are shared.
http = httpx.Client(transport=muster.MusterTransport(client), trust_env=False, timeout=5)


@app.get("/peers")
def peers() -> list[str]:
    """Instances of this service the registry knows."""
    return client.discover("shop").ids


@app.get("/pay")
def pay() -> object:
    """Calls `payments` on a discovered, balanced instance."""
    return http.get("http://payments/pay").json()


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=app.config["MUSTER_PORT"])
