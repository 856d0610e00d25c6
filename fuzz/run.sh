#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 1800), in parallel, on stable Rust (cargo-fuzz without a sanitizer:
# the code under test has no unsafe), seeded from seeds/, and prints libFuzzer's final stats per target.
# A crash leaves its input under artifacts/<target>/: copy it to regressions/ and make it a test.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-1800}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
targets=(parse_edit edge_request edge_core pool_core)
cargo fuzz build --sanitizer none "${targets[@]/#/}" >/dev/null 2>&1 || cargo fuzz build --sanitizer none
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 \
        > "$t.log" 2>&1 &
done
wait
status=0
for t in "${targets[@]}"; do
    echo "== $t"
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" "$t.log" || true
    if grep -q "panicked\|deadly signal\|ERROR: libFuzzer" "$t.log"; then
        echo "CRASH: see $t.log and artifacts/$t/"
        status=1
    fi
done
exit $status
