#!/usr/bin/env bash
# The project's one test command.
#
#   ./test.sh              every part, in the order below
#   ./test.sh PART...      only those parts (still in the order below)
#
# Parts:
#   lint         cargo fmt --check; clippy on every target and feature, warnings are errors
#   rust         Rust unit, property and integration tests (cargo nextest, per-test
#                timeouts in .config/nextest.toml), then the doctests
#   python       the Python client's lint, type check and tests (python/run-tests.sh)
#                against the real muster binary, then API fuzzing of the server from
#                docs/openapi.json (schemathesis, bounded and derandomized)
#   bench-smoke  every benchmark scenario briefly against muster, the ceiling and a real
#                etcd, then cluster mode (3 muster nodes, 3 etcd members, one leader
#                kill) (reports, asserts no timing)
#   fuzz         every cargo-fuzz target of fuzz/ (nightly toolchain, libFuzzer) for
#                MUSTER_FUZZ_SECONDS (default 25) each, from the committed corpus
#                fuzz/corpus/<target>/; what it generates, crashes included, goes to a
#                temporary directory (kept and named when a target fails)
#
# First, ci/packages.sh checks the packages of ci/packages.txt that the chosen
# parts need: as root it installs the missing ones, otherwise it prints the
# command to install them and the run stops. At the end, passed or failed,
# each step's wall time is printed.
set -euo pipefail
cd "$(dirname "$0")"

all_parts=(lint rust python bench-smoke fuzz)

usage() {
  echo "usage: ./test.sh [PART...]   parts: ${all_parts[*]} (none given: all)"
}

# The parts asked for, kept in the order of all_parts.
declare -A asked=()
for arg in "$@"; do
  case $arg in -h | --help) usage; exit 0 ;; esac
  if [[ " ${all_parts[*]} " != *" $arg "* ]]; then
    echo "unknown part: $arg" >&2
    usage >&2
    exit 2
  fi
  asked[$arg]=1
