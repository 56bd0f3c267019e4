"""ACL tokens from the Python client: ``token=`` and ``MUSTER_TOKEN``, against
the real agent run with ``acl = true``; tokens made with the binary's own
``muster acl`` commands."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import muster

from .conftest import MUSTER_BIN, MusterServer


@dataclass(frozen=True)
class Acl:
    server: MusterServer
    management: str
    payments: str
    """A token with write on ``payments`` only."""


def _acl(url: str, token: str | None, *args: str) -> dict[str, object]:
    cmd = [MUSTER_BIN, "--addr", url, "--json"]
    if token:
        cmd += ["--token", token]
    out = subprocess.run([*cmd, "acl", *args], check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def acl() -> Iterator[Acl]:
    s = MusterServer("acl = true\n")
    boot = _acl(s.url, None, "bootstrap")
    management = str(boot["secret"])
    _acl(s.url, management, "policy", "create", "payments-write", "--write", "payments")
    token = _acl(s.url, management, "token", "create", "--policy", "payments-write")
    yield Acl(s, management, str(token["secret"]))
    s.close()


async def test_a_token_registers_discovers_and_watches_what_its_policy_grants(acl: Acl) -> None:
    url = acl.server.url
    async with (
        muster.AsyncMusterClient(url, token=acl.payments) as watcher,
        muster.AsyncMusterClient(url, token=acl.payments) as other,
    ):
        a = await watcher.register("payments", port=8080, address="10.0.0.1")
        assert (await watcher.discover("payments")).ids == [a.id]
        b = await other.register("payments", port=8081, address="10.0.0.2")
        seen = await watcher.wait_for("payments", lambda d: len(d.instances) == 2, timeout=10)
        assert sorted(seen.ids) == sorted([a.id, b.id])
        with pytest.raises(muster.RegistryError) as e:
            await watcher.register("orders", port=8080, address="10.0.0.1")
        assert (e.value.status, e.value.code) == (403, "permission_denied")
        assert 'write on service "orders"' in str(e.value)


async def test_without_a_token_or_with_a_wrong_one_writes_are_refused(acl: Acl) -> None:
    async with muster.AsyncMusterClient(acl.server.url) as anonymous:
        with pytest.raises(muster.RegistryError) as e:
            await anonymous.register("payments", port=8080, address="10.0.0.1")
        assert e.value.status == 403
    async with muster.AsyncMusterClient(acl.server.url, token="wrong") as wrong:
        with pytest.raises(muster.RegistryError) as e:
            await wrong.register("payments", port=8080, address="10.0.0.1")
        assert (e.value.status, e.value.code) == (401, "invalid_token")


def test_muster_token_comes_from_the_environment_and_is_never_shown(acl: Acl) -> None:
    config = muster.Config.from_env({"MUSTER_ADDR": acl.server.url, "MUSTER_TOKEN": acl.payments})
    assert config.token == acl.payments
    assert acl.payments not in repr(config)
    with muster.MusterClient(config=config) as client:
        r = client.register("payments", port=9090, address="10.0.0.9")
        assert r.id in client.discover("payments").ids
    with pytest.raises(muster.ConfigError):
        muster.Config(token="has space")
