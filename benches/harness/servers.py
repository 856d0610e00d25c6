"""The systems under test: parapet (co-located or perimeter `parapet up`), Kamailio as registrar and relay (with
`-x tlsf` or its default allocator), HAProxy terminating TLS, and Kamailio as the edge in front of parapet's pool.
Each starts fresh, says which processes are its own, and stops its process group."""

import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

from common import *  # noqa: F401,F403 - constants and helpers
from measure import proc_tree, cmdline, stop_group


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
                str(PORTS["parapet"]), "--load-users", str(self.args.load_users), "--cores", "1",
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
