//! What one operation of each scenario does on the wire, and the setup a scenario needs before it is measured
//! (connections opened, users registered). Each operation ends in an `Outcome`; scheduling, timing and
//! recording belong to `engine`. Digest is handled exactly as a client does: send, on 401/407 compute
//! credentials from the challenge and send again; a kept nonce is reused with an incrementing nc. A played
//! federation partner sends no credentials: its certificate vouches for its domain.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use parapet::sip::Message;

use crate::cli::{bad, Config, ConfigError, Partner, Scenario};
use crate::conn::{with_deadline, ReqError, SipConn};
use crate::sipc::{self, AuthState, Party};
use crate::stats::Outcome;
use crate::transport::{self, ConnectError, Connector, Stream};

/// Connection setups in flight per core during the setup phase.
pub const SETUP_IN_FLIGHT_MAX: usize = 64;
/// Digest retries per transaction (a stale nonce, then a fresh challenge).
const AUTH_RETRIES_MAX: u32 = 2;
/// federation: the body of a partner's MESSAGE.
const PARTNER_BODY: &[u8] = b"loadgen federation";
/// Bytes read while waiting for the answer to a partner's OPTIONS before giving up on the peer.
const PROBE_BYTES_MAX: usize = 64 << 10;

/// One core's share of a run: its connections and the means to open new ones.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub core_index: usize,
    pub full: Connector,
    pub resumable: Connector,
    pub conns: Vec<Rc<SipConn>>,
    next_id: Cell<u64>,
    pub resumed: Cell<u64>,
    /// presence: how many of `conns` (the first ones) are presentities.
    pub presentities: usize,
    /// federation: per partner (as in `cfg.partners`), a connector and this core's connection as its edge.
    pub partner_connectors: Vec<Connector>,
    pub partners: Vec<Rc<SipConn>>,
}

impl Ctx {
    pub fn new(cfg: Arc<Config>, core_index: usize) -> Result<Ctx, ConfigError> {
        let partner_connectors =
            cfg.partners.iter().map(|p| Connector::partner(&cfg, p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Ctx {
            full: Connector::new(&cfg, false)?,
            resumable: Connector::new(&cfg, true)?,
            partner_connectors,
            partners: Vec::new(),
            cfg,
            core_index,
            conns: Vec::new(),
            next_id: Cell::new(0),
            resumed: Cell::new(0),
            presentities: 0,
        })
    }

    /// Unique across cores and runs of this process: core in the top bits, a counter below.
    pub fn id(&self) -> u64 {
        let n = self.next_id.get().wrapping_add(1);
        self.next_id.set(n);
        ((self.core_index as u64) << 48) | (n & ((1 << 48) - 1))
    }

    fn transport(&self) -> &'static str {
        if self.cfg.plain {
            "TCP"
        } else {
            "TLS"
        }
    }

    /// Users this core simulates: every index i with i % cores == core_index.
    pub fn my_users(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.cfg.cores.len();
        (0..self.cfg.count).filter(move |i| i % n == self.core_index)
    }
}

