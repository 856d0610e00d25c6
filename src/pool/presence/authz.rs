//! Allow/block changes reaching a running core: the store thread sends the full entry list after every change
//! (made through the store or by another process such as the `parapet policy` CLI); the core keeps the entries
//! of the users it owns, and every watcher of an owner whose entries changed gets a NOTIFY with what it may see
//! now (a newly blocked watcher: the closed document; a pending one that was allowed: the real state).

use super::policy::{rules_from_rows, Watch};
use super::subscriptions::SubState;
use crate::pool::PoolCore;
use crate::shard::shard_for;
use crate::store::PolicyRow;

impl PoolCore {
    pub(crate) fn policies_replaced(&mut self, rows: &[PolicyRow]) {
        let rules = rules_from_rows(rows);
        let (id, count) = (self.id, self.count);
        let changed = self.presence.policy.replace(&rules, |owner| shard_for(owner.as_bytes(), count) == id);
        if changed.is_empty() {
            return;
        }
        tracing::info!(core = id, owners = changed.len(), "allow/block entries changed");
        for owner in changed {
            self.reauthorize(&owner);
        }
    }

    /// Re-decides every subscription to `presentity` and tells each watcher what it may see now.
    fn reauthorize(&mut self, presentity: &str) {
        {
            let p = &mut self.presence;
            for id in p.subs.watchers_of(presentity) {
                let watcher = match p.subs.get(id) {
                    Some(s) => s.watcher.clone(),
                    None => continue,
                };
                let state = match p.policy.watch(presentity, &watcher) {
                    Watch::Pending => SubState::Pending,
                    Watch::Allow | Watch::Block => SubState::Active,
                };
                if let Some(s) = p.subs.get_mut(id) {
                    s.state = state;
                }
            }
        }
        self.presence_changed(presentity);
        self.watchers_changed(presentity);
    }
}
