//! LDIF content records (RFC 2849) as exported by `slapcat` or `ldifde`: `dn:` first, `attr: value`,
//! `attr:: base64`, folded lines (a leading space continues the previous line), `#` comments, records separated
//! by blank lines. Change records and `attr:< url` are refused: an export holds entries, not edits.

use super::Entry;

/// Errors name the line: "line 12: ...".
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    // Unfold first, remembering where each logical line started.
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = line.strip_prefix(' ') {
            match lines.last_mut() {
                Some((_, prev)) if !prev.is_empty() => prev.push_str(rest),
                _ => return Err(format!("line {}: a continuation line with nothing to continue", i + 1)),
            }
        } else if line.starts_with('#') {
            // A comment; its own continuation lines are folded into it and dropped with it.
            lines.push((i + 1, "#".into()));
        } else {
            lines.push((i + 1, line.to_string()));
        }
    }
    let mut entries = Vec::new();
    let mut cur: Option<Entry> = None;
    for (n, line) in lines {
        if line == "#" {
            continue;
        }
        if line.trim().is_empty() {
            if let Some(e) = cur.take() {
                entries.push(e);
            }
            continue;
        }
        let Some((attr, rest)) = line.split_once(':') else {
            return Err(format!("line {n}: expected attribute: value"));
        };
        let attr = attr.trim();
        let value = if let Some(b64) = rest.strip_prefix(':') {
            let bytes = base64(b64.trim()).ok_or_else(|| format!("line {n}: {attr}: invalid base64"))?;
            String::from_utf8(bytes).map_err(|_| format!("line {n}: {attr}: not UTF-8 text"))?
        } else if rest.starts_with('<') {
            return Err(format!("line {n}: {attr}: values by URL are not supported"));
        } else {
            rest.trim_start().to_string()
        };
        match cur.as_mut() {
            None if attr.eq_ignore_ascii_case("version") => {}
            None if attr.eq_ignore_ascii_case("dn") => {
                cur = Some(Entry { dn: value.trim().to_ascii_lowercase(), ..Default::default() });
            }
            None => return Err(format!("line {n}: a record must start with dn:")),
            Some(_) if attr.eq_ignore_ascii_case("changetype") => {
                return Err(format!("line {n}: change records are not an export of entries"));
            }
            Some(e) => e.push(attr, value),
        }
    }
    if let Some(e) = cur.take() {
        entries.push(e);
    }
    Ok(entries)
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_folding_base64_comments() {
        let text = "version: 1\n\n# people\ndn: uid=ann,OU=People,dc=corp\nobjectClass: inetOrgPerson\n\
                    mail: ann@corp.ex\n ample\ncn:: w4Fubg==\n\ndn: uid=bob,dc=corp\r\nsn: Bob\r\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].dn, "uid=ann,ou=people,dc=corp");
        assert_eq!(e[0].first("mail"), Some("ann@corp.example"));
        assert_eq!(e[0].first("CN"), Some("Ánn"));
        assert_eq!(e[1].first("sn"), Some("Bob"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("cn: x\n").unwrap_err(), "line 1: a record must start with dn:");
        assert!(parse("dn: a\nchangetype: add\n").unwrap_err().starts_with("line 2:"));
        assert!(parse("dn: a\ncn:: %%%\n").unwrap_err().contains("invalid base64"));
        assert!(parse("dn: a\nnocolon\n").unwrap_err().contains("line 2"));
    }
}
