#!/usr/bin/env python3
"""One SIP identity driven over JSON lines (pjsip via pjsua2-python).

Usage:
  pjsua_agent.py --user alice --password SECRET --domain example.com \
                 --proxy 127.0.0.1:5061 --ca /path/ca.pem [--auth-user NAME] [--log-level N]
                 [--also bob:SECRET ...]

--also adds another account (same registrar, outbound proxy and TLS transport) to this process: pjsip then
shares its TLS connection between the accounts, as softphones with several accounts do. A command acts for
the first account unless it names another with "as": "bob"; events of every account carry "account": user.

Commands (one JSON object per line on stdin):
  {"cmd": "register"}
  {"cmd": "unregister"}
  {"cmd": "message", "to": "sip:bob@example.com", "text": "hello"}   ("to" may also be a bare user)
  {"cmd": "publish", "status": "online|busy|away|offline", "note": "..."}   (PUBLISH, RFC 3903)
  {"cmd": "subscribe", "uri": "sip:bob@example.com"}     (SUBSCRIBE Event: presence)
  {"cmd": "unsubscribe", "uri": "sip:bob@example.com"}   (SUBSCRIBE Expires: 0)
  {"cmd": "quit"}
  Any command may add "as": "<user>" to act for an account given with --also.

Events (one JSON object per line on stdout):
  {"event": "ready", "aor": ..., "local": ...}
  {"event": "reg", "code": 200, "reason": "OK", "expires": 300, "status": 0}
  {"event": "message_status", "to": ..., "code": 200, "reason": "OK"}
  {"event": "message", "from": ..., "text": ..., "content_type": ...}
  {"event": "buddy_state", "uri": ..., "status": "online|offline|unknown", "activity": "busy|away|",
   "note": ..., "text": ..., "sub_state": "ACTIVE|TERMINATED|...", "term_code": ..., "term_reason": ...}
  {"event": "error", "cmd": ..., "message": ...}
  {"event": "bye"}   (last line, after quit or end of stdin)

stdout carries only these JSON lines: the process's C-level stdout (fd 1) is redirected to
stderr before pjsip is loaded, and every pjsip log line goes to stderr.
"""

import argparse
import json
import os
import queue
import sys
import threading
import time

# --- keep stdout for JSON events only -------------------------------------------------
_EVENT_FD = os.dup(1)
os.dup2(2, 1)  # anything written to fd 1 by C code (pjlib's default log writer) goes to stderr
_events = os.fdopen(_EVENT_FD, "w", buffering=1, encoding="utf-8")
sys.stdout = sys.stderr
_emit_lock = threading.Lock()


def emit(event, **fields):
    obj = {"event": event}
    obj.update(fields)
    line = json.dumps(obj, ensure_ascii=False)
    with _emit_lock:
        _events.write(line + "\n")
        _events.flush()


def log(msg):
    sys.stderr.write("[agent] %s\n" % msg)
    sys.stderr.flush()


try:
    import pjsua2 as pj
except Exception as exc:  # pragma: no cover - reported to the driver
    emit("error", cmd="import", message="cannot import pjsua2: %r" % (exc,))
    sys.exit(3)


class StderrLogWriter(pj.LogWriter):
    def write(self, entry):
        try:
            msg = entry.msg
            sys.stderr.write(msg if msg.endswith("\n") else msg + "\n")
            sys.stderr.flush()
        except Exception:
            pass


def _rdata_present(prm):
    """True when the callback carries a response received from the network."""
    try:
        return bool(prm.rdata.wholeMsg)
    except Exception:
        return False


_STATUS_NAMES = {}
for _n in ("ONLINE", "OFFLINE", "UNKNOWN"):
    _STATUS_NAMES[getattr(pj, "PJSUA_BUDDY_STATUS_" + _n)] = _n.lower()
_ACTIVITY_NAMES = {pj.PJRPID_ACTIVITY_AWAY: "away", pj.PJRPID_ACTIVITY_BUSY: "busy"}


class AgentBuddy(pj.Buddy):
    def __init__(self, account):
        pj.Buddy.__init__(self)
        self.account = account

    def _report(self):
        try:
            info = self.getInfo()
            ps = info.presStatus
            emit("buddy_state", account=self.account, uri=str(info.uri),
                 status=_STATUS_NAMES.get(ps.status, str(ps.status)),
                 activity=_ACTIVITY_NAMES.get(ps.activity, ""),
                 note=str(ps.note), text=str(ps.statusText),
                 sub_state=str(info.subStateName), term_code=int(info.subTermCode),
                 term_reason=str(info.subTermReason))
        except Exception as exc:
            log("buddy state: %r" % (exc,))

    def onBuddyState(self):
        self._report()

    def onBuddyEvSubState(self, prm):
        self._report()


