//! Registrar binding table for the AORs owned by one core: RFC 3261 §10.3 (REGISTER processing),
//! §19.1.4 (URI comparison, simplified), RFC 5626 (outbound: +sip.instance/reg-id identify a flow),
//! RFC 3327 (Path is stored per binding) and RFC 3261 §20.19/§21.4.17 (Expires, 423 Min-Expires).
//!
//! Pure logic: no I/O, no clock (`now_secs` is an input), no dependency on the SIP parser. The caller
//! parses the request into `RegisterReq` and turns `RegError` into a response.
//!
//! Memory is bounded: at most `aors_max` AORs of at most `bindings_per_aor_max` bindings each (a binding
//! holds strings copied from one message, which the transport already bounds in size). A REGISTER is
//! applied to a copy of the AOR's bindings and committed only when every contact was accepted, so a
//! failing request changes nothing (RFC 3261 §10.3 step 7 "the update MUST be aborted").

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI exactly as registered (without < >).
    pub contact: String,
    /// Contact header params other than expires and q, each with its leading ';' (e.g.
    /// `;+sip.instance="<urn:uuid:..>";reg-id=1`), kept raw for echoing; may be empty. The caller adds
    /// `;q=` from `q` and `;expires=` from `expires_at` when it writes the 200 OK.
    pub contact_params: String,
    /// +sip.instance value (RFC 5626), as given by the caller.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub q: Option<String>,
    /// Path header values in order (each "<sip:...;lr>").
    pub path: Vec<String>,
    pub call_id: String,
    pub cseq: u32,
    /// Absolute secs; the binding is live while `now_secs < expires_at`.
    pub expires_at: u64,
    /// Opaque to the registrar: set by the caller (e.g. edge flow id), echoed.
    pub flow: Option<u64>,
}

pub struct ContactReq<'a> {
    pub uri: &'a [u8],
    /// Raw header params (what follows the URI / `>`), with or without the leading ';'.
    pub params: &'a [u8],
    pub expires: Option<u32>,
    pub instance: Option<&'a [u8]>,
    pub reg_id: Option<u32>,
    pub q: Option<&'a [u8]>,
}

pub struct RegisterReq<'a> {
    /// Key from `proto::aor_key`.
    pub aor: &'a str,
    pub contacts: &'a [ContactReq<'a>],
    /// `Contact: *`
    pub star: bool,
    pub header_expires: Option<u32>,
    pub call_id: &'a [u8],
    pub cseq: u32,
    pub path: &'a [&'a [u8]],
    pub flow: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrarLimits {
    /// Non-zero expiries below this get 423 Interval Too Brief with Min-Expires (default 60).
    pub min_expires: u32,
    /// Larger values are lowered to this (default 7200).
    pub max_expires: u32,
    /// When neither the contact nor the request carries an expiry (default 3600).
    pub default_expires: u32,
    /// Default 10.
    pub bindings_per_aor_max: usize,
    pub aors_max: usize,
}

