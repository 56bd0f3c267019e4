"""The instance's JSON shape as the registry sends it."""

from muster import Instance

BASE = {"id": "p1", "service": "pay", "address": "10.0.0.1", "port": 8080}


def test_preserved_is_read_and_false_when_absent() -> None:
    assert Instance.from_json(BASE).preserved is False
    kept = Instance.from_json({**BASE, "preserved": True, "health": "critical"})
    assert (kept.preserved, kept.health) == (True, "critical")
