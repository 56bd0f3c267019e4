"""Times a warm cached lookup (target: <= 20 us) and prints the figure.

    python python/bench_cached_lookup.py            # in-memory registry, no server
    python python/bench_cached_lookup.py --addr http://127.0.0.1:7700

The cache path is the same whatever the backend: once a watch has answered,
``discover`` reads an immutable snapshot without I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import muster
from muster import InMemoryBackend


def best_per_call(fn: object, n: int, rounds: int = 5) -> float:
    """Best of ``rounds`` runs of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", help="a running muster (default: in-memory registry)")
    ap.add_argument("-n", type=int, default=200_000)
    args = ap.parse_args()

    backend = None if args.addr else InMemoryBackend()
    client = muster.MusterClient(args.addr, backend=backend)
    try:
        for i in range(10):
            client.register("payments", 8000 + i, address="127.0.0.1", version="1.4.2")
        client.wait_for("payments", lambda r: len(r) == 10)
        client.discover("payments", version="^1.4", tags=["x"])  # warm a filtered lookup too
        sync_plain = best_per_call(lambda: client.discover("payments"), args.n)
        sync_filtered = best_per_call(
            lambda: client.discover("payments", version="^1.4", tags=["x"]), args.n
        )

        aio = client.aio

        async def async_loop(n: int) -> float:
            await aio.discover("payments")
            t0 = time.perf_counter()
            for _ in range(n):
                await aio.discover("payments")
            return (time.perf_counter() - t0) / n * 1e6

        async_plain = min(
            asyncio.run_coroutine_threadsafe(async_loop(args.n), client._loop.loop).result()
            for _ in range(3)
        )
        balancer = muster.RoundRobin()
        pick = best_per_call(lambda: balancer.pick(client.discover("payments")), args.n)
    finally:
        client.close()
    print(f"warm cached lookup, sync  discover('payments'):           {sync_plain:.2f} us")
    print(f"warm cached lookup, sync  discover(filters):              {sync_filtered:.2f} us")
    print(f"warm cached lookup, async await discover('payments'):     {async_plain:.2f} us")
    print(f"lookup + round-robin pick:                                {pick:.2f} us")
    print(f"target <= 20 us: {'met' if max(sync_plain, async_plain) <= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
