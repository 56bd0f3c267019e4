"""A rolling restart of a 3-node cluster under writes: how long writes stall.

    python3 crates/muster-bench/scripts/rolling_restart.py [MUSTER_BIN]

Starts three `muster agent`s on free loopback ports, each with its own data
directory under a temporary directory (removed at the end). Six clients
write new instances, each sending its next write to the next node in turn
(a refused connection, the node being down, moves on at once). Each node is
then stopped with SIGTERM, started again a second later on its data, and
waited for until it applied the leader's commit index. Prints every pause
over 100 ms between two acknowledged writes of one client, when it began,
and which node answered the write that ended it; then checks that every
node holds every acknowledged write. Bounded: at most 60 s of writes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/muster"
os.environ["no_proxy"] = "*"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


work = tempfile.mkdtemp(prefix="muster-roll-")
cluster_ports, http_ports = free_ports(3), free_ports(3)
peers = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(cluster_ports))
procs: dict[int, subprocess.Popen[bytes]] = {}


def start(i: int) -> None:
    # The agent gets its own copy of the descriptor; ours closes at once.
    with open(os.path.join(work, f"n{i}.log"), "a") as log:
        procs[i] = subprocess.Popen(
            [
                BIN,
                "agent",
                "--node-id",
                str(i),
                "--peers",
                peers,
                "--cluster-addr",
                f"127.0.0.1:{cluster_ports[i - 1]}",
                "--http-addr",
                f"127.0.0.1:{http_ports[i - 1]}",
                "--data-dir",
                os.path.join(work, f"d{i}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "MUSTER_LOG": "warn"},
        )


def req(i: int, method: str, path: str, body: Any = None) -> tuple[Optional[int], Any]:
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(
        f"http://127.0.0.1:{http_ports[i - 1]}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError as e:
        return None, type(e).__name__


def leader() -> int:
    for _ in range(100):
        for i in list(procs):
            s, v = req(i, "GET", "/v1/cluster")
            if s == 200 and v.get("leader"):
                return int(v["leader"])
        time.sleep(0.1)
    raise SystemExit("no leader within 10 s")


def stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f"{t % 1:.2f}"[1:]


acked: list[str] = []
pauses: list[tuple[float, float, int]] = []
stop = False
deadline = time.time() + 60


def writer(w: int) -> None:
    n, last = 0, time.time()
    while not stop and time.time() < deadline:
        n += 1
        node = (w + n) % 3 + 1
        s, _ = req(
            node,
            "PUT",
            f"/v1/services/roll/instances/w{w}-{n}",
            {"address": "10.0.0.1", "port": 80},
        )
        if s == 200:
            acked.append(f"w{w}-{n}")
            now = time.time()
            if now - last > 0.1:
                pauses.append((last, now - last, node))
            last = now


try:
    for i in (1, 2, 3):
        start(i)
    print("leader", leader())
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    for i in (1, 2, 3):
        was = leader()
        print(stamp(time.time()), f"SIGTERM node {i} (node {was} named leader)")
        procs[i].terminate()
        procs[i].wait(60)
        time.sleep(1)
        print(stamp(time.time()), f"start node {i}")
        start(i)
        for _ in range(300):
            s, v = req(i, "GET", "/v1/cluster")
            if s == 200 and v.get("leader"):
                s2, v2 = req(int(v["leader"]), "GET", "/v1/cluster")
                if s2 == 200 and v["applied_index"] >= v2["commit_index"]:
                    break
            time.sleep(0.1)
    stop = True
    for t in threads:
        t.join()
    print(
        f"{len(acked)} writes acknowledged; pauses over 100 ms (began, length, node that ended it):"
    )
    for began, length, node in sorted(pauses):
        print(f"  {stamp(began)}  {length:.2f} s  node {node}")
    for i in (1, 2, 3):
        s, v = req(i, "GET", "/v1/services/roll/instances?health=any")
        have = {x["id"] for x in v["instances"]} if s == 200 else set()
        print(f"node {i}: {sum(1 for a in acked if a not in have)} acknowledged writes missing")
finally:
    stop = True
    for p in procs.values():
        p.kill()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)
