//! What the edge knows about each remote user's flow on this core: which AORs it has registered, and which it
//! proved by answering the pool's digest challenge on a request (both it may speak for), and how many of its
//! requests are in flight.
//!
//! A flow entry exists only while its connection does: made by the first request the connection sends on
//! ([`Flows::open`]), removed when it closes ([`Flows::remove`]). Nothing else creates one: a response arriving
//! after the connection closed (a late REGISTER 2xx among them) finds no entry and adds nothing.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::net::ConnId;

/// Most AORs one connection may speak for, registered or proven (a client has one or a few identities).
const AORS_PER_FLOW_MAX: usize = 8;

pub struct Flow {
    /// The address of the user's connection (for the lockout after failed credentials).
    pub ip: IpAddr,
    aors: Vec<String>,
    /// Identities proven on a request rather than registered here (another account of a client sharing this
    /// connection, see `proto`): spoken for like `aors`, but no binding of the pool goes with them.
    proven: Vec<String>,
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
        self.aors.iter().chain(&self.proven).any(|a| {
            a.split_once('@').is_some_and(|(u, h)| u.as_bytes() == user && h.as_bytes().eq_ignore_ascii_case(uri.host))
        })
    }

    pub fn speaks_for(&self, aor: &str) -> bool {
        self.aors.iter().chain(&self.proven).any(|a| a == aor)
    }

    /// Whether the flow may take on one more identity.
    pub fn has_room(&self) -> bool {
        self.aors.len() + self.proven.len() < AORS_PER_FLOW_MAX
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
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Flow> {
        self.map.get_mut(&id)
    }
    /// The flow of a live connection from `ip`, made on its first request.
    pub fn open(&mut self, id: ConnId, ip: IpAddr) -> &mut Flow {
        self.map.entry(id).or_insert_with(|| Flow {
            ip,
            aors: Vec::new(),
            proven: Vec::new(),
            in_flight: 0,
            bucket: None,
        })
    }
    /// The registrar accepted a REGISTER for `aor` on this flow (`bound`: it still has bindings). Nothing when the
    /// flow is gone (its connection closed before the response came).
    pub fn registered(&mut self, id: ConnId, aor: String, bound: bool) {
        let Some(f) = self.map.get_mut(&id) else { return };
        f.aors.retain(|a| *a != aor);
        f.proven.retain(|a| *a != aor);
        if bound && f.has_room() {
            f.aors.push(aor);
        }
    }
    /// The pool authenticated a request From `aor` on this flow: the flow may speak for it from now on. Only a
    /// flow that has registered (and still exists: a late notice creates nothing), within its identity cap;
    /// false when not taken.
    pub fn proven(&mut self, id: ConnId, aor: String) -> bool {
        let Some(f) = self.get_mut_registered(id) else { return false };
        if f.speaks_for(&aor) {
            return true;
        }
        if !f.has_room() {
            return false;
        }
        f.proven.push(aor);
        true
    }
    /// Forgets the flow; returns the AORs it had registered (not those only proven: nothing to drop at the pool).
    pub fn remove(&mut self, id: ConnId) -> Vec<String> {
        self.map.remove(&id).map(|f| f.aors).unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// The connections that have a flow.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.map.keys().copied()
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
        flows.open(id, [192, 0, 2, 1].into());
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

    #[test]
    fn a_closed_flow_is_not_brought_back_by_a_late_response() {
        let mut flows = Flows::default();
        let id = ConnId { core: 0, gen: 3, slot: 9 };
        flows.registered(id, "alice@example.com".into(), true);
        assert!(flows.is_empty(), "no flow without a request from its connection");
        flows.open(id, [192, 0, 2, 1].into()).in_flight += 1;
        flows.registered(id, "alice@example.com".into(), true);
        assert_eq!(flows.remove(id), vec!["alice@example.com".to_string()]);
        // The connection closed; a late REGISTER 2xx and the response bookkeeping find nothing.
        flows.registered(id, "bob@example.com".into(), true);
        assert!(flows.get_mut(id).is_none());
        assert!(flows.is_empty());
        assert!(flows.remove(id).is_empty());
    }

    #[test]
    fn proven_identities_are_spoken_for_bounded_and_not_reported_closed() {
        let mut flows = Flows::default();
        let id = ConnId { core: 0, gen: 0, slot: 0 };
        let other = ConnId { core: 0, gen: 0, slot: 1 };
        // Nothing is proven on a flow that never registered, nor on one that is gone: no entry is created.
        assert!(!flows.proven(id, "bob@example.com".into()));
        assert!(flows.get(id).is_none());
        flows.open(id, [192, 0, 2, 1].into());
        assert!(!flows.proven(id, "bob@example.com".into()), "an unregistered flow proves nothing");
        flows.registered(id, "alice@example.com".into(), true);
        assert!(flows.proven(id, "bob@example.com".into()));
        let bob = Uri::parse(b"sip:bob@example.com").expect("uri");
        assert!(flows.get(id).is_some_and(|f| f.speaks_for_uri(&bob) && f.speaks_for("bob@example.com")));
        assert!(flows.get(other).is_none(), "another flow gained nothing");
        // The cap counts both kinds.
        for n in 0..10 {
            flows.proven(id, format!("user{n}@example.com"));
        }
        let f = flows.get(id).expect("flow");
        assert!(!f.has_room());
        assert!(f.speaks_for("user5@example.com") && !f.speaks_for("user6@example.com"));
        assert!(!flows.proven(id, "user9@example.com".into()));
        // Registering a proven identity moves it; unregistering alice leaves the flow unauthenticated.
        flows.registered(id, "bob@example.com".into(), true);
        flows.registered(id, "alice@example.com".into(), false);
        assert_eq!(flows.remove(id), vec!["bob@example.com".to_string()]);
    }
}
