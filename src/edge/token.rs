//! Opaque routing tokens the edge hands out and alone can read: a Via branch toward the pool that says which user
//! connection a response returns to, a Via branch toward users that names a saved transaction, and a flow token
//! (in Path) that names a remote user's connection. Each carries a keyed MAC (SipHash-1-3, 64 bits, key random per
//! process), so a client cannot forge or alter one to reach another user's connection.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use crate::net::ConnId;

/// RFC 3261 magic cookie + our marker for branches toward the pool (`u`) and toward users (`d`).
const UP_PREFIX: &[u8] = b"z9hG4bKu";
const DOWN_PREFIX: &[u8] = b"z9hG4bKd";
const FLOW_PREFIX: &[u8] = b"f";

/// The process's token key.
#[derive(Clone, Copy)]
pub struct TokenKey([u8; 16]);

impl TokenKey {
    pub fn random() -> Result<TokenKey, String> {
        let mut k = [0u8; 16];
        getrandom::getrandom(&mut k).map_err(|e| format!("no randomness for token keys: {e}"))?;
        Ok(TokenKey(k))
    }

    /// A fixed key (tests and fuzzing).
    pub fn from_bytes(k: [u8; 16]) -> TokenKey {
        TokenKey(k)
    }

    fn mac(&self, domain: u8, v: u64) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.0);
        h.write_u8(domain);
        h.write_u64(v);
        h.finish()
    }
}

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
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Two 16-hex-digit fields after `prefix`, the second being the MAC of the first.
fn parse_macd(key: &TokenKey, domain: u8, prefix: &[u8], b: &[u8]) -> Option<u64> {
    let rest = b.strip_prefix(prefix)?;
    let v = parse_hex_u64(rest.get(..16)?)?;
    let mac = parse_hex_u64(rest.get(16..32)?)?;
    (key.mac(domain, v) == mac).then_some(v)
}

/// `z9hG4bKu<conn><salt>`: the salt (a hash of the user's branch) keeps branches unique per transaction. Only the
/// pool sees it, so it needs no MAC.
pub fn write_up_branch(out: &mut Vec<u8>, back: ConnId, salt: u64) {
    out.extend_from_slice(UP_PREFIX);
    hex_u64(back.to_u64(), out);
    hex_u64(salt, out);
}

pub fn parse_up_branch(branch: &[u8]) -> Option<ConnId> {
    parse_hex_u64(branch.strip_prefix(UP_PREFIX)?.get(..16)?).map(ConnId::from_u64)
}

/// `z9hG4bKd<id><mac>`: names a transaction saved on this edge (a user sees and echoes it).
pub fn write_down_branch(key: &TokenKey, out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(DOWN_PREFIX);
    hex_u64(id, out);
    hex_u64(key.mac(b'd', id), out);
}

pub fn parse_down_branch(key: &TokenKey, branch: &[u8]) -> Option<u64> {
    parse_macd(key, b'd', DOWN_PREFIX, branch)
}

pub fn is_down_branch(branch: &[u8]) -> bool {
    branch.starts_with(DOWN_PREFIX)
}

/// The user part of a Path or Record-Route URI naming a remote user's flow.
pub fn write_flow(key: &TokenKey, out: &mut Vec<u8>, flow: ConnId) {
    out.extend_from_slice(FLOW_PREFIX);
    hex_u64(flow.to_u64(), out);
    hex_u64(key.mac(b'f', flow.to_u64()), out);
}

pub fn parse_flow(key: &TokenKey, user: &[u8]) -> Option<ConnId> {
    parse_macd(key, b'f', FLOW_PREFIX, user).map(ConnId::from_u64)
}

/// `<sip:<flow token>@<host:port>;transport=tls;lr>`, for Path and Record-Route.
pub fn write_flow_uri(key: &TokenKey, out: &mut Vec<u8>, flow: ConnId, hostport: &str) {
    out.extend_from_slice(b"<sip:");
    write_flow(key, out, flow);
    out.push(b'@');
    out.extend_from_slice(hostport.as_bytes());
    out.extend_from_slice(b";transport=tls;lr>");
}

/// FNV-1a, for salts (not a secret).
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
    fn round_trips_and_refuses_tampering() {
        let key = TokenKey([7; 16]);
        let id = ConnId { core: 1, gen: 7, slot: 42 };
        let mut b = Vec::new();
        write_up_branch(&mut b, id, 99);
        assert_eq!(parse_up_branch(&b), Some(id));

        let mut f = Vec::new();
        write_flow(&key, &mut f, id);
        assert_eq!(parse_flow(&key, &f), Some(id));
        // Another slot with the old MAC: refused.
        let mut forged = f.clone();
        if let Some(c) = forged.get_mut(16) {
            *c = if *c == b'0' { b'1' } else { b'0' };
        }
        assert_eq!(parse_flow(&key, &forged), None);
        assert_eq!(parse_flow(&TokenKey([8; 16]), &f), None);

        let mut d = Vec::new();
        write_down_branch(&key, &mut d, 12345);
        assert_eq!(parse_down_branch(&key, &d), Some(12345));
        assert!(is_down_branch(&d));
        assert_eq!(parse_down_branch(&key, b"z9hG4bKd0000000000003039ffffffffffffffff"), None);
        assert_eq!(parse_up_branch(b"z9hG4bKabc"), None);
    }
}
