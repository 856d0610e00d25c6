"""What the harness measures of a server: CPU ticks, context switches and memory from /proc, the busy ticks of its
CPU, syscalls and io_uring submissions with `perf stat`, and loadgen's measurement window from its HdrHistogram log."""

import os
import re
import shutil
import signal
import subprocess
import threading
import time

from common import *  # noqa: F401,F403 - constants and helpers


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

    def __init__(self, pids, cpu, period=0.1, memory=False, registrations=None):
        super().__init__(daemon=True)
        self.pids, self.period, self.memory = dict(pids), period, memory
        # registrations(): the server's registration count, polled about once a second; the highest is kept
        self.registrations, self.regs_max, self.regs_last_poll = registrations, None, 0.0
        # The server CPU's busy ticks, to tell how much of it other processes took (a shared machine is noisy).
        self.cpu = cpu if cpu.isdigit() else None
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
    # The kernel's own count of the server's context switches (a software event), to check the /proc column.
    ev["ctx_perf"] = "context-switches"
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
