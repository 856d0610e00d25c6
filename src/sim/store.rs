//! The store as the simulation models it: the [`Store`] contract in plain maps (what SQLite and PostgreSQL
//! both implement), fast enough for thousands of seeds. Its outages are the simulation's business.

use std::collections::BTreeMap;

use crate::store::archive::{ArchiveQuery, ArchiveRow};
use crate::store::{
    ContactRow, CredentialRow, DirectoryRow, DirectoryWrite, MemberRow, PolicyRow, StateRow, StateWrite, Store,
    StoreError,
};

#[derive(Default)]
pub struct MemStore {
    policies: BTreeMap<(String, String), PolicyRow>,
    contacts: BTreeMap<(String, String), ContactRow>,
    states: BTreeMap<(String, String), StateRow>,
    members: BTreeMap<String, MemberRow>,
    secrets: BTreeMap<String, Vec<u8>>,
    archive: Vec<ArchiveRow>,
    people: BTreeMap<String, DirectoryRow>,
    marks: BTreeMap<String, String>,
    credentials: BTreeMap<String, CredentialRow>,
    /// The hand-over fence: each user's latest claim (member, generation).
    owners: BTreeMap<String, (String, u64)>,
    /// Fenced writes refused (an old owner's, late).
    pub refused: u64,
}

