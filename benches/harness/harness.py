#!/usr/bin/env python3
"""parapet benchmark harness (issues 3 and 12). Run it through `bash benches/harness/run.sh [--quick]`.

Runs each loadgen scenario against each system (parapet co-located and perimeter, Kamailio with `-x tlsf` and
with its default allocator, HAProxy for handshakes, Kamailio as the edge in front of parapet's pool), on a server
started for that run alone and pinned to one CPU, loadgen pinned to another. Samples the server's CPU time (utime +
stime of every server process, /proc/<pid>/stat), context switches (every thread, /proc/<pid>/task/*/status) and
memory (VmRSS and PSS), counts syscalls and io_uring submissions with `perf stat` when it can, and writes
target/harness/results.{md,json}.

Only the Python standard library is used. Every child process is bounded in time and stopped by its own pid
(or the process group this script created for it).
"""


import argparse
import datetime as dt
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # the harness's own modules, imported below: no __pycache__ in the source tree
from common import *  # noqa: E402,F401,F403 - constants and helpers
from measure import PerfCounts, Sampler, num, perf_events, window_from_hdr_log
from report import crypto_calibration, host_info, versions, write_report
from servers import HAProxy, Kamailio, KamailioEdge, Parapet, parapet_modes, read_users

# loadgen pinned with taskset and --cores; cleared when a loadgen build refuses that (see run_loadgen)
LOADGEN_TASKSET = [True]


# ---------------------------------------------------------------------------------------------------- scenarios