done
parts=()
for p in "${all_parts[@]}"; do
  if [ $# -eq 0 ] || [ -n "${asked[$p]:-}" ]; then parts+=("$p"); fi
done

# --- steps and their timings -------------------------------------------------

results=()    # "name|seconds|result" of each finished step
current=""    # the step running now, if any
started=0
run_start=$SECONDS

# step NAME COMMAND...: runs COMMAND as one timed step; a failure ends the run.
step() {
  current=$1
  shift
  started=$SECONDS
  printf '\n==> %s\n' "$current"
  "$@"
  results+=("$current|$((SECONDS - started))|ok")
  current=""
}

duration() { printf '%dm %02ds' $(($1 / 60)) $(($1 % 60)); }

summary() {
  local rc=$1 r name secs result
  if [ -n "$current" ]; then
    results+=("$current|$((SECONDS - started))|FAILED (exit $rc)")
  fi
  printf '\n==> summary (%s)\n' "${parts[*]}"
  printf '%-56s %9s  %s\n' step "wall time" result
  for r in "${results[@]}"; do
    IFS='|' read -r name secs result <<<"$r"
    printf '%-56s %9s  %s\n' "$name" "$(duration "$secs")" "$result"
  done
  if [ "$rc" -eq 0 ]; then result=passed; else result="FAILED (exit $rc)"; fi
  printf '%-56s %9s  %s\n' total "$(duration $((SECONDS - run_start)))" "$result"
}
trap 'rc=$?; summary "$rc"; exit "$rc"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the build shared by the parts ---------------------------------------------

target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo_flags=(--workspace --all-features --locked)

# One compile serves rust, python and bench-smoke: the targets nextest's own
# `cargo test --no-run` builds (lib and bin tests, integration tests,
# examples) plus every binary, all with the same flags. Building the binaries
# in the same invocation as the tests gives them the same features (tests
# switch on dev-dependency features, e.g. tokio's test-util), so nextest
# then compiles nothing (measured), and target/debug/muster{,-bench} are the
# ones the tests ran against. A separate `cargo build --bins` would compile
# about 60 crates (tokio and all that depends on it) a second time.
built=false
build() {
  if ! $built; then
    step "cargo build (tests, examples, binaries, all features)" \
      cargo build "${cargo_flags[@]}" --bins --tests --examples
    built=true
  fi
}

# --- the parts ---------------------------------------------------------------

part_lint() {
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy (all targets, all features, -D warnings)" \
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
}

part_rust() {
  build
  step "cargo nextest run" cargo nextest run "${cargo_flags[@]}"
  # nextest does not run doctests. cargo resolves features a little
  # differently for --doc: the first time, it compiles a few crates again
  # (6-8 of them, 10-15 s); after that they are cached beside the shared build.
  step "cargo test --doc" cargo test --doc "${cargo_flags[@]}"
}

part_python() {
  build
  step "python client (python/run-tests.sh)" \
    env MUSTER_BIN="$target/debug/muster" bash python/run-tests.sh
}

part_bench_smoke() {
  build
  step "benchmark smoke run (muster-bench --smoke), with the ACL and TLS targets" \
    "$target/debug/muster-bench" --smoke --no-pin --targets muster,muster-acl,muster-tls,ceiling,etcd
  step "benchmark smoke run of cluster mode (muster-bench --smoke --cluster 3)" \
    "$target/debug/muster-bench" --smoke --no-pin --cluster 3 --targets muster,etcd
}

# The fuzz targets build with nightly (libFuzzer's instrumentation needs
# it) in a target directory of their own: other flags, another toolchain, so
# nothing of the shared build is rebuilt. No sanitizer: every muster crate
# forbids unsafe code, so AddressSanitizer would find nothing there, and it
# made the cold build (the longest step of CI) and every run slower; what the
# targets check are panics and the properties they assert.
# MUSTER_FUZZ_SANITIZER=address turns it back on for a deeper local run.
fuzz_seconds="${MUSTER_FUZZ_SECONDS:-25}"
fuzz_target="${MUSTER_FUZZ_TARGET_DIR:-$target/fuzz}"
fuzz_flags=(--fuzz-dir fuzz --target-dir "$fuzz_target" --sanitizer "${MUSTER_FUZZ_SANITIZER:-none}")

nightly() {
  if ! cargo +nightly --version; then
    echo "the fuzz part needs a nightly Rust toolchain (cargo +nightly), for" >&2
    echo "cargo fuzz's instrumentation: rustup toolchain install nightly" >&2
    return 1
  fi
}

# cargo fuzz has no --locked: this fails the build as --locked would when
# cargo had to change fuzz/Cargo.lock (the change is left to commit).
fuzz_build() {
  local before
  before=$(cat fuzz/Cargo.lock)
  cargo +nightly fuzz build "${fuzz_flags[@]}"
  if [ "$(cat fuzz/Cargo.lock)" != "$before" ]; then
    echo "fuzz/Cargo.lock was out of date and cargo updated it: commit the update" >&2
    return 1
  fi
}

part_fuzz() {
  step "nightly toolchain (cargo +nightly)" nightly
  step "cargo fuzz build (nightly, every target)" fuzz_build
  local work t
  work=$(mktemp -d "${TMPDIR:-/tmp}/muster-fuzz.XXXXXX")
  echo "new inputs and crash artifacts go to $work"
  for t in $(cargo fuzz list --fuzz-dir fuzz); do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    # The first corpus directory receives what the run finds, so the
    # committed one (second) is only read. -timeout: one input taking 10 s
    # is a hang, reported as a failure.
    step "fuzz $t (${fuzz_seconds}s)" \
      cargo +nightly fuzz run "${fuzz_flags[@]}" "$t" "$work/$t/corpus" "fuzz/corpus/$t" -- \
      -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1
  done
  rm -rf "$work"
}

step "prerequisites (ci/packages.txt)" ci/packages.sh "${parts[@]}"
for p in "${parts[@]}"; do
  case $p in
    lint) part_lint ;;
    rust) part_rust ;;
    python) part_python ;;
    bench-smoke) part_bench_smoke ;;
    fuzz) part_fuzz ;;
    *) echo "part $p is listed but has no case here" >&2; exit 2 ;;
  esac
done
printf '\nall tests passed\n'
