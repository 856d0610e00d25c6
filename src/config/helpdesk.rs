//! `[[helpdesk]]`: presence-aware help desks built into the pool. A MESSAGE to a desk's address goes to one of
//! its members who is available, round robin; the sender's later messages stay with that member for `stick_s`
//! after the last one; when nobody is available the sender gets `auto_reply` From the desk's address. Re-read
//! with the routing rules when the config file changes (`crate::pool::apps::reload`).
//!
//! ```toml
//! [[helpdesk]]
//! address = "sip:helpdesk@example.com"   # a free address of our domain (no account needed)
//! members = ["sip:bob@example.com", "sip:carol@example.com"]   # our users, in round-robin order
//! stick_s = 600                          # a conversation stays with its member this long after its last message
//! auto_reply = "Nobody is available right now; please try again later."
//! unpublished = "available"              # a registered member who never published: "available" or "unavailable"
//! conversations_max = 10000              # conversations remembered (the oldest forgotten first)
//! ```

use serde::Deserialize;

use super::routing::AddrMatch;
use super::{invalid, ConfigError};

/// Desks one config may hold, members one desk may have (each new conversation asks every member's state).
pub const DESKS_MAX: usize = 100;
pub const MEMBERS_MAX: usize = 100;
/// Bounds of `stick_s` and `conversations_max`.
pub const STICK_MAX_S: u64 = 7 * 24 * 3600;
pub const CONVERSATIONS_MAX: usize = 1_000_000;

pub const DEFAULT_STICK_S: u64 = 600;
pub const DEFAULT_CONVERSATIONS: usize = 10_000;
pub const DEFAULT_AUTO_REPLY: &str = "Nobody is available right now; please try again later.";

/// One help desk, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desk {
    /// AOR key (`helpdesk@example.com`).
    pub address: String,
    /// AOR keys, in round-robin order.
    pub members: Vec<String>,
    pub stick_s: u64,
    pub auto_reply: String,
    /// Whether a registered member with no live publication counts as available.
    pub unpublished_available: bool,
    pub conversations_max: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDesk {
    address: Option<String>,
    members: Option<Vec<String>>,
    stick_s: Option<u64>,
    auto_reply: Option<String>,
    unpublished: Option<String>,
    conversations_max: Option<usize>,
}

/// `sip:Bob@Example.com` -> `Bob@example.com` (the pool's AOR key), only for `domain`.
fn local_aor(s: &str, domain: &str) -> Result<String, String> {
    match AddrMatch::parse(s) {
        Some(AddrMatch::Exact(aor)) if aor.rsplit_once('@').is_some_and(|(_, d)| d == domain) => Ok(aor),
        Some(AddrMatch::Exact(_)) => Err(format!("{s:?}: not an address of our domain {domain}")),
        _ => Err(format!("{s:?}: expected sip:user@{domain}")),
    }
}

fn desk(i: usize, r: RawDesk, domain: &str) -> Result<Desk, ConfigError> {
    let label = r.address.clone().unwrap_or_else(|| "no address".into());
    let key = |k: &str| format!("[[helpdesk]] {i} ({label}) {k}");
    let raw_address = r.address.as_deref().ok_or_else(|| invalid(key("address"), "missing"))?;
    let address = local_aor(raw_address, domain).map_err(|e| invalid(key("address"), e))?;
    // The pool's search service (`pool::directory::SERVICE`) answers there first.
    if address.starts_with("directory@") {
        return Err(invalid(key("address"), "the directory service's address"));
    }
    let raw_members = r.members.unwrap_or_default();
    if raw_members.is_empty() || raw_members.len() > MEMBERS_MAX {
        return Err(invalid(key("members"), format!("{} members; 1 to {MEMBERS_MAX}", raw_members.len())));
    }
    let mut members: Vec<String> = Vec::with_capacity(raw_members.len());
    for (j, m) in raw_members.iter().enumerate() {
        let aor = local_aor(m, domain).map_err(|e| invalid(key(&format!("members.{j}")), e))?;
        if aor == address {
            return Err(invalid(key(&format!("members.{j}")), "the desk's own address"));
        }
        if members.contains(&aor) {
            return Err(invalid(key(&format!("members.{j}")), format!("{m:?} listed twice")));
        }
        members.push(aor);
    }
    let stick_s = r.stick_s.unwrap_or(DEFAULT_STICK_S);
    if stick_s > STICK_MAX_S {
        return Err(invalid(key("stick_s"), format!("{stick_s}: at most {STICK_MAX_S} (a week)")));
    }
    let auto_reply = r.auto_reply.unwrap_or_else(|| DEFAULT_AUTO_REPLY.into());
    if auto_reply.trim().is_empty() {
        return Err(invalid(key("auto_reply"), "empty: the sender would get a blank message"));
    }
    let unpublished_available = match r.unpublished.as_deref().map(str::trim) {
        None | Some("available") => true,
        Some("unavailable") => false,
        Some(o) => return Err(invalid(key("unpublished"), format!("{o:?}: available or unavailable"))),
    };
    let conversations_max = r.conversations_max.unwrap_or(DEFAULT_CONVERSATIONS);
    if !(1..=CONVERSATIONS_MAX).contains(&conversations_max) {
        return Err(invalid(key("conversations_max"), format!("{conversations_max}: 1 to {CONVERSATIONS_MAX}")));
    }
    Ok(Desk { address, members, stick_s, auto_reply, unpublished_available, conversations_max })
}

