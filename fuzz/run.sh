#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 1800) on stable Rust (cargo-fuzz, no sanitizer: the code under test
# has no unsafe), seeding from corpus/ and printing libFuzzer's final stats. A crash stops with its artifact path:
# copy it to regressions/ and make it a test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-1800}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for t in parse_edit edge_request; do
    mkdir -p corpus/$t
    mkdir -p corpus/$t; cargo fuzz run --sanitizer none "$t" corpus/$t seeds/$t -- -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -25 > "$t.log"
    grep -E "stat::number_of_executed_units|Done|crash" "$t.log" || true
done
