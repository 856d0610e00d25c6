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
pub(crate) fn headers<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
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

    // Credentials over a nonce the pool never issued: a fresh challenge (the pool once panicked answering it),
    // and the pool still registers alice afterwards.
    let chal = headers(&r, "WWW-Authenticate").first().map(|c| c.to_string()).unwrap_or_default();
    let nonce = digest_params(&chal).and_then(|p| p.into_iter().find(|(k, _)| k == "nonce").map(|(_, v)| v));
    let forged_chal = chal.replace(nonce.as_deref().unwrap_or("-"), "AAAAAGsFMvLpgQpqAAAJMhCAforgedforged00");
    let alice = app.user("alice");
    let Some(auth) = authorization(&forged_chal, &alice.alias, &alice.password, "REGISTER", &format!("sip:{d}")) else {
        app.fail(&format!("cannot answer {forged_chal:?}"));
    };
    let forged = request(&raw, "REGISTER", &format!("sip:{d}"), &format!("sip:alice@{d}"), "")
        .replace("CSeq: 1 REGISTER", &format!("CSeq: 2 REGISTER\r\nAuthorization: {auth}"));
    raw.send_ok(forged.as_bytes(), "REGISTER over a forged nonce");
    let r = raw.expect_response("REGISTER over a forged nonce");
    if r.code() != Some(401) {
        app.fail(&format!("REGISTER over a forged nonce: expected 401, got {:?}\n{}", r.status_line(), r.head));
    }
    let mut again = Raw::connect(&app);
    raw_register(&app, &mut again, &alice.alias, &alice.password);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash(alg: &str, data: &str) -> String {
    use md5::Digest as _;
    if alg.eq_ignore_ascii_case("SHA-256") {
        hex(&sha2::Sha256::digest(data.as_bytes()))
    } else {
        hex(&md5::Md5::digest(data.as_bytes()))
    }
}

/// `Authorization` value answering the challenge `chal` (qop=auth, RFC 2617 / RFC 8760).
pub(crate) fn authorization(chal: &str, user: &str, password: &str, method: &str, uri: &str) -> Option<String> {
    let p = digest_params(chal)?;
    let get = |k: &str| p.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
    let realm = get("realm")?;
    let nonce = get("nonce")?;
    let alg = get("algorithm").unwrap_or_else(|| "MD5".into());
    let cnonce = format!("c{}", uniq().replace('x', ""));
    let nc = "00000001";
    let ha1 = hash(&alg, &format!("{user}:{realm}:{password}"));
    let ha2 = hash(&alg, &format!("{method}:{uri}"));
    let resp = hash(&alg, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let opaque = get("opaque").map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    Some(format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}"
    ))
}

/// REGISTER over the raw connection, answering the 401 with our own digest computation
/// (MD5 preferred: the contract requires it), and require 200.
pub(crate) fn raw_register(app: &Appliance, raw: &mut Raw, user: &str, password: &str) {
    let d = app.domain.clone();
    let ruri = format!("sip:{d}");
    let aor = format!("sip:{user}@{d}");
    let req = request(raw, "REGISTER", &ruri, &aor, "").replace("sip:alice@", &format!("sip:{user}@"));
    raw.send_ok(req.as_bytes(), "REGISTER");
    let r = raw.expect_response("REGISTER without credentials");
    if r.code() != Some(401) {
        app.fail(&format!("REGISTER without credentials: expected 401, got {:?}\n{}", r.status_line(), r.head));
    }
    let chals = headers(&r, "WWW-Authenticate");
    let chal = chals
        .iter()
        .find(|c| {
            digest_params(c).is_some_and(|p| p.iter().all(|(k, v)| k != "algorithm" || v.eq_ignore_ascii_case("MD5")))
        })
        .or(chals.first())
        .copied()
        .unwrap_or_else(|| app.fail(&format!("401 without WWW-Authenticate:\n{}", r.head)));
    let Some(auth) = authorization(chal, user, password, "REGISTER", &ruri) else {
        app.fail(&format!("cannot answer challenge {chal:?}"));
    };
    let call_id = r.header("Call-ID").unwrap_or("").to_string();
    let from_tag_line = req.lines().find(|l| l.starts_with("From:")).unwrap_or("").to_string();
    let req2 = request(raw, "REGISTER", &ruri, &aor, "")
        .replace("sip:alice@", &format!("sip:{user}@"))
        .replace("CSeq: 1 REGISTER", &format!("CSeq: 2 REGISTER\r\nAuthorization: {auth}"));
    // Same Call-ID and From as the first attempt, as a real UA would.
    let req2: String = req2
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Call-ID:") {
                format!("Call-ID: {call_id}")
            } else if l.starts_with("From:") {
                from_tag_line.trim_end().to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    raw.send_ok(req2.as_bytes(), "REGISTER with credentials");
    let r = raw.expect_response("REGISTER with a digest computed by the test");
    if r.code() != Some(200) {
        app.fail(&format!(
            "REGISTER with correct credentials ({chal}): expected 200, got {:?}\nsent:\n{req2}\ngot:\n{}",
            r.status_line(),
            r.head
        ));
    }
}

/// A registered client's MESSAGE without credentials is challenged with 407.
#[test]
fn message_without_credentials_gets_407_digest_challenge() {
    let app = Appliance::start("challenge-407");
    let alice = app.user("alice");
    let mut raw = Raw::connect(&app);
    raw_register(&app, &mut raw, &alice.alias, &alice.password);
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
