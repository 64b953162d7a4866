#!/usr/bin/env bash
# Fuzzes every parser of attacker-controlled text (fuzz/fuzz_targets/parsers.rs) with libFuzzer.
#   bash scripts/fuzz.sh [seconds]      # default 60
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP lets the stable toolchain (the only
# one on these machines) provide them. The first build compiles tessera with sanitizers: ~11 min
# on 2 cores, which is why the CI test script does not run it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
RUSTC_BOOTSTRAP=1 cargo fuzz run parsers -- -max_total_time="${1:-60}"
