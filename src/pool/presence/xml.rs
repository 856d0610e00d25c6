//! A small, bounded, well-formedness-checking XML reader for presence documents (PIDF, RFC 3863, and its
//! extensions). It builds a tree of elements whose names, attributes and text stay spans of the input, so a
//! document can be stored as received and parts of it (a `<tuple>`) copied out verbatim.
//!
//! Not a general XML parser: no DTDs (a `<!DOCTYPE` is refused: no entity expansion, no billion laughs), no
//! namespace resolution beyond what `pidf.rs` does with prefixes, entities are not expanded (notes are kept
//! escaped and re-emitted as they came). Depth and element count are capped; every error is a refusal.

use std::ops::Range;

/// Caps that keep a hostile document cheap to refuse.
pub const DEPTH_MAX: usize = 32;
pub const ELEMENTS_MAX: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlError {
    NotUtf8,
    Truncated,
    Mismatched,
    TooDeep,
    TooManyElements,
    Doctype,
    NoRoot,
    TrailingContent,
    BadName,
}

#[derive(Debug, Clone)]
pub struct Element {
    /// Qualified name as written (`dm:person`).
    pub name: Range<usize>,
    /// The raw attribute text of the start tag (between the name and `>` / `/>`).
    pub attrs: Range<usize>,
    /// The whole element, start tag to end tag inclusive.
    pub span: Range<usize>,
    /// End of the start tag (just after `>`), where attributes could be inserted before `span.start..`.
    pub start_tag_end: usize,
    /// Character data directly inside (first text run only, trimmed), raw.
    pub text: Range<usize>,
    pub children: Vec<usize>,
}

#[derive(Debug)]
pub struct Doc<'a> {
    pub src: &'a str,
    /// Elements in document order; index 0 is the root.
    pub elements: Vec<Element>,
}

impl<'a> Doc<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Doc<'a>, XmlError> {
        let src = std::str::from_utf8(b).map_err(|_| XmlError::NotUtf8)?;
        let bytes = src.as_bytes();
        let mut elements: Vec<Element> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut i = 0;
        let mut root_done = false;
        while i < bytes.len() {
            if bytes.get(i) != Some(&b'<') {
                let next = memchr::memchr(b'<', bytes.get(i..).unwrap_or(&[])).map_or(bytes.len(), |n| i + n);
                let run = src.get(i..next).unwrap_or("");
                if let Some(&top) = stack.last() {
                    let t = run.trim();
                    if let Some(e) = elements.get_mut(top) {
                        if e.text.is_empty() && !t.is_empty() {
                            let lead = run.len() - run.trim_start().len();
                            e.text = i + lead..i + lead + t.len();
                        }
                    }
                } else if !run.trim().is_empty() {
                    return Err(if root_done { XmlError::TrailingContent } else { XmlError::NoRoot });
                }
                i = next;
                continue;
            }
            let rest = src.get(i..).unwrap_or("");
            if rest.starts_with("<?") {
                i += rest.find("?>").ok_or(XmlError::Truncated)? + 2;
                continue;
            }
            if rest.starts_with("<!--") {
                i += rest.find("-->").ok_or(XmlError::Truncated)? + 3;
                continue;
            }
            if rest.starts_with("<![CDATA[") {
                if stack.is_empty() {
                    return Err(XmlError::NoRoot);
                }
                i += rest.find("]]>").ok_or(XmlError::Truncated)? + 3;
                continue;
            }
            if rest.starts_with("<!") {
                return Err(XmlError::Doctype);
            }
            let close = tag_end(rest).ok_or(XmlError::Truncated)?;
            let inner = rest.get(1..close).unwrap_or("");
            if let Some(name) = inner.strip_prefix('/') {
                let name = name.trim_end();
                let top = stack.pop().ok_or(XmlError::Mismatched)?;
                let e = elements.get_mut(top).ok_or(XmlError::Mismatched)?;
                if src.get(e.name.clone()) != Some(name) {
                    return Err(XmlError::Mismatched);
                }
                e.span.end = i + close + 1;
                if stack.is_empty() {
                    root_done = true;
                }
                i += close + 1;
                continue;
            }
            if root_done {
                return Err(XmlError::TrailingContent);
            }
            let self_closing = inner.ends_with('/');
            let inner = if self_closing { inner.get(..inner.len() - 1).unwrap_or("") } else { inner };
            let name_len = inner.find(|c: char| c.is_ascii_whitespace()).unwrap_or(inner.len());
            if name_len == 0 || !inner.get(..name_len).unwrap_or("").chars().all(is_name_char) {
                return Err(XmlError::BadName);
            }
            if elements.len() >= ELEMENTS_MAX {
                return Err(XmlError::TooManyElements);
            }
            if stack.len() >= DEPTH_MAX {
                return Err(XmlError::TooDeep);
            }
            let idx = elements.len();
            if let Some(&parent) = stack.last() {
                if let Some(p) = elements.get_mut(parent) {
                    p.children.push(idx);
                }
            }
            elements.push(Element {
                name: i + 1..i + 1 + name_len,
                attrs: i + 1 + name_len..i + 1 + inner.len(),
                span: i..i + close + 1,
                start_tag_end: i + close + 1,
                text: 0..0,
                children: Vec::new(),
            });
            if self_closing {
                if stack.is_empty() {
                    root_done = true;
                }
            } else {
                stack.push(idx);
            }
            i += close + 1;
        }
        if !stack.is_empty() {
            return Err(XmlError::Truncated);
        }
        if elements.is_empty() {
            return Err(XmlError::NoRoot);
        }
        Ok(Doc { src, elements })
    }

    pub fn get(&self, i: usize) -> Option<&Element> {
        self.elements.get(i)
    }

    pub fn name(&self, e: &Element) -> &'a str {
        self.src.get(e.name.clone()).unwrap_or("")
    }

    /// The name without its prefix.
    pub fn local(&self, e: &Element) -> &'a str {
        let n = self.name(e);
        n.rsplit(':').next().unwrap_or(n)
    }

    pub fn prefix(&self, e: &Element) -> Option<&'a str> {
        self.name(e).split_once(':').map(|(p, _)| p)
    }

    pub fn text(&self, e: &Element) -> &'a str {
        self.src.get(e.text.clone()).unwrap_or("")
    }

    pub fn raw(&self, e: &Element) -> &'a str {
        self.src.get(e.span.clone()).unwrap_or("")
    }

    pub fn children<'d>(&'d self, e: &'d Element) -> impl Iterator<Item = &'d Element> + 'd {
        e.children.iter().filter_map(|&c| self.elements.get(c))
    }

    /// Attributes of a start tag as (name, raw value without quotes).
    pub fn attrs(&self, e: &Element) -> Vec<(&'a str, &'a str)> {
        parse_attrs(self.src.get(e.attrs.clone()).unwrap_or(""))
    }

    pub fn attr(&self, e: &Element, name: &str) -> Option<&'a str> {
        self.attrs(e).into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, ':' | '_' | '-' | '.')
}

