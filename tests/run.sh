#!/usr/bin/env bash
# The project's whole test suite, on a fresh machine: builds the `ratify` binary the
# multi-process tests spawn, then runs every test of the workspace and prints one
# closing line with the totals.
# (Postgres and Kafka setup join here with the adapters that need them.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p ratify-coordinator --bin ratify
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Two test threads: each integration test runs a 3-process cluster on a 2-core machine.
status=0
cargo test --locked --workspace -- --test-threads 2 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
