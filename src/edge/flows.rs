//! What the edge knows about each remote user's flow on this core: which AORs it has registered (and so may
//! speak for), and how many of its requests are in flight. Removed when the connection closes.

use std::collections::HashMap;

use crate::net::ConnId;

/// Most AORs one connection may register (a client registers one or a few identities).
const AORS_PER_FLOW_MAX: usize = 8;

#[derive(Default)]
pub struct Flow {
    aors: Vec<String>,
    pub in_flight: u32,
    /// This user's message budget, once registered (see `guard::Guard::admit_user_message`).
    pub bucket: Option<super::guard::Bucket>,
}

impl Flow {
    pub fn is_authenticated(&self) -> bool {
        !self.aors.is_empty()
    }
    /// Whether `uri` names one of this flow's identities, as `speaks_for(&aor_of(uri))` but without building the
    /// AOR string for the common case (checked on every request of a registered flow).
    pub fn speaks_for_uri(&self, uri: &crate::sip::Uri<'_>) -> bool {
        let user = uri.user.unwrap_or(b"");
        if user.is_empty() || user.contains(&b'%') || std::str::from_utf8(user).is_err() {
            return self.speaks_for(&crate::proto::aor_of(uri));
        }
        self.aors.iter().any(|a| {
            a.split_once('@').is_some_and(|(u, h)| u.as_bytes() == user && h.as_bytes().eq_ignore_ascii_case(uri.host))
        })
    }

    pub fn speaks_for(&self, aor: &str) -> bool {
        self.aors.iter().any(|a| a == aor)
    }
}

#[derive(Default)]
pub struct Flows {
    map: HashMap<ConnId, Flow>,
}

impl Flows {
    pub fn get(&self, id: ConnId) -> Option<&Flow> {
        self.map.get(&id)
    }
    /// The flow, if it has registered.
    pub fn get_mut_registered(&mut self, id: ConnId) -> Option<&mut Flow> {
        self.map.get_mut(&id).filter(|f| f.is_authenticated())
    }
    pub fn get_mut(&mut self, id: ConnId) -> &mut Flow {
        self.map.entry(id).or_default()
    }
    /// The registrar accepted a REGISTER for `aor` on this flow (`bound`: it still has bindings).
    pub fn registered(&mut self, id: ConnId, aor: String, bound: bool) {
        let f = self.map.entry(id).or_default();
        f.aors.retain(|a| *a != aor);
        if bound && f.aors.len() < AORS_PER_FLOW_MAX {
            f.aors.push(aor);
        }
    }
    /// Forgets the flow; returns the AORs it had registered.
    pub fn remove(&mut self, id: ConnId) -> Vec<String> {
        self.map.remove(&id).map(|f| f.aors).unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn in_flight(&self) -> usize {
        self.map.values().map(|f| f.in_flight as usize).sum()
    }
    pub fn authenticated(&self) -> usize {
        self.map.values().filter(|f| f.is_authenticated()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Uri;

    #[test]
    fn speaks_for_uri_agrees_with_the_aor_key() {
        let mut flows = Flows::default();
        let id = ConnId { core: 0, gen: 0, slot: 0 };
        flows.registered(id, crate::proto::aor_of(&Uri::parse(b"sip:alice@Example.COM").expect("uri")), true);
        flows.registered(id, crate::proto::aor_of(&Uri::parse(b"sip:b%6Fb@example.com").expect("uri")), true);
        let f = flows.get(id).expect("flow");
        for (uri, expect) in [
            ("sip:alice@example.com", true),
            ("sip:alice@EXAMPLE.com;transport=tls", true),
            ("sip:Alice@example.com", false),
            ("sip:bob@example.com", true),
            ("sip:b%6fb@example.com", true),
            ("sip:carol@example.com", false),
            ("sip:alice@example.org", false),
        ] {
            let u = Uri::parse(uri.as_bytes()).expect("uri");
            assert_eq!(f.speaks_for_uri(&u), expect, "{uri}");
            assert_eq!(f.speaks_for_uri(&u), f.speaks_for(&crate::proto::aor_of(&u)), "{uri}");
        }
    }
}
