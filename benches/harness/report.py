"""The report: results.md (tables per run, systems side by side, the edge swap, capacity, the goals of issue 12)
and results.json, with the host and versions they were measured on."""

import json
import os
import platform
import re
import socket
import subprocess

from common import *  # noqa: F401,F403 - constants and helpers
from measure import PERF_INTERVAL_MS
from servers import HAProxy, Kamailio

# Goals from issue 12 ("Goals"), per parapet mode: (system, scenario, kind, limit, text). CPU/2K: also at most
# half of Kamailio -x tlsf in the same run; CPU/K: also at or below it.
GOALS = [
    ("parapet-coloc", "im", "CPU/2K", 40.0, "MESSAGE user to user <= 40 µs server CPU"),
    ("parapet-coloc", "register", "CPU/2K", 30.0, "REGISTER with digest <= 30 µs"),
    ("parapet-coloc", "im", "CTX", 2.0, "context switches per MESSAGE <= 2"),
    ("parapet-perimeter", "im", "CPU/K", 80.0, "MESSAGE <= 80 µs (two processes)"),
    ("parapet-perimeter", "im", "CTX", 2.0, "context switches per MESSAGE <= 2"),
    ("parapet-coloc", "handshake", "CPU", 150.0, "full TLS handshake <= 150 µs"),
    ("parapet-perimeter", "handshake", "CPU", 150.0, "full TLS handshake <= 150 µs"),
    ("parapet-coloc", "idle", "MEM", 16.0, "idle registered TLS connection <= 16 KiB"),
    ("parapet-perimeter", "idle", "MEM", 16.0, "idle registered TLS connection <= 16 KiB"),
    ("parapet-coloc", "capacity", "MEM", 16.0, "idle connection <= 16 KiB kept at capacity"),
    ("parapet-perimeter", "capacity", "MEM", 16.0, "idle connection <= 16 KiB kept at capacity"),
]


# ---------------------------------------------------------------------------------------------------- report

def host_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(), "memory": mem,
            "hostname": socket.gethostname()}


