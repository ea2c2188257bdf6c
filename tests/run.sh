#!/usr/bin/env bash
# The project's whole test suite, on a fresh machine: builds the `ratify` binary the
# multi-process tests spawn, then runs every test of the workspace.
# (Postgres and Kafka setup join here with the adapters that need them.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p ratify-coordinator --bin ratify
# Two test threads: each integration test runs a 3-process cluster on a 2-core machine.
cargo test --locked --workspace -- --test-threads 2
