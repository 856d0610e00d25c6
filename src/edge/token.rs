//! The edge's routing tokens: a Via branch that says which connection a response goes back to, and a flow token
//! (in Path) that says which remote user's connection a request goes to. Both are decoded by the edge alone, so
//! the edge keeps no per-transaction state.

use crate::net::ConnId;

/// RFC 3261 magic cookie + our marker.
const BRANCH_PREFIX: &[u8] = b"z9hG4bKe";
const FLOW_PREFIX: &[u8] = b"f";

fn hex_u64(v: u64, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn parse_hex_u64(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// `z9hG4bKe<conn:16 hex><salt:16 hex>`: the salt (a hash of the previous hop's branch) keeps branches unique
/// per transaction while the same connection carries many.
pub fn write_branch(out: &mut Vec<u8>, back: ConnId, salt: u64) {
    out.extend_from_slice(BRANCH_PREFIX);
    hex_u64(back.to_u64(), out);
    hex_u64(salt, out);
}

pub fn parse_branch(branch: &[u8]) -> Option<ConnId> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    parse_hex_u64(rest.get(..16)?).map(ConnId::from_u64)
}

/// The user part of the Path URI naming a remote user's flow.
pub fn write_flow(out: &mut Vec<u8>, flow: ConnId) {
    out.extend_from_slice(FLOW_PREFIX);
    hex_u64(flow.to_u64(), out);
}

pub fn parse_flow(user: &[u8]) -> Option<ConnId> {
    parse_hex_u64(user.strip_prefix(FLOW_PREFIX)?).map(ConnId::from_u64)
}

/// FNV-1a, for salts.
pub fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = ConnId { core: 1, gen: 7, slot: 42 };
        let mut b = Vec::new();
        write_branch(&mut b, id, 99);
        assert_eq!(parse_branch(&b), Some(id));
        let mut f = Vec::new();
        write_flow(&mut f, id);
        assert_eq!(parse_flow(&f), Some(id));
        assert_eq!(parse_branch(b"z9hG4bKabc"), None);
        assert_eq!(parse_flow(b"fzz"), None);
    }
}