def crypto_calibration(cpu):
    """`openssl speed` on the server CPU: the crypto alone of one full TLS 1.3 handshake, server side
    (X25519 key generation + shared secret, one ECDSA P-256 signature), to compare machines with issue 3's ~60 us."""
    try:
        r = subprocess.run(["taskset", "-c", cpu, "openssl", "speed", "-seconds", "1", "ecdsap256", "ecdhx25519"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = r.stdout
    m1 = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([0-9.]+)\s+([0-9.]+)", out)
    m2 = re.search(r"253 bits ecdh \(X25519\)\s+\S+s\s+([0-9.]+)", out)
    if not (m1 and m2):
        return None
    sign, verify, ecdh = 1e6 / float(m1.group(1)), 1e6 / float(m1.group(2)), 1e6 / float(m2.group(1))
    # server: one keygen (~ one X25519 op) + one shared secret + one signature
    return {"ecdsa_p256_sign_us": sign, "ecdsa_p256_verify_us": verify, "x25519_op_us": ecdh,
            "tls13_server_crypto_us": 2 * ecdh + sign}


def versions():
    v = {}
    def first(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return None
    v["parapet"] = first(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    if Kamailio.binary():
        v["kamailio"] = first([Kamailio.binary(), "-v"])
    if HAProxy.binary():
        v["haproxy"] = first([HAProxy.binary(), "-v"])
    v["openssl"] = first(["openssl", "version"])
    return v


def f1(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def lat(r, k):
    lm = (r.get("loadgen") or {}).get("latency_ms") or {}
    return num(lm.get(k))


def errs(r):
    lj = r.get("loadgen") or {}
    e = lj.get("errors") or {}
    parts = [f"{k}:{v}" for k, v in sorted(e.items())] if isinstance(e, dict) else [str(e)]
    t = num(lj.get("timeouts"))
    if t:
        parts.append(f"timeout:{int(t)}")
    for k in ("dropped", "dropped_client_overloaded"):
        if num(lj.get(k)):
            parts.append(f"dropped:{int(num(lj.get(k)))}")
    return " ".join(parts) or "0"


def by_role(r):
    """CPU µs per operation summed per role (labels "edge[123]" count as "edge")."""
    out = {}
    for k, v in ((r or {}).get("cpu_us_per_op_by_process") or {}).items():
        role = k.split("[")[0]
        out[role] = out.get(role, 0.0) + v
    return out


def write_report(meta, results):
    by = {(r["system"], r["scenario"]): r for r in results if not r.get("find_max")}
    fm = {(r["system"], r["scenario"]): r for r in results if r.get("find_max")}
    systems = [x for x in ALL_SYSTEMS if any(r["system"] == x for r in results)]
    L = []
    L.append("# parapet benchmark results\n")
    h = meta["host"]
    L.append(f"- host: {h['cpu_model']}, {h['cores']} cores, kernel {h['kernel']}, {h['memory']}")
    L.append(f"- run: `{meta['command']}` ({meta['mode']}), {meta['started']} — {meta['elapsed_s']:.0f} s")
    L.append(f"- pinning: servers on CPU {meta['server_cpu']} (`taskset`), loadgen on CPU {meta['load_cpu']}; "
             "parapet `up --cores 1` (co-located: edge and pool in one process; perimeter: edge and pool processes, "
             "mutual TLS between them); Kamailio 1 TLS worker (`-x tlsf` and the default allocator); HAProxy one "
             "thread")
    L.append("- every run starts its server afresh (parapet's stored registrations removed first): each scenario "
             "begins with an empty registrar, so a MESSAGE forks to exactly one binding; `regs` shows parapet's "
             "`parapet_pool_bindings_now` before the run → the most seen during it (polled every 2 s; one /metrics request each, counted in the server CPU)")
    cc = meta.get("crypto_calibration")
    if cc:
        L.append(f"- crypto calibration (`openssl speed`, server CPU): X25519 {cc['x25519_op_us']:.1f} µs/op, ECDSA P-256 "
                 f"sign {cc['ecdsa_p256_sign_us']:.1f} µs → a full TLS 1.3 handshake's server crypto ≈ "
                 f"{cc['tls13_server_crypto_us']:.0f} µs")
    for k, v in meta["versions"].items():
        L.append(f"- {k}: {v}")
    if meta.get("parapet_modes_note"):
        L.append(f"- parapet modes: {meta['parapet_modes_note']}")
    L.append("- server CPU = utime+stime of every server process (/proc/<pid>/stat) over the measurement window, "
             "divided by the operations completed in it; ctx sw = voluntary + involuntary context switches of every "
             "server thread (/proc/<pid>/task/*/status) in the window, per operation; memory = ΔPSS (and ΔRSS) of "
             "all server processes with the idle connections held, divided by the connections; others on its CPU = "
             "how busy the server's CPU was with other processes in the window (/proc/stat): above a few per cent, "
             "the figures are noisy")
    c = meta.get("counters") or {}
    if c.get("events"):
        L.append("- syscalls, io_uring submissions (SQEs) and io_uring_enter calls per operation: `perf stat -I "
                 f"{PERF_INTERVAL_MS} -e {' -e '.join(c['events'].values())} -p <server pids>` over the same window "
                 "(counting tracepoints slows each syscall a little: `--counters off` for CPU figures without it)"
                 + (f"; {c['note']}" if c.get("note") else ""))
    else:
        L.append(f"- syscall and io_uring columns empty: {c.get('note') or 'not measured'}")
    L.append("")
    L.append("| system | scenario | target/s | achieved ok/s | ok | errors | p50 ms | p99 ms | p99.9 ms | max held/s "
             "| **server CPU µs/op** | ctx sw/op | syscalls/op | uring SQEs/op | uring enters/op | CPU util "
             "| others on its CPU | mem KiB/idle conn (PSS / RSS) | regs |")
    L.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if r.get("find_max"):
            continue
        lj = r.get("loadgen") or {}
        mh = fm.get((r["system"], r["scenario"]), {}).get("max_rate_held")
        mem = r.get("memory")
        memcell = f"{mem['pss_kib_per_conn']:.1f} / {mem['rss_kib_per_conn']:.1f}" if mem else ""
        if r.get("error"):
            L.append(f"| {r['system']} | {r['scenario']} | {r.get('target_rate', '')} | | | **{r['error'][:160]}** "
                     "| | | | | | | | | | | | | |")
            continue
        regs = r.get("registrations")
        regcell = f"{regs['before']} → {regs.get('max_during')}" if regs else ""
        L.append(f"| {r['system']} | {r['scenario']} | {r['target_rate']} | {f1(r.get('ok_rate'), 0)} | "
                 f"{int(num(lj.get('ok')) or 0)} | {errs(r)} | {f1(lat(r, 'p50'), 3)} | {f1(lat(r, 'p99'), 3)} | "
                 f"{f1(lat(r, 'p999'), 3)} | {f1(num(mh), 0) if mh is not None else ''} | "
                 f"**{f1(r.get('cpu_us_per_op'))}** | {f1(r.get('ctx_switches_per_op'), 2)} | "
                 f"{f1(r.get('syscalls_per_op'))} | {f1(r.get('uring_submits_per_op'))} | "
                 f"{f1(r.get('uring_enters_per_op'))} | "
                 f"{f1((r.get('server_cpu_util') or 0) * 100, 0)}% | "
                 f"{f1(r['server_cpu_others_util'] * 100, 0) + '%' if r.get('server_cpu_others_util') is not None else ''} | "
                 f"{memcell} | {regcell} |")
    L.append("")
    for sysname in ("parapet-coloc", "parapet-perimeter", "kamailio-edge+pool"):
        split = [(r["scenario"], by_role(r)) for r in results
                 if r["system"] == sysname and not r.get("find_max") and r.get("cpu_us_per_op_by_process")]
        if split:
            L.append(f"{sysname} CPU per operation by process (µs): " + "; ".join(
                f"{sc}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(d.items())) for sc, d in split))
            L.append("")
    # comparison: one column per system, ratios against the headline peer
    L.append("## Server CPU per completed operation, side by side (µs; idle and capacity: KiB per connection, PSS; "
             "reconnect: CPU of the whole burst per reconnection)\n")
    L.append("| scenario | " + " | ".join(systems) + " | coloc / kamailio-tlsf | perimeter / kamailio-tlsf |")
    L.append("|---|" + "---:|" * (len(systems) + 2))
    comp = []
    order = [s["name"] for s in meta["plan"]] + ["im@half-max"]
    for sc in sorted({r["scenario"] for r in results if r["scenario"] != "*"},
                     key=lambda x: order.index(x) if x in order else 99):
        def val(sysname):
            r = by.get((sysname, sc), {})
            if sc in ("idle", "capacity"):
                return (r.get("memory") or {}).get("pss_kib_per_conn")
            if sc == "reconnect":
                return r.get("cpu_us_per_op_whole_run")
            return r.get("cpu_us_per_op")
        vals = {x: val(x) for x in systems}
        k = vals.get("kamailio-tlsf")
        rc = vals.get("parapet-coloc") / k if vals.get("parapet-coloc") and k else None
        rp = vals.get("parapet-perimeter") / k if vals.get("parapet-perimeter") and k else None
        comp.append({"scenario": sc, "unit": "KiB/conn" if sc in ("idle", "capacity") else "us/op", **vals,
                     "coloc_over_kamailio_tlsf": rc, "perimeter_over_kamailio_tlsf": rp})
        L.append(f"| {sc} | " + " | ".join(f1(vals[x]) for x in systems) + f" | {f1(rc, 2)} | {f1(rp, 2)} |")
    L.append("")
    swap = [(sc, by.get(("parapet-perimeter", sc)), by.get(("kamailio-edge+pool", sc))) for sc in ("register", "im")]
    swap = [(sc, a, b) for sc, a, b in swap if b]
    if swap:
        L.append("## The edge swapped: the same pool behind parapet's edge and behind Kamailio (`-x tlsf`)\n")
        L.append("Same pool (up's pool.toml, started fresh), same users, same load; the edge's share is the CPU of "
                 "the edge process (parapet) or of every Kamailio process, per completed operation.\n")
        L.append("| scenario | parapet edge µs/op | Kamailio edge µs/op | Kamailio / parapet edge | pool behind parapet's "
                 "edge µs/op | pool behind Kamailio µs/op | p99 ms (parapet edge / Kamailio edge) |")
        L.append("|---|---:|---:|---:|---:|---:|---|")
        for sc, a, b in swap:
            ga, gb = by_role(a), by_role(b)
            ea, eb = ga.get("edge"), gb.get("edge")
            L.append(f"| {sc} | {f1(ea)} | {f1(eb)} | {f1(eb / ea if ea and eb else None, 2)} | {f1(ga.get('pool'))} | "
                     f"{f1(gb.get('pool'))} | {f1(lat(a or {}, 'p99'), 3)} / {f1(lat(b, 'p99'), 3)} |")
        L.append("")
    caps = [r for r in results if r["scenario"] in ("capacity", "reconnect") and not r.get("error")]
    if caps:
        L.append("## Capacity\n")
        if meta.get("capacity_note"):
            L.append(f"- {meta['capacity_note']}")
        for r in caps:
            lj = r.get("loadgen") or {}
            if r["scenario"] == "capacity":
                m = r.get("memory") or {}
                L.append(f"- {r['system']}: {lj.get('connections_held')} of {r['count']} registered TLS connections "
                         f"held idle for {r['duration_s']} s; {f1(m.get('pss_kib_per_conn'))} KiB PSS "
                         f"({f1(m.get('rss_kib_per_conn'))} KiB RSS) per connection; server total "
                         f"{f1((m.get('peak_rss_kib') or 0) / 1024)} MiB RSS; set-up "
                         f"{f1(num(lj.get('duration_s')))} s ({f1(r.get('ok_rate'), 0)} registrations/s), errors {errs(r)}")
            else:
                L.append(f"- {r['system']}: then {int(num(lj.get('ok')) or 0)} of {r['count']} users reconnected and "
                         f"registered again in {f1(num(lj.get('duration_s')), 2)} s ({f1(r.get('ok_rate'), 0)}/s, 64 "
                         f"set-ups in flight), {f1(r.get('cpu_us_per_op_whole_run'))} µs server CPU per reconnection "
                         f"(TLS handshake + REGISTER 401/200), errors {errs(r)}")
        L.append("")
    L.append("## parapet against the goals of issue 12\n")
    L.append("| goal | measured | verdict |")
    L.append("|---|---:|---|")
    goals = []
    kt = {sc: by.get(("kamailio-tlsf", sc), {}).get("cpu_us_per_op") for sc in ("im", "register")}
    for sysname, sc, kind, lim, text in GOALS:
        p = by.get((sysname, sc), {})
        if not p:
            continue
        if kind == "MEM":
            v = (p.get("memory") or {}).get("pss_kib_per_conn")
        elif kind == "CTX":
            v = p.get("ctx_switches_per_op")
        else:
            v = p.get("cpu_us_per_op")
        if kind == "CPU/2K" and kt.get(sc):  # also at most half of Kamailio -x tlsf measured in the same run
            lim = min(lim, kt[sc] / 2)
            text += f" (and ≤ half of kamailio-tlsf's {kt[sc]:.1f})"
        if kind == "CPU/K" and kt.get(sc):  # also at or below Kamailio -x tlsf
            lim = min(lim, kt[sc])
            text += f" (and ≤ kamailio-tlsf's {kt[sc]:.1f})"
        verdict = "—" if v is None else ("met" if v <= lim else "NOT met")
        extra = ""
        ph = by.get((sysname, "im@half-max"), p)
        if sc == "im" and kind.startswith("CPU") and lat(ph, "p99") is not None:
            extra = f", p99 {lat(ph, 'p99'):.3f} ms at {ph.get('target_rate')}/s ({ph.get('rate_basis', 'fixed rate')})"
        unit = {"MEM": "KiB", "CTX": ""}.get(kind, "µs")
        goals.append({"system": sysname, "scenario": sc, "goal": text, "measured": v, "unit": unit, "verdict": verdict})
        L.append(f"| {sysname} {sc}: {text} | {f1(v)} {unit}{extra} | {verdict} |")
    for sysname in ("parapet-coloc", "parapet-perimeter"):
        ph = by.get((sysname, "im@half-max"))
        if ph and lat(ph, "p99") is not None:
            v = lat(ph, "p99")
            L.append(f"| {sysname} im: p99 < 1 ms at half the maximum rate held | {v:.3f} ms at {ph.get('target_rate')}/s "
                     f"| {'met' if v < 1.0 else 'NOT met'} |")
    L.append("")
    for sk in meta["skipped"]:
        L.append(f"- {sk['system']} not run: {sk['reason']} — install with `{sk['install']}`")
    for r in results:
        if r.get("error"):
            L.append(f"- {r['system']} {r['scenario']}: {r['error']}")
        regs = r.get("registrations") or {}
        if regs.get("before") and r["scenario"] != "reconnect":  # reconnect follows capacity on purpose
            L.append(f"- {r['system']} {r['scenario']}: **the registrar held {regs['before']} registrations before "
                     "the run** (not a fresh registrar: MESSAGEs fork to them)")
    L.append("- raw loadgen output, JSON, HdrHistogram and perf logs: target/harness/runs/; server logs: "
             "target/harness/*.log")
    md = "\n".join(L) + "\n"
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({**meta, "results": results, "comparison": comp, "goals": goals}, f, indent=2)
    return md
