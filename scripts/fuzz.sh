#!/usr/bin/env bash
# Fuzzes every parser of attacker-controlled text (fuzz/fuzz_targets/parsers.rs) with libFuzzer.
#   bash scripts/fuzz.sh [seconds]      # default 60; the CI test script runs it for 30
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP lets the stable toolchain (the only
# one on these machines) provide them. The parsers are safe Rust, so the hunt is for panics,
# overflows and hangs: no sanitizer by default (SANITIZER=address to add ASan). The first build
# compiles tessera with coverage instrumentation, ~13 min cold on 2 cores; later builds reuse
# FUZZ_TARGET_DIR (the CI keeps it between runs) and take ~2 min after a change.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer "${SANITIZER:-none}" parsers -- \
  -max_total_time="${1:-60}" -print_final_stats=1 >"$log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  tail -60 "$log"   # the panic, the crashing input and how to reproduce it
  echo "fuzzing found a failure (exit $status); the input is under fuzz/artifacts/parsers/"
  exit "$status"
fi
grep -E "^Done|^stat::number_of_executed_units" "$log"