#[derive(Clone, Copy)]
enum What<'a> {
    Register,
    Message { to: &'a str },
    Subscribe { to: &'a str, call_id: &'a str, tag: &'a str },
    Publish { if_match: Option<&'a str>, body: &'a [u8] },
}

fn outcome(r: Result<Message, ReqError>) -> Outcome {
    match r {
        Ok(m) => match m.status() {
            Some(s) if (200..300).contains(&s) => Outcome::Ok,
            Some(s) => Outcome::Status(s),
            None => Outcome::Transport,
        },
        Err(ReqError::Timeout) => Outcome::Timeout,
        Err(ReqError::Transport) => Outcome::Transport,
    }
}

/// One transaction with digest: the first request carries credentials only when `reuse` and a nonce is kept.
async fn transact(ctx: &Ctx, c: &SipConn, what: What<'_>, reuse: bool, deadline: Instant) -> Result<Message, ReqError> {
    let user = ctx.cfg.users.get(c.user).ok_or(ReqError::Transport)?;
    let domain = ctx.cfg.domain.as_str();
    let party = Party { user: &user.alias, domain, local: &c.local, transport: ctx.transport() };
    let (state, method, uri) = match what {
        What::Register => (&c.reg_auth, "REGISTER", sipc::register_uri(domain)),
        What::Message { to } => (&c.proxy_auth, "MESSAGE", sipc::message_uri(to, domain)),
        What::Subscribe { to, .. } => (&c.proxy_auth, "SUBSCRIBE", sipc::message_uri(to, domain)),
        What::Publish { .. } => (&c.proxy_auth, "PUBLISH", sipc::message_uri(&user.alias, domain)),
    };
    let mut attempt = 0;
    loop {
        let id = ctx.id();
        let creds = if attempt > 0 || reuse {
            state.borrow_mut().as_mut().map(|a| a.credentials(&user.alias, method, &uri, id))
        } else {
            None
        };
        let mut out = BytesMut::with_capacity(1024);
        match what {
            What::Register => sipc::register(&mut out, &party, id, &c.reg_call_id, c.next_cseq(), creds.as_deref()),
            What::Message { to } => sipc::message(&mut out, &party, to, id, creds.as_deref(), b"loadgen"),
            What::Subscribe { to, call_id, tag } => {
                sipc::subscribe(&mut out, &party, to, id, call_id, tag, attempt + 1, creds.as_deref())
            }
            What::Publish { if_match, body } => sipc::publish(&mut out, &party, id, if_match, creds.as_deref(), body),
        }
        let resp = c.request(sipc::branch_text(id).as_bytes(), &out, deadline).await?;
        if matches!(resp.status(), Some(401 | 407)) && attempt < AUTH_RETRIES_MAX {
            if let Some(a) = AuthState::from_challenge(&resp, &user.alias, &user.password) {
                *state.borrow_mut() = Some(a);
                attempt += 1;
                continue;
            }
        }
        return Ok(resp);
    }
}

/// register: REGISTER, 401, REGISTER with credentials, 200 (`reuse`: refresh with the kept nonce first).
pub async fn register_op(ctx: &Ctx, c: &SipConn, reuse: bool, deadline: Instant) -> Outcome {
    outcome(transact(ctx, c, What::Register, reuse, deadline).await)
}

/// im: MESSAGE from `a` to `b`'s user; the kept nonce is reused (407 only the first time per connection).
pub async fn message_op(ctx: &Ctx, a: &SipConn, b: &SipConn, deadline: Instant) -> Outcome {
    let Some(to) = ctx.cfg.users.get(b.user) else { return Outcome::Transport };
    outcome(transact(ctx, a, What::Message { to: &to.alias }, true, deadline).await)
}

/// presence: `a` subscribes to the presence of `b`'s user (setup; 407 the first time per connection).
pub async fn subscribe_op(ctx: &Ctx, a: &SipConn, presentity: usize, deadline: Instant) -> Outcome {
    let Some(to) = ctx.cfg.users.get(presentity) else { return Outcome::Transport };
    let id = ctx.id();
    let call_id = format!("s{id:x}@{}", a.local);
    let tag = format!("s{id:x}");
    let what = What::Subscribe { to: &to.alias, call_id: &call_id, tag: &tag };
    outcome(transact(ctx, a, what, true, deadline).await)
}

/// presence: `c`'s user publishes its state (busy or open, with a note); the first PUBLISH creates the
/// publication, later ones modify it with SIP-If-Match. Open loop, two PUBLISHes of one user can be in flight
/// with the same tag: the later one gets 412 and is sent again (once) with the tag the earlier one got. A 412
/// for the tag still kept forgets it, so the next PUBLISH creates the publication anew.
pub async fn publish_op(ctx: &Ctx, c: &SipConn, busy: bool, n: u64, deadline: Instant) -> Outcome {
    let Some(user) = ctx.cfg.users.get(c.user) else { return Outcome::Transport };
    let note = if busy { format!("In a meeting ({n})") } else { format!("Available ({n})") };
    let body = sipc::pidf(&user.alias, &ctx.cfg.domain, busy, &note);
    let mut retried = false;
    loop {
        let tag = c.pub_etag.borrow().clone();
        let what = What::Publish { if_match: tag.as_deref(), body: body.as_bytes() };
        let r = transact(ctx, c, what, true, deadline).await;
        if let Ok(m) = &r {
            match m.status() {
                Some(200..=299) => {
                    if let Some(t) = m.header(parapet::sip::HeaderName::SipETag) {
                        *c.pub_etag.borrow_mut() = Some(String::from_utf8_lossy(t).trim().to_string());
                    }
                }
                Some(412) => {
                    let mut kept = c.pub_etag.borrow_mut();
                    if *kept == tag {
                        *kept = None;
                    } else if !retried {
                        retried = true;
                        continue;
                    }
                }
                _ => {}
            }
        }
        return outcome(r);
    }
}

/// presence: this core's watchers subscribe to their presentities (at most `SETUP_IN_FLIGHT_MAX` at a time).
/// A failed subscription is a configuration error.
pub async fn setup_presence(ctx: &Ctx) -> Result<(), ConfigError> {
    let cfg = &ctx.cfg;
    let (presentities, watchers) = cfg.presence_plan();
    let n = cfg.cores.len();
    let by_user: std::collections::HashMap<usize, &Rc<SipConn>> = ctx.conns.iter().map(|c| (c.user, c)).collect();
    let mut pairs = Vec::new();
    for p in 0..presentities {
        for k in 0..watchers {
            let w = cfg.watcher_of(p, k);
            if w % n == ctx.core_index {
                pairs.push((w, p));
            }
        }
    }
    for chunk in pairs.chunks(SETUP_IN_FLIGHT_MAX) {
        let futs: Vec<_> = chunk
            .iter()
            .map(|&(w, p)| {
                let c = by_user.get(&w).copied();
                async move {
                    let Some(c) = c else { return (w, p, Outcome::Transport) };
                    (w, p, subscribe_op(ctx, c, p, Instant::now() + cfg.timeout).await)
                }
            })
            .collect();
        for (w, p, o) in join_all(futs).await {
            if o != Outcome::Ok {
                let name = |u: usize| cfg.users.get(u).map_or("?", |x| x.alias.as_str()).to_string();
                return Err(bad(format!(
                    "The subscription of {} to the presence of {} failed ({}).",
                    name(w),
                    name(p),
                    match o {
                        Outcome::Status(s) => format!("answered {s}"),
                        Outcome::Timeout => "no answer within --timeout-ms".to_string(),
                        _ => "connection closed".to_string(),
                    }
                )));
            }
        }
    }
    Ok(())
}

/// federation: partner `k` (this core's connection as its edge) sends a MESSAGE to `to`'s user.
pub async fn federation_op(ctx: &Ctx, k: usize, to: &SipConn, deadline: Instant) -> Outcome {
    let (Some(p), Some(c), Some(user)) = (ctx.cfg.partners.get(k), ctx.partners.get(k), ctx.cfg.users.get(to.user))
    else {
        return Outcome::Transport;
    };
    let id = ctx.id();
    let party = Party { user: sipc::PARTNER_SENDER, domain: &p.domain, local: &c.local, transport: ctx.transport() };
    let mut out = BytesMut::with_capacity(768);
    sipc::partner_message(&mut out, &party, &user.alias, &ctx.cfg.domain, id, PARTNER_BODY);
    outcome(c.request(sipc::branch_text(id).as_bytes(), &out, deadline).await)
}

/// Why a partner's first request got no answer.
enum ProbeError {
    Io(std::io::Error),
    Closed,
    Timeout,
    /// Bytes that do not frame as SIP, or too many of them without an answer.
    Garbled,
}

/// Writes `request` on a fresh stream and reads until the final response (before the stream becomes a `SipConn`,
/// so that a TLS alert, the edge's refusal of our certificate, can be told apart from a plain close).
async fn first_answer(s: &mut Stream, request: &[u8], deadline: Instant) -> Result<Message, ProbeError> {
    use parapet::sip::{Frame, Framer, Limits};
    let work = async {
        s.write_all(request).await.map_err(ProbeError::Io)?;
        s.flush().await.map_err(ProbeError::Io)?;
        let limits = Limits::DEFAULT;
        let mut framer = Framer::new();
        let mut buf = BytesMut::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            loop {
                match framer.frame(&buf, &limits) {
                    Ok(Frame::Message { len }) => {
                        let bytes = buf.split_to(len).freeze();
                        let m = Message::parse(bytes, &limits).map_err(|_| ProbeError::Garbled)?;
                        if m.status().is_some_and(|c| c >= 200) {
                            return Ok(m);
                        }
                    }
                    Ok(Frame::Ping { consumed } | Frame::Pong { consumed }) => {
                        let _ = buf.split_to(consumed);
                    }
                    Ok(Frame::Incomplete) => break,
                    Err(_) => return Err(ProbeError::Garbled),
                }
            }
            if buf.len() > PROBE_BYTES_MAX {
                return Err(ProbeError::Garbled);
            }
            match s.read(&mut chunk).await {
                Ok(0) => return Err(ProbeError::Closed),
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                Err(e) => return Err(ProbeError::Io(e)),
            }
        }
    };
    with_deadline(work, deadline).await.unwrap_or(Err(ProbeError::Timeout))
}