impl Default for RegistrarLimits {
    fn default() -> Self {
        RegistrarLimits {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            bindings_per_aor_max: 10,
            aors_max: 100_000,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RegError {
    /// 423 + Min-Expires.
    IntervalTooBrief { min: u32 },
    /// `Contact: *` alongside other contacts: 400.
    StarWithOthers,
    /// `Contact: *` without `Expires: 0`: 400.
    StarNeedsZeroExpires,
    /// Same Call-ID, CSeq not higher than the stored one (§10.3 step 7): 400 "out of order".
    OutOfOrder,
    /// The AOR would exceed bindings_per_aor_max: 403.
    TooManyBindings,
    /// The table holds aors_max AORs: 503.
    Full,
}

/// How two contacts are judged to be the same binding.
#[derive(PartialEq, Eq)]
enum Identity {
    /// RFC 5626: the flow (instance, reg-id) identifies the binding, whatever its URI.
    Outbound(String, u32),
    /// RFC 3261 §19.1.4, simplified: scheme and host case-insensitive, user(info) exact, port as
    /// written, transport case-insensitive. Other URI params do not take part.
    Uri { scheme: String, userinfo: String, host: String, port: String, transport: String },
}

fn identity(uri: &[u8], instance: Option<&[u8]>, reg_id: Option<u32>) -> Identity {
    if let (Some(inst), Some(id)) = (instance, reg_id) {
        // Instance ids are URNs (urn:uuid:hex), where case does not matter.
        return Identity::Outbound(String::from_utf8_lossy(inst).to_ascii_lowercase(), id);
    }
    let s = String::from_utf8_lossy(strip_brackets(uri));
    let (scheme, rest) = s.split_once(':').unwrap_or(("", &s));
    // URI headers (?...) do not identify anything here.
    let rest = rest.split('?').next().unwrap_or("");
    let mut parts = rest.split(';');
    let hostport_user = parts.next().unwrap_or("");
    let mut transport = String::new();
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("transport") {
            transport = value.trim().to_ascii_lowercase();
        }
    }
    // userinfo cannot contain an unescaped '@', the host part cannot either: split at the last one.
    let (userinfo, hostport) = match hostport_user.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", hostport_user),
    };
    let (host, port) = split_host_port(hostport);
    Identity::Uri {
        scheme: scheme.trim().to_ascii_lowercase(),
        userinfo: userinfo.to_string(),
        host: host.to_ascii_lowercase(),
        port: port.to_string(),
        transport,
    }
}

/// "[v6]:port", "host:port", "host". A bare IPv6 without brackets is not valid in a SIP URI; it simply
/// ends up compared as a whole.
fn split_host_port(hp: &str) -> (&str, &str) {
    if hp.starts_with('[') {
        if let Some(end) = hp.find(']') {
            let host = &hp[..=end];
            let port = hp[end + 1..].strip_prefix(':').unwrap_or("");
            return (host, port);
        }
        return (hp, "");
    }
    match hp.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (hp, ""),
    }
}

/// Tolerates callers that hand over "<sip:...>": the contract says without brackets, but being lenient
/// costs nothing and keeps the stored value clean.
fn strip_brackets(uri: &[u8]) -> &[u8] {
    let t = uri.trim_ascii();
    match (t.first(), t.last()) {
        (Some(b'<'), Some(b'>')) if t.len() >= 2 => &t[1..t.len() - 1],
        _ => t,
    }
}

