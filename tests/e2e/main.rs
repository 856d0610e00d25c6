//! End-to-end tests: the real `parapet up` appliance driven by a real SIP client (pjsip through
//! PyPI `pjsua2-python`, see tests/clients/pjsua_agent.py) and by a raw TLS client.
//!
//! One integration-test binary; each test starts its own appliance on a free port block.

mod pjsua;
mod support;
mod support_dns;
mod support_ldap;
mod support_members;
mod support_ops;
mod support_pg;

mod apps_agents;
mod archive;
mod challenges;
mod colocated;
mod core_death;
mod directory_ldap;
mod edge_abuse;
mod edge_security;
mod federation;
mod federation_demo;
mod federation_dns;
mod federation_hub;
mod federation_kamailio;
mod federation_limits;
mod federation_ops;
mod federation_presence;
mod federation_routes;
mod helpdesk;
mod helpdesk_pool;
mod internal_links;
mod interop_baresip;
mod interop_linphone;
mod interop_pjsip;
mod lifecycle;
mod malformed;
mod ops;
mod pool_failover;
mod pool_presence;
mod pools_directory;
mod pools_enterprise;
mod pools_several;
mod presence_pjsip;
mod presence_raw;
mod presence_restart;
mod rawsip;
mod routing_rules;
mod store_conformance;
mod store_postgres;