/// Index of the `>` ending the tag that starts `s`, skipping quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '<') => return None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_attrs(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while let Some(eq) = rest.find('=') {
        let name = rest.get(..eq).unwrap_or("").trim();
        let after = rest.get(eq + 1..).unwrap_or("").trim_start();
        let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else { break };
        let body = after.get(1..).unwrap_or("");
        let Some(end) = body.find(q) else { break };
        out.push((name, body.get(..end).unwrap_or("")));
        rest = body.get(end + 1..).unwrap_or("").trim_start();
    }
    out
}

/// Escapes text for element content or an attribute value.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// Expands the five predefined entities and numeric references (for display and comparisons only).
pub fn unescape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        o.push_str(rest.get(..amp).unwrap_or(""));
        let after = rest.get(amp..).unwrap_or("");
        let Some(semi) = after.find(';').filter(|&n| n <= 10) else {
            o.push('&');
            rest = after.get(1..).unwrap_or("");
            continue;
        };
        let ent = after.get(1..semi).unwrap_or("");
        let ch = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                o.push(c);
                rest = after.get(semi + 1..).unwrap_or("");
            }
            None => {
                o.push('&');
                rest = after.get(1..).unwrap_or("");
            }
        }
    }
    o.push_str(rest);
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn tree_and_spans() {
        let src = br#"<?xml version="1.0"?><a x="1" y='&gt;'><!-- c --><b:c>hi &amp; there</b:c><d/></a>"#;
        let d = Doc::parse(src).unwrap();
        let root = &d.elements[0];
        assert_eq!(d.name(root), "a");
        assert_eq!(d.attrs(root), vec![("x", "1"), ("y", "&gt;")]);
        let kids: Vec<_> = d.children(root).map(|e| d.local(e)).collect();
        assert_eq!(kids, ["c", "d"]);
        let c = &d.elements[1];
        assert_eq!(d.text(c), "hi &amp; there");
        assert_eq!(d.raw(c), "<b:c>hi &amp; there</b:c>");
        assert_eq!(unescape(d.text(c)), "hi & there");
    }

    #[test]
    fn refusals() {
        assert_eq!(Doc::parse(b"<a><b></a></b>").unwrap_err(), XmlError::Mismatched);
        assert_eq!(Doc::parse(b"<a>").unwrap_err(), XmlError::Truncated);
        assert_eq!(Doc::parse(b"").unwrap_err(), XmlError::NoRoot);
        assert_eq!(Doc::parse(b"text").unwrap_err(), XmlError::NoRoot);
        assert_eq!(Doc::parse(b"<a/><b/>").unwrap_err(), XmlError::TrailingContent);
        assert_eq!(Doc::parse(b"<!DOCTYPE a [<!ENTITY x \"y\">]><a/>").unwrap_err(), XmlError::Doctype);
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert_eq!(Doc::parse(deep.as_bytes()).unwrap_err(), XmlError::TooDeep);
        assert_eq!(Doc::parse(&[0xff, 0xfe]).unwrap_err(), XmlError::NotUtf8);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(unescape("&#65;&#x42;&bogus; & &lt;"), "AB&bogus; & <");
    }
}
