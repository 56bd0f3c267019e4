#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, Rust tests
# (unit, property, integration against real servers), and the Python
# client's lint, type check and tests when the package is present, and a
# smoke run of every benchmark scenario (muster, ceiling, etcd).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

if [ -f python/run-tests.sh ]; then
  step "python client"
  cargo build -p muster --locked
  MUSTER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/muster" bash python/run-tests.sh
fi

step "benchmark smoke run (every scenario briefly; reports, asserts no timing)"
cargo build -p muster -p muster-bench --locked
"${CARGO_TARGET_DIR:-$PWD/target}/debug/muster-bench" --smoke --no-pin

step "all tests passed"