class AgentAccount(pj.Account):
    def __init__(self, user):
        pj.Account.__init__(self)
        self.user = user

    def onRegState(self, prm):
        try:
            info = self.getInfo()
            expires = int(info.regExpiresSec) if info.regIsActive else 0
        except Exception:
            expires = int(prm.expiration)
        status = int(prm.status)
        code = int(prm.code)
        local = not _rdata_present(prm)
        emit("reg", account=self.user, code=code, reason=str(prm.reason), expires=expires, status=status,
             local=local)
        if local and code >= 300:
            # No response came from the network (transport failure, timeout): say so explicitly.
            emit("error", cmd="register", account=self.user, code=code,
                 message="registration failed without a server response: %d %s (pj_status=%d)"
                         % (code, prm.reason, status))

    def onInstantMessage(self, prm):
        emit("message", account=self.user, **{"from": str(prm.fromUri), "text": str(prm.msgBody),
                           "content_type": str(prm.contentType), "to": str(prm.toUri)})

    def onInstantMessageStatus(self, prm):
        code = int(prm.code)
        local = not _rdata_present(prm)
        emit("message_status", account=self.user, to=str(prm.toUri), code=code, reason=str(prm.reason),
             local=local)
        if local and code >= 300:
            emit("error", cmd="message", account=self.user, code=code,
                 message="MESSAGE to %s failed without a server response: %d %s"
                         % (prm.toUri, code, prm.reason))

    def onIncomingCall(self, prm):
        # Not part of this agent's job: refuse.
        try:
            call = pj.Call(self, prm.callId)
            cprm = pj.CallOpParam()
            cprm.statusCode = 603
            call.hangup(cprm)
        except Exception as exc:
            log("reject call failed: %r" % (exc,))


