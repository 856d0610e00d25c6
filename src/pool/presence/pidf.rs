//! PIDF documents (RFC 3863) with RPID activities (RFC 4480) and the data model's person (RFC 4479): reading
//! a published document into a [`Summary`] (is it open, which rich state, which note, which tuples), and writing
//! the documents watchers get: one publication as received, several composed into one, or a closed document.
//!
//! Rich states and how "most available" ranks them (highest first): available (open, no activity) > busy
//! (busy, on-the-phone, meeting, appointment, presentation, performance) > be-right-back (meal, breakfast, lunch,
//! dinner, `other` "brb") > away (away, vacation, holiday, travel, in-transit, sleeping, ...) > do-not-disturb
//! (`other` "dnd"/"do-not-disturb", or a `do-not-disturb` element of an extension) > offline (every tuple
//! closed). RFC 4480 has no do-not-disturb activity, hence the `other` spellings.

use super::xml::{self, Doc, XmlError};

pub const PIDF_NS: &str = "urn:ietf:params:xml:ns:pidf";
pub const RPID_NS: &str = "urn:ietf:params:xml:ns:pidf:rpid";
pub const DM_NS: &str = "urn:ietf:params:xml:ns:pidf:data-model";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rich {
    Offline = 0,
    Dnd = 1,
    Away = 2,
    Brb = 3,
    Busy = 4,
    Available = 5,
}

