"""Health checks, TTL reports, maintenance and the service list through the
client, against the real registry, which runs the checks."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

import muster
from muster import Check

from .conftest import MusterServer


def _by_id(r: muster.Discovered, instance_id: str) -> muster.Instance | None:
    return next((i for i in r.instances if i.id == instance_id), None)


async def test_ttl_reports_and_maintenance_move_an_instance_in_and_out(
    server: MusterServer,
) -> None:
    async with muster.AsyncMusterClient(server.url) as c:
        h = await c.register("jobs", 9000, address="10.0.0.9", checks=[Check.ttl(60, id="worker")])
        # Registered critical: out of passing answers until it reports.
        seen = await c.wait_for("jobs", lambda r: _by_id(r, h.id) is not None, health="any")
        inst = _by_id(seen, h.id)
        assert inst is not None and inst.health == "critical"
        assert [(k.id, k.type, k.status) for k in inst.checks] == [("worker", "ttl", "critical")]
        assert (await c.discover("jobs")).ids == []

        await c.report(h, "worker", "pass", "queue drained")
        await c.wait_for("jobs", lambda r: r.ids == [h.id])
        await c.wait_for(
            "jobs",
            lambda r: (i := _by_id(r, h.id)) is not None and i.checks[0].output == "queue drained",
            health="any",
        )
        await c.report(h, "worker", "warn")
        await c.wait_for(
            "jobs",
            lambda r: (i := _by_id(r, h.id)) is not None and i.health == "warning",
            health="any",
        )
        await c.report(h, "worker", "fail", "stuck")
        await c.wait_for("jobs", lambda r: r.ids == [])
        with pytest.raises(muster.NotFoundError) as e:
            await c.report(h, "nope", "pass")
        assert e.value.code == "check_not_found"
        with pytest.raises(muster.ConfigError):
            await c.report(h, "worker", "ok")  # type: ignore[arg-type]

        await c.report(h, "worker", "pass")
        await c.wait_for("jobs", lambda r: r.ids == [h.id])
        inst = await c.set_maintenance(h, "draining")
        assert inst.maintenance == "draining"
        await c.wait_for("jobs", lambda r: r.ids == [])
        await c.set_maintenance(h, None)
        await c.wait_for("jobs", lambda r: r.ids == [h.id])

        services = {s.name: s for s in await c.services()}
        assert services["jobs"].instances == 1 and services["jobs"].passing == 1


def test_a_tcp_check_run_by_the_registry_gates_discovery(server: MusterServer) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with muster.MusterClient(server.url) as c:
            h = c.register(
                "db", port, address="127.0.0.1", checks=[Check.tcp(f"127.0.0.1:{port}", interval=1)]
            )
            c.wait_for("db", lambda r: r.ids == [h.id])
            listener.close()
            c.wait_for("db", lambda r: r.ids == [])
    finally:
        listener.close()


async def test_checks_reports_and_maintenance_survive_a_reregistration(
    server: MusterServer,
) -> None:
    async with muster.AsyncMusterClient(server.url, ttl=1) as c:
        a = await c.register("jobs", 9000, address="10.0.0.9", checks=[Check.ttl(60, id="w")])
        b = await c.register("jobs", 9001, address="10.0.0.10", checks=[Check.ttl(60, id="w")])
        await c.report(a, "w", "pass", "ok")
        await c.report(b, "w", "pass")
        await c.set_maintenance(b, "draining")
        await c.wait_for("jobs", lambda r: r.ids == [a.id])
        # The registry comes back on the same address with no data: the client
        # registers both again, with their checks, last reports and maintenance.
        addr = server.url.removeprefix("http://")
        server.stop()
        shutil.rmtree(os.path.join(server.dir, "data"))
        server.start(addr)

        def restored(r: muster.Discovered) -> bool:
            ia, ib = _by_id(r, a.id), _by_id(r, b.id)
            return (
                ia is not None
                and ib is not None
                and [k.status for k in ia.checks] == ["passing"]
                and [k.status for k in ib.checks] == ["passing"]
                and ib.maintenance == "draining"
            )

        r = await c.wait_for("jobs", restored, health="any", timeout=20)
        ia = _by_id(r, a.id)
        assert ia is not None and ia.checks[0].output == "ok"
        assert c.stats.reregistrations >= 2
        await c.wait_for("jobs", lambda r: r.ids == [a.id])


def test_check_json_is_the_api_shape() -> None:
    assert Check.http(
        "http://10.0.0.5:8080/health", interval=10, timeout=2, deregister_critical_after=600
    ).to_json() == {
        "http": "http://10.0.0.5:8080/health",
        "interval": "10s",
        "timeout": "2s",
        "deregister_critical_after": "600s",
    }
    assert Check.ttl(30, id="alive").to_json() == {"ttl": "30s", "id": "alive"}
    assert Check.grpc("10.0.0.5:9090/payments", interval=5, name="g").to_json() == {
        "grpc": "10.0.0.5:9090/payments",
        "interval": "5s",
        "name": "g",
    }
