//! Network: TLS setup, listeners, connectors and the per-core connection table with its driver.
//!
//! Owns sockets and TLS sessions. Hands complete parsed messages to the role running on the core (edge or pool)
//! through [`conn::Handler`]; takes bytes to write by [`conn::ConnId`]. Knows nothing of SIP routing.
//! Architecture invariant: only a connection's driver task reads or writes its socket.

pub mod conn;
pub mod connector;
pub mod dns;
pub mod driver;
pub mod identity;
pub mod listener;
pub mod local;
pub mod queue;
pub mod ratelog;
pub mod tls;

pub use conn::{Conn, ConnId, ConnKind, ConnTable, Handler, NetStats, SendError};
pub use connector::{Connector, Undeliverable};
