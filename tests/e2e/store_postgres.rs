//! The appliance on PostgreSQL.
