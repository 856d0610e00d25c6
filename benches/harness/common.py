"""The harness's constants and small helpers, shared by its modules (harness.py runs them)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "target", "harness")
DATA = os.path.join(OUT, "data")
RUNS = os.path.join(OUT, "runs")
PARAPET = os.environ.get("HARNESS_PARAPET") or os.path.join(ROOT, "target", "release", "parapet")
LOADGEN = os.environ.get("HARNESS_LOADGEN") or os.path.join(ROOT, "target", "release", "loadgen")
DOMAIN = "example.com"
PORTS = {"parapet": 27061, "kamailio": 27161, "haproxy": 27261, "edgeswap": 27361}
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGS_POLL_S = 2.0  # parapet: its registration count from /metrics, this often during a run
ALL_SYSTEMS = ["parapet-coloc", "parapet-perimeter", "kamailio-tlsf", "kamailio", "haproxy", "kamailio-edge+pool"]
SYSTEM_ALIASES = {"parapet": ["parapet-coloc", "parapet-perimeter"], "kamailio-both": ["kamailio-tlsf", "kamailio"],
                  "edgeswap": ["kamailio-edge+pool"]}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

APT = {
    "kamailio": "apt-get install -y kamailio kamailio-tls-modules",
    "haproxy": "apt-get install -y haproxy",
}
# Users load1..loadN that `parapet up --load-users` makes (more when a scenario needs more connections).
LOAD_USERS = 2000


def log(*a):
    print("[harness]", *a, file=sys.stderr, flush=True)


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
