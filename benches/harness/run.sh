#!/usr/bin/env bash
# parapet benchmark harness (issues 3 and 12): one command.
#
#   bash benches/harness/run.sh [--quick] [harness options]
#
# Builds the release binaries (parapet, loadgen), then runs benches/harness/harness.py. Every loadgen run gets a
# server started for it alone (parapet's stored registrations removed first: an empty registrar, so a MESSAGE
# forks to exactly one binding), pinned to CPU 0, with loadgen pinned to CPU 1. Systems, each on the same
# scenarios where they apply:
#   parapet-coloc       `parapet up --cores 1`, edge and pool in one process (when `up` has the co-located mode)
#   parapet-perimeter   the same with edge and pool as two processes over mutual TLS (today's `up`; with the
#                       co-located build, `up` plus the perimeter flag found in `up --help`)
#   kamailio-tlsf       Kamailio 5.x as registrar + relay (kamailio/kamailio.cfg.tmpl), `-x tlsf`: the headline peer
#   kamailio            the same with Kamailio's default memory manager
#   haproxy             HAProxy terminating TLS (handshake only; haproxy/haproxy.cfg.tmpl)
#   kamailio-edge+pool  the edge swapped: Kamailio (kamailio/edge.cfg.tmpl) as the access proxy in front of the same
#                       parapet pool (`parapet run` with up's pool.toml), register and im
# Scenarios: idle, register, im, handshake, handshake-resumed, mix, federation (parapet), capacity + reconnect
# (parapet). Per run: server CPU µs per completed operation (the headline), context switches, syscalls, io_uring
# submissions and io_uring_enter calls per operation (perf stat on the server's processes), latency, memory per
# idle connection. Writes target/harness/results.md and target/harness/results.json.
#
#   --quick            fixed rates, 5 s per scenario: about 5-10 minutes in all (servers restart per run)
#   (default)          find-max per scenario, then 15 s at a common rate
#   --systems LIST     any of the systems above (parapet = both parapet modes; default: all; missing peers skipped)
#   --scenarios LIST   idle,register,im,handshake,handshake-resumed,mix,federation,capacity
#   --capacity N       connections held by the capacity scenario (default 2000 with --quick, else 100000, cut to
#                      the open-file hard limit); 0 leaves it out
#   --counters off     no perf stat (its tracepoints add a little to each syscall); the columns stay empty
#   --perimeter-args A `parapet up` arguments for the perimeter mode, when `up --help` does not name them
#   --no-build         use the binaries already in target/release
#   HARNESS_PARAPET=path, HARNESS_LOADGEN=path   other binaries (e.g. an older build, for a before/after table)
#   --duration SECS    seconds per measured run (default 5 with --quick, 15 otherwise)
#   --smoke-kamailio PYTHON   check the generated Kamailio config with pjsua2 (PYTHON must have pjsua2-python)
#
# Peers (Debian 12): apt-get install -y kamailio kamailio-tls-modules haproxy linux-perf
set -euo pipefail
cd "$(dirname "$0")/../.."

build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
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
