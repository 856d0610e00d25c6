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
PORTS = {"parapet": 27061, "kamailio": 27161, "haproxy": 27261, "edgeswap": 27361}
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN_TASKSET = [True]
PERF = [{}]  # the perf tracepoints counted per run (perf_events())
CAPACITY_NOTE = [None]
REGS_POLL_S = 2.0  # parapet: its registration count from /metrics, this often during a run
ALL_SYSTEMS = ["parapet-coloc", "parapet-perimeter", "kamailio-tlsf", "kamailio", "haproxy", "kamailio-edge+pool"]
SYSTEM_ALIASES = {"parapet": ["parapet-coloc", "parapet-perimeter"], "kamailio-both": ["kamailio-tlsf", "kamailio"],
                  "edgeswap": ["kamailio-edge+pool"]}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

APT = {
    "kamailio": "apt-get install -y kamailio kamailio-tls-modules",
    "haproxy": "apt-get install -y haproxy",
}

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


def ctx_switches(pid):
    """Voluntary + involuntary context switches summed over the threads of pid (/proc/<pid>/task/*/status);
    None when the process is gone. A thread that exited between two samples takes its count with it."""
    total, seen = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
                        seen = True
        except OSError:
            continue
    return total if seen else None


def cpu_busy_ticks(cpu):
    """Busy clock ticks (all but idle and iowait) of one CPU since boot (/proc/stat); None if unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)
    except (OSError, ValueError):
        pass
    return None


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


def stop_group(proc, sig):
    """Stops the process group this script created for proc: sig, then SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Samples CPU ticks and context switches per server process every `period` seconds (and memory when
    asked)."""

    def __init__(self, pids, period=0.1, memory=False, registrations=None):
        super().__init__(daemon=True)
        self.pids, self.period, self.memory = dict(pids), period, memory
        # registrations(): the server's registration count, polled about once a second; the highest is kept
        self.registrations, self.regs_max, self.regs_last_poll = registrations, None, 0.0
        # The server CPU's busy ticks, to tell how much of it other processes took (a shared machine is noisy).
        self.cpu = ARGS.server_cpu if ARGS.server_cpu.isdigit() else None
        self.cpu_busy = []
        self.samples = []  # (unix time, {name: ticks}, (rss, pss) or None, context switches of all processes)
        self.stop_ev = threading.Event()

    def take(self):
        ticks = {n: cpu_ticks(p) or 0 for n, p in self.pids.items()}
        mem = None
        if self.memory:
            rs = [mem_kib(p) for p in self.pids.values()]
            mem = (sum(r for r, _ in rs), sum(p for _, p in rs))
        cs = sum(ctx_switches(p) or 0 for p in self.pids.values())
        now = time.time()
        self.samples.append((now, ticks, mem, cs))
        self.cpu_busy.append((now, cpu_busy_ticks(self.cpu) if self.cpu is not None else None))
        if self.registrations and now - self.regs_last_poll >= REGS_POLL_S:
            self.regs_last_poll = now
            n = self.registrations()
            if n is not None:
                self.regs_max = n if self.regs_max is None else max(self.regs_max, n)

    def busy_between(self, t0, t1):
        """Ticks the server CPU was busy (anyone) between two times, from the nearest samples; None if unknown."""
        pts = [(t, b) for t, b in self.cpu_busy if b is not None]
        if len(pts) < 2:
            return None
        a = min(pts, key=lambda p: abs(p[0] - t0))
        b = min(pts, key=lambda p: abs(p[0] - t1))
        return (b[1] - a[1]) / (b[0] - a[0]) * (t1 - t0) if b[0] > a[0] else None

    def ctx_at(self, t):
        """Context switches of all server processes at unix time t, linearly interpolated."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return float(s[0][3])
        for a, b in zip(s, s[1:]):
            if a[0] <= t <= b[0]:
                w = 0.0 if b[0] == a[0] else (t - a[0]) / (b[0] - a[0])
                return a[3] + (b[3] - a[3]) * w
        return float(s[-1][3])

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
        for (t0, a, _, _), (t1, b, _, _) in zip(s, s[1:]):
            if t0 <= t <= t1:
                w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                per = {n: a[n] + (b[n] - a[n]) * w for n in a}
                return sum(per.values()), per
        return float(sum(s[-1][1].values())), dict(s[-1][1])


# ---------------------------------------------------------------------------------------------------- perf

PERF_INTERVAL_MS = 250


