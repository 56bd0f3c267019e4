"""The client's session with the registry, as its lease sees it, and who listens to it.

The states and their transitions are the Rust client's
(``muster_client::ConnectionState``), so the two clients agree:

- ``IDLE``: no lease yet, nothing registered so far;
- ``CONNECTED``: the last renewal (or registration) reached the registry;
- ``SUSPENDED``: the registry cannot be reached, but less than a TTL has
  passed since the last renewal it accepted: the registrations are still there;
- ``LOST``: the registry said the lease is gone, or it was out of reach for a
  whole TTL: the registrations may have expired. The client registers them
  again as soon as it can, and is ``CONNECTED`` once it has.

``IDLE`` stays ``IDLE`` on failures (there is nothing to lose yet), and
``LOST`` stays ``LOST`` until the registry accepts a renewal or the
registrations again.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Callable, Optional

log = logging.getLogger("muster")


class ConnectionState(str, enum.Enum):
    """The client's session with the registry (as kazoo's ``KazooState``)."""

    IDLE = "idle"
    """No lease yet: nothing registered so far."""
    CONNECTED = "connected"
    """The last renewal (or registration) reached the registry."""
    SUSPENDED = "suspended"
    """The registry is out of reach, for less than a TTL since the last renewal."""
    LOST = "lost"
    """The lease is gone, or the registry was out of reach for a whole TTL."""

    def __str__(self) -> str:
        return self.value


ConnectionListener = Callable[[ConnectionState], None]
"""Called with the new state on every change of :class:`ConnectionState`."""


class _Session:
    """The state machine and its listeners; driven by the client's renewals."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.state = ConnectionState.IDLE
        self.listeners: list[ConnectionListener] = []
        # monotonic time the registry last accepted a renewal or registration
        self._last_ok: Optional[float] = None

    def reached(self) -> None:
        """The registry accepted a renewal or a registration."""
        self._last_ok = time.monotonic()
        self._set(ConnectionState.CONNECTED)

    def missed(self, lost: bool) -> None:
        """A renewal or registration failed; ``lost``: the registry said the lease is gone."""
        if self.state in (ConnectionState.IDLE, ConnectionState.LOST):
            return
        expired = self._last_ok is None or time.monotonic() - self._last_ok >= self.ttl
        self._set(ConnectionState.LOST if lost or expired else ConnectionState.SUSPENDED)

    def _set(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        log.info("muster connection state: %s", state.value)
        for fn in list(self.listeners):
            try:
                fn(state)
            except Exception:
                # A listener's bug must never stop renewals.
                log.exception("muster connection listener %r failed", fn)
