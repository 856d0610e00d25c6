//! parapet: a thread-per-core SIP edge appliance (access proxy) and presence/IM pool.
//!
//! Layout follows the data path; see ARCHITECTURE.md for the map and its invariants.

pub mod civil;
pub mod config;
pub mod directory;
pub mod edge;
pub mod mgmt;
pub mod net;
pub mod pool;
pub mod proto;
pub mod shard;
#[cfg(test)]
mod sim;
pub mod sip;
pub mod store;
