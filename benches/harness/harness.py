#!/usr/bin/env python3
"""parapet benchmark harness (issue 3). Run it through `bash benches/harness/run.sh [--quick]`.

Starts parapet (`parapet up`, edge + pool) pinned to one CPU and loadgen pinned to another, runs each loadgen
scenario, samples the server's CPU time (utime + stime of every server process, /proc/<pid>/stat) and memory
(VmRSS and PSS), and writes target/harness/results.{md,json}. The same scenarios then run against Kamailio
(Debian's kamailio 5.x, configured here as the equivalent registrar and relay) and the handshake scenario
against HAProxy (Debian's 2.6, terminating TLS), pinned the same way, when they are installed.

Only the Python standard library is used. Every child process is bounded in time and stopped by its own pid
(or the process group this script created for it).
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "target", "harness")
DATA = os.path.join(OUT, "data")
RUNS = os.path.join(OUT, "runs")
PARAPET = os.path.join(ROOT, "target", "release", "parapet")
LOADGEN = os.environ.get("HARNESS_LOADGEN") or os.path.join(ROOT, "target", "release", "loadgen")
DOMAIN = "example.com"
LOAD_USERS = 2000
PORTS = {"parapet": 27061, "kamailio": 27161, "haproxy": 27261}
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN_TASKSET = [True]
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

APT = {
    "kamailio": "apt-get install -y kamailio kamailio-tls-modules",
    "haproxy": "apt-get install -y haproxy",
}

# Goals from issue 3 ("Goals to report against"): server CPU per completed operation, memory per idle connection.
GOALS = {
    "register": ("CPU", 30.0, "<= 30 us per registration (digest, edge + pool)"),
    "im": ("CPU", 40.0, "<= 40 us per MESSAGE transaction (edge + pool), p99 < 1 ms at half the max rate"),
    "handshake": ("CPU", 90.0, "<= 90 us per full TLS handshake"),
    "idle": ("MEM", 16.0, "<= 16 KiB per idle registered TLS connection"),
}
# What the incumbents cost on this machine kind (issue 3), for orientation in the report.
ISSUE_REFERENCE = {
    "register": "Kamailio ~75 us (digest 401+200)",
    "im": "Kamailio 98 us (stateful relay, TLS in)",
    "handshake": "Kamailio 349 us, HAProxy 236 us",
}


def log(*a):
    print("[harness]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- /proc

def proc_children(pid):
    """Direct children of pid (scan of /proc, works without CONFIG_PROC_CHILDREN)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(d))
    return sorted(kids)


def proc_tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(proc_children(p))
    return sorted(out)


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def mem_kib(pid):
    """(VmRSS, Pss) in KiB."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Samples CPU ticks per server process every `period` seconds (and memory when asked)."""

    def __init__(self, pids, period=0.1, memory=False):
        super().__init__(daemon=True)
        self.pids, self.period, self.memory = dict(pids), period, memory
        self.samples = []  # (unix time, {name: ticks}, (rss, pss) or None)
        self.stop_ev = threading.Event()

    def take(self):
        ticks = {n: cpu_ticks(p) or 0 for n, p in self.pids.items()}
        mem = None
        if self.memory:
            rs = [mem_kib(p) for p in self.pids.values()]
            mem = (sum(r for r, _ in rs), sum(p for _, p in rs))
        self.samples.append((time.time(), ticks, mem))

    def run(self):
        while not self.stop_ev.is_set():
            self.take()
            self.stop_ev.wait(self.period)

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.take()

    def total_at(self, t):
        """Total ticks (all processes) at unix time t, linearly interpolated; and per process."""
        s = self.samples
        if not s:
            return 0.0, {}
        if t <= s[0][0]:
            return float(sum(s[0][1].values())), dict(s[0][1])
        for (t0, a, _), (t1, b, _) in zip(s, s[1:]):
            if t0 <= t <= t1:
                w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                per = {n: a[n] + (b[n] - a[n]) * w for n in a}
                return sum(per.values()), per
        return float(sum(s[-1][1].values())), dict(s[-1][1])


# ---------------------------------------------------------------------------------------------------- servers

