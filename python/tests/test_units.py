"""Pure units: balancers, ejection back-off, version ranges, configuration."""

from __future__ import annotations

import random
import socket
from collections import Counter

import pytest

import muster
from muster import Config, Instance, version_matches

from .conftest import MusterServer


def inst(i: str, zone: str | None = None, weight: int = 100) -> Instance:
    return Instance(id=i, service="s", address="127.0.0.1", port=1, zone=zone, weight=weight)


A, B, C = inst("a", "z1"), inst("b", "z1"), inst("c", "z2")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_and_ejection_with_back_off() -> None:
    clock = Clock()
    rr = muster.RoundRobin(clock=clock)
    assert [rr.pick([A, B, C]).id for _ in range(3)] == ["a", "b", "c"]
    rr.report_failure(B)
    assert {rr.pick([A, B, C]).id for _ in range(6)} == {"a", "c"}
    clock.now += 1.01  # first ejection lasts 1 s
    assert "b" in {rr.pick([A, B, C]).id for _ in range(6)}
    rr.report_failure(B)  # second failure in a row: 2 s
    clock.now += 1.5
    assert rr.is_ejected(B)
    rr.report_success(B)
    assert not rr.is_ejected(B)
    # All ejected: try them all rather than fail.
    for i in (A, B, C):
        rr.report_failure(i)
    assert rr.pick([A, B, C]) in (A, B, C)
    with pytest.raises(muster.NoInstancesError):
        rr.pick([])


def test_weighted_follows_weights() -> None:
    w = muster.Weighted(rng=random.Random(1))
    heavy, light = inst("h", weight=300), inst("l", weight=100)
    seen = Counter(w.pick([heavy, light]).id for _ in range(4000))
    assert 2.5 < seen["h"] / seen["l"] < 3.5


def test_random_uses_every_instance() -> None:
    r = muster.RandomBalancer(rng=random.Random(2))
    assert {r.pick([A, B, C]).id for _ in range(100)} == {"a", "b", "c"}


def test_p2c_prefers_fewer_requests_in_flight() -> None:
    p = muster.PowerOfTwo(rng=random.Random(3))
    for _ in range(5):
        p.begin(A)
    p.begin(B)
    picks = Counter(p.pick([A, B]).id for _ in range(50))
    assert picks == {"b": 50}
    p.end(B)
    assert p.in_flight(B) == 0


def test_zone_aware_prefers_local_then_falls_back() -> None:
    z = muster.ZoneAware("z1", muster.RoundRobin())
    assert {z.pick([A, B, C]).id for _ in range(10)} == {"a", "b"}
    z.report_failure(A)
    z.report_failure(B)
    assert z.pick([A, B, C]).id == "c"
    assert muster.make_balancer("zone", zone="z2").pick([A, B, C]).id == "c"
    with pytest.raises(ValueError):
        muster.make_balancer("nope")


@pytest.mark.parametrize(
    ("rng", "version", "ok"),
    [
        ("^1.4", "1.4.0", True),
        ("^1.4", "1.9.3", True),
        ("^1.4", "1.3.9", False),
        ("^1.4", "2.0.0", False),
        ("^0.4", "0.4.9", True),
        ("^0.4", "0.5.0", False),
        ("~1.4.2", "1.4.9", True),
        ("~1.4.2", "1.5.0", False),
        (">=2, <3", "2.5.1", True),
        (">=2, <3", "3.0.0", False),
        ("1.4", "1.8.0", True),
        ("=1.4", "1.8.0", False),
        ("*", "0.0.1", True),
        (">1.4", "1.4.9", False),
        ("<=1.4", "1.4.9", True),
        ("^1.4", "1.5.0-beta.1", False),
        (">=1.5.0-alpha", "1.5.0-beta.1", True),
        ("blue", "blue", True),
        ("blue", "green", False),
        ("^1", "v1-beta", False),
        ("v1-beta", "v1-beta", True),
    ],
)
def test_version_ranges_match_the_server(rng: str, version: str, ok: bool) -> None:
    assert version_matches(rng, version) is ok


def test_config_from_env_and_overrides() -> None:
    env = {
        "MUSTER_ADDR": "10.0.0.1:7700, http://10.0.0.2:7700/",
        "MUSTER_NAMESPACE": "staging",
        "MUSTER_TTL": "3s",
        "MUSTER_MAX_STALENESS": "2m",
        "MUSTER_ZONE": "eu-1a",
        "MUSTER_TIMEOUT": "500ms",
    }
    c = Config.from_env(env)
    assert c.addresses == ("http://10.0.0.1:7700", "http://10.0.0.2:7700")
    assert (c.namespace, c.ttl, c.max_staleness, c.zone, c.timeout) == (
        "staging",
        3.0,
        120.0,
        "eu-1a",
        0.5,
    )
    c = Config.from_env(env, ttl="20s", namespace=None)
    assert (c.ttl, c.namespace) == (20.0, "staging")
    with pytest.raises(muster.ConfigError):
        Config.from_env({"MUSTER_TTL": "0.5s"})
    with pytest.raises(muster.ConfigError):
        Config.from_env({"MUSTER_TTL": "soon"})


def test_a_config_given_as_the_addresses_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"config=\.\.\."):
        muster.MusterClient(Config())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of strings, not int"):
        Config.from_env({}, addresses=7700)  # type: ignore[arg-type]


def dead_address() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_registry_unreachable_everywhere_is_a_clear_error() -> None:
    dead = dead_address()
    cfg = Config.from_env(addresses=[dead, dead], initial_wait=2)
    async with muster.AsyncMusterClient(config=cfg) as c:
        with pytest.raises(muster.RegistryUnavailableError):
            await c.discover("pay")
        with pytest.raises(muster.RegistryUnavailableError):
            await c.register("pay", 80)


async def test_failover_to_the_next_registry_address(server: MusterServer) -> None:
    async with muster.AsyncMusterClient([dead_address(), server.url]) as c:
        h = await c.register("pay", 80, address="127.0.0.1")
        assert (await c.discover("pay")).ids == [h.id]