def plan(args):
    """[(scenario, loadgen scenario, extra args, count, rate, duration, find_max, systems)]."""
    q = args.quick
    d = args.duration or (5 if q else 15)
    idle_n = args.idle_count or (1000 if q else LOAD_USERS)
    p = [
        # idle first, on a fresh server: memory grown by earlier scenarios would hide the per-connection cost.
        dict(name="idle", lg="idle", extra=[], count=idle_n, rate=min(idle_n, 1000), duration=d, systems=["parapet", "kamailio"]),
        dict(name="register", lg="register", extra=[], count=500 if q else LOAD_USERS, rate=1000, fm_start=250,
             duration=d, find_max=not q, systems=["parapet", "kamailio", "edgeswap"]),
        dict(name="im", lg="im", extra=[], count=200 if q else 1000, rate=1000, fm_start=250, duration=d,
             find_max=not q, systems=["parapet", "kamailio", "edgeswap"]),
        dict(name="handshake", lg="handshake", extra=[], count=100, rate=300 if q else 600, fm_start=100, duration=d,
             find_max=not q, systems=["parapet", "kamailio", "haproxy"]),
        # not against HAProxy: loadgen's --resume sends a SIP CRLF keep-alive and waits for the pong, which HTTP lacks
        dict(name="handshake-resumed", lg="handshake", extra=["--resume"], count=100, rate=300 if q else 500, duration=d,
             systems=["parapet", "kamailio"]),
        dict(name="mix", lg="mix", extra=[], count=500 if q else 1000, rate=500 if q else 1000, duration=d,
             systems=["parapet", "kamailio"]),
        # Two partner edges (up's demo partners, mutual TLS on the shared port) sending MESSAGEs to registered users,
        # each below its default limit of 500/s. parapet only: the incumbent has no federation of this kind.
        dict(name="federation", lg="federation", extra=["--partner-rates", "partner.test=450,other.test=450"],
             count=200 if q else 1000, rate=900, duration=d, systems=["parapet"]),
    ]
    cap = capacity_count(args)
    if cap:
        # Capacity (issue 12): N registered idle TLS connections from several loopback source addresses, memory per
        # connection; then, on the same server, a burst of reconnects (the first R users again, from new addresses,
        # right after the N connections closed), as fast as loadgen's setup goes (64 in flight per core).
        ips = max(1, -(-cap // 10000))
        burst = min(cap, 1000 if q else 10000)
        p.append(dict(name="capacity", lg="idle", extra=["--source-ips", str(ips)], count=cap, rate=1000,
                      duration=d, systems=["parapet"],
                      then=dict(name="reconnect", lg="idle", per_setup=True, count=burst, rate=1000, duration=1,
                                extra=["--source-first", str(ips + 1), "--source-ips", str(max(1, -(-burst // 10000)))],
                                systems=["parapet"])))
    if args.scenarios:
        want = set(args.scenarios.split(","))
        p = [s for s in p if s["name"] in want]
    for s in p:
        s.setdefault("find_max", False)
    return p


def capacity_count(args):
    """Connections for the capacity scenario: --capacity, default 2000 with --quick and the goal's 100,000
    otherwise, cut to what the open-file limit lets one loadgen process and one edge process hold."""
    want = args.capacity if args.capacity is not None else (2000 if args.quick else 100_000)
    if want <= 0:
        return 0
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = hard - 1000 if hard != resource.RLIM_INFINITY else want
    if want > room:
        log(f"capacity: {want} connections asked, but the open-file limit is {hard} per process (loadgen holds one "
            f"descriptor per connection, so does the edge): running {room}. Raise `ulimit -Hn` (root, "
            "or /etc/security/limits.conf) for more.")
        args.capacity_note = f"{want} connections asked; the open-file hard limit ({hard} per process) allowed {room}"
        return room
    return want


def loadgen_argv(kind, s, rate, duration, json_path, hlog_path, find_max=False):
    # taskset pins every thread; --cores pins loadgen's executors (some loadgen builds refuse a --cores CPU that is
    # outside their affinity count: then loadgen runs without taskset and relies on --cores alone).
    pin = ["taskset", "-c", ARGS.load_cpu] if LOADGEN_TASKSET[0] else []
    a = pin + [LOADGEN, s["lg"], "--target", f"127.0.0.1:{PORTS[kind]}",
         "--server-name", "localhost", "--ca", os.path.join(DATA, "pki", "ca.pem"), "--domain", DOMAIN,
         "--users", os.path.join(DATA, "users.toml"), "--count", str(s["count"]), "--rate", str(int(rate)),
         "--duration", str(duration), "--warmup", str(ARGS.warmup), "--cores", ARGS.load_cpu,
         "--json", json_path, "--hdr-log", hlog_path] + s["extra"]
    if find_max:
        a += ["--find-max", "--slo-p99-ms", "10"]
    return a


def run_loadgen(server, s, rate, duration, find_max=False, tag=""):
    """One loadgen run against `server`, with CPU (and for idle, memory) sampled around it."""
    system = server.name
    stem = os.path.join(RUNS, f"{system}-{s['name']}{tag}")
    jpath, hpath = stem + ".json", stem + ".hlog"
    for p in (jpath, hpath):
        if os.path.exists(p):
            os.remove(p)
    argv = loadgen_argv(server.kind, s, rate, duration, jpath, hpath, find_max)
    pids = server.pids()
    regs_before = server.registrations()
    sampler = Sampler(pids, ARGS.server_cpu, memory=(s["lg"] == "idle"), registrations=server.registrations)
    sampler.take()
    t_start = time.time()
    sampler.start()
    perf = PerfCounts(ARGS.perf_events if not find_max else {}, list(pids.values()), stem + ".perf")
    # Bound: warmup + registration of every user + measurement (+ steps for find-max) + slack.
    budget = ARGS.warmup + duration + s["count"] / 200.0 + 30 + (duration * 14 if find_max else 0)
    log(f"{system} {s['name']}{tag}: rate {int(rate)}/s x {duration}s{' find-max' if find_max else ''} (bound {int(budget)} s)")
    with open(stem + ".out", "w") as out, open(stem + ".err", "w") as err:
        lg = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            rc = lg.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(lg.pid, signal.SIGINT)
            try:
                rc = lg.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(lg.pid, signal.SIGKILL)
                rc = lg.wait()
    t_end = time.time()
    perf.stop()
    sampler.stop()
    regs_after = server.registrations()
    if rc == 2 and LOADGEN_TASKSET[0]:
        with open(stem + ".err") as f:
            if "--cores names CPU" in f.read():
                log("loadgen refuses --cores under taskset; retrying with --cores alone")
                LOADGEN_TASKSET[0] = False
                return run_loadgen(server, s, rate, duration, find_max, tag)
    res = {"system": system, "scenario": s["name"], "find_max": find_max, "target_rate": int(rate),
           "duration_s": duration, "count": s["count"], "loadgen_rc": rc, "timed_out": timed_out,
           "loadgen_argv": " ".join(argv), "files": stem + ".{json,out,err,hlog,perf}"}
    if regs_before is not None or regs_after is not None:
        # Fairness check (issue 12): a fresh registrar holds nothing before the run, and after it exactly the
        # registrations of this run's users, so a MESSAGE forks to exactly one binding.
        res["registrations"] = {"before": regs_before, "max_during": sampler.regs_max, "after": regs_after}
    if not server.alive():
        res["error"] = f"{system} died during the run (see {server.log_path})"
    try:
        with open(jpath) as f:
            lj = json.load(f)
    except (OSError, ValueError):
        lj = None
    if lj is None:
        with open(stem + ".err") as f:
            tail = f.read().strip().splitlines()[-3:]
        res.setdefault("error", f"loadgen exited {rc}{' (killed at the time bound)' if timed_out else ''} without JSON: "
                       + " | ".join(tail))
        return res
    res["loadgen"] = lj
    ok = num(lj.get("ok")) or 0.0
    dur = num(lj.get("duration_s")) or float(duration)
    res["ok_rate"] = ok / dur if dur else None

    # CPU per completed operation over the measurement window only (not warmup, not the initial registrations).
    win, method = None, None
    for ks in (("measure_start_unix", "measure_end_unix"), ("window_start_unix", "window_end_unix")):
        if num(lj.get(ks[0])) and num(lj.get(ks[1])):
            win, method = (num(lj[ks[0]]), num(lj[ks[1]])), "loadgen JSON window"
    if win is None and not find_max:
        w = window_from_hdr_log(hpath, dur)
        if w and t_start - 1 <= w[0] < w[1] <= t_end + 1:
            win, method = w, "hdr-log intervals"
    if win is None and not find_max:
        end = t_end - 0.5
        win, method = (end - dur * 0.8, end - dur * 0.1), "fallback: last seconds before loadgen exit"
    c_all0, per0 = sampler.total_at(t_start)
    c_all1, per1 = sampler.total_at(t_end)
    whole = (c_all1 - c_all0) / CLK_TCK
    res["cpu_whole_run_s"] = whole
    if find_max:
        steps = lj.get("steps") or []
        tot = sum(num(st.get("ok")) or 0 for st in steps if isinstance(st, dict)) or ok
        res["cpu_us_per_op_whole_run"] = whole / tot * 1e6 if tot else None
        res["max_rate_held"] = lj.get("max_rate_held")
        return res
    a, pa = sampler.total_at(win[0])
    b, pb = sampler.total_at(win[1])
    wl = win[1] - win[0]
    ops = (res["ok_rate"] or 0) * wl
    res["cpu_window"] = {"method": method, "start_unix": win[0], "end_unix": win[1], "seconds": wl,
                         "server_cpu_s": (b - a) / CLK_TCK, "ops": ops,
                         "per_process_cpu_s": {n: (pb[n] - pa[n]) / CLK_TCK for n in pb}}
    res["server_cpu_util"] = (b - a) / CLK_TCK / wl if wl > 0 else None
    busy = sampler.busy_between(win[0], win[1])
    if busy is not None and wl > 0:
        # What else ran on the server's CPU meanwhile: on a shared machine, the figures are only as good as this.
        res["server_cpu_others_util"] = max(0.0, (busy - (b - a)) / CLK_TCK / wl)
    if s["lg"] == "idle":
        ops = 0  # idle's operations are the set-up registrations; what counts here is memory (and CPU while idle)
    if ops > 0:
        res["cpu_us_per_op"] = (b - a) / CLK_TCK / ops * 1e6
        res["cpu_us_per_op_by_process"] = {n: (pb[n] - pa[n]) / CLK_TCK / ops * 1e6 for n in pb}
    if ok > 0 and (s["lg"] != "idle" or s.get("per_setup")):
        # (reconnect: the run is the burst of re-registrations and a short hold, so its whole CPU is theirs)
        res["cpu_us_per_op_whole_run"] = whole / ok * 1e6
    if ops > 0:
        res["ctx_switches_per_op"] = (sampler.ctx_at(win[1]) - sampler.ctx_at(win[0])) / ops
        counts, covered = perf.in_window(win[0], win[1])
        pops = (res["ok_rate"] or 0) * covered
        if counts is not None and pops > 0:
            res["perf"] = {"seconds": covered, "ops": pops, "counts": counts}
            for k, v in counts.items():
                res[f"{k}_per_op"] = v / pops
    if s["lg"] == "idle" and not s.get("per_setup"):
        mems = [m for (_, _, m, _) in sampler.samples if m]
        base = mems[0]
        peak_rss = max(m[0] for m in mems)
        peak_pss = max(m[1] for m in mems)
        conns = int(num(lj.get("connections_held")) or s["count"])
        res["memory"] = {"baseline_rss_kib": base[0], "baseline_pss_kib": base[1], "peak_rss_kib": peak_rss,
                         "peak_pss_kib": peak_pss, "connections": conns,
                         "rss_kib_per_conn": (peak_rss - base[0]) / conns, "pss_kib_per_conn": (peak_pss - base[1]) / conns}
    return res


def fresh_run(server, s, rate, duration, **kw):
    """One loadgen run on a server started for it alone and stopped after it: every run begins with an empty
    registrar (no bindings left by an earlier run's closed connections) and the server's own baseline memory."""
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - reported, and the next run still goes
        log(f"{server.name}: cannot start: {e}")
        server.stop()
        return {"system": server.name, "scenario": s["name"], "error": f"cannot start: {e}"}
    try:
        return run_loadgen(server, s, rate, duration, **kw)
    finally:
        server.stop()
        time.sleep(0.5)


def capacity_runs(server, s):
    """The capacity hold and, on the same server, the reconnect burst that follows it."""
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - reported
        server.stop()
        return [{"system": server.name, "scenario": s["name"], "error": f"cannot start: {e}"}]
    try:
        out = [run_loadgen(server, s, s["rate"], s["duration"])]
        out.append(run_loadgen(server, s["then"], s["then"]["rate"], s["then"]["duration"]))
        return out
    finally:
        server.stop()
        time.sleep(0.5)


def run_system(server, scenarios):
    results = []
    for s in scenarios:
        if server.kind not in s["systems"]:
            continue
        if s.get("then"):
            results += capacity_runs(server, s)
            continue
        held = None
        if s["find_max"]:
            r = fresh_run(server, s, s.get("fm_start", s["rate"]), 5, find_max=True, tag="-findmax")
            results.append(r)
            held = num(r.get("max_rate_held"))
        # CPU per operation depends on the rate (per-wakeup costs amortise over batches): every system is
        # measured at the same rate, so that the ratios compare like with like.
        r = fresh_run(server, s, s["rate"], s["duration"])
        if held and s["name"] == "im":
            results.append(r)
            # issue 3's latency goal: p99 at half of the max rate held
            half = dict(s, name="im@half-max")
            r = fresh_run(server, half, max(50, held / 2), s["duration"])
            r["rate_basis"] = "half of max_rate_held"
        results.append(r)
    return results


# ---------------------------------------------------------------------------------------------------- main

def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs at fixed rates (< ~5 min); default: find-max + longer runs")
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                    help="comma list of " + ",".join(ALL_SYSTEMS) + " (parapet = both parapet modes; default: all)")
    ap.add_argument("--counters", default="on", choices=["on", "off"],
                    help="syscall and io_uring counts per operation with perf stat (default on)")
    ap.add_argument("--perimeter-args", default=None,
                    help="`parapet up` arguments for the two-process perimeter mode (default: found in `up --help`)")
    ap.add_argument("--scenarios", default="", help="comma list of idle,register,im,handshake,handshake-resumed,mix,federation")
    ap.add_argument("--server-cpu", default=os.environ.get("HARNESS_SERVER_CPU", "0"))
    ap.add_argument("--load-cpu", default=os.environ.get("HARNESS_LOAD_CPU", "1"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--duration", type=int, default=0,
                    help="seconds per measured run (default: 5 with --quick, else 15); longer runs, less noise")
    ap.add_argument("--idle-count", type=int, default=0, help="connections held by the idle scenario")
    ap.add_argument("--capacity", type=int, default=None,
                    help="connections held by the capacity scenario (default 2000 with --quick, else 100000, cut to "
                         "the open-file limit); 0 leaves it out")
    ap.add_argument("--smoke-kamailio", metavar="PYTHON",
                    help="start Kamailio alone and check it with pjsua2 (PYTHON has pjsua2-python), then exit")
    ARGS = ap.parse_args()
    ARGS.counters = ARGS.counters == "on"
    ARGS.command = "bash benches/harness/run.sh" + (" --quick" if ARGS.quick else "")
    os.makedirs(RUNS, exist_ok=True)
    ARGS.capacity_note = None
    ARGS.perf_events = {}
    PLAN = plan(ARGS)
    ARGS.max_conns = max([s["count"] for s in PLAN] + [LOAD_USERS])
    # `parapet up --load-users`: the capacity scenario needs one user per connection.
    ARGS.load_users = max(LOAD_USERS, ARGS.max_conns)

    if ARGS.smoke_kamailio:
        return smoke_kamailio(ARGS.smoke_kamailio)

    if not os.path.exists(LOADGEN):
        log(f"{LOADGEN} is missing: build it with `cargo build --release -p loadgen` (run.sh does)")
        return 2
    t0 = time.time()
    systems = []
    for x in ARGS.systems.split(","):
        systems += SYSTEM_ALIASES.get(x, [x]) if x else []
    unknown = [x for x in systems if x not in ALL_SYSTEMS]
    if unknown:
        log(f"unknown --systems {unknown}: choose among {','.join(ALL_SYSTEMS)} (or parapet, kamailio-both)")
        return 2
    meta = {"command": ARGS.command, "mode": "quick" if ARGS.quick else "full",
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": host_info(),
            "server_cpu": ARGS.server_cpu, "load_cpu": ARGS.load_cpu, "versions": versions(), "skipped": [],
            "plan": PLAN}
    if (os.cpu_count() or 1) < 2:
        log("only one CPU: server and loadgen share it; CPU per operation is still meaningful, latency is not")
        ARGS.load_cpu = ARGS.server_cpu = "0"
    meta["crypto_calibration"] = crypto_calibration(ARGS.server_cpu)
    results = []
    ev, why = perf_events() if ARGS.counters else ({}, "--counters off")
    ARGS.perf_events = ev
    meta["counters"] = {"events": ev, "note": why}
    if why:
        log(f"syscall / io_uring columns: {why}")
    modes, note = parapet_modes(ARGS.perimeter_args)
    if note:
        log(note)
        meta["parapet_modes_note"] = note
    # parapet first: `parapet up` makes the PKI and users the others use.
    for name in ("parapet-coloc", "parapet-perimeter"):
        if name not in systems:
            continue
        if name in modes:
            results += run_system(Parapet(ARGS, name, modes[name]), PLAN)
        else:
            meta["skipped"].append({"system": name, "reason": note or "not supported by this parapet binary",
                                    "install": "a parapet build with the co-located roles (issue 12)"})
    for name, allocator in (("kamailio-tlsf", "tlsf"), ("kamailio", None)):
        if name not in systems:
            continue
        if Kamailio.binary() and Kamailio.modpath():
            results += run_system(Kamailio(ARGS, allocator), PLAN)
        else:
            meta["skipped"].append({"system": name, "reason": "kamailio (with its tls module) is not installed",
                                    "install": APT["kamailio"]})
            log(f"Kamailio is not installed; for the side-by-side comparison: {APT['kamailio']}")
    if "kamailio-edge+pool" in systems:
        if Kamailio.binary() and Kamailio.modpath():
            results += run_system(KamailioEdge(ARGS), PLAN)
        else:
            meta["skipped"].append({"system": "kamailio-edge+pool", "reason": "kamailio is not installed",
                                    "install": APT["kamailio"]})
    if "haproxy" in systems:
        if HAProxy.binary():
            results += run_system(HAProxy(ARGS), PLAN)
        else:
            meta["skipped"].append({"system": "haproxy", "reason": "haproxy is not installed", "install": APT["haproxy"]})
            log(f"HAProxy is not installed; for the handshake comparison: {APT['haproxy']}")
    meta["elapsed_s"] = time.time() - t0
    meta["capacity_note"] = ARGS.capacity_note
    md = write_report(meta, results)
    print(md)
    log(f"wrote {os.path.join(OUT, 'results.md')} and results.json")
    return 0


def raw_register(port):
    """One REGISTER without credentials over TLS; returns the response text."""
    ctx = ssl.create_default_context(cafile=os.path.join(DATA, "pki", "ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            lp = t.getsockname()[1]
            req = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{lp};branch=z9hG4bKh{lp};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=h1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
                   f"Call-ID: harness-{lp}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{lp};transport=tls>\r\n"
                   "Expires: 60\r\nContent-Length: 0\r\n\r\n")
            t.sendall(req.encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = t.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf.decode(errors="replace")


def smoke_kamailio(py):
    """Kamailio alone, checked with a real SIP client (pjsua2): REGISTER 401 -> 200 for alice and bob, then
    alice's MESSAGE reaches bob over bob's own TLS connection and alice gets 200."""
    if not os.path.exists(os.path.join(DATA, "users.toml")):
        log("no target/harness/data yet: run the harness (or `parapet up --data-dir target/harness/data "
            "--load-users 2000`) once first")
        return 2
    users = dict(read_users(os.path.join(DATA, "users.toml")))
    k = Kamailio(ARGS, "tlsf")
    k.start()
    try:
        challenge = raw_register(PORTS["kamailio"])
        challenge_ok = challenge.startswith("SIP/2.0 401") and f'realm="{DOMAIN}"' in challenge
        print("--- raw REGISTER without credentials ->", challenge.splitlines()[0] if challenge else "nothing")
        print("\n".join(l for l in challenge.splitlines() if l.lower().startswith("www-authenticate")))
        script = os.path.join(HERE, "kamailio", "pjsua_smoke.py")
        ca = os.path.join(DATA, "pki", "ca.pem")
        port = str(PORTS["kamailio"])
        bob = subprocess.Popen([py, script, "bob", users["bob"], port, ca, "", "7"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        alice = subprocess.run([py, script, "alice", users["alice"], port, ca, f"sip:bob@{DOMAIN}", "5"],
                               capture_output=True, text=True, timeout=30)
        bob_out, _ = bob.communicate(timeout=30)
    finally:
        k.stop()
    a_out = alice.stdout + alice.stderr
    print("--- alice\n" + "\n".join(l for l in a_out.splitlines() if l.startswith(("REG", "MSG"))))
    print("--- bob\n" + "\n".join(l for l in bob_out.splitlines() if l.startswith(("REG", "MSG"))))
    ok = ("REG 200" in a_out and "REG 200" in bob_out and "MSGSTATUS 200" in a_out
          and "hello from alice" in bob_out and challenge_ok)
    print("kamailio smoke:", "PASS" if ok else "FAIL", f"(kamailio log: {OUT}/kamailio.log)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
