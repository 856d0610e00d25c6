//! Requests from our pool for foreign domains: routed by the table to a partner or clearinghouse.

use std::rc::Rc;

use super::super::Edge;
use super::{host_lower, route_for, FedSettings, Target};
use crate::net::conn::bump;
use crate::net::{ConnId, Connector};
use crate::sip::Message;

impl Edge {
    /// A request from the pool (received on `from`) for a foreign domain: route it to the right peer.
    pub(in crate::edge) fn to_partner(self: &Rc<Self>, from: ConnId, msg: Message) {
        let Some(fed) = self.s.fed.as_ref() else {
            self.reply(from, &msg, 404, "Not Found: federation is not configured");
            return;
        };
        bump(&self.estats.requests_to_partners);
        if host_lower(&msg.from().uri) != fed.domain {
            bump(&self.estats.federation_refused);
            self.reply(from, &msg, 403, "Forbidden: From must be our domain");
            return;
        }
        let Some(domain) = msg.request_uri_parsed().map(|u| host_lower(&u)) else {
            self.reply(from, &msg, 416, "Unsupported URI Scheme");
            return;
        };
        let Some(table) = self.fed_table.borrow().clone() else { return };
        let Some(target) = route_for(&table, &domain) else {
            bump(&self.estats.federation_refused);
            let blocked = table.blocked_domains.contains(&domain);
            let (code, reason) =
                if blocked { (403, "Forbidden: domain blocked") } else { (404, "Not Found: no federation route") };
            self.reply(from, &msg, code, reason);
            return;
        };
        let Some((_, out)) = self.hide_internal_hops(from, &msg, &fed.listen_text) else { return };
        let connector = self.partner_connector(&target, fed);
        connector.send(self, out);
    }

    /// This core's connector to a federation peer, made on first use.
    fn partner_connector(&self, t: &Target, fed: &FedSettings) -> Rc<Connector> {
        let mut map = self.partners.borrow_mut();
        map.entry(t.name.clone())
            .or_insert_with(|| {
                Rc::new(Connector::federated(t.addr, &t.name, fed.client_tls.clone(), self.s.handshake_timeout))
            })
            .clone()
    }
}
