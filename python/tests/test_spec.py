"""The Python runner of the clients' behavioural spec.

Every scenario of ``spec/client/*.toml`` (format in ``spec/client/README.md``)
runs as one test, ``test_scenario[<name>]``, against a real ``muster agent``
process (``MUSTER_BIN``). The Rust runner
(``crates/muster-client/tests/it/spec.rs``) runs the same files. An unknown
step, observation or key fails the scenario; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

import muster

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: the runner needs 3.11
    tomllib = None  # type: ignore[assignment]

from .conftest import MUSTER_BIN, REPO

SPEC_DIR = REPO / "spec" / "client"
SCENARIOS = sorted(SPEC_DIR.glob("*.toml"))
# How often a ``wait`` or ``hold`` checks its observations.
TICK = 0.01

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ScenarioError(AssertionError):
    """The scenario failed: an expectation broke, or the file is not understood."""


def duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise ScenarioError(f"{text!r} is not a duration such as '500ms' or '2s'")
    return float(m[1]) * _UNITS[m[2]]


class Keys:
    """A table whose keys are consumed as read; :meth:`done` fails on any left unread."""

    def __init__(self, table: Any, ctx: str) -> None:
        if not isinstance(table, dict):
            raise ScenarioError(f"{ctx}: not a table")
        self.table: dict[str, Any] = table
        self.ctx = ctx
        self.used: set[str] = set()

    def fail(self, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.ctx}: {msg}")

    def get(self, key: str, kind: type | tuple[type, ...] = object) -> Any:
        self.used.add(key)
        v = self.table.get(key)
        if v is not None and not isinstance(v, kind):
            raise self.fail(f"`{key}` has the wrong type: {v!r}")
        return v

    def req(self, key: str, kind: type | tuple[type, ...] = str) -> Any:
        v = self.get(key, kind)
        if v is None:
            raise self.fail(f"`{key}` is required")
        return v

    def dur(self, key: str) -> Optional[float]:
        v = self.get(key, str)
        return None if v is None else duration(v)

    def int(self, key: str) -> Optional[int]:
        v = self.get(key, int)
        if isinstance(v, bool):
            raise self.fail(f"`{key}` must be an integer")
        return v

    def sub(self, key: str) -> Optional[Keys]:
        v = self.get(key, dict)
        return None if v is None else Keys(v, f"{self.ctx}, `{key}`")

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(f"unknown keys {unknown}")


def kind(e: BaseException) -> str:
    """The spec's name for an error (README, "Error kinds")."""
    if isinstance(e, muster.InvalidRequestError):
        return "bad_request"
    if isinstance(e, muster.NotFoundError):
        return "not_found"
    if isinstance(e, muster.RegistryUnavailableError):
        return "unavailable"
    if isinstance(e, muster.StaleDataError):
        return "stale"
    if isinstance(e, muster.NoInstancesError):
        return "no_healthy_instance"
    return f"no kind ({e!r})"


class Agent:
    """A ``muster agent`` process: the first start on a free port, later ones on the same."""

    def __init__(self) -> None:
        if not os.path.isfile(MUSTER_BIN):
            raise ScenarioError(f"no muster binary at {MUSTER_BIN}: build it or set MUSTER_BIN")
        self.root = tempfile.mkdtemp(prefix="muster-spec-")
        self.generation = 0
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen[str]] = None

    @property
    def base(self) -> str:
        if self.port is None:
            raise ScenarioError("a client of the registry needs a start_registry step first")
        return f"http://127.0.0.1:{self.port}"

    def start(self, fresh: bool) -> None:
        if self.proc is not None:
            raise ScenarioError("the registry is already running")
        if fresh:
            self.generation += 1
        data = os.path.join(self.root, f"data-{self.generation}")
        log_path = os.path.join(self.root, "stderr.log")
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    MUSTER_BIN,
                    "agent",
                    "--http-addr",
                    f"127.0.0.1:{self.port or 0}",
                    "--data-dir",
                    data,
                    "--self-preservation-threshold",
                    "1",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        assert self.proc.stdout is not None
        # The agent prints one line once it serves: read it, no sleeping.
        line = self.proc.stdout.readline().strip()
        prefix = "muster listening on "
        if not line.startswith(prefix):
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
            raise ScenarioError(f"muster did not start: {line!r}\n{Path(log_path).read_text()}")
        port = int(line.rsplit(":", 1)[1])
        if self.port is not None and port != self.port:
            raise ScenarioError(f"restarted on {port}, not {self.port}")
        self.port = port

    def stop(self, sig: str) -> None:
        if self.proc is None:
            raise ScenarioError("the registry is not running")
        if sig == "kill":
            self.proc.kill()
        elif sig == "term":
            self.proc.send_signal(signal.SIGTERM)
        else:
            raise ScenarioError(f"unknown signal {sig!r} (term, kill)")
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.stop("kill")
        shutil.rmtree(self.root, ignore_errors=True)