/// Keeps every header param except expires and q (the registrar re-emits those from the binding), each
/// as ";name[=value]". Splits on ';' outside quoted strings, since +sip.instance is a quoted string.
fn keep_params(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let bytes = s.as_bytes();
    let mut pieces = Vec::new();
    for (i, &c) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b';' if !in_quotes => {
                pieces.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&s[start..]);
    for p in pieces {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("expires") || name.eq_ignore_ascii_case("q") {
            continue;
        }
        out.push(';');
        out.push_str(p);
    }
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct Registrar {
    limits: RegistrarLimits,
    /// aor key -> bindings in registration order. An AOR with no bindings is removed, so the map's size
    /// is the AOR count.
    aors: HashMap<String, Vec<Binding>>,
    /// flow id -> AORs having at least one binding on that flow, so that a dropped connection costs a
    /// few lookups instead of a scan of the whole table. Holds one entry per (flow, AOR) pair, so it is
    /// bounded by the binding count.
    flows: HashMap<u64, Vec<String>>,
    /// Last time a full sweep ran because the table was full: a flood of new AORs at capacity must not
    /// turn every REGISTER into a scan of the whole table.
    last_full_sweep: Option<u64>,
}

fn flows_of(bs: &[Binding]) -> Vec<u64> {
    let mut v: Vec<u64> = bs.iter().filter_map(|b| b.flow).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Registrar {
    pub fn new(limits: RegistrarLimits) -> Registrar {
        Registrar { limits, aors: HashMap::new(), flows: HashMap::new(), last_full_sweep: None }
    }

    /// Stores `new` as the AOR's bindings (removing the AOR when empty) and keeps the flow index in step.
    fn commit(&mut self, aor: &str, new: Vec<Binding>) {
        let old_flows = self.aors.get(aor).map(|v| flows_of(v)).unwrap_or_default();
        let new_flows = flows_of(&new);
        for f in old_flows.iter().filter(|f| !new_flows.contains(f)) {
            if let Some(list) = self.flows.get_mut(f) {
                list.retain(|a| a != aor);
                if list.is_empty() {
                    self.flows.remove(f);
                }
            }
        }
        for f in new_flows.iter().filter(|f| !old_flows.contains(f)) {
            self.flows.entry(*f).or_default().push(aor.to_string());
        }
        if new.is_empty() {
            self.aors.remove(aor);
        } else if let Some(slot) = self.aors.get_mut(aor) {
            *slot = new;
        } else {
            self.aors.insert(aor.to_string(), new);
        }
    }

    /// Drops expired bindings of one AOR; returns how many.
    fn prune(&mut self, aor: &str, now_secs: u64) -> usize {
        let Some(bs) = self.aors.get(aor) else {
            return 0;
        };
        if bs.iter().all(|b| b.expires_at > now_secs) {
            return 0;
        }
        let live: Vec<Binding> = bs.iter().filter(|b| b.expires_at > now_secs).cloned().collect();
        let removed = bs.len() - live.len();
        self.commit(aor, live);
        removed
    }

    /// Applies a REGISTER atomically (all or nothing): removals (expires 0 / star), refreshes, new
    /// bindings. Binding identity: (instance, reg_id) when both present (RFC 5626: replaces the old
    /// flow), else the contact URI compared per RFC 3261 §19.1.4 (simplified). Returns the current
    /// bindings after the change (fetch-only when contacts is empty and !star).
    pub fn register(&mut self, req: &RegisterReq<'_>, now_secs: u64) -> Result<Vec<Binding>, RegError> {
        // §10.3 step 6: "*" is only valid alone and with Expires: 0.
        if req.star {
            if !req.contacts.is_empty() {
                return Err(RegError::StarWithOthers);
            }
            if req.header_expires != Some(0) {
                return Err(RegError::StarNeedsZeroExpires);
            }
        }
        // Expired bindings take no part in matching or in the per-AOR count.
        self.prune(req.aor, now_secs);
        let current: &[Binding] = self.aors.get(req.aor).map(|v| v.as_slice()).unwrap_or(&[]);

        if req.star {
            // §10.3 step 6: with the same Call-ID, only a higher CSeq may remove a binding.
            if current.iter().any(|b| b.call_id.as_bytes() == req.call_id && req.cseq <= b.cseq) {
                return Err(RegError::OutOfOrder);
            }
            self.commit(req.aor, Vec::new());
            return Ok(Vec::new());
        }
        if req.contacts.is_empty() {
            return Ok(current.to_vec());
        }

        // §10.3 step 5: per-contact expiry, checked for every contact before anything changes.
        let mut expiries = Vec::with_capacity(req.contacts.len());
        for c in req.contacts {
            let e = c.expires.or(req.header_expires).unwrap_or(self.limits.default_expires);
            if e != 0 && e < self.limits.min_expires {
                return Err(RegError::IntervalTooBrief { min: self.limits.min_expires });
            }
            expiries.push(e.min(self.limits.max_expires));
        }

        let call_id = lossy(req.call_id);
        let path: Vec<String> = req.path.iter().map(|p| lossy(p)).collect();
        // Work on a copy so that an abort half-way leaves the table untouched.
        let mut work: Vec<(Binding, bool /* touched by this request */)> =
            current.iter().cloned().map(|b| (b, false)).collect();
        let before = work.len();
        for (c, &exp) in req.contacts.iter().zip(&expiries) {
            let id = identity(c.uri, c.instance, c.reg_id);
            let pos = work.iter().position(|(b, _)| {
                identity(b.contact.as_bytes(), b.instance.as_deref().map(str::as_bytes), b.reg_id) == id
            });
            if let Some(i) = pos {
                let (b, touched) = &work[i];
                // §10.3 step 7. A binding already updated by this same request (a contact listed twice)
                // carries our own CSeq: the later entry simply wins.
                if !*touched && b.call_id.as_bytes() == req.call_id && req.cseq <= b.cseq {
                    return Err(RegError::OutOfOrder);
                }
            }
            if exp == 0 {
                if let Some(i) = pos {
                    work.remove(i);
                }
                continue;
            }
            let binding = Binding {
                contact: lossy(strip_brackets(c.uri)),
                contact_params: keep_params(c.params),
                instance: c.instance.map(lossy),
                reg_id: c.reg_id,
                q: c.q.map(lossy),
                path: path.clone(),
                call_id: call_id.clone(),
                cseq: req.cseq,
                expires_at: now_secs.saturating_add(u64::from(exp)),
                flow: req.flow,
            };
            match pos {
                Some(i) => work[i] = (binding, true),
                None => work.push((binding, true)),
            }
        }

        // A full AOR gives way to a new registration: the binding closest to expiry that this request did not
        // touch goes (a device that reconnected leaves its old binding behind until it expires; refusing would
        // lock the user out). Only a request that by itself brings more contacts than the limit is refused, and
        // an AOR already above a lowered limit can still refresh or shrink.
        if work.len() > self.limits.bindings_per_aor_max && work.len() > before {
            while work.len() > self.limits.bindings_per_aor_max.max(before) {
                let oldest = work
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, touched))| !touched)
                    .min_by_key(|(_, (b, _))| b.expires_at)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        work.remove(i);
                    }
                    None => return Err(RegError::TooManyBindings),
                }
            }
        }
        if !work.is_empty() && !self.aors.contains_key(req.aor) && self.aors.len() >= self.limits.aors_max {
            // Reclaim expired AORs at most once a second before refusing.
            if self.last_full_sweep != Some(now_secs) {
                self.last_full_sweep = Some(now_secs);
                self.expire(now_secs);
            }
            if self.aors.len() >= self.limits.aors_max {
                return Err(RegError::Full);
            }
        }
        let new: Vec<Binding> = work.into_iter().map(|(b, _)| b).collect();
        let out = new.clone();
        self.commit(req.aor, new);
        Ok(out)
    }

    /// Unexpired bindings only (drops the expired ones on the way).
    pub fn lookup(&mut self, aor: &str, now_secs: u64) -> Vec<Binding> {
        self.prune(aor, now_secs);
        self.aors.get(aor).cloned().unwrap_or_default()
    }

    /// Drops the bindings tied to a dead flow (RFC 5626 §7: a failed flow is no longer a way to reach
    /// the UA); returns the count.
    pub fn remove_flow(&mut self, flow: u64) -> usize {
        let Some(aors) = self.flows.remove(&flow) else {
            return 0;
        };
        let mut removed = 0;
        for aor in aors {
            let Some(bs) = self.aors.get(&aor) else {
                continue;
            };
            let keep: Vec<Binding> = bs.iter().filter(|b| b.flow != Some(flow)).cloned().collect();
            removed += bs.len() - keep.len();
            // commit() reindexes the AOR's other flows; this flow's entry is already gone.
            self.commit(&aor, keep);
        }
        removed
    }

    /// Full sweep; returns the number of bindings removed. Meant for a periodic timer.
    pub fn expire(&mut self, now_secs: u64) -> usize {
        let stale: Vec<String> = self
            .aors
            .iter()
            .filter(|(_, bs)| bs.iter().any(|b| b.expires_at <= now_secs))
            .map(|(a, _)| a.clone())
            .collect();
        stale.iter().map(|a| self.prune(a, now_secs)).sum()
    }

    /// Puts back an AOR's bindings saved before a restart (the live ones, at most `bindings_per_aor_max`);
    /// refused when the table is full.
    pub fn restore(&mut self, aor: &str, mut bindings: Vec<Binding>, now_secs: u64) -> bool {
        bindings.retain(|b| b.expires_at > now_secs);
        bindings.truncate(self.limits.bindings_per_aor_max);
        if bindings.is_empty() || (self.aors.len() >= self.limits.aors_max && !self.aors.contains_key(aor)) {
            return false;
        }
        self.commit(aor, bindings);
        true
    }

    /// Drops every binding of an AOR (another front end owns it now; its state is in the store).
    pub fn forget(&mut self, aor: &str) {
        self.commit(aor, Vec::new());
    }

    /// Whether the AOR has a binding that is live at `now_secs` (read-only: nothing is pruned).
    pub fn is_registered(&self, aor: &str, now_secs: u64) -> bool {
        self.aors.get(aor).is_some_and(|bs| bs.iter().any(|b| b.expires_at > now_secs))
    }

    /// Drops every binding of an AOR (its user left the directory); returns how many.
    pub fn remove_aor(&mut self, aor: &str) -> usize {
        let n = self.aors.get(aor).map_or(0, Vec::len);
        self.commit(aor, Vec::new());
        n
    }

    pub fn aor_count(&self) -> usize {
        self.aors.len()
    }

    pub fn binding_count(&self) -> usize {
        self.aors.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RegistrarLimits {
        RegistrarLimits {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            bindings_per_aor_max: 3,
            aors_max: 2,
        }
    }

    fn contact(uri: &str) -> ContactReq<'_> {
        ContactReq { uri: uri.as_bytes(), params: b"", expires: None, instance: None, reg_id: None, q: None }
    }

    fn req<'a>(aor: &'a str, contacts: &'a [ContactReq<'a>], call_id: &'a str, cseq: u32) -> RegisterReq<'a> {
        RegisterReq {
            aor,
            contacts,
            star: false,
            header_expires: None,
            call_id: call_id.as_bytes(),
            cseq,
            path: &[],
            flow: None,
        }
    }

    const A: &str = "alice@example.com";

    #[test]
    fn register_refresh_unregister() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:alice@10.0.0.1:5061;transport=tls")];
        let mut q = req(A, &cs, "c1", 1);
        q.header_expires = Some(600);
        q.flow = Some(7);
        let out = r.register(&q, 1000).expect("register");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].contact, "sip:alice@10.0.0.1:5061;transport=tls");
        assert_eq!(out[0].expires_at, 1600);
        assert_eq!(out[0].flow, Some(7));
        assert_eq!((r.aor_count(), r.binding_count()), (1, 1));

        // refresh: same Call-ID, higher CSeq, URI differing only in case of scheme/host/transport
        let cs = [contact("SIP:alice@10.0.0.1:5061;TRANSPORT=TLS")];
        let mut q = req(A, &cs, "c1", 2);
        q.header_expires = Some(1200);
        let out = r.register(&q, 1100).expect("refresh");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].expires_at, 2300);
        assert_eq!(out[0].cseq, 2);
        assert_eq!(out[0].flow, None);

        // fetch-only
        let out = r.register(&req(A, &[], "other", 1), 1200).expect("fetch");
        assert_eq!(out.len(), 1);

        // unregister with ;expires=0 on the contact (baresip style), Expires header ignored
        let mut c = contact("sip:alice@10.0.0.1:5061;transport=tls");
        c.expires = Some(0);
        let cs = [c];
        let mut q = req(A, &cs, "c1", 3);
        q.header_expires = Some(3600);
        assert!(r.register(&q, 1300).expect("unregister").is_empty());
        assert_eq!((r.aor_count(), r.binding_count()), (0, 0));
    }

    #[test]
    fn different_uri_is_a_new_binding() {
        let mut r = Registrar::new(limits());
        let cs =
            [contact("sip:alice@10.0.0.1:5061"), contact("sip:Alice@10.0.0.1:5061"), contact("sip:alice@10.0.0.1")];
        assert_eq!(r.register(&req(A, &cs, "c", 1), 0).expect("ok").len(), 3);
        // At the limit, a new contact displaces the binding closest to expiry.
        let cs = [contact("sip:alice@10.0.0.1:5061;transport=tcp")];
        let after = r.register(&req(A, &cs, "c", 2), 0).expect("displaces");
        assert_eq!(after.len(), 3);
        assert!(after.iter().any(|b| b.contact == "sip:alice@10.0.0.1:5061;transport=tcp"));
        assert_eq!(r.binding_count(), 3);
        // A single request with more contacts than the limit is still refused.
        let many = [
            contact("sip:alice@10.0.0.2"),
            contact("sip:alice@10.0.0.3"),
            contact("sip:alice@10.0.0.4"),
            contact("sip:alice@10.0.0.5"),
        ];
        assert_eq!(r.register(&req(A, &many, "d", 1), 0), Err(RegError::TooManyBindings));
    }

    #[test]
    fn default_and_max_expires() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:a@h")];
        assert_eq!(r.register(&req(A, &cs, "c", 1), 10).expect("ok")[0].expires_at, 3610);
        let mut q = req(A, &cs, "c", 2);
        q.header_expires = Some(100_000);
        assert_eq!(r.register(&q, 10).expect("ok")[0].expires_at, 7210);
    }

    #[test]
    fn interval_too_brief_is_atomic() {
        let mut r = Registrar::new(limits());
        let mut short = contact("sip:b@h");
        short.expires = Some(30);
        let cs = [contact("sip:a@h"), short];
        assert_eq!(r.register(&req(A, &cs, "c", 1), 0), Err(RegError::IntervalTooBrief { min: 60 }));
        assert_eq!(r.binding_count(), 0);
        // zero is never "too brief"
        let mut z = contact("sip:a@h");
        z.expires = Some(0);
        let cs = [z];
        assert_eq!(r.register(&req(A, &cs, "c", 2), 0), Ok(vec![]));
    }

    #[test]
    fn star() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:a@h"), contact("sip:b@h")];
        r.register(&req(A, &cs, "c", 5), 0).expect("ok");
        let other = [contact("sip:x@h")];
        let mut q = req(A, &other, "c", 6);
        q.star = true;
        q.header_expires = Some(0);
        assert_eq!(r.register(&q, 0), Err(RegError::StarWithOthers));
        let mut q = req(A, &[], "c", 6);
        q.star = true;
        q.header_expires = None;
        assert_eq!(r.register(&q, 0), Err(RegError::StarNeedsZeroExpires));
        q.header_expires = Some(3600);
        assert_eq!(r.register(&q, 0), Err(RegError::StarNeedsZeroExpires));
        // same Call-ID, CSeq not higher: out of order, nothing removed
        let mut q = req(A, &[], "c", 5);
        q.star = true;
        q.header_expires = Some(0);
        assert_eq!(r.register(&q, 0), Err(RegError::OutOfOrder));
        assert_eq!(r.binding_count(), 2);
        // another Call-ID may remove regardless of CSeq
        let mut q = req(A, &[], "d", 1);
        q.star = true;
        q.header_expires = Some(0);
        assert_eq!(r.register(&q, 0), Ok(vec![]));
        assert_eq!((r.aor_count(), r.binding_count()), (0, 0));
    }

    #[test]
    fn out_of_order() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:a@h")];
        r.register(&req(A, &cs, "c", 5), 0).expect("ok");
        assert_eq!(r.register(&req(A, &cs, "c", 5), 0), Err(RegError::OutOfOrder));
        assert_eq!(r.register(&req(A, &cs, "c", 4), 0), Err(RegError::OutOfOrder));
        // atomic: a new contact listed with the out-of-order one is not added either
        let cs2 = [contact("sip:new@h"), contact("sip:a@h")];
        assert_eq!(r.register(&req(A, &cs2, "c", 4), 0), Err(RegError::OutOfOrder));
        assert_eq!(r.binding_count(), 1);
        // a different Call-ID (UA restarted) may update with any CSeq
        assert_eq!(r.register(&req(A, &cs, "z", 1), 0).expect("ok")[0].call_id, "z");
        // the same contact twice in one request is not out of order with itself
        let twice = [contact("sip:a@h"), contact("sip:a@h")];
        assert_eq!(r.register(&req(A, &twice, "z", 2), 0).expect("ok").len(), 1);
    }

    #[test]
    fn instance_reg_id_replaces_flow() {
        let mut r = Registrar::new(limits());
        let inst = b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";
        let mut c = contact("sip:alice@192.0.2.1:40001;transport=tls;ob");
        c.params = b";expires=600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;q=0.5";
        c.instance = Some(inst);
        c.reg_id = Some(1);
        c.q = Some(b"0.5");
        c.expires = Some(600);
        let cs = [c];
        let mut q = req(A, &cs, "c1", 1);
        q.flow = Some(1);
        let p: [&[u8]; 1] = [b"<sip:edge1;lr>"];
        q.path = &p;
        let out = r.register(&q, 0).expect("ok");
        assert_eq!(
            out[0].contact_params,
            ";+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1"
        );
        assert_eq!(out[0].q.as_deref(), Some("0.5"));
        assert_eq!(out[0].reg_id, Some(1));
        assert_eq!(out[0].path, vec!["<sip:edge1;lr>".to_string()]);

        // UA reconnects: new port, new Call-ID, new flow, same instance (different case) and reg-id
        let lower = b"<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>";
        let mut c = contact("sip:alice@192.0.2.1:40999;transport=tls;ob");
        c.instance = Some(lower);
        c.reg_id = Some(1);
        let cs = [c];
        let mut q = req(A, &cs, "c2", 1);
        q.flow = Some(2);
        let out = r.register(&q, 10).expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].contact, "sip:alice@192.0.2.1:40999;transport=tls;ob");
        assert_eq!(out[0].flow, Some(2));
        assert!(out[0].path.is_empty());
        // the old flow no longer owns anything
        assert_eq!(r.remove_flow(1), 0);
        assert_eq!(r.binding_count(), 1);

        // another reg-id is another flow of the same instance
        let mut c = contact("sip:alice@192.0.2.1:41000;transport=tls;ob");
        c.instance = Some(inst);
        c.reg_id = Some(2);
        let cs = [c];
        let mut q = req(A, &cs, "c3", 1);
        q.flow = Some(3);
        assert_eq!(r.register(&q, 10).expect("ok").len(), 2);
        assert_eq!(r.remove_flow(2), 1);
        assert_eq!(r.lookup(A, 10).len(), 1);
        assert_eq!(r.remove_flow(3), 1);
        assert_eq!(r.aor_count(), 0);
    }

    #[test]
    fn expiry() {
        let mut r = Registrar::new(limits());
        let mut c1 = contact("sip:a@h");
        c1.expires = Some(60);
        let mut c2 = contact("sip:b@h");
        c2.expires = Some(120);
        let cs = [c1, c2];
        let mut q = req(A, &cs, "c", 1);
        q.flow = Some(9);
        r.register(&q, 0).expect("ok");
        assert_eq!(r.lookup(A, 59).len(), 2);
        assert_eq!(r.lookup(A, 60).len(), 1);
        assert_eq!(r.binding_count(), 1);
        let cs = [contact("sip:c@h")];
        r.register(&req("bob@example.com", &cs, "b", 1), 0).expect("ok");
        assert_eq!(r.expire(119), 0);
        assert_eq!(r.expire(120), 1);
        assert_eq!(r.aor_count(), 1);
        assert!(r.lookup(A, 120).is_empty());
        // the flow index was cleaned with the expired binding
        assert_eq!(r.remove_flow(9), 0);
        assert_eq!(r.expire(3600), 1);
        assert_eq!((r.aor_count(), r.binding_count()), (0, 0));
    }

    #[test]
    fn expired_bindings_do_not_count_or_block() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:a@h"), contact("sip:b@h"), contact("sip:c@h")];
        let mut q = req(A, &cs, "c", 9);
        q.header_expires = Some(60);
        r.register(&q, 0).expect("ok");
        // after expiry, same Call-ID with a lower CSeq is a fresh registration, and the count is free
        let cs = [contact("sip:a@h"), contact("sip:d@h")];
        assert_eq!(r.register(&req(A, &cs, "c", 1), 60).expect("ok").len(), 2);
    }

    #[test]
    fn full_table() {
        let mut r = Registrar::new(limits()); // aors_max 2
        let cs = [contact("sip:x@h")];
        let mut q = req("a@h", &cs, "c", 1);
        q.header_expires = Some(60);
        r.register(&q, 0).expect("ok");
        r.register(&req("b@h", &cs, "c", 1), 0).expect("ok");
        assert_eq!(r.register(&req("c@h", &cs, "c", 1), 0), Err(RegError::Full));
        // fetch-only and unregister of an unknown AOR do not need room
        assert_eq!(r.register(&req("c@h", &[], "c", 1), 0), Ok(vec![]));
        // existing AORs can still refresh
        assert!(r.register(&req("b@h", &cs, "c", 2), 0).is_ok());
        // once a@h expired, its room is reclaimed
        assert!(r.register(&req("c@h", &cs, "c", 1), 60).is_ok());
        assert_eq!(r.aor_count(), 2);
    }

    #[test]
    fn flow_index_tracks_refresh_on_new_flow() {
        let mut r = Registrar::new(limits());
        let cs = [contact("sip:a@h")];
        let mut q = req(A, &cs, "c", 1);
        q.flow = Some(1);
        r.register(&q, 0).expect("ok");
        let mut q = req(A, &cs, "c", 2);
        q.flow = Some(2);
        r.register(&q, 0).expect("ok");
        assert_eq!(r.remove_flow(1), 0);
        assert_eq!(r.remove_flow(2), 1);
        assert_eq!(r.remove_flow(2), 0);
    }

    #[test]
    fn uri_identity_rules() {
        let id = |u: &str| identity(u.as_bytes(), None, None);
        assert!(id("sip:alice@EXAMPLE.com") == id("SIP:alice@example.COM"));
        assert!(id("<sip:alice@example.com>") == id("sip:alice@example.com"));
        assert!(id("sip:alice@example.com;ob") == id("sip:alice@example.com;lr"));
        assert!(id("sip:alice@example.com") != id("sip:ALICE@example.com"));
        assert!(id("sip:alice@example.com") != id("sip:alice@example.com:5060"));
        assert!(id("sip:alice@example.com") != id("sips:alice@example.com"));
        assert!(id("sip:a@[2001:db8::1]:5061") == id("sip:a@[2001:DB8::1]:5061"));
        assert!(id("sip:a@[2001:db8::1]:5061") != id("sip:a@[2001:db8::1]:5062"));
        assert!(id("sip:a@h;transport=tls") != id("sip:a@h;transport=tcp"));
        assert!(id("sip:a@h;transport=tls") != id("sip:a@h"));
        // malformed input never panics
        for junk in ["", ":", "@", "sip:", "<", "<>", "sip:@:", "sip:[", "sip:a@[::1", ";;;", "sip:a@h;=;transport"] {
            let _ = id(junk);
        }
        let _ = identity(&[0xff, 0xfe, b':', 0x80], None, None);
    }

    #[test]
    fn params_kept_for_echo() {
        assert_eq!(keep_params(b""), "");
        assert_eq!(keep_params(b";expires=3600"), "");
        assert_eq!(keep_params(b"expires=3600; Q=0.7 ;reg-id=1"), ";reg-id=1");
        assert_eq!(keep_params(b";+sip.instance=\"<urn:a;b>\";expires=1"), ";+sip.instance=\"<urn:a;b>\"");
        assert_eq!(keep_params(b";x=\"unterminated;expires=1"), ";x=\"unterminated;expires=1");
        assert_eq!(keep_params(b";x=\"a\\\"b;c\";y"), ";x=\"a\\\"b;c\";y");
    }
}
