"""Real processes: a crash cleaned up by lease expiry, workers that do not collide,
deregistration at exit and on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import muster

from .conftest import MusterServer

CHILD = str(Path(__file__).with_name("_child.py"))


def spawn(server: MusterServer, service: str, ttl: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, CHILD, server.url, service, str(ttl)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def reap(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


async def read_id(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 30)
    assert line.strip(), f"child exited with {p.poll()}"
    return line.strip()


async def test_sigkilled_process_disappears_within_ttl_plus_one_second(
    server: MusterServer,
) -> None:
    child = spawn(server, "crashy", 1.0)
    try:
        cid = await read_id(child)
        async with muster.AsyncMusterClient(server.url) as reader:
            await reader.wait_for("crashy", lambda r: r.ids == [cid])
            child.kill()  # SIGKILL: no atexit, no handler, nothing
            t0 = time.monotonic()
            await reader.wait_for("crashy", lambda r: cid not in r.ids, timeout=10)
            elapsed = time.monotonic() - t0
        assert elapsed <= 1.0 + 1.0, f"took {elapsed:.2f}s"
    finally:
        reap(child)


async def test_two_workers_register_without_collision_and_deregister_on_exit(
    server: MusterServer,
) -> None:
    # A long TTL: disappearing quickly proves deregistration, not expiry.
    workers = [spawn(server, "web", 60), spawn(server, "web", 60)]
    try:
        ids = [await read_id(w) for w in workers]
        assert ids[0] != ids[1]
        async with muster.AsyncMusterClient(server.url) as reader:
            await reader.wait_for("web", lambda r: sorted(r.ids) == sorted(ids))
            workers[0].terminate()  # SIGTERM: the signal handler deregisters
            await reader.wait_for("web", lambda r: r.ids == [ids[1]], timeout=5)
            assert workers[0].wait(10) == -15  # and the process still dies of SIGTERM
            assert workers[1].stdin is not None
            workers[1].stdin.close()  # clean exit: the atexit hook deregisters
            assert workers[1].wait(10) == 0
            await reader.wait_for("web", lambda r: len(r) == 0, timeout=5)
    finally:
        for w in workers:
            reap(w)
