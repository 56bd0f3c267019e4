"""Load balancers: pick one instance of a discovered set for each request.

Every balancer shares the same failure handling: :meth:`Balancer.report_failure`
ejects an instance for a back-off period (1 s, doubling up to 30 s while
failures go on), :meth:`Balancer.report_success` clears it. Ejected instances
are skipped unless every instance is ejected, in which case all are tried
again (a guess beats a certain failure).

State that orders choices (round-robin counters) is kept **per service**, so
one balancer serves every service a transport calls: alternating calls to
``payments`` and ``orders`` each go round their own instances.

Custom balancers subclass :class:`Balancer` and implement :meth:`Balancer.choose`,
the one extension point; ejection and in-flight counting come with the base
class. A balancer is thread-safe (counters under a lock, dicts updated in
single operations), so one instance serves a sync and an async transport alike.
"""

from __future__ import annotations

import abc
import itertools
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ._exceptions import NoInstancesError
from ._types import Instance

_Key = tuple[str, str, str]


def service_key(instances: Sequence[Instance]) -> tuple[str, str]:
    """``(namespace, service)`` of a non-empty list of instances of one service.

    Custom balancers key their per-service state by it.
    """
    first = instances[0]
    return (first.namespace, first.service)


class Balancer(abc.ABC):
    """Chooses an instance per request and tracks failures and in-flight requests.

    To write your own, subclass it and implement :meth:`choose`::

        class FirstHealthy(muster.Balancer):
            def choose(self, instances):
                return instances[0]

    :meth:`pick` (what the transports call) removes ejected instances and
    hands the rest to :meth:`choose`; :meth:`in_flight` tells the requests
    now outstanding per instance. Keep any ordering state per service (see
    :meth:`service_key`): one balancer serves every service of a transport.
    """

    def __init__(
        self,
        *,
        base_ejection: float = 1.0,
        max_ejection: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_ejection
        self._max = max_ejection
        self._clock = clock
        self._ejected: dict[_Key, tuple[float, int]] = {}  # key -> (until, failures)
        self._in_flight: dict[_Key, int] = {}
        self._lock = threading.Lock()

    service_key = staticmethod(service_key)

    def pick(self, instances: Sequence[Instance]) -> Instance:
        """Picks an instance; raises :class:`NoInstancesError` if there is none."""
        if not instances:
            raise NoInstancesError("no instance to pick from")
        usable = self._usable(instances)
        return self.choose(usable)

    def _usable(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        if not self._ejected:
            return instances
        now = self._clock()
        ok = [i for i in instances if self._ejected.get(i.key, (0.0, 0))[0] <= now]
        return ok or instances

    @abc.abstractmethod
    def choose(self, instances: Sequence[Instance]) -> Instance:
        """The extension point: chooses the instance for one request.

        ``instances`` is never empty and holds instances of one service,
        ordered by id, with ejected ones already left out (unless every one
        is ejected). Called from any thread: keep state per service and
        update it atomically.
        """

    def is_ejected(self, instance: Instance) -> bool:
        """Whether the instance is currently ejected."""
        e = self._ejected.get(instance.key)
        return e is not None and e[0] > self._clock()

    def report_failure(self, instance: Instance) -> None:
        """The instance failed a request (connect error, ...): eject it for a while."""
        _, failures = self._ejected.get(instance.key, (0.0, 0))
        backoff = min(self._max, self._base * (2**failures))
        self._ejected[instance.key] = (self._clock() + backoff, failures + 1)

    def report_success(self, instance: Instance) -> None:
        """The instance served a request: forget its failures."""
        if self._ejected:
            self._ejected.pop(instance.key, None)

    def begin(self, instance: Instance) -> None:
        """A request to the instance starts (the transports call it before sending)."""
        with self._lock:
            self._in_flight[instance.key] = self._in_flight.get(instance.key, 0) + 1

    def end(self, instance: Instance) -> None:
        """A request to the instance ended (its response closed, or it failed)."""
        with self._lock:
            n = self._in_flight.get(instance.key, 1) - 1
            if n <= 0:
                self._in_flight.pop(instance.key, None)
            else:
                self._in_flight[instance.key] = n

    def in_flight(self, instance: Instance) -> int:
        """Requests to the instance now in flight."""
        return self._in_flight.get(instance.key, 0)


class _Turns:
    """One round-robin counter per service."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], itertools.count[int]] = {}

    def next(self, instances: Sequence[Instance]) -> int:
        key = service_key(instances)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters.setdefault(key, itertools.count())
        return next(counter)  # atomic in CPython: no lock needed


class RoundRobin(Balancer):
    """Each instance of a service in turn (one turn counter per service)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._turns = _Turns()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """The next instance of this service's turn."""
        return instances[self._turns.next(instances) % len(instances)]


class LeastConnections(Balancer):
    """The instance with the fewest requests outstanding; ties in turn.

    A request is outstanding from the moment the transport sends it until its
    response is closed (read to the end in httpx, or closed explicitly when
    streamed), or until it fails.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._turns = _Turns()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """Among the instances with the fewest outstanding requests, the next in turn."""
        loads = [self.in_flight(i) for i in instances]
        least = min(loads)
        idle = [i for i, n in zip(instances, loads) if n == least]
        return idle[self._turns.next(instances) % len(idle)]


class RandomBalancer(Balancer):
    """A uniformly random instance."""

    def __init__(self, *, rng: Optional[random.Random] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._rng = rng or random.Random()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """A random instance."""
        return instances[self._rng.randrange(len(instances))]


class Weighted(Balancer):
    """A random instance, each with probability proportional to its ``weight``."""

    def __init__(self, *, rng: Optional[random.Random] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._rng = rng or random.Random()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """A random instance, weighted."""
        weights = [max(i.weight, 0) for i in instances]
        if sum(weights) <= 0:
            return instances[self._rng.randrange(len(instances))]
        return self._rng.choices(instances, weights=weights)[0]


class PowerOfTwo(Balancer):
    """Power of two choices: of two random instances, the one with fewer requests in flight."""

    def __init__(self, *, rng: Optional[random.Random] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._rng = rng or random.Random()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """The less loaded of two random instances."""
        if len(instances) == 1:
            return instances[0]
        a, b = self._rng.sample(range(len(instances)), 2)
        ia, ib = instances[a], instances[b]
        return ia if self.in_flight(ia) <= self.in_flight(ib) else ib


class ZoneAware(Balancer):
    """Prefers instances in ``zone``; falls back to every zone when none is usable there.

    Choosing within the chosen set is delegated to ``inner`` (round robin by
    default), which also shares this balancer's failure and in-flight state.
    """

    def __init__(self, zone: Optional[str], inner: Optional[Balancer] = None, **kw: Any):
        super().__init__(**kw)
        self.zone = zone
        """The local zone."""
        self._inner = inner or RoundRobin()
        # One shared state: ejections and in-flight counts seen by both.
        self._inner._ejected = self._ejected
        self._inner._in_flight = self._in_flight
        self._inner._clock = self._clock
        self._inner._lock = self._lock

    def choose(self, instances: Sequence[Instance]) -> Instance:
        """The inner balancer's choice among local instances, or among all."""
        if self.zone is not None:
            local = [i for i in instances if i.zone == self.zone]
            if local:
                return self._inner.choose(local)
        return self._inner.choose(instances)


def make_balancer(name: str, zone: Optional[str] = None) -> Balancer:
    """Builds a balancer by name.

    ``round_robin``, ``least_connections``, ``random``, ``weighted``, ``p2c``,
    ``zone``.
    """
    table: dict[str, Callable[[], Balancer]] = {
        "round_robin": RoundRobin,
        "least_connections": LeastConnections,
        "random": RandomBalancer,
        "weighted": Weighted,
        "p2c": PowerOfTwo,
        "zone": lambda: ZoneAware(zone, PowerOfTwo()),
    }
    if name not in table:
        raise ValueError(f"unknown balancer {name!r}; use one of {', '.join(table)}")
    return table[name]()
