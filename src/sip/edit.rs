//! `Editor`: records edits to a parsed `Message`, then `write` emits the edited message by copying every
//! untouched span verbatim (no re-serialization of headers it did not touch). The body is never edited,
//! so Content-Length stays valid. Does not validate the values it is given: they come from our own code.

use super::header::HeaderName;
use super::lex;
use super::msg::Message;
use super::write::{put_header, put_uint};
use bytes::{BufMut, BytesMut};

/// Edits one message may carry. Callers keep their edits bounded (values of one header go into one line), but the
/// count may still depend on what a peer sent: beyond it, `write` refuses ([`TooManyEdits`]) instead of panicking.
pub const EDIT_OPS_MAX: usize = 20;

/// More than [`EDIT_OPS_MAX`] edits were asked of one message: nothing was written. The caller answers the
/// request with an error (the peer's message needed more rewriting than any legitimate one does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyEdits;

impl core::fmt::Display for TooManyEdits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "more than {EDIT_OPS_MAX} edits on one message")
    }
}

#[derive(Clone, Copy, Debug)]
enum Op<'a> {
    None,
    SetRequestUri(&'a [u8]),
    PushVia(&'a [u8]),
    PopVia,
    SetTopViaParams(Option<&'a [u8]>, Option<u16>),
    PopRoute,
    Remove(HeaderName),
    Prepend(HeaderName, &'a [u8]),
    Append(HeaderName, &'a [u8]),
    SetMaxForwards(u32),
}

pub struct Editor<'a> {
    msg: &'a Message,
    ops: [Op<'a>; EDIT_OPS_MAX],
    /// 0 <= len <= EDIT_OPS_MAX
    len: usize,
    /// An edit did not fit: `write` refuses.
    overflowed: bool,
}

/// (first value, the values after the first comma), both trimmed.
fn split_first_value(v: &[u8]) -> (&[u8], &[u8]) {
    match lex::find_outside(v, b',') {
        Ok(Some(i)) => (lex::trim(v.get(..i).unwrap_or(&[])), lex::trim(v.get(i + 1..).unwrap_or(&[]))),
        _ => (v, &[]),
    }
}

impl<'a> Editor<'a> {
    pub fn new(msg: &'a Message) -> Editor<'a> {
        Editor { msg, ops: [Op::None; EDIT_OPS_MAX], len: 0, overflowed: false }
    }

    fn push(&mut self, op: Op<'a>) {
        match self.ops.get_mut(self.len) {
            Some(slot) => {
                *slot = op;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    fn ops(&self) -> &[Op<'a>] {
        self.ops.get(..self.len).unwrap_or(&[])
    }

    pub fn set_request_uri(&mut self, uri: &'a [u8]) {
        self.push(Op::SetRequestUri(uri));
    }

    /// New first header line "Via: <value>"; a later push ends up above an earlier one.
    pub fn push_via(&mut self, value: &'a [u8]) {
        self.push(Op::PushVia(value));
    }

    /// Removes the top Via VALUE of the message as received (only it, if a line holds several).
    pub fn pop_via(&mut self) {
        self.push(Op::PopVia);
    }

    /// On the received top Via: replaces/adds ;received=, and fills ;rport=N when the Via carries rport
    /// (RFC 3581 §4: only a client that asked gets it).
    pub fn set_top_via_params(&mut self, received: Option<&'a [u8]>, rport: Option<u16>) {
        self.push(Op::SetTopViaParams(received, rport));
    }

    /// Removes the first Route VALUE.
    pub fn pop_route(&mut self) {
        self.push(Op::PopRoute);
    }

    /// Every line of that name (for `Other`: nothing, as it has no single name).
    pub fn remove_headers(&mut self, name: HeaderName) {
        self.push(Op::Remove(name));
    }

    /// New line before the first existing line of that name, or before the first non-Via line when none.
    pub fn prepend_header(&mut self, name: HeaderName, value: &'a [u8]) {
        self.push(Op::Prepend(name, value));
    }

    /// New line after the last header.
    pub fn append_header(&mut self, name: HeaderName, value: &'a [u8]) {
        self.push(Op::Append(name, value));
    }

    /// Replaces the first Max-Forwards line (dropping others), or appends one.
    pub fn set_max_forwards(&mut self, n: u32) {
        self.push(Op::SetMaxForwards(n));
    }

    fn removed(&self, name: HeaderName) -> bool {
        name != HeaderName::Other && self.ops().iter().any(|op| matches!(op, Op::Remove(n) if *n == name))
    }

    /// Whole message; Content-Length untouched (the body is never edited). Writes nothing when more edits were
    /// asked than fit.
    #[must_use = "a message with too many edits is not written: answer it with an error"]
    pub fn write(&self, out: &mut BytesMut) -> Result<(), TooManyEdits> {
        if self.overflowed {
            return Err(TooManyEdits);
        }
        let m = self.msg;
        out.reserve(m.bytes().len() + 256);
        let ops = self.ops();
        let ruri = ops.iter().rev().find_map(|op| match op {
            Op::SetRequestUri(u) => Some(*u),
            _ => None,
        });
        match (ruri, m.method_bytes()) {
            (Some(u), Some(method)) => {
                out.put_slice(method);
                out.put_u8(b' ');
                out.put_slice(u);
                out.put_slice(b" SIP/2.0\r\n");
            }
            _ => out.put_slice(m.start_line()),
        }
        for op in ops.iter().rev() {
            if let Op::PushVia(v) = op {
                put_header(out, HeaderName::Via.as_str().as_bytes(), v);
            }
        }
        let pop_via = ops.iter().any(|op| matches!(op, Op::PopVia));
        let via_params = ops.iter().rev().find_map(|op| match op {
            Op::SetTopViaParams(r, p) => Some((*r, *p)),
            _ => None,
        });
        let pop_route = ops.iter().any(|op| matches!(op, Op::PopRoute));
        let max_forwards = ops.iter().rev().find_map(|op| match op {
            Op::SetMaxForwards(n) => Some(*n),
            _ => None,
        });
        let entries = m.entries();
        let first_non_via = entries.iter().position(|e| e.name != HeaderName::Via).unwrap_or(entries.len());
        let top_via = m.first_index(HeaderName::Via);
        let first_route = m.first_index(HeaderName::Route);
        let mut mf_written = false;
        for i in 0..=entries.len() {
            for op in ops {
                if let Op::Prepend(name, v) = op {
                    if m.first_index(*name).unwrap_or(first_non_via) == i {
                        put_header(out, name.as_str().as_bytes(), v);
                    }
                }
            }
            let Some(e) = entries.get(i) else { break };
            if self.removed(e.name) {
                continue;
            }
            let line = m.entry_line(i);
            if e.name == HeaderName::MaxForwards {
                if let Some(n) = max_forwards {
                    if !mf_written {
                        out.put_slice(b"Max-Forwards: ");
                        put_uint(out, u64::from(n));
                        out.put_slice(b"\r\n");
                        mf_written = true;
                    }
                    continue;
                }
            }
            let value = m.entry_value(e);
            let prefix = line.get(..usize::from(e.value_off)).unwrap_or(&[]);
            if Some(i) == top_via && (pop_via || via_params.is_some()) {
                let (first, rest) = split_first_value(value);
                if pop_via {
                    if !rest.is_empty() {
                        out.put_slice(prefix);
                        out.put_slice(rest);
                        out.put_slice(b"\r\n");
                    }
                } else if let Some((received, rport)) = via_params {
                    out.put_slice(prefix);
                    write_via_with_params(out, first, received, rport);
                    if !rest.is_empty() {
                        out.put_slice(b", ");
                        out.put_slice(rest);
                    }
                    out.put_slice(b"\r\n");
                }
                continue;
            }
            if Some(i) == first_route && pop_route {
                let (_, rest) = split_first_value(value);
                if !rest.is_empty() {
                    out.put_slice(prefix);
                    out.put_slice(rest);
                    out.put_slice(b"\r\n");
                }
                continue;
            }
            out.put_slice(line);
        }
        for op in ops {
            if let Op::Append(name, v) = op {
                put_header(out, name.as_str().as_bytes(), v);
            }
        }
        if let (Some(n), false) = (max_forwards, mf_written) {
            out.put_slice(b"Max-Forwards: ");
            put_uint(out, u64::from(n));
            out.put_slice(b"\r\n");
        }
        out.put_slice(m.tail());
        Ok(())
    }
}

/// One Via value with ;received= replaced/added and ;rport filled; other params copied as written.
fn write_via_with_params(out: &mut BytesMut, via: &[u8], received: Option<&[u8]>, rport: Option<u16>) {
    // sent-protocol and sent-by hold no ';' and no quotes, so the first ';' starts the params.
    let (head, params) = match memchr::memchr(b';', via) {
        Some(i) => (lex::trim_end(via.get(..i).unwrap_or(&[])), via.get(i + 1..).unwrap_or(&[])),
        None => (via, &[][..]),
    };
    out.put_slice(head);
    let mut rest = params;
    // Only the first rport is filled and later ones dropped: filling every one would let a peer grow the line by
    // "=port" per repetition (a fuzz finding), and one rport is all RFC 3581 means.
    let mut rport_done = false;
    while !rest.is_empty() {
        let (item, next) = match lex::find_outside(rest, b';') {
            Ok(Some(i)) => (rest.get(..i).unwrap_or(&[]), rest.get(i + 1..).unwrap_or(&[])),
            _ => (rest, &[][..]),
        };
        rest = next;
        let item = lex::trim(item);
        let name = lex::trim(item.get(..memchr::memchr(b'=', item).unwrap_or(item.len())).unwrap_or(&[]));
        if item.is_empty() || (received.is_some() && name.eq_ignore_ascii_case(b"received")) {
            continue;
        }
        let is_rport = name.eq_ignore_ascii_case(b"rport");
        if is_rport && rport.is_some() && rport_done {
            continue;
        }
        out.put_u8(b';');
        match rport {
            Some(p) if is_rport => {
                out.put_slice(b"rport=");
                put_uint(out, u64::from(p));
                rport_done = true;
            }
            _ => out.put_slice(item),
        }
    }
    if let Some(r) = received {
        out.put_slice(b";received=");
        out.put_slice(r);
    }
}
