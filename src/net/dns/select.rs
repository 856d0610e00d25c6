//! RFC 2782 target selection, as pure logic: the SRV targets of one answer (each with the addresses its name
//! resolved to) ordered for connection attempts. Randomness is an input, so that tests are deterministic.

use std::net::SocketAddr;

/// One SRV target with the addresses of its name (or the single pseudo-target of an A/AAAA answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    /// The target's name as published (for logs and `partner list`).
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

/// The addresses to try, in order: lowest priority first; within one priority, targets drawn by weight (RFC 2782:
/// the zero-weight ones first in the list, then a running sum against a uniform draw in `0..=sum`), each target's
/// addresses in the order its A/AAAA answer gave them. `draw(n)` returns a number in `0..=n`. Duplicates are kept
/// once, at their first place.
pub fn order(targets: &[SrvTarget], mut draw: impl FnMut(u32) -> u32) -> Vec<SocketAddr> {
    let mut by_priority: Vec<&SrvTarget> = targets.iter().collect();
    by_priority.sort_by_key(|t| t.priority);
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut i = 0;
    while i < by_priority.len() {
        let p = by_priority.get(i).map_or(0, |t| t.priority);
        let end = by_priority.iter().skip(i).position(|t| t.priority != p).map_or(by_priority.len(), |n| i + n);
        let mut group: Vec<&SrvTarget> = by_priority.get(i..end).unwrap_or_default().to_vec();
        // RFC 2782: "arrange all SRV RRs (that have not been ordered yet) in any order, except that all those
        // with weight 0 are placed at the beginning of the list".
        group.sort_by_key(|t| t.weight != 0);
        while !group.is_empty() {
            let sum: u32 = group.iter().map(|t| u32::from(t.weight)).sum();
            let r = draw(sum).min(sum);
            let mut running = 0u32;
            let pick = group
                .iter()
                .position(|t| {
                    running += u32::from(t.weight);
                    running >= r
                })
                .unwrap_or(0);
            let t = group.remove(pick);
            for a in &t.addrs {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(priority: u16, weight: u16, port: u16) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            name: format!("t{port}.test"),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        }
    }

    fn ports(v: &[SocketAddr]) -> Vec<u16> {
        v.iter().map(|a| a.port()).collect()
    }

    #[test]
    fn lower_priority_first_whatever_the_weights() {
        let targets = [t(20, 100, 2), t(10, 0, 1), t(30, 5, 3)];
        assert_eq!(ports(&order(&targets, |n| n)), vec![1, 2, 3]);
        assert_eq!(ports(&order(&targets, |_| 0)), vec![1, 2, 3]);
    }

    #[test]
    fn weights_share_one_priority_by_draw() {
        let targets = [t(10, 60, 1), t(10, 40, 2)];
        // A draw up to 60 lands on the first target, above it on the second.
        assert_eq!(ports(&order(&targets, |_| 60)), vec![1, 2]);
        assert_eq!(ports(&order(&targets, |_| 61)), vec![2, 1]);
        // Zero-weight targets come first in the list, so a draw of 0 picks them; otherwise they come last.
        let with_zero = [t(10, 50, 1), t(10, 0, 9)];
        assert_eq!(ports(&order(&with_zero, |_| 0)), vec![9, 1]);
        assert_eq!(ports(&order(&with_zero, |n| n)), vec![1, 9]);
    }

    #[test]
    fn draws_follow_the_weights_over_many_runs() {
        let targets = [t(0, 3, 1), t(0, 1, 2)];
        let mut state = 0x2545_f491u32;
        let mut first = [0u32; 2];
        for _ in 0..4000 {
            let o = order(&targets, |n| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state % (n + 1)
            });
            first[usize::from(o.first().map_or(0, |a| a.port()) == 2)] += 1;
        }
        // 3:1 by weight (the draw includes 0, which favours the first a little).
        assert!((2800..3300).contains(&first[0]), "{first:?}");
    }

    #[test]
    fn every_address_once_and_an_empty_answer_is_empty() {
        let mut a = t(0, 1, 1);
        a.addrs.push(SocketAddr::from(([127, 0, 0, 2], 1)));
        let b = t(1, 1, 1);
        assert_eq!(order(&[a, b], |n| n).len(), 2);
        assert!(order(&[], |n| n).is_empty());
        // A draw out of range is clamped, not a panic.
        assert_eq!(ports(&order(&[t(0, 1, 1)], |_| u32::MAX)), vec![1]);
    }
}