pub(super) fn build(raws: Vec<RawDesk>, domain: &str) -> Result<Vec<Desk>, ConfigError> {
    if raws.len() > DESKS_MAX {
        return Err(invalid("[[helpdesk]]", format!("{} desks; at most {DESKS_MAX}", raws.len())));
    }
    let desks = raws.into_iter().enumerate().map(|(i, r)| desk(i, r, domain)).collect::<Result<Vec<_>, _>>()?;
    for (i, d) in desks.iter().enumerate() {
        if desks[..i].iter().any(|o| o.address == d.address) {
            return Err(invalid(format!("[[helpdesk]] {i} address"), format!("{:?} used twice", d.address)));
        }
    }
    Ok(desks)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<Desk>, String> {
        #[derive(Deserialize)]
        struct Top {
            helpdesk: Vec<RawDesk>,
        }
        let top: Top = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        build(top.helpdesk, "example.com").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_normalised_addresses() {
        let d = parse(
            "[[helpdesk]]\naddress = \"sip:HelpDesk@Example.com\"\nmembers = [\"sip:bob@example.com\", \"carol@EXAMPLE.com\"]\n",
        )
        .unwrap();
        assert_eq!(d[0].address, "HelpDesk@example.com");
        assert_eq!(d[0].members, vec!["bob@example.com", "carol@example.com"]);
        assert_eq!(d[0].stick_s, DEFAULT_STICK_S);
        assert_eq!(d[0].auto_reply, DEFAULT_AUTO_REPLY);
        assert!(d[0].unpublished_available);
        assert_eq!(d[0].conversations_max, DEFAULT_CONVERSATIONS);
    }

    #[test]
    fn errors_name_the_key() {
        let e = |body: &str| parse(&format!("[[helpdesk]]\naddress = \"sip:desk@example.com\"\n{body}")).unwrap_err();
        assert!(e("").contains("(sip:desk@example.com) members: 0 members"), "{}", e(""));
        let x = e("members = [\"sip:bob@partner.test\"]");
        assert!(x.contains("members.0") && x.contains("not an address of our domain"), "{x}");
        let x = e("members = [\"sip:bob@example.com\", \"sip:bob@example.com\"]");
        assert!(x.contains("members.1") && x.contains("twice"), "{x}");
        let x = e("members = [\"sip:desk@example.com\"]");
        assert!(x.contains("members.0") && x.contains("own address"), "{x}");
        let x = e("members = [\"sip:bob@example.com\"]\nunpublished = \"maybe\"");
        assert!(x.contains("unpublished") && x.contains("available or unavailable"), "{x}");
        let x = e("members = [\"sip:bob@example.com\"]\nstick_s = 99999999");
        assert!(x.contains("stick_s"), "{x}");
        let x = e("members = [\"sip:bob@example.com\"]\nauto_reply = \"  \"");
        assert!(x.contains("auto_reply"), "{x}");
        let x = e("members = [\"sip:bob@example.com\"]\nconversations_max = 0");
        assert!(x.contains("conversations_max"), "{x}");
        let x = parse("[[helpdesk]]\nmembers = [\"sip:bob@example.com\"]").unwrap_err();
        assert!(x.contains("(no address) address missing"), "{x}");
        let x = parse("[[helpdesk]]\naddress = \"sip:directory@example.com\"\nmembers = [\"sip:bob@example.com\"]")
            .unwrap_err();
        assert!(x.contains("directory"), "{x}");
        let two = "[[helpdesk]]\naddress = \"sip:d@example.com\"\nmembers = [\"sip:bob@example.com\"]\n";
        let x = parse(&format!("{two}{two}")).unwrap_err();
        assert!(x.contains("[[helpdesk]] 1 address") && x.contains("twice"), "{x}");
        assert!(parse("[[helpdesk]]\naddres = \"x\"").unwrap_err().contains("addres"));
    }
}
