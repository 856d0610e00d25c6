//! Stored data: the user directory (read at start).

pub mod directory;