impl Rich {
    pub fn as_str(self) -> &'static str {
        match self {
            Rich::Offline => "offline",
            Rich::Dnd => "dnd",
            Rich::Away => "away",
            Rich::Brb => "brb",
            Rich::Busy => "busy",
            Rich::Available => "available",
        }
    }

    /// The RPID activity element written for this state in a composed document (None: no activity).
    fn activity_xml(self) -> Option<&'static str> {
        match self {
            Rich::Offline | Rich::Available => None,
            Rich::Busy => Some("<rpid:busy/>"),
            Rich::Away => Some("<rpid:away/>"),
            Rich::Brb => Some("<rpid:other>brb</rpid:other>"),
            Rich::Dnd => Some("<rpid:busy/><rpid:other>do-not-disturb</rpid:other>"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfError {
    Xml(XmlError),
    /// The root is not `presence` in the PIDF namespace.
    NotPidf,
    /// RFC 3863 §4.1.2: `entity` is mandatory.
    NoEntity,
}

/// What a published document says, enough to compose and rank it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rich: Rich,
    /// The person's note, else the first tuple's note; raw (XML-escaped) as received.
    pub note: Option<String>,
    /// Each tuple verbatim, with the root's namespace declarations copied onto it so it stands alone.
    pub tuples: Vec<String>,
    /// Whether each tuple of `tuples` is open.
    pub tuple_open: Vec<bool>,
}

/// Reads a PIDF document. Unknown elements and namespaces are allowed (and ignored here).
pub fn summarize(body: &[u8]) -> Result<Summary, PidfError> {
    let doc = Doc::parse(body).map_err(PidfError::Xml)?;
    let root = doc.get(0).ok_or(PidfError::Xml(XmlError::NoRoot))?;
    if doc.local(root) != "presence" {
        return Err(PidfError::NotPidf);
    }
    let attrs = doc.attrs(root);
    let root_ns_attr = match doc.prefix(root) {
        Some(p) => format!("xmlns:{p}"),
        None => "xmlns".to_string(),
    };
    if !attrs.iter().any(|(n, v)| *n == root_ns_attr && *v == PIDF_NS) {
        return Err(PidfError::NotPidf);
    }
    if !attrs.iter().any(|(n, _)| *n == "entity") {
        return Err(PidfError::NoEntity);
    }
    let decls: Vec<(&str, &str)> =
        attrs.iter().filter(|(n, _)| *n == "xmlns" || n.starts_with("xmlns:")).copied().collect();
    let mut tuples = Vec::new();
    let mut tuple_open = Vec::new();
    let mut tuple_note = None;
    let mut person_note = None;
    let mut activity: Option<Rich> = None;
    for child in doc.children(root) {
        match doc.local(child) {
            "tuple" => {
                let mut open = false;
                for t in doc.children(child) {
                    match doc.local(t) {
                        "status" => {
                            for s in doc.children(t) {
                                if doc.local(s) == "basic" && doc.text(s).eq_ignore_ascii_case("open") {
                                    open = true;
                                }
                            }
                        }
                        "note" if tuple_note.is_none() && !doc.text(t).is_empty() => {
                            tuple_note = Some(doc.text(t).to_string())
                        }
                        _ => {}
                    }
                }
                tuples.push(standalone(&doc, child, &decls));
                tuple_open.push(open);
            }
            "person" => {
                for p in doc.children(child) {
                    match doc.local(p) {
                        "activities" => {
                            for a in doc.children(p) {
                                if let Some(r) = activity_rank(doc.local(a), &xml::unescape(doc.text(a))) {
                                    activity = Some(activity.map_or(r, |x: Rich| x.min(r)));
                                }
                            }
                        }
                        "note" if person_note.is_none() && !doc.text(p).is_empty() => {
                            person_note = Some(doc.text(p).to_string())
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let open = tuple_open.iter().any(|o| *o);
    let rich = if !open { Rich::Offline } else { activity.unwrap_or(Rich::Available) };
    Ok(Summary { rich, note: person_note.or(tuple_note), tuples, tuple_open })
}

/// The rich state an RPID activity (local name, and text for `other`) stands for; None for "no activity".
fn activity_rank(local: &str, text: &str) -> Option<Rich> {
    Some(match local {
        "busy" | "on-the-phone" | "meeting" | "appointment" | "presentation" | "performance" | "working" => Rich::Busy,
        "meal" | "breakfast" | "lunch" | "dinner" => Rich::Brb,
        "away" | "vacation" | "holiday" | "travel" | "in-transit" | "sleeping" | "permanent-absence" | "shopping"
        | "steering" | "looking-for-work" | "playing" | "spectator" | "tv" | "worship" => Rich::Away,
        "do-not-disturb" | "dnd" => Rich::Dnd,
        "other" => {
            let t = text.trim().to_ascii_lowercase();
            match t.as_str() {
                "dnd" | "do-not-disturb" | "do not disturb" => Rich::Dnd,
                "brb" | "be-right-back" | "be right back" => Rich::Brb,
                "away" => Rich::Away,
                "busy" => Rich::Busy,
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// A tuple's text with the root's namespace declarations added to its start tag (unless it redeclares them).
fn standalone(doc: &Doc<'_>, e: &xml::Element, decls: &[(&str, &str)]) -> String {
    let raw = doc.raw(e);
    let own = doc.attrs(e);
    let mut extra = String::new();
    for (n, v) in decls {
        if !own.iter().any(|(o, _)| o == n) {
            extra.push_str(&format!(" {n}=\"{v}\""));
        }
    }
    let name_end = e.name.end - e.span.start;
    let mut out = String::with_capacity(raw.len() + extra.len());
    out.push_str(raw.get(..name_end).unwrap_or(raw));
    out.push_str(&extra);
    out.push_str(raw.get(name_end..).unwrap_or(""));
    out
}

/// One device's contribution to a composition: its summary and when it last changed (seconds or a sequence).
pub struct Part<'a> {
    pub summary: &'a Summary,
    pub changed: u64,
}

/// The state watchers see: most available wins, the note of the most recent change.
pub fn aggregate(parts: &[Part<'_>]) -> (Rich, Option<String>) {
    let rich = parts.iter().map(|p| p.summary.rich).max().unwrap_or(Rich::Offline);
    let note = parts
        .iter()
        .filter(|p| p.summary.note.is_some())
        .max_by_key(|p| p.changed)
        .and_then(|p| p.summary.note.clone());
    (rich, note)
}

/// A document composed from several devices: every tuple (the winner's open tuples first, since some clients
/// read only the first tuple), then one person with the aggregate activity and note.
pub fn compose(entity: &str, parts: &[Part<'_>]) -> String {
    let (rich, note) = aggregate(parts);
    let mut order: Vec<&Part<'_>> = parts.iter().collect();
    // Most available first, then most recent.
    order.sort_by(|a, b| b.summary.rich.cmp(&a.summary.rich).then(b.changed.cmp(&a.changed)));
    let mut out = String::with_capacity(
        512 + parts.iter().map(|p| p.summary.tuples.iter().map(String::len).sum::<usize>()).sum::<usize>(),
    );
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<presence xmlns=\"{PIDF_NS}\" xmlns:dm=\"{DM_NS}\" xmlns:rpid=\"{RPID_NS}\" entity=\"{}\">\n",
        xml::escape(entity)
    ));
    for want_open in [true, false] {
        for p in &order {
            for (t, open) in p.summary.tuples.iter().zip(&p.summary.tuple_open) {
                if *open == want_open {
                    out.push_str(t);
                    out.push('\n');
                }
            }
        }
    }
    if parts.iter().all(|p| p.summary.tuples.is_empty()) {
        let basic = if rich == Rich::Offline { "closed" } else { "open" };
        out.push_str(&format!("<tuple id=\"composed\"><status><basic>{basic}</basic></status></tuple>\n"));
    }
    out.push_str("<dm:person id=\"composed\">");
    if let Some(a) = rich.activity_xml() {
        out.push_str("<rpid:activities>");
        out.push_str(a);
        out.push_str("</rpid:activities>");
    }
    if let Some(n) = &note {
        out.push_str("<dm:note>");
        out.push_str(n);
        out.push_str("</dm:note>");
    }
    out.push_str("</dm:person>\n</presence>\n");
    out
}

/// What a watcher gets when nothing is published, the presentity is gone, or the watcher may not know.
pub fn closed(entity: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"{PIDF_NS}\" entity=\"{}\">\n\
         <tuple id=\"offline\"><status><basic>closed</basic></status></tuple>\n</presence>\n",
        xml::escape(entity)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// What pjsip 2.15 publishes for "busy" with a note.
    const PJSIP_BUSY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence entity="sip:bob@example.com" xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid">
 <tuple id="a1"><status><basic>open</basic></status><timestamp>2026-01-01T00:00:00Z</timestamp><note>In a meeting</note></tuple>
 <dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities><dm:note>In a meeting</dm:note></dm:person>
</presence>"#;

    const LINPHONE_ONLINE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<pidf:presence xmlns:pidf="urn:ietf:params:xml:ns:pidf" xmlns:lp="urn:x-linphone:xml:ns:pidfonline" entity="sip:bob@example.com">
<pidf:tuple id="t2"><pidf:status><pidf:basic>open</pidf:basic></pidf:status><pidf:contact priority="0.8">sip:bob@10.0.0.2</pidf:contact><lp:online/></pidf:tuple>
</pidf:presence>"#;

    fn closed_doc() -> String {
        closed("sip:bob@example.com")
    }

    #[test]
    fn reads_pjsip_busy() {
        let s = summarize(PJSIP_BUSY.as_bytes()).unwrap();
        assert_eq!(s.rich, Rich::Busy);
        assert_eq!(s.note.as_deref(), Some("In a meeting"));
        assert_eq!(s.tuples.len(), 1);
        assert!(s.tuples[0].starts_with("<tuple xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm="));
    }

    #[test]
    fn reads_prefixed_root_and_unknown_namespaces() {
        let s = summarize(LINPHONE_ONLINE.as_bytes()).unwrap();
        assert_eq!(s.rich, Rich::Available);
        assert!(s.tuples[0].contains("xmlns:lp=\"urn:x-linphone:xml:ns:pidfonline\""), "{}", s.tuples[0]);
        assert!(s.tuples[0].contains("<lp:online/>"));
    }

    #[test]
    fn rich_states_from_activities() {
        let doc = |act: &str| {
            format!(
                r#"<presence xmlns="{PIDF_NS}" xmlns:rpid="{RPID_NS}" xmlns:dm="{DM_NS}" entity="sip:b@x"><tuple id="t"><status><basic>open</basic></status></tuple><dm:person id="p"><rpid:activities>{act}</rpid:activities></dm:person></presence>"#
            )
        };
        let rich = |act: &str| summarize(doc(act).as_bytes()).unwrap().rich;
        assert_eq!(rich(""), Rich::Available);
        assert_eq!(rich("<rpid:unknown/>"), Rich::Available);
        assert_eq!(rich("<rpid:on-the-phone/>"), Rich::Busy);
        assert_eq!(rich("<rpid:away/>"), Rich::Away);
        assert_eq!(rich("<rpid:meal/>"), Rich::Brb);
        assert_eq!(rich("<rpid:other>brb</rpid:other>"), Rich::Brb);
        assert_eq!(rich("<rpid:other>Do Not Disturb</rpid:other>"), Rich::Dnd);
        assert_eq!(summarize(closed_doc().as_bytes()).unwrap().rich, Rich::Offline);
    }

    #[test]
    fn refuses_non_pidf() {
        assert_eq!(summarize(b"<presence entity=\"x\"/>").unwrap_err(), PidfError::NotPidf);
        assert_eq!(summarize(b"<foo xmlns=\"urn:ietf:params:xml:ns:pidf\"/>").unwrap_err(), PidfError::NotPidf);
        assert_eq!(summarize(b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"/>").unwrap_err(), PidfError::NoEntity);
        assert!(matches!(summarize(b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\">"), Err(PidfError::Xml(_))));
    }

    #[test]
    fn most_available_wins_note_from_most_recent() {
        let busy = summarize(PJSIP_BUSY.as_bytes()).unwrap();
        let online = summarize(LINPHONE_ONLINE.as_bytes()).unwrap();
        let offline = summarize(closed_doc().as_bytes()).unwrap();
        let parts = [Part { summary: &busy, changed: 5 }, Part { summary: &online, changed: 3 }];
        let (rich, note) = aggregate(&parts);
        assert_eq!(rich, Rich::Available);
        assert_eq!(note.as_deref(), Some("In a meeting"), "the only note, from the most recent change");
        let parts = [Part { summary: &busy, changed: 1 }, Part { summary: &offline, changed: 9 }];
        assert_eq!(aggregate(&parts).0, Rich::Busy);
        assert_eq!(aggregate(&[]).0, Rich::Offline);
    }

    #[test]
    fn composition_keeps_every_tuple_winner_first_and_reparses() {
        let busy = summarize(PJSIP_BUSY.as_bytes()).unwrap();
        let online = summarize(LINPHONE_ONLINE.as_bytes()).unwrap();
        let doc = compose(
            "sip:bob@example.com",
            &[Part { summary: &busy, changed: 5 }, Part { summary: &online, changed: 3 }],
        );
        let again = summarize(doc.as_bytes()).unwrap();
        assert_eq!(again.tuples.len(), 2);
        assert!(again.tuples[0].contains("t2"), "the most available device's tuple comes first: {doc}");
        assert_eq!(again.rich, Rich::Available);
        assert_eq!(again.note.as_deref(), Some("In a meeting"));
        // Both devices busy/away: aggregate activity written into the person.
        let away_doc = PJSIP_BUSY.replace("<rpid:busy/>", "<rpid:away/>").replace("In a meeting", "Lunch");
        let away = summarize(away_doc.as_bytes()).unwrap();
        let doc =
            compose("sip:bob@example.com", &[Part { summary: &busy, changed: 1 }, Part { summary: &away, changed: 2 }]);
        let again = summarize(doc.as_bytes()).unwrap();
        assert_eq!(again.rich, Rich::Busy);
        assert_eq!(again.note.as_deref(), Some("Lunch"));
    }

    #[test]
    fn closed_document_reads_offline() {
        let s = summarize(closed_doc().as_bytes()).unwrap();
        assert_eq!(s.rich, Rich::Offline);
        assert_eq!(s.tuple_open, vec![false]);
    }
}