class SilentPeer:
    """A registry that hangs: accepts connections, reads them, never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.addr = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.addr = f"http://{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def _filters(k: Keys) -> dict[str, Any]:
    f: dict[str, Any] = {}
    tags = k.get("tags", list)
    if tags is not None:
        f["tags"] = tags
    meta = k.get("meta", dict)
    if meta is not None:
        f["meta"] = meta
    for name in ("version", "zone", "health"):
        v = k.get(name, str)
        if v is not None:
            f[name] = v
    if f.get("health") not in (None, "passing", "any"):
        raise k.fail(f"unknown health {f['health']!r}")
    return f


class World:
    def __init__(self) -> None:
        self.agent = Agent()
        self.peers: dict[str, SilentPeer] = {}
        self.clients: dict[str, muster.AsyncMusterClient] = {}
        self.balancers: dict[str, tuple[muster.Balancer, str, str, dict[str, Any]]] = {}

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()
        for p in self.peers.values():
            await p.close()
        self.agent.close()

    def client(self, k: Keys) -> muster.AsyncMusterClient:
        name = k.req("client")
        if name not in self.clients:
            raise k.fail(f"no client {name!r}")
        return self.clients[name]

    @staticmethod
    def fresh(k: Keys) -> bool:
        data = k.get("data", str) or "same"
        if data not in ("same", "fresh"):
            raise k.fail(f"unknown data {data!r} (same, fresh)")
        return data == "fresh"

    async def step(self, k: Keys) -> None:
        what = k.req("do")
        if what == "start_registry":
            self.agent.start(self.fresh(k))
        elif what == "stop_registry":
            self.agent.stop(k.get("signal", str) or "term")
        elif what == "restart_registry":
            fresh = self.fresh(k)
            self.agent.stop(k.get("signal", str) or "term")
            self.agent.start(fresh)
        elif what == "silent_peer":
            peer = SilentPeer()
            await peer.start()
            self.peers[k.req("name")] = peer
        elif what == "client":
            self.make_client(k)
        elif what == "register":
            await self.register(k)
        elif what == "deregister":
            await self.client(k).deregister((k.req("service"), k.req("id")))
        elif what == "balancer":
            self.make_balancer(k)
        elif what == "eject":
            name = k.req("balancer")
            if name not in self.balancers:
                raise k.fail(f"no balancer {name!r}")
            b, client, service, filters = self.balancers[name]
            found = await self.clients[client].discover(service, **filters)
            inst = next((i for i in found if i.id == k.req("id")), None)
            if inst is None:
                raise k.fail(f"{k.req('id')!r} is not among {found.ids}")
            b.report_failure(inst)
        elif what == "pick":
            await self.pick(k)
        elif what == "expect":
            miss = await self.observe(k, None)
            if miss is not None:
                raise k.fail(miss)
        elif what == "wait":
            await self.wait(k)
        elif what == "hold":
            period = duration(k.req("for"))
            throughout = k.sub("throughout")
            if throughout is None:
                raise k.fail("`throughout` is required")
            end = time.monotonic() + period
            while True:
                miss = await self.observe(throughout, end + period)
                if miss is not None:
                    raise k.fail(f"did not hold for {period}s: {miss}")
                if time.monotonic() >= end:
                    break
                await asyncio.sleep(TICK)
            throughout.done()
        else:
            raise k.fail(f"unknown step {what!r}")

    async def wait(self, k: Keys) -> None:
        within = duration(k.req("within"))
        until = k.sub("until")
        if until is None:
            raise k.fail("`until` is required")
        throughout = k.sub("throughout")
        deadline = time.monotonic() + within
        while True:
            if throughout is not None:
                miss = await self.observe(throughout, deadline)
                if miss is not None:
                    raise k.fail(f"`throughout` broke while waiting: {miss}")
            miss = await self.observe(until, deadline)
            if miss is None:
                break
            if time.monotonic() >= deadline:
                raise k.fail(f"not within {within}s: {miss}")
            await asyncio.sleep(TICK)
        until.done()
        if throughout is not None:
            throughout.done()

    def make_client(self, k: Keys) -> None:
        name = k.req("name")
        registry = k.get("registry", str) or "agent"
        if registry == "agent":
            addr = self.agent.base
        elif registry in self.peers:
            addr = self.peers[registry].addr
        else:
            raise k.fail(f"no silent peer {registry!r}")
        overrides: dict[str, Any] = {"addresses": addr}
        for key in ("ttl", "max_staleness", "timeout"):
            v = k.dur(key)
            if v is not None:
                overrides[key] = v
        retries = k.int("retries")
        if retries is not None:
            overrides["retries"] = retries
        config = muster.Config.from_env({}, **overrides)
        self.clients[name] = muster.AsyncMusterClient(config=config)

    async def register(self, k: Keys) -> None:
        c = self.client(k)
        kw: dict[str, Any] = {
            "address": k.get("address", str) or "127.0.0.1",
            "instance_id": k.req("id"),
            "tags": k.get("tags", list) or (),
            "meta": k.get("meta", dict),
            "version": k.get("version", str),
            "zone": k.get("zone", str),
            "weight": k.int("weight"),
        }
        port = k.int("port")
        expected = k.get("error", str)
        took_min, took_max = k.dur("took_min"), k.dur("took_max")
        start = time.monotonic()
        try:
            await c.register(k.req("service"), 8080 if port is None else port, **kw)
            error: Optional[BaseException] = None
        except muster.MusterError as e:
            error = e
        took = time.monotonic() - start
        if expected is None and error is not None:
            raise k.fail(f"register failed: {error!r}")
        if expected is not None:
            if error is None:
                raise k.fail(f"registered, expected the error {expected}")
            if kind(error) != expected:
                raise k.fail(f"expected {expected}, got {kind(error)}: {error!r}")
        if (took_min is not None and took < took_min) or (took_max is not None and took > took_max):
            raise k.fail(f"took {took:.3f}s, outside [{took_min}, {took_max}]")

    def make_balancer(self, k: Keys) -> None:
        name, client, service = k.req("name"), k.req("client"), k.req("service")
        if client not in self.clients:
            raise k.fail(f"no client {client!r}")
        filters = _filters(k)
        strategy = k.req("strategy")
        seed = k.int("seed")
        ejection = k.dur("ejection")
        kw: dict[str, Any] = {}
        if ejection is not None:
            kw = {"base_ejection": ejection, "max_ejection": ejection}
        rng = random.Random(seed)
        b: muster.Balancer
        if strategy == "round_robin":
            b = muster.RoundRobin(**kw)
        elif strategy == "random":
            b = muster.RandomBalancer(rng=rng, **kw)
        elif strategy == "weighted":
            b = muster.Weighted(rng=rng, **kw)
        elif strategy == "p2c":
            b = muster.PowerOfTwo(rng=rng, **kw)
        else:
            raise k.fail(f"unknown strategy {strategy!r}")
        self.balancers[name] = (b, client, service, filters)

    async def pick(self, k: Keys) -> None:
        names = k.req("balancers", list)
        rounds = k.int("rounds") or 1
        counts: dict[str, Counter[str]] = {}
        errors: dict[str, set[str]] = {}
        for _ in range(rounds):
            for name in names:
                if name not in self.balancers:
                    raise k.fail(f"no balancer {name!r}")
                b, client, service, filters = self.balancers[name]
                try:
                    found = await self.clients[client].discover(service, **filters)
                    inst = b.pick(found.instances)
                except muster.MusterError as e:
                    errors.setdefault(name, set()).add(kind(e))
                    continue
                b.begin(inst)
                b.end(inst)
                counts.setdefault(name, Counter())[inst.id] += 1
        expected_error = k.get("error", str)
        want_counts = k.get("counts", dict)
        between = k.get("between", dict)
        if expected_error is not None:
            for name in names:
                got = errors.get(name, set())
                if name in counts or got != {expected_error}:
                    raise k.fail(
                        f"{name}: expected every pick to fail with {expected_error}, "
                        f"got picks {dict(counts.get(name, {}))} and errors {got}"
                    )
            return
        if errors:
            raise k.fail(f"picks failed: {errors}")
        for b, want in (want_counts or {}).items():
            got = dict(counts.get(b, {}))
            if got != want:
                raise k.fail(f"{b}: picked {got}, expected {want}")
        for b, bounds in (between or {}).items():
            got = dict(counts.get(b, {}))
            if set(got) != set(bounds):
                raise k.fail(f"{b}: picked {got}, expected only {sorted(bounds)}")
            for iid, (lo, hi) in bounds.items():
                if not lo <= got[iid] <= hi:
                    raise k.fail(f"{b}: {iid} picked {got[iid]} times, not in [{lo}, {hi}]")

    async def observe(self, k: Keys, deadline: Optional[float]) -> Optional[str]:
        """Checks one observation: None when it holds, else what differs."""
        look = k.req("look")
        if look == "discovery":
            c = self.client(k)
            service = k.req("service")
            filters = _filters(k)
            expected_error = k.get("error", str)
            ids = k.get("ids", list)
            stale = k.get("stale", bool)
            age_min, age_max = k.dur("age_min"), k.dur("age_max")
            limit = (deadline if deadline is not None else time.monotonic() + 30) - time.monotonic()
            try:
                found = await asyncio.wait_for(c.discover(service, **filters), max(limit, 0.001))
            except asyncio.TimeoutError:
                return f"{service} {filters}: no answer in time"
            except muster.MusterError as e:
                if expected_error is not None and kind(e) == expected_error:
                    return None
                return f"{service} {filters}: {kind(e)} ({e!r})"
            if expected_error is not None:
                return f"{service} {filters}: answered {found.ids}, not {expected_error}"
            diffs = []
            if ids is not None and sorted(found.ids) != sorted(ids):
                diffs.append(f"ids {found.ids}, expected {sorted(ids)}")
            if stale is not None and found.stale != stale:
                diffs.append(f"stale is {found.stale}")
            if (age_min is not None and found.age < age_min) or (
                age_max is not None and found.age > age_max
            ):
                diffs.append(f"age {found.age:.3f}s outside [{age_min}, {age_max}]")
            return f"{service} {filters}: {'; '.join(diffs)}" if diffs else None
        if look == "lease":
            stats = self.client(k).stats
            diffs = []
            renewals_min = k.int("renewals_min")
            if renewals_min is not None and stats.renewals < renewals_min:
                diffs.append(f"{stats.renewals} renewals, fewer than {renewals_min}")
            rereg = k.int("reregistrations")
            if rereg is not None and stats.reregistrations != rereg:
                diffs.append(f"{stats.reregistrations} reregistrations, not {rereg}")
            connection = k.get("connection", str)
            if connection is not None:
                state = self.client(k).connection_state.value
                if connection not in ("idle", "connected", "suspended", "lost"):
                    raise k.fail(f"unknown connection state {connection!r}")
                if state != connection:
                    diffs.append(f"connection {state}, not {connection}")
            return f"lease: {'; '.join(diffs)}" if diffs else None
        if look == "peer":
            name = k.req("name")
            if name not in self.peers:
                raise k.fail(f"no silent peer {name!r}")
            got = self.peers[name].connections
            want = k.int("connections")
            return None if want is None or got == want else f"{name}: {got} connections"
        if look == "defaults":
            d = muster.Config()
            diffs = []
            for key, have in (
                ("timeout", d.timeout),
                ("backoff_initial", d.backoff_initial),
                ("backoff_max", d.backoff_max),
            ):
                want_d = k.dur(key)
                if want_d is not None and abs(want_d - have) > 1e-9:
                    diffs.append(f"{key} {have}")
            retries = k.int("retries")
            if retries is not None and retries != d.retries:
                diffs.append(f"retries {d.retries}")
            return f"defaults differ: {'; '.join(diffs)}" if diffs else None
        raise k.fail(f"unknown observation {look!r}")


def load(path: Path) -> dict[str, Any]:
    if tomllib is None:
        raise ScenarioError("the spec runner needs Python 3.11 or later (tomllib)")
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_scenario(path: Path) -> None:
    top = Keys(load(path), path.stem)
    if top.req("name") != path.stem:
        raise top.fail("a scenario's name is its file's stem")
    top.get("about", str)
    steps = top.req("step", list)
    top.done()
    world = World()
    try:
        for n, raw in enumerate(steps, 1):
            k = Keys(raw, f"{path.stem}, step {n}")
            await world.step(k)
            k.done()
    finally:
        await world.close()


async def test_an_unknown_step_fails() -> None:
    world = World()
    try:
        with pytest.raises(ScenarioError, match="unknown step 'dance'"):
            await world.step(Keys({"do": "dance"}, "test"))
        with pytest.raises(ScenarioError, match="unknown observation 'vibes'"):
            await world.step(Keys({"do": "expect", "look": "vibes"}, "test"))
    finally:
        await world.close()


def test_an_unknown_key_fails() -> None:
    k = Keys({"do": "wait", "withn": "1s"}, "test")
    k.req("do")
    with pytest.raises(ScenarioError, match=r"unknown keys \['withn'\]"):
        k.done()


def test_every_scenario_runs() -> None:
    # A glob that found nothing would pass vacuously.
    assert len(SCENARIOS) >= 10, SCENARIOS
