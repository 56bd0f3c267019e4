"""Semver ranges with the rules of the registry (Rust ``semver`` crate).

Used by the in-memory backend and by client-side filtering so that
``version="^1.4"`` means the same everywhere. A filter that is not a valid
range, or an instance version that is not valid semver, is compared as a
literal string, as the server does.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

_VERSION = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_COMPARATOR = re.compile(
    r"^(=|>=|<=|>|<|~|\^)?\s*(\*|x|X|0|[1-9]\d*)"
    r"(?:\.(\*|x|X|0|[1-9]\d*))?(?:\.(\*|x|X|0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    # Build metadata is allowed and ignored, as the registry's semver does.
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

_Pre = tuple[tuple[int, object], ...]
_Ver = tuple[int, int, int, _Pre]


def _pre_key(pre: Optional[str]) -> _Pre:
    if not pre:
        return ()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))


def _cmp(a: _Ver, b: _Ver) -> int:
    if a[:3] != b[:3]:
        return -1 if a[:3] < b[:3] else 1
    pa, pb = a[3], b[3]
    if pa == pb:
        return 0
    if not pa:
        return 1  # a release sorts after its pre-releases
    if not pb:
        return -1
    return -1 if pa < pb else 1


def parse_version(s: str) -> Optional[_Ver]:
    """Parses a strict semver version, or returns ``None``."""
    m = _VERSION.match(s)
    if not m:
        return None
    return (int(m[1]), int(m[2]), int(m[3]), _pre_key(m[4]))


_Bound = tuple[str, _Ver]  # (op, version) with op in >=, >, <, <=, =


def _wild(s: Optional[str]) -> bool:
    return s is None or s in ("*", "x", "X")


def _comparator(text: str) -> Optional[list[_Bound]]:
    m = _COMPARATOR.match(text.strip())
    if not m:
        return None
    op, smaj, smin, spat, pre = m.groups()
    if _wild(smaj):
        return [] if op in (None, "=", "^", "~", ">=", "<=") else None
    major = int(smaj)
    minor = None if _wild(smin) else int(smin)
    patch = None if minor is None or _wild(spat) else int(spat)
    p = _pre_key(pre)
    lo: _Ver = (major, minor or 0, patch or 0, p)
    op = op or "^"
    if op == "=":
        if patch is not None:
            return [("=", lo)]
        if minor is not None:
            return [(">=", lo), ("<", (major, minor + 1, 0, ()))]
        return [(">=", lo), ("<", (major + 1, 0, 0, ()))]
    if op == "^":
        if major > 0 or minor is None:
            return [(">=", lo), ("<", (major + 1, 0, 0, ()))]
        if minor > 0 or patch is None:
            return [(">=", lo), ("<", (0, minor + 1, 0, ()))]
        return [("=", lo)]
    if op == "~":
        if minor is None:
            return [(">=", lo), ("<", (major + 1, 0, 0, ()))]
        return [(">=", lo), ("<", (major, minor + 1, 0, ()))]
    if op == ">":
        if patch is not None:
            return [(">", lo)]
        if minor is not None:
            return [(">=", (major, minor + 1, 0, ()))]
        return [(">=", (major + 1, 0, 0, ()))]
    if op == ">=":
        return [(">=", lo)]
    if op == "<":
        return [("<", lo)]
    # "<="
    if patch is not None:
        return [("<=", lo)]
    if minor is not None:
        return [("<", (major, minor + 1, 0, ()))]
    return [("<", (major + 1, 0, 0, ()))]


@functools.lru_cache(maxsize=256)
def parse_range(text: str) -> Optional[tuple[_Bound, ...]]:
    """Parses a comma-separated range (``^1.4``, ``>=2, <3``), or ``None``."""
    bounds: list[_Bound] = []
    for part in text.split(","):
        c = _comparator(part)
        if c is None:
            return None
        bounds += c
    return tuple(bounds)


def _holds(op: str, v: _Ver, b: _Ver) -> bool:
    c = _cmp(v, b)
    return {"=": c == 0, ">": c > 0, ">=": c >= 0, "<": c < 0, "<=": c <= 0}[op]


def version_matches(filter_: str, version: Optional[str]) -> bool:
    """Whether an instance ``version`` passes a discovery ``version`` filter."""
    if version is None:
        return False
    rng = parse_range(filter_)
    v = parse_version(version)
    if rng is None or v is None:
        return version == filter_
    if not all(_holds(op, v, b) for op, b in rng):
        return False
    # A pre-release matches only a range that names the same x.y.z with a pre-release.
    return not v[3] or any(b[:3] == v[:3] and b[3] for _, b in rng)