class Server:
    name = "?"

    def __init__(self, args):
        self.args, self.proc, self.logf = args, None, None

    def spawn(self, argv, log_path, **kw):
        self.logf = open(log_path, "w")
        log("start:", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdout=kw.pop("stdout", self.logf), stderr=self.logf,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, **kw)

    def pids(self):
        """{label: pid} of the processes whose CPU and memory count as the server's."""
        return {f"{self.name}[{p}]": p for p in proc_tree(self.proc.pid)}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this script created for it
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that outlive a dead leader (kamailio workers) are still in the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.logf:
            self.logf.close()
        self.proc = None


def wait_parapet_ready(proc, logf, log_path, timeout_s):
    """Copies `parapet up`'s stdout (a text pipe) into logf until it exits; returns once it printed PARAPET_READY."""
    ready = {}

    def reader():
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            if line.startswith("PARAPET_READY"):
                ready["line"] = line.strip()
    threading.Thread(target=reader, daemon=True).start()
    deadline = time.time() + timeout_s
    while "line" not in ready:
        if proc.poll() is not None:
            raise RuntimeError(f"parapet up exited while starting (see {log_path})")
        if time.time() > deadline:
            raise RuntimeError(f"parapet up not ready after {timeout_s} s (see {log_path})")
        time.sleep(0.1)
    return ready["line"]


def wait_tls(port, deadline, server):
    ctx = ssl.create_default_context(cafile=os.path.join(DATA, "pki", "ca.pem"))
    last = None
    while time.time() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited while starting (see {server.log_path})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with ctx.wrap_socket(s, server_hostname="localhost"):
                    return
        except (OSError, ssl.SSLError) as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} not accepting TLS on 127.0.0.1:{port} after start ({last})")


class Parapet(Server):
    name = "parapet"

    def start(self):
        self.log_path = os.path.join(OUT, "parapet.log")
        argv = ["taskset", "-c", self.args.server_cpu, PARAPET, "up", "--data-dir", DATA, "--port-base",
                str(PORTS["parapet"]), "--load-users", str(LOAD_USERS), "--cores", "1",
                "--flood-limits", "off"]
        # e.g. HARNESS_UP_ARGS=--perimeter: edge and pool as two processes over mutual TLS (default: co-located).
        argv += os.environ.get("HARNESS_UP_ARGS", "").split()
        self.spawn(argv, self.log_path, stdout=subprocess.PIPE, text=True)
        wait_parapet_ready(self.proc, self.logf, self.log_path, 90)
        time.sleep(0.5)

    def pids(self):
        out = {}
        for p in proc_children(self.proc.pid):
            c = cmdline(p)
            role = "edge" if "edge.toml" in c else "pool" if "pool.toml" in c else f"child{p}"
            out[role] = p
        if not out:
            raise RuntimeError("parapet up has no edge/pool child processes")
        return out


