//! Operations: the process lifecycle (`run`: start roles, wait for a signal) and the development bootstrap
//! (`up`: PKI, demo users, configs, and one edge and one pool as child processes, restarted when they die:
//! `supervise`).

pub mod metrics;
pub mod pool_admin;
pub mod probe;
pub mod run;
pub mod supervise;
pub mod up;
pub mod up_pool;
