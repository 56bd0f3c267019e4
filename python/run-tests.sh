#!/usr/bin/env bash
# Lints, type-checks and tests the Python client against the real muster binary,
# then fuzzes the HTTP API from docs/openapi.json with schemathesis
# (tests/test_openapi_fuzz.py; the `test` extra pins it, installed below).
#
#   bash python/run-tests.sh            # from the repo root (or anywhere)
#   PY=/path/to/venv/bin/python bash python/run-tests.sh
#
# PY: the Python of a virtual environment to use; by default /work/main/.venv
# style: <repo>/.venv, created when missing. MUSTER_BIN: the muster binary
# (default <repo>/target/debug/muster, built by `cargo build -p muster`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

if [ -z "${PY:-}" ]; then
  if [ ! -x "$repo/.venv/bin/python" ]; then
    python3 -m venv "$repo/.venv"
  fi
  PY="$repo/.venv/bin/python"
fi
export MUSTER_BIN="${MUSTER_BIN:-$repo/target/debug/muster}"
if [ ! -x "$MUSTER_BIN" ]; then
  echo "muster binary not found at $MUSTER_BIN: run 'cargo build -p muster' or set MUSTER_BIN" >&2
  exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

step "pip install -e 'python[test]'"
(cd "$repo" && "$PY" -m pip install --quiet --disable-pip-version-check -e 'python[test]')

cd "$here"
step "ruff check"
"$PY" -m ruff check .
step "ruff format --check"
"$PY" -m ruff format --check .
step "mypy --strict src"
"$PY" -m mypy --strict src
step "pytest (the client against the real binary)"
"$PY" -m pytest -q --ignore=tests/test_openapi_fuzz.py
# Its own step, so its time shows: schemathesis fuzzes every operation of
# docs/openapi.json against a real agent, a bounded, derandomized run.
step "pytest tests/test_openapi_fuzz.py (API fuzzing from the OpenAPI document, schemathesis)"
"$PY" -m pytest -q tests/test_openapi_fuzz.py