def stdin_reader(q):
    try:
        for line in sys.stdin:
            line = line.strip()
            if line:
                q.put(line)
    except Exception as exc:
        log("stdin reader: %r" % (exc,))
    q.put(None)  # EOF


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--proxy", required=True, help="host:port of the TLS proxy/registrar")
    ap.add_argument("--ca", required=True, help="CA file to verify the server with")
    ap.add_argument("--auth-user", default=None, help="digest username (default: --user)")
    ap.add_argument("--log-level", type=int, default=5)
    ap.add_argument("--expires", type=int, default=300)
    ap.add_argument("--also", action="append", default=[], metavar="USER:PASSWORD",
                    help="another account in this process, sharing the transport")
    args = ap.parse_args()

    if ":" not in args.proxy:
        emit("error", cmd="args", message="--proxy must be host:port")
        return 2
    if not os.path.isfile(args.ca):
        emit("error", cmd="args", message="CA file not found: %s" % args.ca)
        return 2

    ep = pj.Endpoint()
    ep.libCreate()
    writer = StderrLogWriter()
    ep_cfg = pj.EpConfig()
    ep_cfg.uaConfig.threadCnt = 0
    ep_cfg.uaConfig.mainThreadOnly = False
    ep_cfg.uaConfig.userAgent = "parapet-e2e-pjsua2"
    ep_cfg.logConfig.level = args.log_level
    ep_cfg.logConfig.consoleLevel = args.log_level
    ep_cfg.logConfig.msgLogging = 1
    ep_cfg.logConfig.writer = writer
    ep_cfg.medConfig.noVad = True
    ep.libInit(ep_cfg)

    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.tlsConfig.CaListFile = os.path.abspath(args.ca)
    tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
    tcfg.tlsConfig.verifyServer = True
    tcfg.tlsConfig.verifyClient = False
    tcfg.tlsConfig.msecTimeout = 5000
    ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
    ep.libStart()
    try:
        ep.audDevManager().setNullDev()
    except Exception as exc:
        log("setNullDev: %r" % (exc,))

    aor = "sip:%s@%s" % (args.user, args.domain)

    class Identity(object):
        """One account and what the commands keep for it."""

    def make_account(user, auth_user, password):
        ident = Identity()
        ident.user = user
        acfg = pj.AccountConfig()
        acfg.idUri = "sip:%s@%s" % (user, args.domain)
        acfg.regConfig.registrarUri = "sip:%s;transport=tls" % args.proxy
        acfg.regConfig.registerOnAdd = False
        acfg.regConfig.timeoutSec = args.expires
        acfg.regConfig.retryIntervalSec = 0  # no automatic retries: the test sees each outcome once
        acfg.regConfig.firstRetryIntervalSec = 0
        acfg.regConfig.dropCallsOnFail = False
        acfg.sipConfig.proxies.append("sip:%s;transport=tls;lr" % args.proxy)
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", auth_user, 0, password))
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.presConfig.publishEnabled = False
        ident.acfg = acfg
        ident.acc = AgentAccount(user)
        ident.acc.create(acfg)
        ident.buddies = {}
        ident.publishing = False
        return ident

    identities = {args.user: make_account(args.user, args.auth_user or args.user, args.password)}
    for extra in args.also:
        user, sep, password = extra.partition(":")
        if not sep or not user:
            emit("error", cmd="args", message="--also must be USER:PASSWORD")
            return 2
        identities[user] = make_account(user, user, password)

    def target_uri(to):
        to = str(to)
        if to.startswith("sip:") or to.startswith("sips:"):
            return to
        if "@" in to:
            return "sip:" + to
        return "sip:%s@%s" % (to, args.domain)

    def get_buddy(ident, uri):
        b = ident.buddies.get(uri)
        if b is None:
            bcfg = pj.BuddyConfig()
            bcfg.uri = uri
            bcfg.subscribe = False
            b = AgentBuddy(ident.user)
            b.create(ident.acc, bcfg)
            ident.buddies[uri] = b
        return b

    q = queue.Queue()
    t = threading.Thread(target=stdin_reader, args=(q,), daemon=True)
    t.start()

    def publish(ident, status, note):
        ps = pj.PresenceStatus()
        if status == "offline":
            ps.status = pj.PJSUA_BUDDY_STATUS_OFFLINE
        else:
            ps.status = pj.PJSUA_BUDDY_STATUS_ONLINE
            if status == "busy":
                ps.activity = pj.PJRPID_ACTIVITY_BUSY
            elif status == "away":
                ps.activity = pj.PJRPID_ACTIVITY_AWAY
            elif status != "online":
                raise ValueError("status must be online, busy, away or offline")
        ps.note = note
        ps.statusText = note
        ident.acc.setOnlineStatus(ps)
        if not ident.publishing:
            # Publication is switched on only now: pjsip publishes at once when it is enabled, and the edge
            # admits nothing but REGISTER before the account registered.
            ident.acfg.presConfig.publishEnabled = True
            ident.acc.modify(ident.acfg)
            ident.publishing = True

    emit("ready", aor=aor, proxy=args.proxy, pid=os.getpid())

    running = True
    while running:
        ep.libHandleEvents(20)
        while True:
            try:
                line = q.get_nowait()
            except queue.Empty:
                break
            if line is None:
                running = False
                break
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("command must be a JSON object")
                name = cmd.get("cmd")
                ident = identities.get(str(cmd.get("as", args.user)))
                if ident is None:
                    raise ValueError("no account %r in this agent" % (cmd.get("as"),))
                acc = ident.acc
            except Exception as exc:
                emit("error", cmd=None, message="bad command line %r: %s" % (line, exc))
                continue
            try:
                if name == "register":
                    acc.setRegistration(True)
                elif name == "unregister":
                    acc.setRegistration(False)
                elif name == "message":
                    uri = target_uri(cmd["to"])
                    prm = pj.SendInstantMessageParam()
                    prm.content = str(cmd.get("text", ""))
                    prm.contentType = str(cmd.get("content_type", "text/plain"))
                    get_buddy(ident, uri).sendInstantMessage(prm)
                elif name == "publish":
                    publish(ident, str(cmd.get("status", "online")), str(cmd.get("note", "")))
                elif name == "subscribe":
                    get_buddy(ident, target_uri(cmd["uri"])).subscribePresence(True)
                elif name == "unsubscribe":
                    get_buddy(ident, target_uri(cmd["uri"])).subscribePresence(False)
                elif name == "quit":
                    running = False
                    break
                else:
                    emit("error", cmd=name, message="unknown command")
            except pj.Error as exc:
                emit("error", cmd=name, message="%s (status %d): %s" % (exc.title, exc.status, exc.reason))
            except Exception as exc:
                emit("error", cmd=name, message=repr(exc))

    # Shutdown, bounded: pump a little so in-flight transactions can finish.
    deadline = time.time() + 0.3
    while time.time() < deadline:
        ep.libHandleEvents(20)
    for ident in identities.values():
        ident.buddies.clear()
        try:
            ident.acc.shutdown()
        except Exception as exc:
            log("account shutdown: %r" % (exc,))
        del ident.acc
    emit("bye")
    try:
        ep.libDestroy()
    except Exception as exc:
        log("libDestroy: %r" % (exc,))
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as exc:
        import traceback
        traceback.print_exc()
        emit("error", cmd="fatal", message=repr(exc))
        rc = 1
    sys.stderr.flush()
    os._exit(rc or 0)
