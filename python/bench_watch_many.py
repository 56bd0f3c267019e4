"""One Python client doing 1,000 distinct lookups: connections held, time, memory.

    python python/bench_watch_many.py                  # starts target/release/muster
    python python/bench_watch_many.py --bin target/debug/muster --runs 1 -n 200

The Python counterpart of ``muster-bench watch-many`` (BENCHMARKS.md). Each
run starts a fresh ``muster agent`` on 127.0.0.1 (a throw-away data
directory), registers one instance in each of ``n`` services over a
connection of its own (closed afterwards), then one
:class:`muster.AsyncMusterClient` in this process looks all of them up at
once (``discover("svc-<i>")``, gathered). Reported per run:

- *all answered*: until every lookup has its first answer (a snapshot);
- *on one stream*: until the client has merged its lookups onto one watch
  stream (it opens a stream at once for new lookups and merges them when
  none was added for 100 ms), read from the server's ``muster_watch_streams``;
- the server's gauges then: watch streams (queries) and open HTTP
  connections (``muster_http_connections``, the one reading ``/metrics``
  included);
- the client process's resident memory before the client was made and
  after all lookups are answered and merged (each run in a fresh Python
  process, so that runs do not share a heap).

Every wait has a deadline (``--timeout``); the run fails rather than hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import muster
from muster import MusterBackend, Registration

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Agent:
    """A ``muster agent`` on a free loopback port, with a throw-away data directory."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="muster-bench-py-")
        self.proc = subprocess.Popen(
            [binary, "agent", "--http-addr", "127.0.0.1:0", "--data-dir", f"{self.dir}/data"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # printed once it serves
        if not line.startswith("muster listening on "):
            self.close()
            raise RuntimeError(f"muster did not start: {line!r}")
        self.url = line.removeprefix("muster listening on ")

    def metric(self, name: str) -> float:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def register_all(url: str, n: int) -> None:
    be = MusterBackend([url])
    try:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                await be.register(f"svc-{i}", f"i-{i}", Registration("127.0.0.1", 10000 + i), None)

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await be.aclose()


async def until(what: str, cond: object, deadline: float) -> None:
    while not await asyncio.to_thread(cond):  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not before the deadline: {what}")
        await asyncio.sleep(0.01)  # polling the server's gauge, bounded by the deadline


async def one_run(binary: str, n: int, timeout: float) -> dict[str, float]:
    agent = Agent(binary)
    try:
        await register_all(agent.url, n)
        deadline = time.monotonic() + timeout
        before = rss_mib()
        async with muster.AsyncMusterClient(agent.url) as client:
            t0 = time.perf_counter()
            found = await asyncio.wait_for(
                asyncio.gather(*(client.discover(f"svc-{i}") for i in range(n))), timeout
            )
            answered = time.perf_counter() - t0
            assert all(len(r) == 1 and not r.stale for r in found)
            await until(
                "one watch stream for every lookup",
                lambda: (
                    agent.metric("muster_watch_streams") == 1
                    and agent.metric("muster_watch_queries") == n
                ),
                deadline,
            )
            merged = time.perf_counter() - t0
            # Still fresh, from the cache, once merged.
            misses = client.stats.cache_misses
            again = [await client.discover(f"svc-{i}") for i in range(n)]
            assert all(len(r) == 1 and not r.stale for r in again)
            assert client.stats.cache_misses == misses
            return {
                "answered_ms": answered * 1000,
                "merged_ms": merged * 1000,
                "streams": agent.metric("muster_watch_streams"),
                "queries": agent.metric("muster_watch_queries"),
                "connections": agent.metric("muster_http_connections"),
                "rss_before": before,
                "rss_after": rss_mib(),
            }
    finally:
        agent.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_bin = os.environ.get("MUSTER_BIN") or str(REPO / "target" / "release" / "muster")
    ap.add_argument("--bin", default=default_bin, help="the muster binary (default: %(default)s)")
    ap.add_argument("-n", type=int, default=1000, help="services looked up (default 1000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline of one run, seconds")
    ap.add_argument("--one", action="store_true", help="one run here, its figures as JSON")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one_run(args.bin, args.n, args.timeout))))
        return
    print(
        f"| run | all {args.n:,} answered | on one stream | watch streams (queries) "
        "| server connections | client RSS before → after |"
    )
    print("|---|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        child = subprocess.run(
            [
                *(sys.executable, __file__, "--one", "--bin", args.bin),
                *("-n", str(args.n), "--timeout", str(args.timeout)),
            ],
            capture_output=True,
            text=True,
            timeout=args.timeout + 30,
        )
        if child.returncode != 0:
            raise SystemExit(f"run {run} failed:\n{child.stderr}")
        r = json.loads(child.stdout)
        print(
            f"| {run} | {r['answered_ms']:.0f} ms | {r['merged_ms']:.0f} ms "
            f"| {r['streams']:.0f} ({r['queries']:,.0f}) | {r['connections']:.0f} "
            f"| {r['rss_before']:.1f} → {r['rss_after']:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
