//! Size limits for one SIP message. Owns every cap the codec enforces on peer input; relations between
//! them are asserted at compile time. Does not own transport-level limits (connections, buffers).

/// Hard cap of the inline header table of [`crate::sip::Message`]; `Limits::header_count_max` above it is
/// clamped, because the table is a fixed array (no allocation per message).
pub const HEADER_TABLE_CAP: usize = 96;

/// Header line offsets are stored as `u16` in the table; a configured `line_bytes_max` above this is clamped.
pub const LINE_BYTES_HARD_MAX: usize = u16::MAX as usize;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Whole message including body; over it -> 513.
    pub message_bytes_max: usize,
    /// Start line + headers + the empty line.
    pub header_bytes_max: usize,
    /// Header lines (a folded header counts once); over it -> 400 "Too Many Headers".
    pub header_count_max: usize,
    /// One header line, counted raw (folding included).
    pub line_bytes_max: usize,
}

impl Limits {
    pub const DEFAULT: Limits =
        Limits { message_bytes_max: 65_535, header_bytes_max: 16_384, header_count_max: 64, line_bytes_max: 4_096 };

    /// The count cap actually applied: the configured one, clamped to the inline table.
    pub fn header_count_cap(&self) -> usize {
        self.header_count_max.min(HEADER_TABLE_CAP)
    }

    /// The line cap actually applied: the configured one, clamped to what the table can address.
    pub fn line_bytes_cap(&self) -> usize {
        self.line_bytes_max.min(LINE_BYTES_HARD_MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

const _: () = assert!(Limits::DEFAULT.header_bytes_max <= Limits::DEFAULT.message_bytes_max);
const _: () = assert!(Limits::DEFAULT.line_bytes_max <= Limits::DEFAULT.header_bytes_max);
const _: () = assert!(Limits::DEFAULT.header_count_max <= HEADER_TABLE_CAP);
// Peers get 16 more headers than users (net::conn::peer_limits): the table must hold them.
const _: () = assert!(Limits::DEFAULT.header_count_max + 16 <= HEADER_TABLE_CAP);
const _: () = assert!(HEADER_TABLE_CAP < u8::MAX as usize); // indices are kept in u8, 0xFF = absent