impl Store for MemStore {
    fn policies(&mut self) -> Result<Vec<PolicyRow>, StoreError> {
        Ok(self.policies.values().cloned().collect())
    }
    fn put_policy(&mut self, row: &PolicyRow) -> Result<(), StoreError> {
        let key = (row.owner.clone(), row.target.clone());
        if row.presence.is_none() && row.im.is_none() {
            self.policies.remove(&key);
        } else {
            self.policies.insert(key, row.clone());
        }
        Ok(())
    }
    fn delete_policy(&mut self, owner: &str, target: &str) -> Result<bool, StoreError> {
        Ok(self.policies.remove(&(owner.to_string(), target.to_string())).is_some())
    }
    fn contacts(&mut self, owner: &str) -> Result<Vec<ContactRow>, StoreError> {
        Ok(self.contacts.values().filter(|c| c.owner == owner).cloned().collect())
    }
    fn put_contact(&mut self, row: &ContactRow) -> Result<(), StoreError> {
        self.contacts.insert((row.owner.clone(), row.uri.clone()), row.clone());
        Ok(())
    }
    fn delete_contact(&mut self, owner: &str, uri: &str) -> Result<bool, StoreError> {
        Ok(self.contacts.remove(&(owner.to_string(), uri.to_string())).is_some())
    }
    fn states(&mut self, now: u64) -> Result<Vec<StateRow>, StoreError> {
        self.states.retain(|_, r| r.expires_at > now);
        Ok(self.states.values().cloned().collect())
    }
    fn claim_user(&mut self, aor: &str, member: &str) -> Result<u64, StoreError> {
        let e = self.owners.entry(aor.to_string()).or_insert((member.to_string(), 0));
        e.0 = member.to_string();
        e.1 += 1;
        Ok(e.1)
    }
    fn write_states_fenced(&mut self, aor: &str, gen: u64, writes: &[StateWrite]) -> Result<bool, StoreError> {
        if self.owners.get(aor).map_or(0, |o| o.1) != gen {
            return Ok(false);
        }
        self.write_states(writes)?;
        Ok(true)
    }
    fn write_states(&mut self, writes: &[StateWrite]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                StateWrite::Put(r) => {
                    self.states.insert((r.kind.clone(), r.key.clone()), r.clone());
                }
                StateWrite::Delete { kind, key } => {
                    self.states.remove(&(kind.clone(), key.clone()));
                }
                StateWrite::Fenced { aor, gen, write } => {
                    if self.owners.get(aor).map_or(0, |o| o.1) == *gen {
                        self.write_states(std::slice::from_ref(write))?;
                    } else {
                        self.refused += 1;
                    }
                }
            }
        }
        Ok(())
    }
    fn states_of(&mut self, aor: &str, now: u64) -> Result<Vec<StateRow>, StoreError> {
        let prefix = format!("{aor} ");
        Ok(self
            .states
            .values()
            .filter(|r| r.expires_at > now && (r.key == aor || r.key.starts_with(&prefix)))
            .cloned()
            .collect())
    }
    fn renew_member(&mut self, row: &MemberRow) -> Result<(), StoreError> {
        let state = match self.members.get(&row.name) {
            _ if row.state == "gone" => "gone",
            Some(m) if m.state == "draining" => "draining",
            _ => "active",
        };
        self.members.insert(row.name.clone(), MemberRow { state: state.into(), ..row.clone() });
        Ok(())
    }
    fn members(&mut self) -> Result<Vec<MemberRow>, StoreError> {
        Ok(self.members.values().cloned().collect())
    }
    fn set_member_state(&mut self, name: &str, state: &str) -> Result<bool, StoreError> {
        match self.members.get_mut(name) {
            Some(m) => {
                m.state = state.to_string();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn shared_secret(&mut self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.secrets.entry(name.to_string()).or_insert_with(|| candidate.to_vec()).clone())
    }
    fn write_archive(&mut self, rows: &[ArchiveRow]) -> Result<(), StoreError> {
        for r in rows {
            let id = self.archive.last().map_or(1, |l| l.id + 1);
            self.archive.push(ArchiveRow { id, ..r.clone() });
        }
        Ok(())
    }
    fn search_archive(&mut self, q: &ArchiveQuery) -> Result<Vec<ArchiveRow>, StoreError> {
        let (since, until) = q.range();
        let party = |r: &ArchiveRow, u: &Option<String>| u.as_ref().is_none_or(|u| &r.sender == u || &r.recipient == u);
        Ok(self
            .archive
            .iter()
            .filter(|r| r.id > q.after_id && r.at_ms >= since && r.at_ms < until)
            .filter(|r| party(r, &q.user) && party(r, &q.peer))
            .filter(|r| q.text.as_ref().is_none_or(|t| r.body.contains(t.as_str())))
            .take(q.limit as usize)
            .cloned()
            .collect())
    }
    fn purge_archive(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        let n = self.archive.len();
        self.archive.retain(|r| r.at_ms >= before_ms);
        Ok((n - self.archive.len()) as u64)
    }

    fn directory_rows(&mut self) -> Result<Vec<DirectoryRow>, StoreError> {
        Ok(self.people.values().cloned().collect())
    }

    fn write_directory(&mut self, writes: &[DirectoryWrite], marks: &[(String, String)]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                DirectoryWrite::Put(p) => {
                    self.people.insert(p.alias.clone(), (**p).clone());
                }
                DirectoryWrite::Delete { alias } => {
                    self.people.remove(alias);
                }
            }
        }
        self.marks.extend(marks.iter().cloned());
        Ok(())
    }

    fn sync_marks(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.marks.iter().map(|(s, m)| (s.clone(), m.clone())).collect())
    }

    fn credentials(&mut self) -> Result<Vec<CredentialRow>, StoreError> {
        Ok(self.credentials.values().cloned().collect())
    }

    fn put_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        self.credentials.insert(row.alias.clone(), row.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model keeps the fence as SQLite and PostgreSQL do (`tests/e2e/store_conformance.rs`, `fence`).
    #[test]
    fn an_old_owners_late_write_is_refused_after_a_new_claim() {
        let mut s = MemStore::default();
        let row = |v: &[u8]| StateRow { kind: "reg".into(), key: "bob@x c1".into(), value: v.to_vec(), expires_at: 9 };
        assert!(s.write_states_fenced("bob@x", 0, &[]).unwrap_or(false), "never claimed: generation 0");
        let g1 = s.claim_user("bob@x", "fe1").unwrap_or(0);
        assert!(s.write_states_fenced("bob@x", g1, &[StateWrite::Put(row(b"old"))]).unwrap_or(false));
        let g2 = s.claim_user("bob@x", "fe2").unwrap_or(0);
        assert_eq!(g2, g1 + 1);
        assert!(!s.write_states_fenced("bob@x", g1, &[StateWrite::Put(row(b"stale"))]).unwrap_or(true));
        assert_eq!(s.states_of("bob@x", 0).unwrap_or_default(), vec![row(b"old")]);
    }
}
