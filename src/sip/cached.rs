//! The structured views a message is validated with (From, To, top Via), kept as offsets into its buffer so that
//! accessors rebuild them without parsing again: every hop reads From/To/Via several times.

use super::addr::NameAddr;
use super::uri::{Scheme, Uri};
use super::via::Via;

/// A slice of the message buffer; `len == u32::MAX` means absent (for optional parts).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Part {
    start: u32,
    len: u32,
}

const NONE: Part = Part { start: 0, len: u32::MAX };

impl Part {
    /// Where `s` lies in `buf`; empty (and never out of bounds) for slices that are not inside it.
    fn of(buf: &[u8], s: &[u8]) -> Part {
        let base = buf.as_ptr() as usize;
        let p = s.as_ptr() as usize;
        if s.is_empty() || p < base || p + s.len() > base + buf.len() {
            return Part::default();
        }
        Part { start: (p - base) as u32, len: s.len() as u32 }
    }
    fn opt(buf: &[u8], s: Option<&[u8]>) -> Part {
        s.map_or(NONE, |s| Part::of(buf, s))
    }
    fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        buf.get(start..start + self.len as usize).unwrap_or(&[])
    }
    fn get_opt<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        (self.len != u32::MAX).then(|| self.get(buf))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct UriParts {
    scheme: Scheme,
    user: Part,
    password: Part,
    host: Part,
    port: Option<u16>,
    params: Part,
    headers: Part,
}

impl UriParts {
    fn of(buf: &[u8], u: &Uri<'_>) -> UriParts {
        UriParts {
            scheme: u.scheme,
            user: Part::opt(buf, u.user),
            password: Part::opt(buf, u.password),
            host: Part::of(buf, u.host),
            port: u.port,
            params: Part::of(buf, u.params),
            headers: Part::of(buf, u.headers),
        }
    }
    fn get<'a>(&self, buf: &'a [u8]) -> Uri<'a> {
        Uri {
            scheme: self.scheme,
            user: self.user.get_opt(buf),
            password: self.password.get_opt(buf),
            host: self.host.get(buf),
            port: self.port,
            params: self.params.get(buf),
            headers: self.headers.get(buf),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct NameAddrParts {
    display: Part,
    uri: UriParts,
    uri_raw: Part,
    params: Part,
}

impl NameAddrParts {
    pub(crate) fn of(buf: &[u8], na: &NameAddr<'_>) -> NameAddrParts {
        NameAddrParts {
            display: Part::opt(buf, na.display),
            uri: UriParts::of(buf, &na.uri),
            uri_raw: Part::of(buf, na.uri_raw),
            params: Part::of(buf, na.params),
        }
    }
    pub(crate) fn get<'a>(&self, buf: &'a [u8]) -> NameAddr<'a> {
        NameAddr {
            display: self.display.get_opt(buf),
            uri: self.uri.get(buf),
            uri_raw: self.uri_raw.get(buf),
            params: self.params.get(buf),
        }
    }
    pub(crate) const EMPTY: NameAddrParts = NameAddrParts {
        display: NONE,
        uri: UriParts {
            scheme: Scheme::Other,
            user: NONE,
            password: NONE,
            host: Part { start: 0, len: 0 },
            port: None,
            params: Part { start: 0, len: 0 },
            headers: Part { start: 0, len: 0 },
        },
        uri_raw: Part { start: 0, len: 0 },
        params: Part { start: 0, len: 0 },
    };
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ViaParts {
    raw: Part,
    transport: Part,
    host: Part,
    port: Option<u16>,
    params: Part,
}

impl ViaParts {
    pub(crate) fn of(buf: &[u8], v: &Via<'_>) -> ViaParts {
        ViaParts {
            raw: Part::of(buf, v.raw),
            transport: Part::of(buf, v.transport),
            host: Part::of(buf, v.host),
            port: v.port,
            params: Part::of(buf, v.params),
        }
    }
    pub(crate) fn get<'a>(&self, buf: &'a [u8]) -> Via<'a> {
        Via {
            raw: self.raw.get(buf),
            transport: self.transport.get(buf),
            host: self.host.get(buf),
            port: self.port,
            params: self.params.get(buf),
        }
    }
    pub(crate) const EMPTY: ViaParts = ViaParts {
        raw: Part { start: 0, len: 0 },
        transport: Part { start: 0, len: 0 },
        host: Part { start: 0, len: 0 },
        port: None,
        params: Part { start: 0, len: 0 },
    };
}