/// federation: this core's connection as each partner's edge, checked with an OPTIONS that the edge answers
/// itself: 200 means our certificate is trusted, its name admitted and the partner's domain spoken for. Anything
/// else is a configuration error, in one sentence.
pub async fn setup_partners(ctx: &mut Ctx) -> Result<(), ConfigError> {
    let cfg = Arc::clone(&ctx.cfg);
    for (k, p) in cfg.partners.iter().enumerate() {
        let Some(connector) = ctx.partner_connectors.get(k) else { break };
        let mut stream = connector.connect(None, cfg.timeout).await.map_err(|e| e.partner_sentence(&cfg, p))?;
        let local = local_addr(&stream);
        let id = ctx.id();
        let party = Party { user: sipc::PARTNER_SENDER, domain: &p.domain, local: &local, transport: ctx.transport() };
        let mut out = BytesMut::with_capacity(512);
        sipc::partner_options(&mut out, &party, &cfg.domain, id);
        match first_answer(&mut stream, &out, Instant::now() + cfg.timeout).await {
            Ok(m) if m.status() == Some(200) => {}
            Ok(m) => return Err(partner_answered(&cfg, p, &m)),
            Err(ProbeError::Io(e)) => {
                let why = transport::inner_text(&e);
                return Err(if why.contains("alert") {
                    transport::partner_refused(&cfg, p, &why)
                } else {
                    bad(format!("The connection of partner {} to {} failed: {why}.", p.domain, cfg.fed_target))
                });
            }
            Err(ProbeError::Closed) => {
                return Err(bad(format!(
                    "The edge's federation listener {} closed the connection of partner {} without answering \
                     (it admits a peer only when a name in its certificate {} is the cert_name of one of its \
                     [[edge.federation.partners]]).",
                    cfg.fed_target,
                    p.domain,
                    p.cert_path.display()
                )))
            }
            Err(ProbeError::Timeout) => {
                return Err(bad(format!(
                    "The edge's federation listener {} did not answer partner {}'s OPTIONS within --timeout-ms {}.",
                    cfg.fed_target,
                    p.domain,
                    cfg.timeout.as_millis()
                )))
            }
            Err(ProbeError::Garbled) => {
                return Err(bad(format!(
                    "The peer at {} answered partner {}'s OPTIONS with something that is not SIP.",
                    cfg.fed_target, p.domain
                )))
            }
        }
        ctx.partners.push(SipConn::start(stream, k, local));
    }
    Ok(())
}

