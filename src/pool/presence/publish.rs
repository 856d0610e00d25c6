//! PUBLISH for `Event: presence` (RFC 3903) on the core owning the presentity: a user publishes only their own
//! state (Request-URI = the authenticated From), the PIDF body is checked and stored as received, and a change
//! of the composed state is notified to every watcher.

use bytes::Bytes;

use super::pidf;
use super::publications::PubError;
use super::PIDF;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::pool::{aor_of, PoolCore};
use crate::sip::{HeaderName, Message};

impl PoolCore {
    pub(crate) fn publish(&mut self, origin: ConnId, msg: &Message) {
        if super::event_of(msg).is_none_or(|(p, _)| p != "presence") {
            bump(&self.pstats.bad_event);
            self.reply(origin, msg, 489, "Bad Event", &[(HeaderName::AllowEvents, b"presence")]);
            return;
        }
        let Some(ruri) = msg.request_uri_parsed() else {
            self.reply(origin, msg, 416, "Unsupported URI Scheme", &[]);
            return;
        };
        let aor = aor_of(&ruri);
        if aor != aor_of(&msg.from().uri) {
            bump(&self.pstats.publish_refused);
            self.reply(origin, msg, 403, "Forbidden: publish your own presence only", &[]);
            return;
        }
        let body = msg.body();
        let parsed = if body.is_empty() {
            None
        } else {
            let ct = msg.content_type().map(|c| String::from_utf8_lossy(c).to_string()).unwrap_or_default();
            let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if media != PIDF {
                bump(&self.pstats.publish_refused);
                self.reply(origin, msg, 415, "Unsupported Media Type", &[(HeaderName::Accept, PIDF.as_bytes())]);
                return;
            }
            match pidf::summarize(body) {
                Ok(s) => Some((Bytes::copy_from_slice(body), media, s)),
                Err(e) => {
                    bump(&self.pstats.pidf_malformed);
                    tracing::info!(%aor, error = ?e, "PUBLISH with a malformed PIDF document: refused");
                    self.reply(origin, msg, 400, "Bad Request: malformed PIDF document", &[]);
                    return;
                }
            }
        };
        let if_match = msg.header(HeaderName::SipIfMatch).map(|v| String::from_utf8_lossy(v).trim().to_string());
        let result = self.presence.pubs.publish(&aor, if_match.as_deref(), msg.expires(), parsed, self.now.secs);
        match result {
            Ok(ok) => {
                bump(&self.pstats.publications);
                let expires = ok.expires.to_string();
                let mut extra: Vec<(HeaderName, &[u8])> = vec![(HeaderName::Expires, expires.as_bytes())];
                if let Some(tag) = &ok.etag {
                    extra.push((HeaderName::SipETag, tag.as_bytes()));
                }
                self.reply(origin, msg, 200, "OK", &extra);
                self.persist_publications(&aor);
                if ok.changed {
                    self.presence_changed(&aor);
                }
            }
            Err(PubError::IntervalTooBrief { min }) => {
                let min = min.to_string();
                self.reply(origin, msg, 423, "Interval Too Brief", &[(HeaderName::MinExpires, min.as_bytes())]);
            }
            Err(PubError::NoSuchTag) => {
                bump(&self.pstats.etag_mismatches);
                self.reply(origin, msg, 412, "Conditional Request Failed", &[]);
            }
            Err(PubError::NeedsBody) => {
                self.reply(origin, msg, 400, "Bad Request: an initial PUBLISH needs a PIDF body", &[])
            }
            Err(PubError::TooMany) => {
                bump(&self.pstats.publish_refused);
                self.reply(
                    origin,
                    msg,
                    503,
                    "Service Unavailable: too many publications",
                    &[(HeaderName::RetryAfter, b"60")],
                );
            }
        }
    }
}
