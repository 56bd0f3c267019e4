"""A Flask service that registers itself in muster.

    muster agent --dev &
    python flask_app.py                        # serves on 127.0.0.1:5000
    curl localhost:5000/peers

The registration is removed on Ctrl-C/normal exit (atexit) and on SIGTERM.
"""

from __future__ import annotations

from flask import Flask

import muster

app = Flask("shop")
app.config["MUSTER_PORT"] = 5000
muster_ext = muster.FlaskMuster(app, tags=["http"], version="2.0.0", deregister_on_signals=True)


@app.get("/peers")
def peers() -> list[str]:
    """Instances of this service the registry knows."""
    client = muster_ext.client
    assert client is not None
    return client.discover("shop").ids


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
