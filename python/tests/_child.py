"""A worker process for the process tests: registers, prints its id, then waits.

Usage: python _child.py ADDR SERVICE TTL. It exits when stdin closes (a clean
exit: atexit deregisters) or on SIGTERM (deregister_on_signals).
"""

from __future__ import annotations

import sys

import muster


def main() -> None:
    addr, service, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = muster.MusterClient(addr, ttl=ttl)
    client.deregister_on_signals()
    h = client.register(service, 8000, address="127.0.0.1")
    print(h.id, flush=True)
    sys.stdin.read()  # until the parent closes our stdin


if __name__ == "__main__":
    main()
