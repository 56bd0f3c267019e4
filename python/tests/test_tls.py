"""TLS towards the registry: ``verify=``, ``cert=`` and their ``MUSTER_*``
variables, against the real agent serving HTTPS, with certificates made by
the binary's own ``muster tls`` commands."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import muster

from .conftest import MUSTER_BIN, MusterServer

# Bound on how long a refused client may take to say so: three passes with
# back-off take well under a second; a hang would take forever.
REFUSED_WITHIN = 10.0


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate it signed (for 127.0.0.1) and a client one."""

    ca: str
    server: str
    server_key: str
    client: str
    client_key: str
    client_combined: str
    """The client certificate and its key in one file."""
    other_ca: str
    """A second CA, which signed nothing here."""


def _tls(*args: str, cwd: Path) -> None:
    subprocess.run([MUSTER_BIN, "tls", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    _tls("ca", "create", "--dir", str(d), cwd=d)
    signed_by = ["--dir", str(d), "--ca", str(d / "muster-ca.pem")]
    signed_by += ["--ca-key", str(d / "muster-ca-key.pem")]
    _tls("cert", "create", "--server", *signed_by, cwd=d)
    _tls("cert", "create", "--client", *signed_by, cwd=d)
    other = d / "other"
    other.mkdir()
    _tls("ca", "create", "--dir", str(other), cwd=other)
    combined = d / "client-combined.pem"
    combined.write_text(
        (d / "muster-client.pem").read_text() + (d / "muster-client-key.pem").read_text()
    )
    return Certs(
        ca=str(d / "muster-ca.pem"),
        server=str(d / "muster-server.pem"),
        server_key=str(d / "muster-server-key.pem"),
        client=str(d / "muster-client.pem"),
        client_key=str(d / "muster-client-key.pem"),
        client_combined=str(combined),
        other_ca=str(other / "muster-ca.pem"),
    )


def _agent(certs: Certs, *, client_ca: bool) -> MusterServer:
    config = f'tls_cert = "{certs.server}"\ntls_key = "{certs.server_key}"\n'
    if client_ca:
        config += f'tls_client_ca = "{certs.ca}"\n'
    s = MusterServer(config)
    assert s.url.startswith("https://"), s.url
    return s


@pytest.fixture
def tls_server(certs: Certs) -> Iterator[MusterServer]:
    """An agent serving HTTPS only."""
    s = _agent(certs, client_ca=False)
    yield s
    s.close()


@pytest.fixture
def mtls_server(certs: Certs) -> Iterator[MusterServer]:
    """An agent serving HTTPS that requires client certificates from the CA."""
    s = _agent(certs, client_ca=True)
    yield s
    s.close()


async def _register_discover_watch(url: str, **tls: object) -> None:
    """Registration, a lookup (the watch pool) and a change seen through the watch."""
    async with (
        muster.AsyncMusterClient(url, **tls) as watcher,  # type: ignore[arg-type]
        muster.AsyncMusterClient(url, **tls) as other,  # type: ignore[arg-type]
    ):
        a = await watcher.register("payments", port=8080, address="10.0.0.1")
        assert (await watcher.discover("payments")).ids == [a.id]
        b = await other.register("payments", port=8081, address="10.0.0.2")
        seen = await watcher.wait_for("payments", lambda d: len(d.instances) == 2, timeout=10)
        assert sorted(seen.ids) == sorted([a.id, b.id])
        assert not seen.stale
        summary = await watcher.services()
        assert [s.name for s in summary] == ["payments"]


async def test_a_client_trusting_the_ca_registers_discovers_and_watches(
    tls_server: MusterServer, certs: Certs
) -> None:
    await _register_discover_watch(tls_server.url, verify=certs.ca)


async def test_a_client_trusting_only_the_system_roots_is_refused_clearly(
    tls_server: MusterServer, certs: Certs
) -> None:
    for verify in (True, certs.other_ca):
        async with muster.AsyncMusterClient(tls_server.url, verify=verify) as client:
            with pytest.raises(muster.RegistryUnavailableError) as e:
                await asyncio.wait_for(client.register("payments", port=8080), REFUSED_WITHIN)
            assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
            assert "MUSTER_CACERT" in str(e.value), e.value
            # A first lookup fails as soon as its watch does, not after initial_wait.
            with pytest.raises(muster.RegistryUnavailableError) as e:
                await asyncio.wait_for(client.discover("payments"), REFUSED_WITHIN)
            assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


async def test_with_client_certificates_required_only_a_client_with_one_gets_in(
    mtls_server: MusterServer, certs: Certs
) -> None:
    async with muster.AsyncMusterClient(mtls_server.url, verify=certs.ca) as client:
        with pytest.raises(muster.RegistryUnavailableError) as e:
            await asyncio.wait_for(client.register("payments", port=8080), REFUSED_WITHIN)
        assert "client certificate" in str(e.value), e.value
        with pytest.raises(muster.RegistryUnavailableError) as e:
            await asyncio.wait_for(client.discover("payments"), REFUSED_WITHIN)
        assert "client certificate" in str(e.value), e.value
        # A GET, whose refusal surfaces as a bare ssl.SSLError inside httpx.
        with pytest.raises(muster.RegistryUnavailableError) as e:
            await asyncio.wait_for(client.services(), REFUSED_WITHIN)
        assert "requires a client certificate" in str(e.value), e.value
    await _register_discover_watch(
        mtls_server.url, verify=certs.ca, cert=(certs.client, certs.client_key)
    )


async def test_the_environment_variables_configure_tls(
    mtls_server: MusterServer, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSTER_ADDR", mtls_server.url)
    monkeypatch.setenv("MUSTER_CACERT", certs.ca)
    monkeypatch.setenv("MUSTER_CLIENT_CERT", certs.client)
    monkeypatch.setenv("MUSTER_CLIENT_KEY", certs.client_key)
    config = muster.Config.from_env()
    assert config.verify == certs.ca
    assert config.cert == (certs.client, certs.client_key)
    async with muster.AsyncMusterClient() as client:
        h = await client.register("payments", port=8080, address="10.0.0.1")
        assert (await client.discover("payments")).ids == [h.id]
    # MUSTER_CLIENT_CERT alone: one file with the certificate and its key.
    monkeypatch.setenv("MUSTER_CLIENT_CERT", certs.client_combined)
    monkeypatch.delenv("MUSTER_CLIENT_KEY")
    async with muster.AsyncMusterClient() as client:
        assert client.config.cert == certs.client_combined
        await client.register("orders", port=8080, address="10.0.0.1")


def test_the_sync_client_over_mtls(mtls_server: MusterServer, certs: Certs) -> None:
    with muster.MusterClient(mtls_server.url, verify=certs.ca, cert=certs.client_combined) as c:
        h = c.register("payments", port=8080, address="10.0.0.1")
        assert c.discover("payments").ids == [h.id]
        # The blocking client used at interpreter exit goes over TLS too.
        lease = c.lease
        assert lease is not None
        backend = c.aio.backend
        assert isinstance(backend, muster.MusterBackend)
        backend.revoke_lease_blocking(lease.id, timeout=5)
    with muster.MusterClient(mtls_server.url, verify=certs.ca, cert=certs.client_combined) as c:
        assert c.discover("payments", health="any").instances == ()


@pytest.mark.parametrize(
    "kind", ["missing CA", "not a CA", "missing cert", "missing key", "key of another", "no key"]
)
def test_a_file_that_cannot_be_used_is_a_config_error_naming_it(
    kind: str, certs: Certs, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    verify, cert, named = {
        "missing CA": (missing, None, missing),
        "not a CA": (str(garbage), None, str(garbage)),
        "missing cert": (certs.ca, (missing, certs.client_key), missing),
        "missing key": (certs.ca, (certs.client, missing), missing),
        "key of another": (certs.ca, (certs.client, certs.server_key), certs.server_key),
        "no key": (certs.ca, certs.client, certs.client),
    }[kind]
    with pytest.raises(muster.ConfigError) as e:
        muster.Config(verify=verify, cert=cert)  # type: ignore[arg-type]
    assert named in str(e.value), e.value
    # ... and at the construction of either client, before any connection.
    with pytest.raises(muster.ConfigError) as e:
        muster.MusterClient("https://127.0.0.1:1", verify=verify, cert=cert)  # type: ignore[arg-type]
    assert named in str(e.value)
    with pytest.raises(muster.ConfigError) as e:
        muster.MusterBackend(["https://127.0.0.1:1"], verify=verify, cert=cert)  # type: ignore[arg-type]
    assert named in str(e.value)


def test_bad_tls_variables_are_config_errors(certs: Certs, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(muster.ConfigError, match=r"missing\.pem"):
        muster.Config.from_env({"MUSTER_CACERT": missing})
    with pytest.raises(muster.ConfigError, match=r"missing\.pem"):
        muster.Config.from_env({"MUSTER_CLIENT_CERT": certs.client, "MUSTER_CLIENT_KEY": missing})
    with pytest.raises(muster.ConfigError, match="MUSTER_CLIENT_KEY"):
        muster.Config.from_env({"MUSTER_CLIENT_KEY": certs.client_key})
    # Keyword arguments win over the variables, and False is not "not given".
    assert muster.Config.from_env({"MUSTER_CACERT": missing}, verify=certs.ca).verify == certs.ca
    assert muster.Config.from_env({}, verify=False).verify is False


async def test_verify_false_connects_and_says_so(
    tls_server: MusterServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with muster.AsyncMusterClient(tls_server.url, verify=False) as client:
        await client.register("payments", port=8080, address="10.0.0.1")
    assert any("verification" in r.getMessage() and "OFF" in r.getMessage() for r in caplog.records)
