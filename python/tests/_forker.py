"""A process that registers, then forks, for the fork-safety test.

Usage: python _forker.py ADDR. Prints ``parent <id>``; the child prints
``child <id> <ids of parent it discovered>`` and exits normally (so its atexit
hooks run); then the parent prints ``child-exit <status>`` and waits for its
stdin to close.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import muster


def main() -> None:
    client = muster.MusterClient(sys.argv[1], ttl=60)  # only a revocation removes it quickly
    client.deregister_on_signals()
    parent = client.register("parent", 8000, address="127.0.0.1")
    assert client.discover("parent").ids == [parent.id]  # a warm cache and a live watch
    print("parent", parent.id, flush=True)
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hang (the parent's loop thread does not exist here) ends the child
        try:
            assert client.lease is None and client.registrations == [], "inherited registrations"
            # Not in the child's cache: asked of the registry, on new connections.
            seen = client.wait_for("parent", lambda r: len(r) == 1, timeout=20).ids
            mine = client.register("child", 8001, address="127.0.0.1")
            assert str(os.getpid()) in mine.id
            print("child", mine.id, ",".join(seen), flush=True)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        sys.exit(0)  # a normal exit: atexit revokes the child's lease, and only that
    _, status = os.waitpid(pid, 0)
    print("child-exit", os.waitstatus_to_exitcode(status), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
