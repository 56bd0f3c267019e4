"""API fuzzing from the OpenAPI document: schemathesis against a real ``muster agent``.

Every operation of ``docs/openapi.json`` (the checked-in copy, which a Rust test keeps
equal to the generated document; ``test_served_document_is_the_checked_in_one`` checks
it against what this binary serves) gets requests generated from its schema, valid and
invalid (schemathesis's examples, coverage and fuzzing phases), and every answer must

- not be a server error (no 5xx),
- have a status the document lists for the operation,
- have the content type the document gives for that status,
- carry the headers the document declares for it (``X-Muster-Index``),
- match the response schema (an error is the typed ``{"error": {...}}`` body),
- be a 4xx when the request breaks the document's schema (negative data is refused).

Not checked: ``positive_data_acceptance`` (a request the schema allows must succeed).
The document gives shapes, names' patterns and limits, not every rule the server
enforces (a ``ttl`` is a duration between 1s and 1h, a check has exactly one kind);
the server answers those with a typed 400, which the checks above do verify.

Bounded and reproducible: at most ``MAX_EXAMPLES`` generated cases per operation and
phase, derandomized (the same cases on every run), no example database; 15-20 s
in all here, a minute at most on a loaded 2-core machine.

Excluded: ``GET /v1/watch`` is a Server-Sent Events stream that does not end, so a
request/response check cannot read its answer; its contract (400s included) is tested
by the Rust watch tests (crates/muster-http/tests/it/watch.rs). Blocking queries
(``index`` + ``wait``) are kept, with their wait bounded: see ``bound_wait``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import REPO, MusterServer

DOCUMENT = REPO / "docs" / "openapi.json"

# Generated cases per operation and phase; with the coverage phase's boundary cases
# the whole run stays within a minute on a loaded 2-core machine.
MAX_EXAMPLES = 40

# A request that takes longer than this is a failure (a hang), not a wait.
REQUEST_TIMEOUT_S = 20.0

# The longest a blocking query of this run may park: long enough to park, short
# enough that 40 of them cost nothing.
BLOCKING_WAIT = "20ms"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

schema = schemathesis.openapi.from_path(DOCUMENT).exclude(
    # An SSE stream: the answer never ends (see the module's docstring).
    path="/v1/watch",
)


@pytest.fixture(scope="module")
def agent() -> Iterator[MusterServer]:
    """One agent for the whole run, on a free port with its own data directory."""
    s = MusterServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no system proxies: the agent is on loopback
        yield s


def bound_wait(case: schemathesis.Case) -> None:
    """Keeps a blocking query from parking for its default of 5 minutes.

    A query with ``index`` blocks until the index moves or ``wait`` passes (default
    5m). When ``index`` is sent without ``wait``, the run adds a short ``wait``; a
    generated ``wait`` is sent as generated (that is what is being fuzzed: over 10m
    is a 400, a malformed one is a 400), and ``REQUEST_TIMEOUT_S`` turns a wait that
    happens to be long into a failure rather than a hang.
    """
    query = case.query
    if isinstance(query, dict) and "index" in query and "wait" not in query:
        query["wait"] = BLOCKING_WAIT


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    # A request's time is the agent's and the machine's, not the test's: no deadline,
    # and no health check failing a run for slow generation on a loaded machine (the
    # run is bounded by max_examples) or for conftest's function-scoped autouse fixture.
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case, agent: MusterServer, session: requests.Session
) -> None:
    bound_wait(case)
    case.call_and_validate(
        base_url=agent.url,
        session=session,
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT_S,
    )


def test_served_document_is_the_checked_in_one(
    agent: MusterServer, session: requests.Session
) -> None:
    r = session.get(f"{agent.url}/v1/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert r.status_code == 200
    served: Any = r.json()
    assert served == json.loads(DOCUMENT.read_text())
