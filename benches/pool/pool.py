#!/usr/bin/env python3
"""Enterprise pool benchmark (issue 11): register, im and presence against `parapet up --front-ends 1, 2, 3`,
then a failover run (loadgen mix at a fixed rate against 3 front ends, one front end killed with SIGKILL mid-run).

Run through benches/pool/pool.sh. Reuses the harness's /proc helpers (benches/harness/harness.py): the server
(`up` and its children) is pinned to CPU 0, loadgen to CPU 1; server CPU per operation is utime+stime of the edge
and front-end processes over loadgen's measurement window (PostgreSQL's CPU is reported apart, not in the sum).
Writes target/pool/results.json and target/pool/results.md (copy the figures into benches/pool/RESULTS.md).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "harness"))
import harness as H  # noqa: E402

ROOT = H.ROOT
OUT = os.path.join(ROOT, "target", "pool")
PARAPET, LOADGEN = H.PARAPET, H.LOADGEN
PORT_BASE = 27361
LOAD_USERS = 2000
DOMAIN = "example.com"
PROGRESS = re.compile(r"^\[\s*(\d+)s\]\s+(\d+) ops/s\s+p50\s+([0-9.]+) ms\s+p99\s+([0-9.]+) ms\s+errors (\d+)\s+"
                      r"timeouts (\d+)\s+dropped (\d+)")


def log(*a):
    print("[pool-bench]", *a, file=sys.stderr, flush=True)


class Up:
    """`parapet up --front-ends N` on PostgreSQL, pinned to the server CPU."""

    def __init__(self, n, cpu):
        self.n, self.cpu = n, cpu
        self.data = os.path.join(OUT, f"data-fe{n}")
        self.log_path = os.path.join(OUT, f"up-fe{n}.log")
        self.proc = None

    def start(self):
        argv = ["taskset", "-c", self.cpu, PARAPET, "up", "--data-dir", self.data, "--port-base", str(PORT_BASE),
                "--load-users", str(LOAD_USERS), "--cores", "1", "--flood-limits", "off", "--federation", "off",
                "--store", "postgres", "--front-ends", str(self.n)]
        self.argv = " ".join(argv)
        log("start:", self.argv)
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.logf, stdin=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, start_new_session=True)
        H.wait_parapet_ready(self.proc, self.logf, self.log_path, 120)
        time.sleep(1.0)

    def roles(self):
        """{role: pid} of the edge and front-end processes (children of `up`)."""
        out = {}
        for p in H.proc_children(self.proc.pid):
            c = H.cmdline(p)
            m = re.search(r"/(edge|pool|fe\d)\.toml", c)
            if m:
                out[m.group(1)] = p
        return out

    def postgres(self):
        """{label: pid} of the PostgreSQL server processes whose data lives under this data dir."""
        out = {}
        for d in os.listdir("/proc"):
            c = H.cmdline(int(d)) if d.isdigit() else ""
            # The postmaster (its backends are its children); not `up`, whose command line says postgres too.
            if self.data in c and os.path.basename(c.split(" ", 1)[0]) in ("postgres", "postmaster"):
                for p in H.proc_tree(int(d)):
                    out[f"pg[{p}]"] = p
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()


def loadgen_argv(a, up, scen, rate, count, duration, jpath, extra=()):
    return ["taskset", "-c", a.load_cpu, LOADGEN, scen, "--target", f"127.0.0.1:{PORT_BASE}", "--server-name",
            "localhost", "--ca", os.path.join(up.data, "pki", "ca.pem"), "--domain", DOMAIN,
            "--users", os.path.join(up.data, "users.toml"),
            "--count", str(count), "--rate", str(rate), "--duration", str(duration), "--warmup", str(a.warmup),
            "--cores", a.load_cpu, "--json", jpath, "--timeout-ms", str(a.timeout_ms)] + list(extra)


def run_loadgen(a, up, scen, rate, count, duration, extra=(), on_progress=None):
    """One loadgen run; returns its JSON, its per-second series [(t_unix_start, sec dict)], and CPU figures."""
    stem = os.path.join(OUT, f"fe{up.n}-{scen}")
    jpath = stem + ".json"
    if os.path.exists(jpath):
        os.remove(jpath)
    argv = loadgen_argv(a, up, scen, rate, count, duration, jpath, extra)
    roles = up.roles()
    pg = up.postgres()
    sampler = H.Sampler({**roles, **pg})
    sampler.take()
    sampler.start()
    log(f"fe{up.n} {scen}: rate {rate}/s x {duration} s, {count} users")
    series = []
    c0 = [None]
    with open(stem + ".err", "w") as err:
        lg = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, cwd=ROOT)
        for line in lg.stderr:
            now = time.time()
            err.write(line)
            m = PROGRESS.match(line)
            if not m:
                continue
            sec = int(m.group(1))
            if c0[0] is None:
                # loadgen prints second i (1-based) once i + 0.5 s of measurement have passed (100 ms polling).
                c0[0] = now - sec - 0.5
            s = {"second": sec, "ops": int(m.group(2)), "p50_ms": float(m.group(3)), "p99_ms": float(m.group(4)),
                 "errors": int(m.group(5)), "timeouts": int(m.group(6)), "dropped": int(m.group(7))}
            series.append(s)
            if on_progress:
                on_progress(sec, c0[0])
        rc = lg.wait(timeout=duration + a.warmup + count / 50 + 60)
    sampler.stop()
    with open(jpath) as f:
        lj = json.load(f)
    res = {"scenario": scen, "front_ends": up.n, "rate": rate, "count": count, "duration_s": duration,
           "loadgen_rc": rc, "loadgen_argv": " ".join(argv), "loadgen": lj, "series": series, "c0_unix": c0[0]}
    ok = lj.get("ok") or 0
    dur = lj.get("duration_s") or duration
    res["ok_rate"] = ok / dur
    # CPU over the measured seconds: [c0, c0 + duration].
    if c0[0] is not None:
        w0, w1 = c0[0], c0[0] + dur
        a0, p0 = sampler.total_at(w0)
        a1, p1 = sampler.total_at(w1)
        per = {n: (p1[n] - p0.get(n, 0)) / H.CLK_TCK for n in p1}
        server = sum(v for n, v in per.items() if not n.startswith("pg["))
        pgs = sum(v for n, v in per.items() if n.startswith("pg["))
        res["cpu"] = {"server_s": server, "postgres_s": pgs,
                      "by_role_s": {n: v for n, v in per.items() if not n.startswith("pg[")}}
        if ok:
            res["cpu_us_per_op"] = server / ok * 1e6
            res["pg_cpu_us_per_op"] = pgs / ok * 1e6
    return res


def failover(a, up):
    """mix at a fixed rate; SIGKILL one front end (fe2) at a.kill_at seconds into the measurement."""
    killed = {}

    def on_progress(sec, c0):
        if "t" in killed or sec < a.kill_at - 1:
            return
        # Second `sec` just printed; wait until exactly kill_at s into the measurement.
        time.sleep(max(0.0, c0 + a.kill_at - time.time()))
        victim = up.roles().get(a.victim)
        if victim is None:
            killed["t"] = None
            return
        os.kill(victim, signal.SIGKILL)
        killed["t"] = time.time()
        killed["pid"] = victim
        killed["offset_s"] = killed["t"] - c0
        log(f"killed {a.victim} (pid {victim}) {killed['offset_s']:.2f} s into the measurement")

    res = run_loadgen(a, up, "mix", a.fail_rate, a.count, a.fail_duration, on_progress=on_progress)
    res["killed"] = killed
    if not killed.get("t"):
        res["error"] = "the front end was not killed"
        return res
    k = int(killed["offset_s"])  # 0-based index of the second in which the kill happened
    fails = [s["errors"] + s["timeouts"] + s["dropped"] for s in res["series"]]
    before = sum(fails[:k])
    bad = [i for i in range(k, len(fails)) if fails[i] > 0]
    if bad:
        # The failed member's users are served again from the end of the last second with failures on.
        last = bad[-1]
        res["recovery_s"] = (last + 1) - killed["offset_s"]
        window = range(k, last + 1)
    else:
        res["recovery_s"] = 0.0
        window = range(k, min(k + 1, len(fails)))
    res["failed_before_kill"] = before
    res["failed_during_failover"] = sum(fails[i] for i in window)
    res["failed_after"] = sum(fails[i] for i in range(window.stop, len(fails)))
    res["p99_during_ms_max_per_second"] = max(res["series"][i]["p99_ms"] for i in window)
    res["p99_before_ms_max_per_second"] = max((s["p99_ms"] for s in res["series"][:k]), default=None)
    res["failover_window_seconds"] = [window.start + 1, window.stop]
    return res


def host():
    h = H.host_info()
    return f"{h['cpu_model']}, {h['cores']} cores, {h['memory']}, Linux {h['kernel']}"


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def report(meta, results, fo):
    L = ["# Enterprise pool benchmark (generated by benches/pool/pool.sh)", ""]
    L.append(f"Host: {meta['host']}. Server (`up`: edge, front ends, PostgreSQL) pinned to CPU {meta['server_cpu']}, "
             f"loadgen to CPU {meta['load_cpu']}.")
    L.append(f"Load: {meta['load']}")
    L.append("")
    L.append("| front ends | scenario | rate | ok/s | p50 ms | p99 ms | failed | server CPU µs/op (edge+FEs) "
             "| PostgreSQL CPU µs/op |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lj = r.get("loadgen", {})
        lat = lj.get("latency_ms", {})
        failed = sum((lj.get("errors") or {}).values()) + (lj.get("timeouts") or 0) + (lj.get("dropped") or 0)
        L.append(f"| {r['front_ends']} | {r['scenario']} | {r['rate']} | {fmt(r.get('ok_rate'))} | "
                 f"{fmt(lat.get('p50'), 2)} | {fmt(lat.get('p99'), 2)} | {failed} | {fmt(r.get('cpu_us_per_op'))} | "
                 f"{fmt(r.get('pg_cpu_us_per_op'))} |")
    if fo:
        L += ["", "## Failover", ""]
        if fo.get("error"):
            L.append(f"ERROR: {fo['error']}")
        else:
            k = fo["killed"]
            L.append(f"`loadgen mix` at {fo['rate']}/s for {fo['duration_s']} s against 3 front ends; "
                     f"front end {meta['victim']} (pid {k['pid']}) killed with SIGKILL {k['offset_s']:.2f} s into "
                     f"the measurement.")
            L.append(f"- transactions failed during the failover: {fo['failed_during_failover']} "
                     f"(before the kill: {fo['failed_before_kill']}, after recovery: {fo['failed_after']})")
            L.append(f"- time until the failed member's users are served again: ≤ {fo['recovery_s']:.2f} s "
                     f"(end of the last second with a failure, seconds {fo['failover_window_seconds']})")
            L.append(f"- p99 during the failover (worst per-second p99): {fo['p99_during_ms_max_per_second']:.2f} ms "
                     f"(before the kill: {fmt(fo['p99_before_ms_max_per_second'], 2)} ms)")
            L += ["", "| second | ops | p50 ms | p99 ms | errors | timeouts | dropped |", "|---|---|---|---|---|---|---|"]
            for s in fo["series"]:
                L.append(f"| {s['second']} | {s['ops']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} | "
                         f"{s['timeouts']} | {s['dropped']} |")
            L.append(f"\nErrors by code over the run: {json.dumps(fo['loadgen'].get('errors'))}")
    return "\n".join(L) + "\n"


# (flag, type, default, help)
OPTIONS = [
    ("--front-ends", str, "1,2,3", "front-end counts to run the scenarios against"),
    ("--scenarios", str, "register,im,presence", "loadgen scenarios"),
    ("--duration", float, 10.0, "measured seconds per run"),
    ("--warmup", float, 2.0, "seconds of load before measuring"),
    ("--count", int, 200, "simulated users"),
    ("--rates", str, "register=200,im=400,presence=100", "fixed rate per scenario"),
    ("--watchers", int, 5, "presence: watchers per presentity"),
    ("--timeout-ms", int, 3000, "loadgen's per-transaction timeout"),
    ("--server-cpu", str, "0", "CPU for `parapet up` and its children"),
    ("--load-cpu", str, "1", "CPU for loadgen"),
    ("--fail-rate", int, 200, "failover: loadgen mix rate"),
    ("--fail-duration", float, 20.0, "failover: measured seconds"),
    ("--kill-at", float, 6.0, "failover: seconds into the measurement when the front end is killed"),
    ("--victim", str, "fe2", "failover: the front end to kill (fe1, fe2, fe3)"),
]


def main():
    p = argparse.ArgumentParser(description="Enterprise pool benchmark (issue 11); see benches/pool/pool.sh.")
    for flag, kind, default, what in OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=f"{what} (default {default})")
    p.add_argument("--no-failover", action="store_true", help="skip the failover run")
    a = p.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rates = dict((k, int(v)) for k, v in (kv.split("=") for kv in a.rates.split(",")))
    results, fo = [], None
    for n in [int(x) for x in a.front_ends.split(",")]:
        up = Up(n, a.server_cpu)
        try:
            up.start()
            for scen in a.scenarios.split(","):
                extra = ["--watchers", str(a.watchers)] if scen == "presence" else []
                try:
                    results.append(run_loadgen(a, up, scen, rates[scen], a.count, a.duration, extra))
                except Exception as e:  # noqa: BLE001 - one failed run is reported, the others still run
                    log(f"fe{n} {scen} failed: {e}")
                    results.append({"scenario": scen, "front_ends": n, "rate": rates[scen], "error": str(e)})
            if n == 3 and not a.no_failover:
                fo = failover(a, up)
        finally:
            up.stop()
    meta = {"host": host(), "server_cpu": a.server_cpu, "load_cpu": a.load_cpu, "victim": a.victim,
            "load": f"{a.count} users (load1..), {a.duration} s measured after {a.warmup} s warm-up per run, rates "
                    f"{a.rates}, presence with {a.watchers} watchers per presentity, --timeout-ms {a.timeout_ms}; "
                    f"`up --cores 1 --store postgres --flood-limits off --federation off --front-ends N`"}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "failover": fo}, f, indent=1, default=str)
    md = report(meta, results, fo)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
