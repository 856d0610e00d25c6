//! Top talkers: how many MESSAGEs each of our users sent (counted when the pool forks one to a recipient's
//! devices or hands it to federation; one to an offline or unknown user is not), for the report only. Never on /metrics: a label per
//! user would make an unbounded family. Bounded twice: a core's slot holds at most [`USERS_PER_SLOT_MAX`]
//! users per interval (later newcomers in that interval go uncounted), and the rollup thread keeps only the
//! [`TOP_N`] of each interval when it drains the slots ([`drain_top`]).
//!
//! One slot per pool core: a core only ever contends with the rollup thread, once an interval.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Users kept per interval (a minute) in the rollups.
pub const TOP_N: usize = 10;
const USERS_PER_SLOT_MAX: usize = 10_000;
const SLOTS: usize = 64;
/// The rollup metric of the per-user counts (label `user`).
pub const METRIC: &str = "parapet_pool_top_talker_messages";

type Counts = HashMap<String, u64>;

fn slots() -> &'static [Mutex<Counts>] {
    static S: OnceLock<Vec<Mutex<Counts>>> = OnceLock::new();
    S.get_or_init(|| (0..SLOTS).map(|_| Mutex::new(HashMap::new())).collect())
}

/// A MESSAGE sent by `user` (an AOR of ours), noted by pool core `core`.
pub fn note(core: usize, user: &str) {
    let Some(slot) = slots().get(core % SLOTS) else { return };
    note_in(&mut slot.lock().unwrap_or_else(|p| p.into_inner()), user);
}

fn note_in(m: &mut Counts, user: &str) {
    if let Some(c) = m.get_mut(user) {
        *c += 1;
    } else if m.len() < USERS_PER_SLOT_MAX {
        m.insert(user.to_string(), 1);
    }
}

/// Empties every slot; the `n` users with the most MESSAGEs since the last call, most first, named so they are
/// safe as a label value (anything but letters, digits and `@._+-` becomes `_`).
pub fn drain_top(n: usize) -> Vec<(String, u64)> {
    let mut all = Counts::new();
    for slot in slots() {
        let taken = std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
        for (u, c) in taken {
            *all.entry(u).or_default() += c;
        }
    }
    top(all, n)
}

fn top(all: Counts, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = all.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v.into_iter().map(|(u, c)| (label_safe(&u), c)).collect()
}

fn label_safe(user: &str) -> String {
    user.chars().map(|c| if c.is_ascii_alphanumeric() || "@._+-".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_ranked_and_label_safe() {
        let mut m = Counts::new();
        for (u, n) in [("a@x", 3), ("b@x", 5), ("c\"d,e@x", 1)] {
            for _ in 0..n {
                note_in(&mut m, u);
            }
        }
        assert_eq!(top(m.clone(), 2), vec![("b@x".to_string(), 5), ("a@x".to_string(), 3)]);
        assert_eq!(top(m, 3).last(), Some(&("c_d_e@x".to_string(), 1)));
        let mut full = Counts::new();
        for i in 0..USERS_PER_SLOT_MAX + 5 {
            note_in(&mut full, &format!("u{i}"));
        }
        note_in(&mut full, "u0");
        assert_eq!((full.len(), full.get("u0").copied()), (USERS_PER_SLOT_MAX, Some(2)));
    }
}