/// The sentence for a partner's OPTIONS answered with an error.
fn partner_answered(cfg: &Config, p: &Partner, m: &Message) -> ConfigError {
    let code = m.status().unwrap_or(0);
    let reason = String::from_utf8_lossy(m.reason().unwrap_or(b"")).trim().to_string();
    if code == 403 {
        bad(format!(
            "The edge refused partner {}'s OPTIONS with 403 ({reason}): its partner table does not let the \
             certificate {} speak for {} (check the partner's domain and cert_name in [[edge.federation.partners]]).",
            p.domain,
            p.cert_path.display(),
            p.domain
        ))
    } else {
        bad(format!("The edge answered {code} {reason} to partner {}'s OPTIONS on {}.", p.domain, cfg.fed_target))
    }
}

fn local_addr(stream: &Stream) -> String {
    match stream {
        Stream::Tls(s) => s.get_ref().0.local_addr(),
        Stream::Plain(s) => s.local_addr(),
    }
    .map(|a| a.to_string())
    .unwrap_or_else(|_| "127.0.0.1:5060".to_string())
}

/// handshake: a new connection through the TLS handshake, then closed. With `resume`, one CRLF keep-alive
/// round trip makes the server's session ticket arrive before the close.
pub async fn handshake_op(ctx: &Ctx, source_index: usize, resume: bool, measured: bool, deadline: Instant) -> Outcome {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let connector = if resume { &ctx.resumable } else { &ctx.full };
    let mut s = match connector.connect(ctx.cfg.source_ip(source_index), left).await {
        Ok(s) => s,
        Err(ConnectError::Timeout) => return Outcome::Timeout,
        Err(_) => return Outcome::Transport,
    };
    if measured && s.resumed() {
        ctx.resumed.set(ctx.resumed.get() + 1);
    }
    if resume {
        let ping = async {
            s.write_all(b"\r\n\r\n").await?;
            s.flush().await?;
            let mut b = [0u8; 64];
            s.read(&mut b).await
        };
        match with_deadline(ping, deadline).await {
            None => return Outcome::Timeout,
            Some(Ok(n)) if n > 0 => {}
            Some(_) => return Outcome::Transport,
        }
    }
    let _ = with_deadline(s.close(), deadline).await;
    Outcome::Ok
}

