"""Value types shared by every layer: instances, queries, discovery results.

All of them are immutable, so a cached answer can be handed to any thread or
task without copying.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from ._checks import CheckState
from ._exceptions import ConfigError
from ._semver import parse_range, version_matches

RANGE_OPERATORS = frozenset("^~<>=*,")
"""Characters of semver ranges that no version (semver or literal) holds."""

HealthFilter = Literal["passing", "any"]
"""Which health states discovery returns: only ``passing`` (default) or ``any``."""


@dataclass(frozen=True)
class Instance:
    """One registered instance, as the registry returns it."""

    id: str
    """Instance id, unique within namespace and service."""
    service: str
    """Service the instance belongs to."""
    address: str
    """IP address or host name it serves on."""
    port: int
    """TCP port."""
    namespace: str = "default"
    """Namespace it lives in."""
    tags: frozenset[str] = frozenset()
    """Tags."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """String metadata."""
    version: Optional[str] = None
    """Version string (semver when it parses as one)."""
    zone: Optional[str] = None
    """Zone (failure domain)."""
    weight: int = 100
    """Load-balancing weight."""
    health: str = "passing"
    """``passing``, ``warning`` or ``critical``."""
    lease: Optional[str] = None
    """Lease holding the instance, if it is ephemeral."""
    preserved: bool = False
    """True while the registry's self-preservation keeps the instance past
    its lease's deadline (the registry stopped hearing from its clients):
    it may be gone."""
    checks: tuple[CheckState, ...] = ()
    """Its health checks and their current status."""
    maintenance: Optional[str] = None
    """The reason, while the instance is in maintenance (out of passing answers)."""
    create_index: int = 0
    """Registry index that created it."""
    modify_index: int = 0
    """Registry index that last changed it."""

    @property
    def key(self) -> tuple[str, str, str]:
        """``(namespace, service, id)``: identifies the instance across changes."""
        return (self.namespace, self.service, self.id)

    @property
    def host_port(self) -> str:
        """``address:port``, with IPv6 addresses bracketed."""
        if ":" in self.address and not self.address.startswith("["):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Instance:
        """Builds an instance from the registry's JSON shape."""
        return cls(
            id=str(d["id"]),
            service=str(d["service"]),
            address=str(d["address"]),
            port=int(d["port"]),
            namespace=str(d.get("namespace", "default")),
            tags=frozenset(d.get("tags") or ()),
            meta=dict(d.get("meta") or {}),
            version=d.get("version"),
            zone=d.get("zone"),
            weight=int(d.get("weight", 100)),
            health=str(d.get("health", "passing")),
            lease=d.get("lease"),
            preserved=bool(d.get("preserved", False)),
            checks=tuple(CheckState.from_json(c) for c in d.get("checks") or ()),
            maintenance=d.get("maintenance"),
            create_index=int(d.get("create_index", 0)),
            modify_index=int(d.get("modify_index", 0)),
        )


@dataclass(frozen=True)
class Query:
    """Discovery filters; every given filter must match (logical AND)."""

    tags: tuple[str, ...] = ()
    """Tags that must all be present."""
    meta: tuple[tuple[str, str], ...] = ()
    """Metadata entries that must all be present with these values."""
    version: Optional[str] = None
    """Semver range (``^1.4``, ``>=2, <3``) or a literal version."""
    zone: Optional[str] = None
    """Zone that must match exactly."""
    health: HealthFilter = "passing"
    """``passing`` (default) or ``any``."""

    @classmethod
    def build(
        cls,
        tags: Union[Sequence[str], str, None] = None,
        meta: Optional[Mapping[str, str]] = None,
        version: Optional[str] = None,
        zone: Optional[str] = None,
        health: HealthFilter = "passing",
    ) -> Query:
        """Normalises user arguments so that equal filters give equal queries.

        Raises :class:`~muster.ConfigError` for a ``version`` that has range
        operators but is no valid range (``"^^1"``): the registry would take
        it for a literal version and silently match nothing.
        """
        if (
            version is not None
            and any(c in version for c in RANGE_OPERATORS)
            and parse_range(version) is None
        ):
            raise ConfigError(
                f"version filter {version!r} is not a semver range: use one such as "
                "'^1.4', '~1.4.2', '>=2, <3', or a plain version"
            )
        if isinstance(tags, str):
            tags = [tags]
        return cls(
            tags=tuple(sorted(set(tags or ()))),
            meta=tuple(sorted((meta or {}).items())),
            version=version,
            zone=zone,
            health=health,
        )

    def params(self) -> list[tuple[str, str]]:
        """The query as HTTP query parameters of the native API."""
        p: list[tuple[str, str]] = [("tag", t) for t in self.tags]
        p += [("meta", f"{k}:{v}") for k, v in self.meta]
        if self.version is not None:
            p.append(("version", self.version))
        if self.zone is not None:
            p.append(("zone", self.zone))
        if self.health != "passing":
            p.append(("health", self.health))
        return p

    def matches(self, i: Instance) -> bool:
        """Whether an instance passes every filter (same rules as the server)."""
        return (
            (self.health == "any" or i.health == "passing")
            and all(t in i.tags for t in self.tags)
            and all(i.meta.get(k) == v for k, v in self.meta)
            and (self.zone is None or i.zone == self.zone)
            and (self.version is None or version_matches(self.version, i.version))
        )


@dataclass(frozen=True)
class Discovered:
    """The answer of a discovery: instances plus how fresh they are.

    It behaves as a sequence of :class:`Instance`: ``len(result)``,
    ``result[0]`` and iteration work. ``stale`` is true when the registry
    could not be reached and the answer comes from the cache; ``age`` then
    says for how many seconds it has not been confirmed.
    """

    service: str
    """Service asked for."""
    instances: tuple[Instance, ...]
    """Matching instances, ordered by id."""
    index: int
    """Registry index the answer reflects."""
    stale: bool = False
    """True when the registry is unreachable and this is the last known answer."""
    age: float = 0.0
    """Seconds since the answer was last confirmed by the registry (0 when fresh)."""

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __getitem__(self, i: int) -> Instance:
        return self.instances[i]

    def __bool__(self) -> bool:
        return bool(self.instances)

    @property
    def ids(self) -> list[str]:
        """Ids of the instances, in order."""
        return [i.id for i in self.instances]


@dataclass(frozen=True)
class Lease:
    """A lease: instances attached to it vanish when it expires or is revoked."""

    id: str
    """Lease id."""
    ttl: float
    """Time to live in seconds."""


@dataclass(frozen=True)
class WatchEvent:
    """One change of a service as a watch reports it.

    ``kind`` is ``snapshot`` (``instances`` holds every matching instance),
    ``upsert`` (``instance`` was registered or changed), ``delete``
    (``instance_id`` went away) or ``current`` (a resumed watch missed
    nothing: what the watcher holds is current at ``index``).
    """

    kind: Literal["snapshot", "upsert", "delete", "current"]
    """What happened."""
    index: int
    """Registry index of the change."""
    instances: tuple[Instance, ...] = ()
    """For ``snapshot``: all matching instances."""
    instance: Optional[Instance] = None
    """For ``upsert``: the instance as it now is."""
    instance_id: Optional[str] = None
    """For ``delete``: the id removed."""


_ID_OK = re.compile(r"[^A-Za-z0-9._:-]")


def sanitize_id(raw: str) -> str:
    """Turns any string into a valid instance id (``[A-Za-z0-9._:-]``, ≤ 128)."""
    return _ID_OK.sub("-", raw)[:128] or "instance"
