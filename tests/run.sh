#!/usr/bin/env bash
# The project's whole test suite, on a fresh machine: starts the infrastructure the
# tests need, builds the `ratify` binary the multi-process tests spawn, runs every
# test of the workspace and prints one closing line with the totals.
#
# Infrastructure: every `tests/infra/<name>.sh` is called as `<script> start <state dir>`
# before the tests (it installs what is missing, starts the service and prints
# `export VAR=value` lines that the tests read) and as `<script> stop <state dir>`
# afterwards, whatever happened. State dirs live under `.tmp/infra/` (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
infra_root="$root/.tmp/infra"
mkdir -p "$infra_root"
log=$(mktemp)
started=()
cleanup() {
    local i
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        "$root/tests/infra/${started[i]}.sh" stop "$infra_root/${started[i]}" || true
    done
    rm -f "$log"
}
trap cleanup EXIT

shopt -s nullglob
for script in tests/infra/*.sh; do
    name=$(basename "$script" .sh)
    echo "== starting $name" >&2
    started+=("$name")
    exports=$("$script" start "$infra_root/$name")
    eval "$exports"
done
shopt -u nullglob

cargo build --locked -p ratify-coordinator --bin ratify \
    -p ratify-examples --bin pg_bank --bin order_pipeline --bin tradeoff_lab --bin atomic_order \
    -p ratify-devkit --bin ratify-dev \
    -p ratify-tests --bin chaos --bin chaos_participant
# Two test threads: each integration test runs a 3-process cluster on a 2-core machine.
status=0
cargo test --locked --workspace --all-features --no-fail-fast -- --test-threads 2 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