/// Opens (and, when `register`, registers) one user's connection. The Err is the one-sentence reason.
pub async fn setup_user(ctx: &Ctx, user: usize, register: bool) -> Result<Rc<SipConn>, ConfigError> {
    let cfg = &ctx.cfg;
    let stream = ctx.full.connect(cfg.source_ip(user), cfg.timeout).await.map_err(|e| e.sentence(cfg))?;
    let local = local_addr(&stream);
    let c = SipConn::start(stream, user, local);
    if register {
        let deadline = Instant::now() + cfg.timeout;
        let r = transact(ctx, &c, What::Register, false, deadline).await;
        check_registration(cfg, user, r)?;
    }
    Ok(c)
}

/// Turns a failed setup registration into the sentence that explains it.
pub fn check_registration(cfg: &Config, user: usize, r: Result<Message, ReqError>) -> Result<(), ConfigError> {
    let name = cfg.users.get(user).map_or("?", |u| u.alias.as_str());
    match outcome(r) {
        Outcome::Ok => Ok(()),
        Outcome::Status(code @ (401 | 403 | 407)) => Err(bad(format!(
            "The target rejected the credentials of user {name} ({code}): check --users {} and --domain {}.",
            cfg.users_path_hint(),
            cfg.domain
        ))),
        Outcome::Status(code) => Err(bad(format!("The target answered {code} to the registration of user {name}."))),
        Outcome::Timeout => Err(bad(format!(
            "The target did not answer the registration of user {name} within --timeout-ms {}.",
            cfg.timeout.as_millis()
        ))),
        Outcome::Transport | Outcome::Dropped => {
            Err(bad(format!("The target closed the connection while registering user {name}.")))
        }
    }
}

/// Opens this core's connections before measuring: `register` them all (im, mix) or only check the first
/// one's credentials (register). At most `SETUP_IN_FLIGHT_MAX` at a time.
pub async fn setup(ctx: &mut Ctx, scenario: Scenario) -> Result<(), ConfigError> {
    if scenario == Scenario::Handshake {
        // One handshake up front: an unreachable target or a CA mismatch is a configuration error.
        let s = ctx.full.connect(ctx.cfg.source_ip(0), ctx.cfg.timeout).await.map_err(|e| e.sentence(&ctx.cfg))?;
        drop(s);
        return Ok(());
    }
    let users: Vec<usize> = ctx.my_users().collect();
    let register_all = scenario.registers_all();
    let mut conns: Vec<Option<Rc<SipConn>>> = vec![None; users.len()];
    for (chunk_i, chunk) in users.chunks(SETUP_IN_FLIGHT_MAX).enumerate() {
        let ctx_ref: &Ctx = ctx;
        let futs = chunk.iter().map(|&u| {
            let reg = register_all || (u == 0 && scenario == Scenario::Register);
            async move { setup_user(ctx_ref, u, reg).await }
        });
        let mut tasks = Vec::with_capacity(chunk.len());
        for f in futs {
            tasks.push(f);
        }
        let results = join_all(tasks).await;
        for (k, r) in results.into_iter().enumerate() {
            if let Some(slot) = conns.get_mut(chunk_i * SETUP_IN_FLIGHT_MAX + k) {
                *slot = Some(r?);
            }
        }
    }
    ctx.conns = conns.into_iter().flatten().collect();
    if scenario == Scenario::Presence {
        let (p, _) = ctx.cfg.presence_plan();
        ctx.presentities = ctx.conns.iter().take_while(|c| c.user < p).count();
        setup_presence(ctx).await?;
    }
    if scenario == Scenario::Federation {
        setup_partners(ctx).await?;
    }
    Ok(())
}

/// Polls every future to completion concurrently on this task (no spawn, no Send bound).
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut all = true;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
