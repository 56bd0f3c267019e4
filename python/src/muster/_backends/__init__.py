"""Registry backends: the one interface the client talks to, and its implementations.

- :mod:`._base`: :class:`Backend`, the interface (leases, registration,
  queries, watches). A Consul, etcd or ZooKeeper backend implements the same
  methods (Consul sessions, etcd leases and ZooKeeper sessions are all
  "leases"; their blocking queries / watches feed :meth:`Backend.watch`). Multiplexing is
  a backend's own business: :meth:`Backend.watch_many` runs one ``watch`` per query
  unless the backend overrides it, as :class:`MusterBackend` does.
- :mod:`._muster`: the native muster HTTP API, with failover across addresses.
- :mod:`._memory`: an in-process registry for tests of user code.
"""

from ._base import Backend, Registration, ServiceSummary, WatchQuery, WatchQueryRefused
from ._memory import InMemoryBackend, InMemoryRegistry
from ._muster import MusterBackend

__all__ = [
    "Backend",
    "InMemoryBackend",
    "InMemoryRegistry",
    "MusterBackend",
    "Registration",
    "ServiceSummary",
    "WatchQuery",
    "WatchQueryRefused",
]
