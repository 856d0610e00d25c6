//! Operations: the process lifecycle (`run`: start roles, wait for a signal) and the development bootstrap
//! (`up`: PKI, demo users, configs, and one edge and one pool as child processes, restarted when they die:
//! `supervise`).

pub mod dns_records;
pub mod doctor;
pub mod federate_with;
pub mod http;
pub mod metrics;
pub mod partners;
pub mod pool_admin;
pub mod probe;
pub mod ready;
pub mod report;
pub mod rollup;
pub mod run;
pub mod supervise;
pub mod talkers;
pub mod up;
pub mod up_pool;
