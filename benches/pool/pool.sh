#!/usr/bin/env bash
# Enterprise pool benchmark (issue 11; a harness, not a timed test): one command.
#
#   bash benches/pool/pool.sh [benches/pool/pool.py options: --help lists them]
#
# Builds the release binaries (a no-op when target/release is up to date), then for N in 1, 2, 3 starts
# `parapet up --front-ends N --store postgres --cores 1 --flood-limits off --federation off --port-base 27361`
# (one edge, N front ends, a PostgreSQL cluster of its own under target/pool/data-feN) pinned to CPU 0 and runs
# loadgen register, im and presence pinned to CPU 1; with 3 front ends it then runs the failover: loadgen mix at
# a fixed rate while one front end (fe2) is killed with SIGKILL mid-run (`up` restarts it after its back-off, as it
# restarts any role that dies). Writes target/pool/results.md and results.json; the figures quoted are in
# benches/pool/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in taskset python3 cargo; do
    command -v "$tool" >/dev/null || { echo "pool.sh: $tool is missing" >&2; exit 2; }
done
cargo build --release -p parapet -p loadgen
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 benches/pool/pool.py "$@"
