//! Digest challenges as seen on the wire (raw TLS client, no credentials).

use crate::malformed::{uniq, Raw, Response};
use crate::support::Appliance;

/// Parse `Digest k=v, k="v", ...` into lowercase keys and unquoted values.
fn digest_params(h: &str) -> Option<Vec<(String, String)>> {
    let rest = h.trim().strip_prefix("Digest").or_else(|| h.trim().strip_prefix("digest"))?;
    let mut out = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((k.trim().to_ascii_lowercase(), v));
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// All values of header `name` (several challenges, e.g. SHA-256 and MD5, may be offered).
fn headers<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

fn check_challenges(app: &Appliance, r: &Response, header: &str, what: &str) {
    let hs = headers(r, header);
    if hs.is_empty() {
        app.fail(&format!("{what}: no {header} header in\n{}", r.head));
    }
    for h in hs {
        let Some(p) = digest_params(h) else {
            app.fail(&format!("{what}: {header} is not a Digest challenge: {h:?}"));
        };
        let get = |k: &str| p.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        if get("realm") != Some(app.domain.as_str()) {
            app.fail(&format!("{what}: realm must be {:?}: {h:?}", app.domain));
        }
        if !get("qop").is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")) {
            app.fail(&format!("{what}: qop must offer auth: {h:?}"));
        }
        if get("nonce").is_none_or(str::is_empty) {
            app.fail(&format!("{what}: empty or missing nonce: {h:?}"));
        }
        let alg = get("algorithm").unwrap_or("MD5");
        if !["MD5", "SHA-256"].iter().any(|a| a.eq_ignore_ascii_case(alg)) {
            app.fail(&format!("{what}: algorithm must be MD5 or SHA-256: {h:?}"));
        }
    }
}

fn request(raw: &Raw, method: &str, ruri: &str, to: &str, body: &str) -> String {
    let d = &raw.app.domain;
    let p = raw.local_port;
    let u = uniq();
    let ctype = if body.is_empty() { String::new() } else { "Content-Type: text/plain\r\n".to_string() };
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{d}>;tag=t{u}\r\n\
         To: <{to}>\r\n\
         Call-ID: ch-{u}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:alice@127.0.0.1:{p};transport=tls>\r\n\
         Expires: 300\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn register_without_credentials_gets_401_digest_challenge() {
    let app = Appliance::start("challenge-401");
    let mut raw = Raw::connect(&app);
    let d = app.domain.clone();
    let req = request(&raw, "REGISTER", &format!("sip:{d}"), &format!("sip:alice@{d}"), "");
    raw.send_ok(req.as_bytes(), "REGISTER without credentials");
    let r = raw.expect_response("REGISTER without credentials");
    if r.code() != Some(401) {
        app.fail(&format!("REGISTER without credentials: expected 401, got {:?}\n{}", r.status_line(), r.head));
    }
    check_challenges(&app, &r, "WWW-Authenticate", "401 to REGISTER");
}

#[test]
fn message_without_credentials_gets_407_digest_challenge() {
    let app = Appliance::start("challenge-407");
    let mut raw = Raw::connect(&app);
    let d = app.domain.clone();
    let to = format!("sip:bob@{d}");
    let req = request(&raw, "MESSAGE", &to, &to, "hi");
    raw.send_ok(req.as_bytes(), "MESSAGE without credentials");
    let r = raw.expect_response("MESSAGE without credentials");
    if r.code() != Some(407) {
        app.fail(&format!("MESSAGE without credentials: expected 407, got {:?}\n{}", r.status_line(), r.head));
    }
    check_challenges(&app, &r, "Proxy-Authenticate", "407 to MESSAGE");
}
