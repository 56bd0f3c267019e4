#!/usr/bin/env bash
# Lints, type-checks and tests the Python client against the real muster binary,
# builds a wheel and an sdist and smoke-tests each in a fresh venv, then fuzzes
# the HTTP API from docs/openapi.json with schemathesis (tests/test_openapi_fuzz.py;
# the `test` extra pins it, installed below).
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

# What users install: a wheel and an sdist (python -m build, with the test
# extra's hatchling, no download), each into a fresh venv that holds only it
# and its dependencies (from the index; the sdist's build backend too), then
# tests/dist_smoke.py there, from outside the source tree, against the binary.
step "python -m build: wheel and sdist, each installed in a fresh venv and smoke-tested"
dist="$(mktemp -d "${TMPDIR:-/tmp}/muster-dist.XXXXXX")"
trap 'rm -rf "$dist"' EXIT
"$PY" -m build --no-isolation --outdir "$dist/out" "$here" >"$dist/build.log" 2>&1 \
  || { cat "$dist/build.log" >&2; exit 1; }
for artifact in "$dist"/out/muster_client-*.whl "$dist"/out/muster_client-*.tar.gz; do
  echo "-- $(basename "$artifact")"
  venv="$dist/venv-$(basename "$artifact")"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$artifact"
  (cd "$dist" && "$venv/bin/python" "$here/tests/dist_smoke.py")
done
# Its own step, so its time shows: schemathesis fuzzes every operation of
# docs/openapi.json against a real agent, a bounded, derandomized run.
step "pytest tests/test_openapi_fuzz.py (API fuzzing from the OpenAPI document, schemathesis)"
"$PY" -m pytest -q tests/test_openapi_fuzz.py
