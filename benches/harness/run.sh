#!/usr/bin/env bash
# parapet benchmark harness (issue 3): one command.
#
#   bash benches/harness/run.sh [--quick] [harness options]
#
# Builds the release binaries (parapet, loadgen), then runs benches/harness/harness.py, which starts
# `parapet up --data-dir target/harness/data --port-base 27061 --load-users 2000 --cores 1` pinned to CPU 0,
# runs every loadgen scenario (idle, register, im, handshake, handshake --resume, mix, and federation for parapet) pinned to CPU 1, measures
# the server's CPU time per completed operation and its memory per idle connection, repeats the same scenarios
# against Kamailio (port 27161) and the handshake against HAProxy (port 27261) when they are installed, and writes
# target/harness/results.md and target/harness/results.json.
#
#   --quick            fixed rates, 5 s per scenario: about 3-5 minutes in all
#   (default)          find-max per scenario, then 15 s at half the max rate held: about 15-20 minutes
#   --systems LIST     parapet,kamailio,haproxy (default: all; missing peers are skipped with an install hint)
#   --scenarios LIST   idle,register,im,handshake,handshake-resumed,mix,federation
#   --no-build         use the binaries already in target/release
#   --duration SECS    seconds per measured run (default 5 with --quick, 15 otherwise)
#   --smoke-kamailio PYTHON   check the generated Kamailio config with pjsua2 (PYTHON must have pjsua2-python)
#
# Peers (Debian 12): apt-get install -y kamailio kamailio-tls-modules haproxy
set -euo pipefail
cd "$(dirname "$0")/../.."

build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done

if [ "$(uname -s)" != Linux ]; then
    echo "the harness needs Linux (/proc, taskset)" >&2; exit 2
fi
for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y util-linux python3)" >&2; exit 2; }
done
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))'; then
    echo "python3 >= 3.8 needed" >&2; exit 2
fi

if [ "$build" = 1 ]; then
    echo "[harness] cargo build --release -p parapet -p loadgen" >&2
    cargo build --release -p parapet -p loadgen
fi
for bin in parapet loadgen; do
    [ -x "target/release/$bin" ] || { echo "target/release/$bin is missing: cargo build --release -p $bin" >&2; exit 2; }
done

# Thousands of connections on each side: raise the open-file limit as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for peer in kamailio haproxy; do
    if ! command -v "$peer" >/dev/null && [ ! -x "/usr/sbin/$peer" ]; then
        case "$peer" in
            kamailio) echo "[harness] Kamailio is not installed: parapet runs without it. For the comparison: apt-get install -y kamailio kamailio-tls-modules" >&2 ;;
            haproxy) echo "[harness] HAProxy is not installed: handshake runs without it. For the comparison: apt-get install -y haproxy" >&2 ;;
        esac
    fi
done

exec python3 benches/harness/harness.py "${args[@]+"${args[@]}"}"
