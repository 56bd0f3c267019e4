"""An HTTP service for the drain test: registers, deregisters on SIGTERM, drains.

Usage: python _drainer.py ADDR DRAIN. Serves ``GET /`` on a free loopback port,
registers it as ``drainer``, prints ``<instance id> <port>``, and runs until a
signal ends it.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import muster


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    addr, drain = sys.argv[1], float(sys.argv[2])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = muster.MusterClient(addr, ttl=60)
    client.deregister_on_signals(drain=drain)
    h = client.register("drainer", httpd.server_address[1], address="127.0.0.1")
    print(h.id, httpd.server_address[1], flush=True)
    threading.Event().wait()  # until a signal ends the process


if __name__ == "__main__":
    main()
