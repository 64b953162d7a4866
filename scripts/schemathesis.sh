#!/usr/bin/env bash
# schemathesis against /openapi.json of a live instance, with a bounded number of examples per
# operation: no 5xx, every status documented, every body as documented.
# Usage: scripts/schemathesis.sh <tessera binary> <schemathesis binary>
set -euo pipefail
bin=$1 st=$2
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TESSERA_ADMIN_PASSWORD="schemathesis admin pw" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" \
  --data-dir "$dir" --allow-registration true >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
token=$(curl -sf "http://127.0.0.1:$port/login" -H 'content-type: application/json' \
  -d '{"username":"admin","password":"schemathesis admin pw"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
# /logout would end the session the other operations are tested with.
"$st" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  -H "Authorization: Bearer $token" --exclude-path /logout -n "${SCHEMATHESIS_EXAMPLES:-25}" --seed 1 \
  --request-timeout 10
