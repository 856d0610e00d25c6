//! Watcher information (RFC 3857 event package `presence.winfo`, RFC 3858 document format): a presentity
//! subscribes to its own watcher list and sees who watches it and in which state, in particular the *pending*
//! watchers that wait for its decision (which it gives through its allow/block entries). Documents are always
//! full state; `version` counts per subscription.

use super::policy::Watch;
use super::xml;

pub const WINFO: &str = "application/watcherinfo+xml";
pub const WINFO_NS: &str = "urn:ietf:params:xml:ns:watcherinfo";

/// One watcher as the presentity sees it.
pub struct Entry<'a> {
    pub id: u32,
    /// The watcher's URI (`sip:carol@example.com`).
    pub uri: &'a str,
    pub decision: Watch,
}

/// The full-state document for `resource` (the presentity's URI).
pub fn document(resource: &str, version: u32, watchers: &[Entry<'_>]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<watcherinfo xmlns=\"{WINFO_NS}\" version=\"{version}\" \
         state=\"full\">\n<watcher-list resource=\"{}\" package=\"presence\">\n",
        xml::escape(resource)
    );
    for w in watchers {
        // RFC 3858 §4: status active / pending / waiting / terminated; event says how it got there.
        let (status, event) = match w.decision {
            Watch::Allow => ("active", "approved"),
            Watch::Pending => ("pending", "subscribe"),
            Watch::Block => ("terminated", "rejected"),
        };
        out.push_str(&format!(
            "<watcher id=\"w{}\" status=\"{status}\" event=\"{event}\">{}</watcher>\n",
            w.id,
            xml::escape(w.uri)
        ));
    }
    out.push_str("</watcher-list>\n</watcherinfo>\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn lists_watchers_with_their_status() {
        let doc = document(
            "sip:bob@x",
            3,
            &[
                Entry { id: 1, uri: "sip:alice@x", decision: Watch::Allow },
                Entry { id: 2, uri: "sip:carol@x", decision: Watch::Pending },
                Entry { id: 3, uri: "sip:eve<&>@x", decision: Watch::Block },
            ],
        );
        let d = xml::Doc::parse(doc.as_bytes()).unwrap();
        let root = &d.elements[0];
        assert_eq!(d.local(root), "watcherinfo");
        assert_eq!(d.attr(root, "version"), Some("3"));
        let list = d.children(root).next().unwrap();
        let ws: Vec<_> = d.children(list).map(|w| (d.attr(w, "status").unwrap(), xml::unescape(d.text(w)))).collect();
        assert_eq!(
            ws,
            vec![
                ("active", "sip:alice@x".to_string()),
                ("pending", "sip:carol@x".into()),
                ("terminated", "sip:eve<&>@x".into())
            ]
        );
    }
}
