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
