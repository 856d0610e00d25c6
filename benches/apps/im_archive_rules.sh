#!/usr/bin/env bash
# Pool CPU per MESSAGE under `loadgen im`, three ways: archiving off, archiving on (`policy = "all"`, SQLite), and
# 100 routing rules that match nothing (every MESSAGE tries all of them). Release binaries; one pool core, one
# edge core. Prints one line per variant: messages (measured + warm-up), pool CPU seconds, CPU microseconds per
# MESSAGE (the pool's utime + stime from /proc over the whole run, warm-up included).
# Usage: benches/apps/im_archive_rules.sh [rate] [duration_s]
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${1:-1000}
DUR=${2:-10}
BIN=$PWD/target/release/parapet
LOADGEN=$PWD/target/release/loadgen
D=$(mktemp -d /tmp/parapet-bench-apps.XXXX)
PB=$((20000 + RANDOM % 20000))
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

"$BIN" up --data-dir "$D/data" --port-base "$PB" --load-users 200 --flood-limits off --federation off --cores 1 \
  >"$D/up.out" 2>"$D/up.err" &
UP=$!
for _ in $(seq 1 300); do grep -q PARAPET_READY "$D/up.out" 2>/dev/null && break; sleep 0.1; done
kill -TERM $UP; wait $UP || true
cp "$D/data/pool.toml" "$D/pool.base.toml"

rules() {
  for i in $(seq 1 100); do
    printf '[[routing.rules]]\nname = "r%d"\nfrom = "nobody%d@elsewhere.test"\naction = "reject"\ncode = 403\n\n' "$i" "$i"
  done
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The store thread's share (the archive's inserts and commits run there).
store_ticks() {
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = parapet-store ]; then awk '{print $14 + $15}' "$t/stat"; fi
  done | awk '{s += $1} END {print s + 0}'
}

run_variant() {
  local name=$1 snippet=$2
  { cat "$D/pool.base.toml"; printf '\n%s\n' "$snippet"; } >"$D/data/pool.toml"
  (cd "$D/data" && exec "$BIN" run -c pool.toml) >"$D/$name.pool.log" 2>&1 &
  local pool=$!
  sleep 1
  (cd "$D/data" && exec "$BIN" run -c edge.toml) >"$D/$name.edge.log" 2>&1 &
  local edge=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PB) 2>/dev/null && break; sleep 0.1; done
  sleep 1
  local t0; t0=$(ticks $pool)
  local s0; s0=$(store_ticks $pool)
  "$LOADGEN" im --target "127.0.0.1:$PB" --ca "$D/data/pki/ca.pem" --users "$D/data/users.toml" \
    --count 100 --rate "$RATE" --duration "$DUR" --warmup 2 --json "$D/$name.json" >"$D/$name.loadgen" 2>&1
  local t1; t1=$(ticks $pool)
  local s1; s1=$(store_ticks $pool)
  local hz; hz=$(getconf CLK_TCK)
  # `ok` counts the measured seconds only; the CPU was measured over the warm-up (at the same rate) too.
  local sent; sent=$(python3 -c "import json; j=json.load(open('$D/$name.json')); print(int(j['ok'] + j['achieved_rate'] * 2))" 2>/dev/null || echo 0)
  python3 - "$name" "$t0" "$t1" "$hz" "$sent" "$RATE" "$DUR" "$s0" "$s1" <<'PY'
import sys
name, t0, t1, hz, sent, rate, dur, s0, s1 = sys.argv[1], *map(int, sys.argv[2:])
cpu, store = (t1 - t0) / hz, (s1 - s0) / hz
msgs = sent if sent > 0 else rate * (dur + 2)
print(f"{name:10s} messages={msgs} pool_cpu_s={cpu:.2f} cpu_us_per_message={cpu * 1e6 / msgs:.1f} "
      f"store_thread_cpu_s={store:.2f}")
PY
  kill -TERM $edge $pool; wait $edge $pool 2>/dev/null || true
  sleep 1
}

run_variant off ""
run_variant archive $'[archive]\npolicy = "all"'
run_variant rules100 "$(rules)"
echo "details in $D"
