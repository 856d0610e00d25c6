//! Operations: the process lifecycle (`run`: start roles, wait for a signal) and the development bootstrap
//! (`up`: PKI, demo users, configs, and one edge and one pool as child processes, restarted when they die:
//! `supervise`).

pub mod doctor;
pub mod http;
pub mod metrics;
pub mod probe;
pub mod ready;
pub mod report;
pub mod rollup;
pub mod run;
pub mod supervise;
pub mod up;