class Kamailio(Server):
    name = "kamailio"

    @staticmethod
    def binary():
        return shutil.which("kamailio") or (os.path.exists("/usr/sbin/kamailio") and "/usr/sbin/kamailio")

    @staticmethod
    def modpath():
        for d in ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                  "/usr/lib/kamailio/modules", "/usr/lib64/kamailio/modules"):
            if os.path.exists(os.path.join(d, "tls.so")):
                return d
        return None

    def write_config(self, max_conn):
        kdir = os.path.join(OUT, "kamailio")
        os.makedirs(os.path.join(kdir, "run"), exist_ok=True)
        users = read_users(os.path.join(DATA, "users.toml"))
        users_cfg = os.path.join(kdir, "users.cfg")
        with open(users_cfg, "w") as f:
            f.write("# Written by benches/harness/harness.py from target/harness/data/users.toml.\n"
                    "event_route[htable:mod-init] {\n")
            for alias, pw in users:
                esc = pw.replace("\\", "\\\\").replace('"', '\\"')
                f.write(f'\t$sht(pw=>{alias}) = "{esc}";\n')
            f.write("}\n")
        with open(os.path.join(HERE, "kamailio", "kamailio.cfg.tmpl")) as f:
            cfg = f.read()
        pki = os.path.join(DATA, "pki")
        subst = {
            "CHILDREN": "1", "DOMAIN": DOMAIN, "ADDR": "127.0.0.1", "PORT": str(PORTS["kamailio"]),
            "MAXCONN": str(max_conn), "MAXFILES": str(min(max_conn * 2 + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])), "MODPATH": self.modpath(),
            "CERT": os.path.join(pki, "edge.pem"), "KEY": os.path.join(pki, "edge.key"),
            "CA": os.path.join(pki, "ca.pem"), "USERS_CFG": users_cfg,
            "HTSIZE": str(max(4, (len(users) * 2).bit_length())),
        }
        for k, v in subst.items():
            cfg = cfg.replace(f"@{k}@", v)
        left = re.findall(r"@[A-Z_]+@", "\n".join(l for l in cfg.splitlines() if not l.lstrip().startswith("#")))
        if left:
            raise RuntimeError(f"kamailio template: unfilled {left}")
        path = os.path.join(kdir, "kamailio.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        return path, kdir

    def start(self):
        self.log_path = os.path.join(OUT, "kamailio.log")
        cfg, kdir = self.write_config(max(20000, self.args.max_conns * 2))
        # shared memory: TLS connections live there (~ tens of KiB each); pages count only once touched.
        shm = max(512, 256 + self.args.max_conns // 8)
        argv = ["taskset", "-c", self.args.server_cpu, self.binary(), "-DD", "-E", "-f", cfg, "-m", str(shm),
                "-M", "32", "-Y", os.path.join(kdir, "run"), "-P", os.path.join(kdir, "run", "kamailio.pid")]
        check = subprocess.run([self.binary(), "-c", "-f", cfg], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError("kamailio rejects the generated config " + cfg + ":\n" + check.stderr[-3000:])
        self.spawn(argv, self.log_path)
        wait_tls(PORTS["kamailio"], time.time() + 30, self)
        time.sleep(0.5)


class HAProxy(Server):
    name = "haproxy"

    @staticmethod
    def binary():
        return shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")

    def start(self):
        self.log_path = os.path.join(OUT, "haproxy.log")
        hdir = os.path.join(OUT, "haproxy")
        os.makedirs(hdir, exist_ok=True)
        pki = os.path.join(DATA, "pki")
        pem = os.path.join(hdir, "edge-full.pem")
        with open(pem, "w") as f:
            for p in ("edge.pem", "edge.key"):
                with open(os.path.join(pki, p)) as g:
                    f.write(g.read().rstrip("\n") + "\n")
        with open(os.path.join(HERE, "haproxy", "haproxy.cfg.tmpl")) as f:
            cfg = f.read()
        for k, v in {"PORT": str(PORTS["haproxy"]), "PEM": pem, "MAXCONN": str(min(max(20000, self.args.max_conns * 2), (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2))}.items():
            cfg = cfg.replace(f"@{k}@", v)
        path = os.path.join(hdir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        check = subprocess.run([self.binary(), "-c", "-f", path], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError("haproxy rejects the generated config " + path + ":\n" + check.stderr[-3000:])
        self.spawn(["taskset", "-c", self.args.server_cpu, self.binary(), "-db", "-f", path], self.log_path)
        wait_tls(PORTS["haproxy"], time.time() + 30, self)
        time.sleep(0.3)


def read_users(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib
        doc = tomllib.loads(raw.decode())
        users = [(u["alias"], u["password"]) for u in doc.get("user", []) if "alias" in u and "password" in u]
    except ImportError:
        users, cur = [], {}
        for line in raw.decode().splitlines():
            m = re.match(r'\s*(alias|password)\s*=\s*"(.*)"\s*$', line)
            if line.strip() == "[[user]]":
                cur = {}
            elif m:
                cur[m.group(1)] = m.group(2)
                if "alias" in cur and "password" in cur:
                    users.append((cur["alias"], cur["password"]))
                    cur = {}
    if not users:
        raise RuntimeError(f"no users with passwords in {path}")
    return users


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
             duration=d, find_max=not q, systems=["parapet", "kamailio"]),
        dict(name="im", lg="im", extra=[], count=200 if q else 1000, rate=1000, fm_start=250, duration=d,
             find_max=not q, systems=["parapet", "kamailio"]),
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
    if args.scenarios:
        want = set(args.scenarios.split(","))
        p = [s for s in p if s["name"] in want]
    for s in p:
        s.setdefault("find_max", False)
    return p


def loadgen_argv(system, s, rate, duration, json_path, hlog_path, find_max=False):
    # taskset pins every thread; --cores pins loadgen's executors (some loadgen builds refuse a --cores CPU that is
    # outside their affinity count: then loadgen runs without taskset and relies on --cores alone).
    pin = ["taskset", "-c", ARGS.load_cpu] if LOADGEN_TASKSET[0] else []
    a = pin + [LOADGEN, s["lg"], "--target", f"127.0.0.1:{PORTS[system]}",
         "--server-name", "localhost", "--ca", os.path.join(DATA, "pki", "ca.pem"), "--domain", DOMAIN,
         "--users", os.path.join(DATA, "users.toml"), "--count", str(s["count"]), "--rate", str(int(rate)),
         "--duration", str(duration), "--warmup", str(ARGS.warmup), "--cores", ARGS.load_cpu,
         "--json", json_path, "--hdr-log", hlog_path] + s["extra"]
    if find_max:
        a += ["--find-max", "--slo-p99-ms", "10"]
    return a


def window_from_hdr_log(path, duration):
    """Measurement window (unix start, end) from an HdrHistogram interval log, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    start = base = None
    iv = []
    for line in lines:
        m = re.match(r"#\[StartTime:\s*([0-9.]+)", line)
        if m:
            start = float(m.group(1))
        m = re.match(r"#\[BaseTime:\s*([0-9.]+)", line)
        if m:
            base = float(m.group(1))
        if line.startswith("#") or line.startswith('"') or not line.strip():
            continue
        parts = line.split(",")
        if parts[0].startswith("Tag="):
            parts = parts[1:]
        try:
            iv.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            continue
    if not iv:
        return None
    iv = iv[-max(1, int(round(duration))):]
    t0, t1 = iv[0][0], iv[-1][0] + iv[-1][1]
    if t0 < 1e9:
        ref = base if base is not None else start
        if ref is None:
            return None
        t0, t1 = t0 + ref, t1 + ref
    return (t0, t1)


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def run_loadgen(server, s, rate, duration, find_max=False, tag=""):
    """One loadgen run against `server`, with CPU (and for idle, memory) sampled around it."""
    system = server.name
    stem = os.path.join(RUNS, f"{system}-{s['name']}{tag}")
    jpath, hpath = stem + ".json", stem + ".hlog"
    for p in (jpath, hpath):
        if os.path.exists(p):
            os.remove(p)
    argv = loadgen_argv(system, s, rate, duration, jpath, hpath, find_max)
    pids = server.pids()
    sampler = Sampler(pids, memory=(s["name"] == "idle"))
    sampler.take()
    t_start = time.time()
    sampler.start()
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
    sampler.stop()
    if rc == 2 and LOADGEN_TASKSET[0]:
        with open(stem + ".err") as f:
            if "--cores names CPU" in f.read():
                log("loadgen refuses --cores under taskset; retrying with --cores alone")
                LOADGEN_TASKSET[0] = False
                return run_loadgen(server, s, rate, duration, find_max, tag)
    res = {"system": system, "scenario": s["name"], "find_max": find_max, "target_rate": int(rate),
           "duration_s": duration, "count": s["count"], "loadgen_rc": rc, "timed_out": timed_out,
           "loadgen_argv": " ".join(argv), "files": stem + ".{json,out,err,hlog}"}
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
    if s["name"] == "idle":
        ops = 0  # idle's operations are the set-up registrations; what counts here is memory (and CPU while idle)
    if ops > 0:
        res["cpu_us_per_op"] = (b - a) / CLK_TCK / ops * 1e6
        res["cpu_us_per_op_by_process"] = {n: (pb[n] - pa[n]) / CLK_TCK / ops * 1e6 for n in pb}
    if ok > 0 and s["name"] != "idle":
        res["cpu_us_per_op_whole_run"] = whole / ok * 1e6
    if s["name"] == "idle":
        mems = [m for (_, _, m) in sampler.samples if m]
        base = mems[0]
        peak_rss = max(m[0] for m in mems)
        peak_pss = max(m[1] for m in mems)
        conns = int(num(lj.get("connections_held")) or s["count"])
        res["memory"] = {"baseline_rss_kib": base[0], "baseline_pss_kib": base[1], "peak_rss_kib": peak_rss,
                         "peak_pss_kib": peak_pss, "connections": conns,
                         "rss_kib_per_conn": (peak_rss - base[0]) / conns, "pss_kib_per_conn": (peak_pss - base[1]) / conns}
    return res


def run_system(server, scenarios):
    results = []
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - reported, and the next system still runs
        log(f"{server.name}: cannot start: {e}")
        server.stop()
        return [{"system": server.name, "scenario": "*", "error": f"cannot start: {e}"}]
    try:
        for s in scenarios:
            if server.name not in s["systems"]:
                continue
            if not server.alive():
                results.append({"system": server.name, "scenario": s["name"], "error": "server not running"})
                continue
            held = None
            if s["find_max"]:
                r = run_loadgen(server, s, s.get("fm_start", s["rate"]), 5, find_max=True, tag="-findmax")
                results.append(r)
                held = num(r.get("max_rate_held"))
            # CPU per operation depends on the rate (per-wakeup costs amortise over batches): every system is
            # measured at the same rate, so that the ratios compare like with like.
            r = run_loadgen(server, s, s["rate"], s["duration"])
            if held and s["name"] == "im":
                results.append(r)
                # issue 3's latency goal: p99 at half of the max rate held
                half = dict(s, name="im@half-max")
                r = run_loadgen(server, half, max(50, held / 2), s["duration"])
                r["rate_basis"] = "half of max_rate_held"
            results.append(r)
            time.sleep(1)
    finally:
        server.stop()
    return results


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


def write_report(meta, results):
    by = {(r["system"], r["scenario"]): r for r in results if not r.get("find_max")}
    fm = {(r["system"], r["scenario"]): r for r in results if r.get("find_max")}
    L = []
    L.append("# parapet benchmark results\n")
    h = meta["host"]
    L.append(f"- host: {h['cpu_model']}, {h['cores']} cores, kernel {h['kernel']}, {h['memory']}")
    L.append(f"- run: `{meta['command']}` ({meta['mode']}), {meta['started']} — {meta['elapsed_s']:.0f} s")
    L.append(f"- pinning: servers on CPU {meta['server_cpu']} (`taskset`), loadgen on CPU {meta['load_cpu']}; "
             f"parapet `up --cores 1` (edge and pool, one executor each); Kamailio 1 TLS worker; HAProxy nbthread 1")
    cc = meta.get("crypto_calibration")
    if cc:
        L.append(f"- crypto calibration (`openssl speed`, server CPU): X25519 {cc['x25519_op_us']:.1f} µs/op, ECDSA P-256 "
                 f"sign {cc['ecdsa_p256_sign_us']:.1f} µs → a full TLS 1.3 handshake's server crypto ≈ "
                 f"{cc['tls13_server_crypto_us']:.0f} µs (issue 3's reference machine: about 60 µs)")
    for k, v in meta["versions"].items():
        L.append(f"- {k}: {v}")
    L.append("- server CPU = utime+stime of every server process (/proc/<pid>/stat) over the measurement window, "
             "divided by the operations completed in it; memory = ΔPSS (and ΔRSS) of all server processes with the "
             "idle connections held, divided by the connections")
    L.append("")
    L.append("| system | scenario | target/s | achieved ok/s | ok | errors | p50 ms | p99 ms | p99.9 ms | max held/s "
             "| server CPU µs/op | CPU s/1k ops | CPU util | mem KiB/idle conn (PSS / RSS) |")
    L.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r.get("find_max"):
            continue
        lj = r.get("loadgen") or {}
        mh = fm.get((r["system"], r["scenario"]), {}).get("max_rate_held")
        mem = r.get("memory")
        memcell = f"{mem['pss_kib_per_conn']:.1f} / {mem['rss_kib_per_conn']:.1f}" if mem else ""
        if r.get("error"):
            L.append(f"| {r['system']} | {r['scenario']} | {r.get('target_rate', '')} | | | **{r['error'][:160]}** | | | | | | | | |")
            continue
        cpu = r.get("cpu_us_per_op")
        L.append(f"| {r['system']} | {r['scenario']} | {r['target_rate']} | {f1(r.get('ok_rate'), 0)} | "
                 f"{int(num(lj.get('ok')) or 0)} | {errs(r)} | {f1(lat(r, 'p50'), 3)} | {f1(lat(r, 'p99'), 3)} | "
                 f"{f1(lat(r, 'p999'), 3)} | {f1(num(mh), 0) if mh is not None else ''} | {f1(cpu)} | "
                 f"{f1(cpu / 1000 if cpu else None, 4)} | "
                 f"{f1((r.get('server_cpu_util') or 0) * 100, 0)}% | {memcell} |")
    # split edge / pool for parapet
    L.append("")
    split = [(r["scenario"], r["cpu_us_per_op_by_process"]) for r in results
             if r["system"] == "parapet" and not r.get("find_max") and r.get("cpu_us_per_op_by_process")]
    if split:
        L.append("parapet CPU per operation by process (µs): " + "; ".join(
            f"{sc}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(d.items())) for sc, d in split))
        L.append("")
    # comparison
    L.append("## parapet / incumbent (server CPU per completed operation; lower is better for parapet)\n")
    L.append("| scenario | parapet µs/op | Kamailio µs/op | parapet/Kamailio | HAProxy µs/op | parapet/HAProxy | issue 3 reference |")
    L.append("|---|---:|---:|---:|---:|---:|---|")
    comp = []
    order = [s["name"] for s in PLAN] + ["im@half-max"]
    for sc in sorted({r["scenario"] for r in results if r["scenario"] != "*"}, key=lambda x: order.index(x) if x in order else 99):
        p = by.get(("parapet", sc), {})
        k = by.get(("kamailio", sc), {})
        hp = by.get(("haproxy", sc), {})
        if sc == "idle":
            pm, km = (p.get("memory") or {}).get("pss_kib_per_conn"), (k.get("memory") or {}).get("pss_kib_per_conn")
            comp.append({"scenario": "idle (KiB/conn, PSS)", "parapet": pm, "kamailio": km,
                         "ratio_kamailio": pm / km if pm and km else None})
            L.append(f"| idle: memory KiB/conn (PSS) | {f1(pm)} | {f1(km)} | {f1(pm / km if pm and km else None, 2)} | | | |")
            continue
        pc, kc, hc = p.get("cpu_us_per_op"), k.get("cpu_us_per_op"), hp.get("cpu_us_per_op")
        rk = pc / kc if pc and kc else None
        rh = pc / hc if pc and hc else None
        comp.append({"scenario": sc, "parapet_us": pc, "kamailio_us": kc, "haproxy_us": hc, "ratio_kamailio": rk, "ratio_haproxy": rh})
        L.append(f"| {sc} | {f1(pc)} | {f1(kc)} | {f1(rk, 2)} | {f1(hc)} | {f1(rh, 2)} | {ISSUE_REFERENCE.get(sc, '')} |")
    L.append("")
    L.append("## parapet against the goals of issue 3\n")
    L.append("| goal | measured | verdict |")
    L.append("|---|---:|---|")
    goals = []
    for sc, (kind, lim, text) in GOALS.items():
        p = by.get(("parapet", sc), {})
        v = (p.get("memory") or {}).get("pss_kib_per_conn") if kind == "MEM" else p.get("cpu_us_per_op")
        verdict = "—" if v is None else ("met" if v <= lim else "NOT met")
        extra = ""
        ph = by.get(("parapet", "im@half-max"), p)
        if sc == "im" and lat(ph, "p99") is not None:
            extra = f", p99 {lat(ph, 'p99'):.3f} ms at {ph.get('target_rate')}/s ({ph.get('rate_basis', 'fixed rate')})"
            if lat(ph, "p99") >= 1.0:
                verdict = "NOT met" if verdict != "—" else verdict
        unit = "KiB" if kind == "MEM" else "µs"
        goals.append({"scenario": sc, "goal": text, "measured": v, "unit": unit, "verdict": verdict})
        L.append(f"| {sc}: {text} | {f1(v)} {unit}{extra} | {verdict} |")
    im = by.get(("parapet", "im"), {}).get("cpu_us_per_op_by_process", {})
    if "edge" in im:
        L.append(f"| im: edge relay alone <= 20 µs per relayed transaction (edge process share of `im`) | {im['edge']:.1f} µs | "
                 f"{'met' if im['edge'] <= 20 else 'NOT met'} |")
    L.append("")
    for sk in meta["skipped"]:
        L.append(f"- {sk['system']} not run: {sk['reason']} — install with `{sk['install']}`")
    notes = [r for r in results if r.get("error")]
    for r in notes:
        L.append(f"- {r['system']} {r['scenario']}: {r['error']}")
    L.append("- raw loadgen output, JSON and HdrHistogram logs: target/harness/runs/; server logs: target/harness/*.log")
    md = "\n".join(L) + "\n"
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({**meta, "results": results, "comparison": comp, "goals": goals}, f, indent=2)
    return md


# ---------------------------------------------------------------------------------------------------- main

def main():
    global ARGS, PLAN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs at fixed rates (< ~5 min); default: find-max + longer runs")
    ap.add_argument("--systems", default="parapet,kamailio,haproxy", help="comma list (default: all installed)")
    ap.add_argument("--scenarios", default="", help="comma list of idle,register,im,handshake,handshake-resumed,mix,federation")
    ap.add_argument("--server-cpu", default=os.environ.get("HARNESS_SERVER_CPU", "0"))
    ap.add_argument("--load-cpu", default=os.environ.get("HARNESS_LOAD_CPU", "1"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--duration", type=int, default=0,
                    help="seconds per measured run (default: 5 with --quick, else 15); longer runs, less noise")
    ap.add_argument("--idle-count", type=int, default=0, help="connections held by the idle scenario")
    ap.add_argument("--smoke-kamailio", metavar="PYTHON",
                    help="start Kamailio alone and check it with pjsua2 (PYTHON has pjsua2-python), then exit")
    ARGS = ap.parse_args()
    ARGS.command = "bash benches/harness/run.sh" + (" --quick" if ARGS.quick else "")
    os.makedirs(RUNS, exist_ok=True)
    PLAN = plan(ARGS)
    ARGS.max_conns = max([s["count"] for s in PLAN] + [LOAD_USERS])

    if ARGS.smoke_kamailio:
        return smoke_kamailio(ARGS.smoke_kamailio)

    if not os.path.exists(LOADGEN):
        log(f"{LOADGEN} is missing: build it with `cargo build --release -p loadgen` (run.sh does)")
        return 2
    t0 = time.time()
    systems = [x for x in ARGS.systems.split(",") if x]
    meta = {"command": ARGS.command, "mode": "quick" if ARGS.quick else "full",
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": host_info(),
            "server_cpu": ARGS.server_cpu, "load_cpu": ARGS.load_cpu, "versions": versions(), "skipped": [],
            "plan": PLAN}
    if (os.cpu_count() or 1) < 2:
        log("only one CPU: server and loadgen share it; CPU per operation is still meaningful, latency is not")
        ARGS.load_cpu = ARGS.server_cpu = "0"
    meta["crypto_calibration"] = crypto_calibration(ARGS.server_cpu)
    results = []
    if "parapet" in systems:
        results += run_system(Parapet(ARGS), PLAN)  # first: `parapet up` makes the PKI and users the others use
    if "kamailio" in systems:
        if Kamailio.binary() and Kamailio.modpath():
            results += run_system(Kamailio(ARGS), PLAN)
        else:
            meta["skipped"].append({"system": "kamailio", "reason": "kamailio (with its tls module) is not installed",
                                    "install": APT["kamailio"]})
            log(f"Kamailio is not installed; for the side-by-side comparison: {APT['kamailio']}")
    if "haproxy" in systems:
        if HAProxy.binary():
            results += run_system(HAProxy(ARGS), PLAN)
        else:
            meta["skipped"].append({"system": "haproxy", "reason": "haproxy is not installed", "install": APT["haproxy"]})
            log(f"HAProxy is not installed; for the handshake comparison: {APT['haproxy']}")
    meta["elapsed_s"] = time.time() - t0
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
    k = Kamailio(ARGS)
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
