//! Event state publication (RFC 3903) for the presentities owned by one core: one entry per published device
//! (entity-tag), initial / refresh / modify / remove, expiry and the bounds on it. Pure: no I/O, no clock
//! (`now` is an argument); the caller parses the PUBLISH and turns [`PubError`] into a response.
//!
//! Every successful PUBLISH gets a new entity-tag (RFC 3903 §4.1 step 8); a tag that no longer exists, or
//! belongs to another presentity, is a 412. Tags carry this core's id, a per-process salt and a counter, so a
//! tag from before a restart never matches by accident.

use std::collections::HashMap;

use bytes::Bytes;

use super::pidf::{self, Part, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubLimits {
    /// Non-zero expiries below this get 423 with Min-Expires.
    pub min_expires: u32,
    /// Longer requests are shortened to this.
    pub max_expires: u32,
    /// When the PUBLISH carries no Expires (pjsip sends none).
    pub default_expires: u32,
    /// Devices per presentity.
    pub per_presentity_max: usize,
    /// Publications held by one core.
    pub total_max: usize,
}

impl Default for PubLimits {
    fn default() -> Self {
        PubLimits {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            per_presentity_max: 16,
            total_max: 200_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Publication {
    pub etag: String,
    /// The document exactly as received.
    pub body: Bytes,
    pub content_type: String,
    pub summary: Summary,
    pub expires_at: u64,
    /// Order of the last change of the document (not of refreshes): a per-core sequence.
    pub changed: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PubError {
    /// 423 + Min-Expires.
    IntervalTooBrief { min: u32 },
    /// 412 Conditional Request Failed.
    NoSuchTag,
    /// 400: an initial publication without a body, or a removal without SIP-If-Match.
    NeedsBody,
    /// 503 (table full) or 403 (too many devices for one presentity).
    TooMany,
}

/// A successful PUBLISH: the new tag, the granted expiry, and whether watchers must hear about it.
#[derive(Debug, PartialEq, Eq)]
pub struct PubOk {
    pub etag: Option<String>,
    pub expires: u32,
    pub changed: bool,
}

pub struct Publications {
    by_aor: HashMap<String, Vec<Publication>>,
    limits: PubLimits,
    prefix: String,
    counter: u64,
    seq: u64,
    count: usize,
}

impl Publications {
    pub fn new(limits: PubLimits, core: usize, salt: u32) -> Publications {
        Publications {
            by_aor: HashMap::new(),
            limits,
            prefix: format!("{core:x}{salt:08x}"),
            counter: 0,
            seq: 0,
            count: 0,
        }
    }

    fn new_tag(&mut self) -> String {
        self.counter += 1;
        format!("{}{:x}", self.prefix, self.counter)
    }

    /// Applies one PUBLISH. `body` is the new document (already validated: its summary).
    pub fn publish(
        &mut self,
        aor: &str,
        if_match: Option<&str>,
        expires: Option<u32>,
        body: Option<(Bytes, String, Summary)>,
        now: u64,
    ) -> Result<PubOk, PubError> {
        let requested = expires.unwrap_or(self.limits.default_expires);
        if requested != 0 && requested < self.limits.min_expires {
            return Err(PubError::IntervalTooBrief { min: self.limits.min_expires });
        }
        let granted = requested.min(self.limits.max_expires);
        self.expire_aor(aor, now);
        match if_match {
            None => {
                let Some((body, content_type, summary)) = body else { return Err(PubError::NeedsBody) };
                if granted == 0 {
                    // A publication that expires at once: nothing to keep (RFC 3903 §4.1 allows it).
                    return Ok(PubOk { etag: None, expires: 0, changed: false });
                }
                let list_len = self.by_aor.get(aor).map_or(0, Vec::len);
                if list_len >= self.limits.per_presentity_max || self.count >= self.limits.total_max {
                    return Err(PubError::TooMany);
                }
                let etag = self.new_tag();
                self.seq += 1;
                let p = Publication {
                    etag: etag.clone(),
                    body,
                    content_type,
                    summary,
                    expires_at: now + u64::from(granted),
                    changed: self.seq,
                };
                self.by_aor.entry(aor.to_string()).or_default().push(p);
                self.count += 1;
                Ok(PubOk { etag: Some(etag), expires: granted, changed: true })
            }
            Some(tag) => {
                let list = self.by_aor.get_mut(aor).ok_or(PubError::NoSuchTag)?;
                let pos = list.iter().position(|p| p.etag == tag).ok_or(PubError::NoSuchTag)?;
                if granted == 0 {
                    list.remove(pos);
                    self.count -= 1;
                    if list.is_empty() {
                        self.by_aor.remove(aor);
                    }
                    return Ok(PubOk { etag: None, expires: 0, changed: true });
                }
                self.counter += 1;
                let etag = format!("{}{:x}", self.prefix, self.counter);
                self.seq += 1;
                let seq = self.seq;
                let Some(p) = list.get_mut(pos) else { return Err(PubError::NoSuchTag) };
                p.etag = etag.clone();
                p.expires_at = now + u64::from(granted);
                let changed = match body {
                    Some((body, content_type, summary)) => {
                        let changed = body != p.body;
                        p.body = body;
                        p.content_type = content_type;
                        p.summary = summary;
                        if changed {
                            p.changed = seq;
                        }
                        changed
                    }
                    None => false,
                };
                Ok(PubOk { etag: Some(etag), expires: granted, changed })
            }
        }
    }

    fn expire_aor(&mut self, aor: &str, now: u64) -> bool {
        let Some(list) = self.by_aor.get_mut(aor) else { return false };
        let before = list.len();
        list.retain(|p| p.expires_at > now);
        let gone = before - list.len();
        self.count -= gone;
        if list.is_empty() {
            self.by_aor.remove(aor);
        }
        gone > 0
    }

    /// Drops expired publications; returns the presentities whose state changed.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let due: Vec<String> =
            self.by_aor.iter().filter(|(_, l)| l.iter().any(|p| p.expires_at <= now)).map(|(k, _)| k.clone()).collect();
        for aor in &due {
            self.expire_aor(aor, now);
        }
        due
    }

    /// Puts back publications saved before a restart (live ones only, within the bounds).
    pub fn restore(&mut self, aor: &str, mut list: Vec<Publication>, now: u64) {
        list.retain(|p| p.expires_at > now);
        list.truncate(self.limits.per_presentity_max);
        if list.is_empty() || self.count + list.len() > self.limits.total_max || self.by_aor.contains_key(aor) {
            return;
        }
        self.seq = self.seq.max(list.iter().map(|p| p.changed).max().unwrap_or(0));
        self.count += list.len();
        self.by_aor.insert(aor.to_string(), list);
    }

    /// Drops an AOR's publications (another front end owns it now; they are in the store).
    pub fn forget(&mut self, aor: &str) {
        self.remove_aor(aor);
    }

    /// Drops every publication of an AOR (its user left the directory); whether there were any.
    pub fn remove_aor(&mut self, aor: &str) -> bool {
        match self.by_aor.remove(aor) {
            Some(list) => {
                self.count -= list.len();
                true
            }
            None => false,
        }
    }

    pub fn of(&self, aor: &str) -> &[Publication] {
        self.by_aor.get(aor).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The document watchers of `aor` get: one device's as received, several composed, or None (nothing
    /// published: the caller decides between a closed document and the registration state).
    pub fn document(&self, aor: &str, entity: &str) -> Option<(String, Bytes)> {
        match self.of(aor) {
            [] => None,
            [one] => Some((one.content_type.clone(), one.body.clone())),
            many => {
                let parts: Vec<Part<'_>> =
                    many.iter().map(|p| Part { summary: &p.summary, changed: p.changed }).collect();
                Some(("application/pidf+xml".to_string(), Bytes::from(pidf::compose(entity, &parts))))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn doc(note: &str, basic: &str) -> (Bytes, String, Summary) {
        let b = format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@x"><tuple id="t"><status><basic>{basic}</basic></status><note>{note}</note></tuple></presence>"#
        );
        let s = pidf::summarize(b.as_bytes()).unwrap();
        (Bytes::from(b), "application/pidf+xml".into(), s)
    }

    fn table() -> Publications {
        Publications::new(PubLimits::default(), 1, 0xabcd)
    }

    #[test]
    fn initial_refresh_modify_remove() {
        let mut t = table();
        let ok = t.publish("bob@x", None, None, Some(doc("hi", "open")), 100).unwrap();
        assert_eq!(ok.expires, 3600, "default expiry when the client sends none");
        assert!(ok.changed);
        let tag1 = ok.etag.unwrap();
        // Refresh: new tag, same document, no notification.
        let ok = t.publish("bob@x", Some(&tag1), Some(600), None, 200).unwrap();
        let tag2 = ok.etag.unwrap();
        assert_ne!(tag1, tag2);
        assert!(!ok.changed);
        assert_eq!(t.of("bob@x")[0].expires_at, 800);
        // The old tag is stale now.
        assert_eq!(t.publish("bob@x", Some(&tag1), Some(600), None, 200), Err(PubError::NoSuchTag));
        // Modify.
        let ok = t.publish("bob@x", Some(&tag2), Some(600), Some(doc("away", "open")), 300).unwrap();
        assert!(ok.changed);
        let tag3 = ok.etag.unwrap();
        assert_eq!(t.of("bob@x")[0].summary.note.as_deref(), Some("away"));
        // Another presentity's tag does not match.
        assert_eq!(t.publish("carol@x", Some(&tag3), None, None, 300), Err(PubError::NoSuchTag));
        // Remove.
        let ok = t.publish("bob@x", Some(&tag3), Some(0), None, 300).unwrap();
        assert_eq!(ok, PubOk { etag: None, expires: 0, changed: true });
        assert!(t.is_empty());
        assert!(t.document("bob@x", "sip:bob@x").is_none());
    }

    #[test]
    fn bounds() {
        let mut t = table();
        assert_eq!(
            t.publish("bob@x", None, Some(10), Some(doc("", "open")), 0),
            Err(PubError::IntervalTooBrief { min: 60 })
        );
        let ok = t.publish("bob@x", None, Some(999_999), Some(doc("", "open")), 0).unwrap();
        assert_eq!(ok.expires, 7200);
        assert_eq!(t.publish("bob@x", None, None, None, 0), Err(PubError::NeedsBody));
        let mut small = Publications::new(PubLimits { per_presentity_max: 1, ..PubLimits::default() }, 0, 0);
        small.publish("bob@x", None, None, Some(doc("", "open")), 0).unwrap();
        assert_eq!(small.publish("bob@x", None, None, Some(doc("", "open")), 0), Err(PubError::TooMany));
    }

    #[test]
    fn expiry_and_composition() {
        let mut t = table();
        t.publish("bob@x", None, Some(60), Some(doc("phone", "open")), 0).unwrap();
        t.publish("bob@x", None, Some(120), Some(doc("desk", "closed")), 0).unwrap();
        let (_, body) = t.document("bob@x", "sip:bob@x").unwrap();
        let s = pidf::summarize(&body).unwrap();
        assert_eq!(s.tuples.len(), 2, "each device's tuple kept");
        assert_eq!(s.rich, pidf::Rich::Available);
        assert_eq!(t.expire(59), Vec::<String>::new());
        assert_eq!(t.expire(60), vec!["bob@x".to_string()]);
        let (_, body) = t.document("bob@x", "sip:bob@x").unwrap();
        assert!(std::str::from_utf8(&body).unwrap().contains("desk"), "one device left: its document as received");
        t.expire(500);
        assert!(t.is_empty());
    }

    #[test]
    fn tags_are_unique_per_core_and_salt() {
        let mut a = Publications::new(PubLimits::default(), 0, 1);
        let mut b = Publications::new(PubLimits::default(), 0, 2);
        let ta = a.publish("u@x", None, None, Some(doc("", "open")), 0).unwrap().etag;
        let tb = b.publish("u@x", None, None, Some(doc("", "open")), 0).unwrap().etag;
        assert_ne!(ta, tb);
    }
}
