//! REGISTER after authentication (RFC 3261 §10.3): parse the Contacts and Path, apply them to this core's
//! binding table, answer with every current binding of the AOR.

use super::registrar::{ContactReq, RegError, RegisterReq};
use super::users::UserRec;
use super::PoolCore;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Contact, HeaderName, Message};

impl PoolCore {
    pub(crate) fn register(&mut self, origin: ConnId, msg: &Message, user: &UserRec) {
        let mut contacts = Vec::new();
        let mut star = false;
        for c in msg.contacts() {
            match c {
                Ok(Contact::Star) => star = true,
                Ok(c @ Contact::Addr(na)) => contacts.push(ContactReq {
                    uri: na.uri_raw,
                    params: na.params,
                    expires: c.expires(),
                    instance: na.param(b"+sip.instance").flatten(),
                    reg_id: na.param(b"reg-id").flatten().and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
                    q: na.param(b"q").flatten(),
                }),
                Err(_) => {
                    bump(&self.pstats.register_refused_bad_contact);
                    self.reply(origin, msg, 400, "Bad Request: unparsable Contact", &[]);
                    return;
                }
            }
        }
        let path: Vec<&[u8]> = msg.values(HeaderName::Path).collect();
        let req = RegisterReq {
            aor: &user.aor,
            contacts: &contacts,
            star,
            header_expires: msg.expires(),
            call_id: msg.call_id(),
            cseq: msg.cseq().seq,
            path: &path,
            // The edge's flow, named by the Path it added: when it reports the flow closed, these bindings go.
            flow: path.first().map(|p| super::flow_key(p)),
        };
        let now = self.now.secs;
        let result = self.registrar.register(&req, now);
        if let Err(e) = &result {
            let s = &self.pstats;
            bump(match e {
                RegError::IntervalTooBrief { .. } => &s.register_refused_interval,
                RegError::StarWithOthers | RegError::StarNeedsZeroExpires => &s.register_refused_bad_contact,
                RegError::OutOfOrder => &s.register_refused_out_of_order,
                RegError::TooManyBindings => &s.register_refused_devices,
                RegError::Full => &s.register_refused_full,
            });
        }
        match result {
            Ok(bindings) => {
                bump(&self.pstats.registrations);
                let lines: Vec<String> = bindings
                    .iter()
                    .map(|b| {
                        let q = b.q.as_ref().map(|q| format!(";q={q}")).unwrap_or_default();
                        format!("<{}>{}{};expires={}", b.contact, b.contact_params, q, b.expires_at.saturating_sub(now))
                    })
                    .collect();
                let extra: Vec<(HeaderName, &[u8])> =
                    lines.iter().map(|l| (HeaderName::Contact, l.as_bytes())).collect();
                tracing::debug!(aor = %user.aor, bindings = bindings.len(), "registered");
                self.reply(origin, msg, 200, "OK", &extra);
            }
            Err(RegError::IntervalTooBrief { min }) => {
                let min = min.to_string();
                self.reply(origin, msg, 423, "Interval Too Brief", &[(HeaderName::MinExpires, min.as_bytes())]);
            }
            Err(RegError::StarWithOthers) => {
                self.reply(origin, msg, 400, "Bad Request: Contact * with other contacts", &[])
            }
            Err(RegError::StarNeedsZeroExpires) => {
                self.reply(origin, msg, 400, "Bad Request: Contact * needs Expires: 0", &[])
            }
            Err(RegError::OutOfOrder) => self.reply(origin, msg, 400, "Bad Request: REGISTER out of order (CSeq)", &[]),
            Err(RegError::TooManyBindings) => {
                self.reply(origin, msg, 403, "Forbidden: too many registered devices", &[])
            }
            Err(RegError::Full) => self.reply(origin, msg, 503, "Service Unavailable: registrar full", &[]),
        }
    }
}
