//! Operations: the process lifecycle (`run`: start roles, wait for a signal) and the development bootstrap
//! (`up`: PKI, demo users, configs, and one edge and one pool as child processes).

pub mod metrics;
pub mod probe;
pub mod run;
pub mod up;
