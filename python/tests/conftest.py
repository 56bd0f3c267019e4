"""Fixtures: a real muster server on a free port, and the two backends to test against."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import muster

REPO = Path(__file__).resolve().parents[2]
MUSTER_BIN = os.environ.get("MUSTER_BIN") or str(REPO / "target" / "debug" / "muster")


class MusterServer:
    """A ``muster agent`` process on 127.0.0.1, on a port of its own choosing."""

    def __init__(self, config: str = "") -> None:
        """``config``: the agent's configuration file (TOML), if any."""
        self.dir = tempfile.mkdtemp(prefix="muster-py-")
        self.url = ""
        self._args: list[str] = []
        if config:
            path = os.path.join(self.dir, "muster.toml")
            Path(path).write_text(config)
            self._args = ["--config", path]
        self._proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self, addr: str = "127.0.0.1:0") -> None:
        log = open(os.path.join(self.dir, "stderr.log"), "a")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                MUSTER_BIN,
                "agent",
                "--http-addr",
                addr,
                "--data-dir",
                os.path.join(self.dir, "data"),
                # Tests start and drop many leases at once; keep expiry plain.
                "--self-preservation-threshold",
                "1",
                *self._args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        log.close()
        assert self._proc.stdout is not None
        # The server prints exactly one line once it serves: read it, no sleeping.
        line = self._proc.stdout.readline().strip()
        prefix = "muster listening on "
        if not line.startswith(prefix):
            self._proc.kill()
            err = Path(self.dir, "stderr.log").read_text()
            raise RuntimeError(f"muster did not start: {line!r}\n{err}")
        self.url = line[len(prefix) :]

    def stop(self, kill: bool = False) -> None:
        """Stops the server (SIGTERM, or SIGKILL with ``kill``) and waits for it."""
        if self._proc is not None and self._proc.poll() is None:
            if kill:
                self._proc.kill()
            else:
                self._proc.terminate()
            self._proc.wait(10)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("MUSTER_") and k != "MUSTER_BIN":
            monkeypatch.delenv(k)


@pytest.fixture
def server() -> Iterator[MusterServer]:
    s = MusterServer()
    yield s
    s.close()


class Env:
    """One registry to test against, whatever its kind."""

    kind: str

    def client(self, **kw: Any) -> muster.AsyncMusterClient:
        raise NotImplementedError

    def backend(self) -> muster.Backend:
        raise NotImplementedError

    def outage(self) -> None:
        raise NotImplementedError


class NativeEnv(Env):
    kind = "native"

    def __init__(self, server: MusterServer) -> None:
        self.server = server
        self._backends: list[muster.MusterBackend] = []

    def client(self, **kw: Any) -> muster.AsyncMusterClient:
        return muster.AsyncMusterClient(self.server.url, **kw)

    def backend(self) -> muster.Backend:
        b = muster.MusterBackend([self.server.url])
        self._backends.append(b)
        return b

    def outage(self) -> None:
        self.server.stop()

    async def aclose(self) -> None:
        for b in self._backends:
            await b.aclose()


class MemoryEnv(Env):
    kind = "memory"

    def __init__(self) -> None:
        self.registry = muster.InMemoryRegistry()

    def client(self, **kw: Any) -> muster.AsyncMusterClient:
        return muster.AsyncMusterClient(backend=muster.InMemoryBackend(self.registry), **kw)

    def backend(self) -> muster.Backend:
        return muster.InMemoryBackend(self.registry)

    def outage(self) -> None:
        self.registry.set_available(False)

    async def aclose(self) -> None:
        pass


@pytest.fixture(params=["native", "memory"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The same behavioural tests run against the real server and the in-memory registry."""
    if request.param == "native":
        s = MusterServer()
        e: NativeEnv | MemoryEnv = NativeEnv(s)
        try:
            yield e
        finally:
            await e.aclose()
            s.close()
    else:
        m = MemoryEnv()
        yield m
        await m.aclose()
