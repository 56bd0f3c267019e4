"""Client configuration: one typed object, read from arguments and ``MUSTER_*`` variables.

Environment variables (keyword arguments win over them):

- ``MUSTER_ADDR``: registry addresses, comma-separated (``http://127.0.0.1:7700``)
- ``MUSTER_NAMESPACE``: namespace (``default``)
- ``MUSTER_TTL``: lease TTL of registrations, e.g. ``10s`` (``10s``)
- ``MUSTER_MAX_STALENESS``: how long cached answers outlive the registry (``5m``)
- ``MUSTER_ZONE``: this process's zone, for zone-aware balancing (none)
- ``MUSTER_ADVERTISE_ADDR``: address instances register with (the interface
  that reaches the registry)
- ``MUSTER_TIMEOUT``: timeout of one registry request (``5s``)
- ``MUSTER_RETRIES``: passes over the registry addresses before a call fails (``3``)
- ``MUSTER_LOOKUP_IDLE_TIMEOUT``: lookups unused this long are evicted from
  the cache and their query leaves the watch (``10m``)
- ``MUSTER_CACERT``: trust only this CA bundle (PEM) for ``https://``
  registries (the system's roots)
- ``MUSTER_CLIENT_CERT``, ``MUSTER_CLIENT_KEY``: a client certificate and its
  key (PEM) for a registry that requires one (none)
- ``MUSTER_TOKEN``: the ACL token (its secret) for a registry run with
  ``--acl``, sent as ``Authorization: Bearer`` (none)

The TLS and token variables are the CLI's (``muster --cacert``, ``--client-cert``,
``--client-key``).

Defaults are the Rust client's too (``spec/client/README.md``): 5 s per
request, 3 passes, a back-off between passes and between watch
reconnections of 100 ms doubling up to 500 ms, each wait jittered to half to
all of it.
"""

from __future__ import annotations

import os
import random
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from ._exceptions import ConfigError
from ._tls import CertFiles, Verify, ssl_context

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Union[str, float, int], name: str = "duration") -> float:
    """Parses ``"10s"``, ``"500ms"``, ``"5m"``, ``"1h"`` or a number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ConfigError(f"{name}: {value!r} is not a duration like '10s', '500ms' or '5m'")
    return float(m[1]) * _UNITS[m[2]]


def format_duration(seconds: float) -> str:
    """Formats seconds as the registry expects (``"10s"``, ``"1500ms"``)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def backoff_delay(n: int, initial: float, ceiling: float) -> float:
    """The pause before retry ``n`` (0-based): doubling from ``initial`` up to
    ``ceiling``, then "equal jitter" (half to all of it), so that clients that
    failed together do not retry together."""
    return min(initial * (1 << min(n, 16)), ceiling) * random.uniform(0.5, 1.0)


