#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need, then runs
# formatting, lints and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs, installed only when missing.
need() { # need <command> <package>
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "== installing $2"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
  fi
}
need cc gcc                    # aws-lc-sys and libsqlite3-sys build C
need redis-server redis-server # Redis standalone, cluster and sentinel (one binary)
need redis-cli redis-tools
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need no-such-command-initdb postgresql
fi
need chromium chromium          # the browser tests drive Debian's Chromium
need nginx nginx-light          # forward-auth through a real nginx (auth_request)
need node nodejs
need npm npm
need python3 python3
need curl curl
need openssl openssl
if ! python3 -m venv --help >/dev/null 2>&1; then need no-such-command-venv python3-venv; fi
echo "== npm ci (playwright-core for the browser tests; it never downloads a browser)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

echo "== a Python venv for the spec validator"
python3 -m venv target/venv
target/venv/bin/pip install -q --disable-pip-version-check openapi-spec-validator schemathesis

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== the end-to-end suite again, on Redis + PostgreSQL"
TESSERA_TEST_BACKEND=redis-postgres cargo test --locked -p tessera --test api -- \
  --skip contract:: --skip scaleout:: 2>&1 | tee -a "$log"
echo "== the pinned OpenAPI document validates"
target/venv/bin/openapi-spec-validator crates/tessera/tests/api/snapshots/openapi.json
echo "== schemathesis against a live instance"
bash scripts/schemathesis.sh "${CARGO_TARGET_DIR:-target}/debug/tessera" target/venv/bin/schemathesis
echo "== fuzzing every parser for 30 s (cargo-fuzz; the first build takes ~13 min, then ~2)"
bash scripts/fuzz.sh 30
# One closing line for the whole workspace (the last cargo line is often the doc-tests' "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
