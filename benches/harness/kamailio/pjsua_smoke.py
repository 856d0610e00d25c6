# pjsua2 client for `harness.py --smoke-kamailio PYTHON` (args: user password port ca [to-uri] [seconds]).
# Registers over TLS via 127.0.0.1:PORT (domain example.com) and optionally sends one MESSAGE to to-uri.
import sys, time, pjsua2 as pj
user, pw, port, ca = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
to = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
ep = pj.Endpoint(); ep.libCreate()
cfg = pj.EpConfig(); cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
import os; lv=int(os.environ.get("PJLOG","3")); cfg.logConfig.level = lv; cfg.logConfig.consoleLevel = lv; cfg.logConfig.msgLogging = 1
ep.libInit(cfg)
tc = pj.TransportConfig(); tc.tlsConfig.CaListFile = ca; tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD; tc.tlsConfig.verifyServer = True
ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
ep.libStart(); ep.audDevManager().setNullDev()
class Acc(pj.Account):
    def onRegState(self, prm): print("REG", prm.code, prm.reason, flush=True)
    def onInstantMessage(self, prm): print("MSG", prm.fromUri, prm.msgBody, flush=True)
    def onInstantMessageStatus(self, prm): print("MSGSTATUS", prm.code, prm.reason, flush=True)
ac = pj.AccountConfig(); ac.idUri = f"sip:{user}@example.com"; ac.regConfig.registrarUri = f"sip:127.0.0.1:{port};transport=tls"
ac.sipConfig.proxies.append(f"sip:127.0.0.1:{port};transport=tls;lr")
ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, pw))
acc = Acc(); acc.create(ac)
t0 = time.time(); sent = False
while time.time() - t0 < float(sys.argv[6] if len(sys.argv) > 6 else 4):
    ep.libHandleEvents(20)
    if to and not sent and time.time() - t0 > 1.5:
        b = pj.Buddy(); bc = pj.BuddyConfig(); bc.uri = to; b.create(acc, bc)
        p = pj.SendInstantMessageParam(); p.content = "hello from " + user; b.sendInstantMessage(p); sent = True
acc.shutdown(); ep.libDestroy()