def _addresses(value: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(value, Config):
        raise TypeError("a Config goes in config=..., not as the addresses")
    if not isinstance(value, (str, list, tuple)) or not all(isinstance(x, str) for x in value):
        raise TypeError(
            f"addresses must be a string or a list of strings, not {type(value).__name__}"
        )
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for a in (x.strip() for x in items):
        if not a:
            continue
        if "://" not in a:
            a = "http://" + a
        out.append(a.rstrip("/"))
    if not out:
        raise ConfigError("no registry address given (MUSTER_ADDR)")
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """Settings of a client. Build with :meth:`from_env`; every field has a default."""

    addresses: tuple[str, ...] = ("http://127.0.0.1:7700",)
    """Registry base URLs, tried in order with failover."""
    namespace: str = "default"
    """Namespace of registrations and lookups."""
    ttl: float = 10.0
    """Lease TTL in seconds (1 s to 1 h); renewed every ~ttl/3."""
    max_staleness: float = 300.0
    """Seconds a cached answer may be served while the registry is unreachable."""
    zone: Optional[str] = None
    """This process's zone, preferred by zone-aware balancing."""
    advertise_address: Optional[str] = None
    """Address to register instances with when none is given."""
    timeout: float = 5.0
    """Timeout of one registry request, in seconds."""
    retries: int = 3
    """Passes over the registry addresses before a call fails (at least 1)."""
    backoff_initial: float = 0.1
    """Seconds between the first and second pass, and before a watch's first reconnection."""
    backoff_max: float = 0.5
    """Ceiling of the back-off, which doubles after each failed pass or reconnection."""
    initial_wait: float = 5.0
    """How long a first lookup of a service waits for the registry's answer."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra HTTP headers sent to the registry (e.g. an ACL token)."""
    lookup_idle_timeout: float = 600.0
    """Seconds after which a lookup nobody used is evicted: its cached answer
    is dropped and its query leaves the multiplexed watch (the next lookup
    starts it again). Lookups followed by ``changes()``/``wait_for()`` stay."""
    watch_queries_per_stream: int = 1000
    """Most lookups carried by one multiplexed watch stream (as the Rust
    client's ``watch_queries_per_stream``): past it, or the registry's 64 KiB
    body limit, the watch opens one more stream. Under the registry's default
    ``watch_max_queries`` (1024); when a registry configured lower refuses a
    stream as too large, the client halves it by itself."""

    verify: Verify = True
    """How the certificate of an ``https://`` registry is checked: ``True``
    trusts the system's roots; a path (file or directory of PEM
    certificates) trusts only that CA bundle, e.g. the one made by ``muster
    tls ca create``; an ``ssl.SSLContext`` is used as it is.

    ``False`` turns verification **off**: anyone between this process and
    the registry can then impersonate it, read the registrations and answer
    lookups with addresses of their choosing. Do not use it outside a
    throwaway test; give the CA's file instead. (A warning is logged.)"""
    cert: Optional[CertFiles] = None
    """A client certificate (PEM) for a registry that requires one
    (``muster agent --tls-client-ca``): one file holding the certificate and
    its key, or a ``(cert, key)`` pair of files."""
    token: Optional[str] = field(default=None, repr=False)
    """The ACL token (its secret) for a registry run with ``--acl``, sent
    with every request as ``Authorization: Bearer``. Never shown in the
    config's ``repr`` nor logged."""

    def request_headers(self) -> dict[str, str]:
        """The headers sent with every request: :attr:`headers`, plus the
        token's ``Authorization`` if a token is set."""
        out = dict(self.headers)
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def __post_init__(self) -> None:
        if not 1.0 <= self.ttl <= 3600.0:
            raise ConfigError(f"ttl must be between 1s and 1h, got {self.ttl}s")
        if self.max_staleness < 0 or self.timeout <= 0:
            raise ConfigError("max_staleness must be >= 0 and timeout > 0")
        if self.retries < 1:
            raise ConfigError(f"retries must be at least 1, got {self.retries}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigError("backoff_initial must be > 0 and <= backoff_max")
        if self.lookup_idle_timeout <= 0:
            raise ConfigError(f"lookup_idle_timeout must be > 0, got {self.lookup_idle_timeout}s")
        if self.watch_queries_per_stream < 1:
            raise ConfigError(
                f"watch_queries_per_stream must be at least 1, got {self.watch_queries_per_stream}"
            )
        if self.token is not None and (
            not self.token or not all(33 <= ord(c) < 127 for c in self.token)
        ):
            raise ConfigError("token must be a non-empty string of visible ASCII characters")
        if self.verify is not True or self.cert is not None:
            # Read the files now, so that a wrong one is refused here, naming it.
            self.ssl_context()

    def ssl_context(self) -> ssl.SSLContext:
        """A new TLS context from :attr:`verify` and :attr:`cert`, for the
        connections to ``https://`` registries. :class:`ConfigError` names a
        file that cannot be read or used."""
        return ssl_context(self.verify, self.cert)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides: Any) -> Config:
        """Reads ``MUSTER_*`` variables, then applies keyword ``overrides``.

        ``overrides`` whose value is ``None`` are ignored, so callers can pass
        their optional arguments straight through.
        """
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if env.get("MUSTER_ADDR"):
            kw["addresses"] = _addresses(env["MUSTER_ADDR"])
        if env.get("MUSTER_NAMESPACE"):
            kw["namespace"] = env["MUSTER_NAMESPACE"]
        if env.get("MUSTER_TTL"):
            kw["ttl"] = parse_duration(env["MUSTER_TTL"], "MUSTER_TTL")
        if env.get("MUSTER_MAX_STALENESS"):
            kw["max_staleness"] = parse_duration(
                env["MUSTER_MAX_STALENESS"], "MUSTER_MAX_STALENESS"
            )
        if env.get("MUSTER_ZONE"):
            kw["zone"] = env["MUSTER_ZONE"]
        if env.get("MUSTER_ADVERTISE_ADDR"):
            kw["advertise_address"] = env["MUSTER_ADVERTISE_ADDR"]
        if env.get("MUSTER_TIMEOUT"):
            kw["timeout"] = parse_duration(env["MUSTER_TIMEOUT"], "MUSTER_TIMEOUT")
        if env.get("MUSTER_LOOKUP_IDLE_TIMEOUT"):
            kw["lookup_idle_timeout"] = parse_duration(
                env["MUSTER_LOOKUP_IDLE_TIMEOUT"], "MUSTER_LOOKUP_IDLE_TIMEOUT"
            )
        if env.get("MUSTER_TOKEN"):
            kw["token"] = env["MUSTER_TOKEN"]
        if env.get("MUSTER_CACERT"):
            kw["verify"] = env["MUSTER_CACERT"]
        if env.get("MUSTER_CLIENT_CERT"):
            cert = env["MUSTER_CLIENT_CERT"]
            kw["cert"] = (cert, env["MUSTER_CLIENT_KEY"]) if env.get("MUSTER_CLIENT_KEY") else cert
        elif env.get("MUSTER_CLIENT_KEY") and overrides.get("cert") is None:
            raise ConfigError("MUSTER_CLIENT_KEY is set without MUSTER_CLIENT_CERT")
        if env.get("MUSTER_RETRIES"):
            try:
                kw["retries"] = int(env["MUSTER_RETRIES"])
            except ValueError:
                raise ConfigError(
                    f"MUSTER_RETRIES: {env['MUSTER_RETRIES']!r} is not a number"
                ) from None
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "addresses":
                v = _addresses(v)
            elif k in (
                "ttl",
                "max_staleness",
                "timeout",
                "initial_wait",
                "backoff_initial",
                "backoff_max",
                "lookup_idle_timeout",
            ):
                v = parse_duration(v, k)
            kw[k] = v
        return replace(cls(), **kw)