def perf_events():
    """The tracepoints `perf stat` can count here, as {column: event}; ({}, why) when perf cannot attach."""
    perf = shutil.which("perf")
    if not perf:
        return {}, "perf is not installed (apt-get install -y linux-perf)"
    try:
        listed = subprocess.run([perf, "list", "tracepoint"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, f"`perf list` failed: {e}"
    want = {"syscalls": "raw_syscalls:sys_enter", "uring_submits": "io_uring:io_uring_submit_req",
            "uring_enters": "syscalls:sys_enter_io_uring_enter"}
    ev = {k: e for k, e in want.items() if e in listed}
    if not ev:
        return {}, "perf lists none of " + ", ".join(want.values())
    try:
        r = subprocess.run([perf, "stat", "-x,", "-e", next(iter(ev.values())), "--", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, f"perf stat failed: {e}"
    if r.returncode != 0 or "not supported" in r.stderr or "<not counted>" in r.stderr:
        return {}, "perf stat cannot count tracepoints here: " + r.stderr.strip()[-200:]
    missing = [e for k, e in want.items() if k not in ev]
    return ev, ("perf lacks " + ", ".join(missing)) if missing else None


class PerfCounts:
    """`perf stat -I` on the server's processes (every thread present when it attaches) for the run; counts per
    interval, so that the measurement window can be cut out afterwards."""

    def __init__(self, events, pids, path):
        self.events, self.path, self.proc, self.t0 = events, path, None, None
        if not events or not pids:
            return
        argv = ["perf", "stat", "-x,", "-I", str(PERF_INTERVAL_MS), "-o", path, "-p", ",".join(map(str, pids))]
        for e in events.values():
            argv += ["-e", e]
        self.t0 = time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT)  # perf prints its last interval on SIGINT

    def in_window(self, w0, w1):
        """{column: count} over the intervals whose middle lies in [w0, w1], and the seconds they cover."""
        if self.proc is None:
            return None, 0.0
        by_event = {e: k for k, e in self.events.items()}
        sums, stamps = {k: 0 for k in self.events}, set()
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except OSError:
            return None, 0.0
        step = PERF_INTERVAL_MS / 1000.0
        for line in lines:
            parts = line.split(",")
            if len(parts) < 4 or line.startswith("#"):
                continue
            try:
                t = float(parts[0])
            except ValueError:
                continue
            mid = self.t0 + t - step / 2
            ev = parts[3]
            if not (w0 <= mid <= w1) or ev not in by_event:
                continue
            stamps.add(parts[0])
            try:
                sums[by_event[ev]] += int(float(parts[1]))
            except ValueError:  # <not counted>
                pass
        return sums, len(stamps) * step


# ---------------------------------------------------------------------------------------------------- servers

class Server:
    name = "?"
    kind = "?"  # parapet | kamailio | haproxy: the port, and which scenarios apply

    def __init__(self, args):
        self.args, self.proc, self.logf = args, None, None
        self.log_path = os.path.join(OUT, f"{self.name}.log")

    def spawn(self, argv, log_path, **kw):
        self.logf = open(log_path, "a")
        log("start:", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdout=kw.pop("stdout", self.logf), stderr=self.logf,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, **kw)

    def pids(self):
        """{label: pid} of the processes whose CPU and memory count as the server's."""
        return {f"{self.kind}[{p}]": p for p in proc_tree(self.proc.pid)}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def registrations(self):
        """Registrations the server holds now, when it says (None otherwise)."""
        return None

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
            self.logf = None
        self.proc = None


def wait_parapet_ready(proc, logf, log_path, timeout_s):
    """Copies `parapet up`'s stdout (a text pipe) into logf until it exits; returns once it printed PARAPET_READY."""
    ready = {}

    def reader():
        for line in proc.stdout:
            try:
                logf.write(line)
                logf.flush()
            except ValueError:  # the log was closed: the server is being stopped
                pass
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


# The pool's soft state (registrations, publications, subscriptions) lives in its store, by default the SQLite
# file `parapet.db` next to pool.toml; a restarted pool restores it. Removed before each start: every scenario
# begins with an empty registrar, as Kamailio's in-memory usrloc does after its restart.
PARAPET_STATE = ("parapet.db", "parapet.db-wal", "parapet.db-shm", "parapet.db-journal")


def forget_registrations():
    for f in PARAPET_STATE:
        try:
            os.remove(os.path.join(DATA, f))
        except FileNotFoundError:
            pass


def fill_template(name, subst):
    """benches/harness/kamailio/<name> with @KEY@ replaced; an @KEY@ left outside comments is an error."""
    with open(os.path.join(HERE, "kamailio", name)) as f:
        cfg = f.read()
    for k, v in subst.items():
        cfg = cfg.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z_]+@", "\n".join(l for l in cfg.splitlines() if not l.lstrip().startswith("#")))
    if left:
        raise RuntimeError(f"kamailio {name}: unfilled {left}")
    return cfg


def tls_threads_mode_line():
    # OpenSSL 3 in Kamailio's forked workers: its docs set tls_threads_mode=2 (a core parameter from 5.7 on)
    if Kamailio.supports_tls_threads_mode():
        return "tls_threads_mode=2"
    return "# tls_threads_mode: not in this Kamailio version (5.7+)"


def parapet_modes(extra_override=None):
    """{system name: extra `parapet up` arguments} for the modes this parapet binary runs, and a note on what is
    missing. The co-located build (issue 12) runs edge and pool in one process by default and keeps a flag for the
    two-process perimeter mode; a binary whose `up --help` names no perimeter flag is the two-process build."""
    if extra_override is not None:
        return {"parapet-coloc": [], "parapet-perimeter": extra_override.split()}, None
    try:
        r = subprocess.run([PARAPET, "up", "--help"], capture_output=True, text=True, timeout=30)
        text = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"parapet-perimeter": []}, f"`parapet up --help` failed ({e}); assumed the two-process build"
    # A boolean flag such as --perimeter, or an option taking a value whose help mentions the perimeter mode.
    flag = re.search(r"(--[a-z0-9-]*perimeter[a-z0-9-]*)([ =]<[^>]+>)?", text)
    if flag and not flag.group(2):
        return {"parapet-coloc": [], "parapet-perimeter": [flag.group(1)]}, None
    if flag:
        return {"parapet-coloc": [], "parapet-perimeter": [flag.group(1), "perimeter"]}, None
    # Otherwise an option whose help says "perimeter" (clap's long help: option line, then indented help lines).
    for m in re.finditer(r"^\s{2,6}(?:-\w, )?(--[a-z0-9-]+)([ =]<[^>]+>)?\s*\n((?:\s{8,}.*\n?)*)", text, re.M):
        if "perimeter" in m.group(3).lower() and m.group(1) != "--help":
            return {"parapet-coloc": [], "parapet-perimeter": [m.group(1)] + (["perimeter"] if m.group(2) else [])}, None
    return {"parapet-perimeter": []}, ("this `parapet up` has no co-located mode (its --help names no perimeter "
                                       "flag): edge and pool run as two processes, reported as parapet-perimeter")


class Parapet(Server):
    kind = "parapet"

    def __init__(self, args, name, up_args):
        self.name, self.up_args = name, list(up_args)
        super().__init__(args)

    def start(self):
        forget_registrations()
        argv = ["taskset", "-c", self.args.server_cpu, PARAPET, "up", "--data-dir", DATA, "--port-base",
                str(PORTS["parapet"]), "--load-users", str(LOAD_USERS), "--cores", "1",
                "--flood-limits", "off"] + self.up_args
        self.spawn(argv, self.log_path, stdout=subprocess.PIPE, text=True)
        wait_parapet_ready(self.proc, self.logf, self.log_path, 90)
        time.sleep(0.5)

    def pids(self):
        """`up` itself (it supervises, idle) and every process under it, named by the role config it runs."""
        out = {}
        for p in proc_tree(self.proc.pid):
            c = cmdline(p)
            role = ("up" if p == self.proc.pid else "edge" if "edge.toml" in c else "pool" if "pool.toml" in c
                    else f"child{p}")
            out[role] = p
        return out

    def registrations(self):
        """parapet_pool_bindings_now from the pool's (or, co-located, the one process's) /metrics."""
        total, seen = 0, False
        for port in (PORTS["parapet"] + 4, PORTS["parapet"] + 3):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    body = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        body += chunk
            except OSError:
                continue
            for line in body.decode(errors="replace").splitlines():
                if line.startswith("parapet_pool_bindings_now"):
                    try:
                        total += int(float(line.split()[-1]))
                        seen = True
                    except ValueError:
                        pass
            if seen:
                return total
        return None


class Kamailio(Server):
    kind = "kamailio"

    def __init__(self, args, allocator):
        # allocator: "tlsf" (`-x tlsf`, the shared memory manager issue 12 takes as the headline peer) or None
        # (the build's default, q_malloc).
        self.allocator = allocator
        self.name = "kamailio-tlsf" if allocator == "tlsf" else "kamailio"
        super().__init__(args)

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

    @staticmethod
    def supports_tls_threads_mode():
        """tls_threads_mode is a core parameter from Kamailio 5.7 on (5.6 rejects the config)."""
        try:
            r = subprocess.run([Kamailio.binary(), "-v"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
        m = re.search(r"kamailio (\d+)\.(\d+)", r.stdout + r.stderr)
        return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 7)

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
        pki = os.path.join(DATA, "pki")
        subst = {
            "CHILDREN": "1", "DOMAIN": DOMAIN, "ADDR": "127.0.0.1", "PORT": str(PORTS["kamailio"]),
            "MAXCONN": str(max_conn),
            "MAXFILES": str(min(max_conn * 2 + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])),
            "MODPATH": self.modpath(),
            "CERT": os.path.join(pki, "edge.pem"), "KEY": os.path.join(pki, "edge.key"),
            "CA": os.path.join(pki, "ca.pem"), "USERS_CFG": users_cfg,
            "HTSIZE": str(max(4, (len(users) * 2).bit_length())),
            "TLS_THREADS_MODE": tls_threads_mode_line(),
        }
        cfg = fill_template("kamailio.cfg.tmpl", subst)
        path = os.path.join(kdir, "kamailio.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        return path, kdir

    def argv(self, cfg, kdir):
        # shared memory: TLS connections live there (~ tens of KiB each); pages count only once touched.
        shm = max(512, 256 + self.args.max_conns // 8)
        mm = ["-x", self.allocator] if self.allocator else []
        return [self.binary(), "-DD", "-E", "-f", cfg, "-m", str(shm), "-M", "32"] + mm + [
            "-Y", os.path.join(kdir, "run"), "-P", os.path.join(kdir, "run", "kamailio.pid")]

    def start(self):
        cfg, kdir = self.write_config(max(20000, self.args.max_conns * 2))
        check = subprocess.run([self.binary(), "-c", "-f", cfg], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError("kamailio rejects the generated config " + cfg + ":\n" + check.stderr[-3000:])
        self.spawn(["taskset", "-c", self.args.server_cpu] + self.argv(cfg, kdir), self.log_path)
        wait_tls(PORTS["kamailio"], time.time() + 30, self)
        time.sleep(0.5)


class HAProxy(Server):
    name = "haproxy"
    kind = "haproxy"

    @staticmethod
    def binary():
        return shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")

    def start(self):
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
        maxconn = min(max(20000, self.args.max_conns * 2), (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2)
        for k, v in {"PORT": str(PORTS["haproxy"]), "PEM": pem, "MAXCONN": str(maxconn)}.items():
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


class KamailioEdge(Server):
    """The edge swapped (issue 12): Kamailio as the access proxy in front of parapet's pool. The pool is the one
    `parapet up` runs (its pool.toml, same users and store), started alone with `parapet run` and told that its
    edge is Kamailio's internal listener; Kamailio terminates the users' TLS on PORTS["edgeswap"]."""

    name = "kamailio-edge+pool"
    kind = "edgeswap"

    def __init__(self, args):
        super().__init__(args)
        self.pool = None

    def internal_port(self):
        return PORTS["edgeswap"] + 1

    def pool_config(self):
        """up's pool.toml with its [[pool.edges]] addr pointed at Kamailio's internal listener."""
        src = os.path.join(DATA, "pool.toml")
        if not os.path.exists(src):
            raise RuntimeError(f"{src} is missing: the parapet systems run first and write it")
        with open(src) as f:
            text = f.read()
        new, n = re.subn(r'(\[\[pool\.edges\]\][^\[]*?addr\s*=\s*)"[^"]*"', rf'\1"127.0.0.1:{self.internal_port()}"',
                         text, count=1, flags=re.S)
        if n != 1:
            raise RuntimeError(f"{src} has no [[pool.edges]] addr to point at Kamailio")
        path = os.path.join(DATA, "edgeswap-pool.toml")
        with open(path, "w") as f:
            f.write("# Written by benches/harness/harness.py from pool.toml: the pool behind Kamailio (edge swap).\n"
                    + new)
        m = re.search(r'\[pool\][^\[]*?listen\s*=\s*"[^"]*:(\d+)"', new, re.S)
        if not m:
            raise RuntimeError(f"{path}: no [pool] listen")
        return path, int(m.group(1))

    def write_config(self, pool_port):
        kdir = os.path.join(OUT, "kamailio-edge")
        os.makedirs(os.path.join(kdir, "run"), exist_ok=True)
        pki = os.path.join(DATA, "pki")
        max_conn = max(20000, self.args.max_conns * 2)
        subst = {
            "DOMAIN": DOMAIN, "PORT": str(PORTS["edgeswap"]), "INTERNAL": str(self.internal_port()),
            "POOL_PORT": str(pool_port), "MAXCONN": str(max_conn),
            "MAXFILES": str(min(max_conn * 2 + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])),
            "MODPATH": Kamailio.modpath(), "TLS_CFG": os.path.join(kdir, "tls.cfg"),
            "CERT": os.path.join(pki, "edge.pem"), "KEY": os.path.join(pki, "edge.key"),
            "CA": os.path.join(pki, "ca.pem"),
            "TLS_THREADS_MODE": tls_threads_mode_line(),
        }
        out = {}
        for tmpl, name in (("edge.cfg.tmpl", "kamailio.cfg"), ("edge-tls.cfg.tmpl", "tls.cfg")):
            out[name] = os.path.join(kdir, name)
            with open(out[name], "w") as f:
                f.write(fill_template(tmpl, subst))
        return out["kamailio.cfg"], kdir

    def start(self):
        forget_registrations()
        pool_cfg, pool_port = self.pool_config()
        cfg, kdir = self.write_config(pool_port)
        check = subprocess.run([Kamailio.binary(), "-c", "-f", cfg], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError("kamailio rejects the generated config " + cfg + ":\n" + check.stderr[-3000:])
        self.pool_log = open(os.path.join(OUT, "edgeswap-pool.log"), "a")
        argv = ["taskset", "-c", self.args.server_cpu, PARAPET, "run", "-c", pool_cfg]
        log("start:", " ".join(argv))
        self.pool = subprocess.Popen(argv, stdout=self.pool_log, stderr=self.pool_log, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT)
        shm = max(512, 256 + self.args.max_conns // 8)
        self.spawn(["taskset", "-c", self.args.server_cpu, Kamailio.binary(), "-DD", "-E", "-f", cfg, "-m", str(shm),
                    "-M", "32", "-x", "tlsf", "-Y", os.path.join(kdir, "run"),
                    "-P", os.path.join(kdir, "run", "kamailio.pid")], self.log_path)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.pool.poll() is not None:
                raise RuntimeError(f"the pool exited while starting (see {OUT}/edgeswap-pool.log)")
            try:
                socket.create_connection(("127.0.0.1", pool_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        wait_tls(PORTS["edgeswap"], time.time() + 30, self)
        time.sleep(0.5)

    def alive(self):
        return super().alive() and self.pool is not None and self.pool.poll() is None

    def pids(self):
        out = {f"edge[{p}]": p for p in proc_tree(self.proc.pid)}
        if self.pool is not None:
            out["pool"] = self.pool.pid
        return out

    def registrations(self):
        return Parapet.registrations(self)

    def stop(self):
        if self.pool is not None:
            stop_group(self.pool, signal.SIGTERM)
            self.pool = None
            self.pool_log.close()
        super().stop()


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
        CAPACITY_NOTE[0] = (f"{want} connections asked; the open-file hard limit ({hard} per process) allowed {room}")
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
    argv = loadgen_argv(server.kind, s, rate, duration, jpath, hpath, find_max)
    pids = server.pids()
    regs_before = server.registrations()
    sampler = Sampler(pids, memory=(s["lg"] == "idle"), registrations=server.registrations)
    sampler.take()
    t_start = time.time()
    sampler.start()
    perf = PerfCounts(PERF[0] if ARGS.counters and not find_max else {}, list(pids.values()), stem + ".perf")
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
    order = [s["name"] for s in PLAN] + ["im@half-max"]
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
        if CAPACITY_NOTE[0]:
            L.append(f"- {CAPACITY_NOTE[0]}")
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
        if regs.get("before"):
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


# ---------------------------------------------------------------------------------------------------- main

def main():
    global ARGS, PLAN, LOAD_USERS
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
    PLAN = plan(ARGS)
    ARGS.max_conns = max([s["count"] for s in PLAN] + [LOAD_USERS])
    # `parapet up --load-users`: the capacity scenario needs one user per connection.
    LOAD_USERS = max(LOAD_USERS, ARGS.max_conns)

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
    PERF[0] = ev
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
