//! The management HTTP listener: one plain thread, one request per connection, a single dispatch `match` on the
//! path ([`route`]), and authentication applied once before it ([`handle`]) so a route added later is covered
//! without a line of its own: everything but [`OPEN`] needs `Authorization: Bearer <token>` when the listener
//! has a token (`[mgmt] token_file`; mandatory off loopback, see [`crate::config::MgmtConfig::token`]), or, for
//! GET of the [`BROWSER_PAGES`] alone, `?token=<token>`.
//!
//! Never on an executor: scraping must not steal a core's time slice, and a slow client must not hold anything
//! the data path needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use super::metrics;

/// Routes anyone who can reach the listener may call: what load balancers and scrapers poll, which reveal
/// nothing an operator would hide and change nothing.
pub const OPEN: &[&str] = &["/health", "/ready", "/metrics"];

/// Largest request head, and largest body, we read.
const HEAD_BYTES_MAX: usize = 8 * 1024;
const BODY_BYTES_MAX: usize = 64 * 1024;
/// A slow client is dropped after this long per read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed request (only what the routes need).
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// After `?`, undecoded ("" when none).
    pub query: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn is_post(&self) -> bool {
        self.method == "POST"
    }
    /// The value of `name` in the query string (no percent-decoding: our parameters are plain tokens).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

/// The (status, content type, body) answers of the routes that predate [`Response`].
impl From<(&'static str, &'static str, String)> for Response {
    fn from((status, content_type, body): (&'static str, &'static str, String)) -> Response {
        Response { status, content_type, body }
    }
}

impl Response {
    pub fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
    pub fn ok(body: impl Into<String>) -> Response {
        Response::text("200 OK", body)
    }
}

static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Starts the listener; `token` (None: no authentication, loopback only — the config refuses otherwise).
pub fn serve(addr: SocketAddr, token: Option<String>) -> std::io::Result<()> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "[mgmt] token_file: missing: refusing to serve the management API on {addr} (not loopback) without a token"
        )));
    }
    let _ = TOKEN.set(token);
    let listener =
        TcpListener::bind(addr).map_err(|e| std::io::Error::new(e.kind(), format!("[mgmt] listen {addr}: {e}")))?;
    std::thread::Builder::new().name("mgmt".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            handle(stream);
        }
    })?;
    Ok(())
}

fn handle(mut stream: TcpStream) {
    let response = match read_request(&mut stream) {
        Ok(req) => match authorize(&req) {
            Ok(()) => route(&req),
            Err(r) => r,
        },
        Err(r) => r,
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if response.status.starts_with("401") { "WWW-Authenticate: Bearer\r\n" } else { "" }
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(response.body.as_bytes()));
}

/// The one dispatch: a route is one line. Authentication has already been applied (see [`OPEN`]).
fn route(req: &Request) -> Response {
    match req.path.as_str() {
        "/metrics" => Response { status: "200 OK", content_type: "text/plain; version=0.0.4", body: metrics::render() },
        "/health" => super::ready::health_response(),
        "/ready" => super::ready::ready_response(),
        "/bans" => Response::ok(metrics::render_bans()),
        "/report" => super::report::page(req.param("since"), None),
        "/dashboard" => super::report::page(Some("1h"), Some(10)),
        "/reload" if req.is_post() => reload(),
        "/reload" => Response::text("405 Method Not Allowed", "use POST /reload\n"),
        "/pool/status" => Response::from(super::pool_admin::http_status()),
        "/directory/search" => {
            let full = format!("/directory/search?{}", req.query);
            Response::from(crate::directory::search::http_search(full.as_bytes()))
        }
        p if p.starts_with("/partners") => {
            let full = if req.query.is_empty() { p.to_string() } else { format!("{p}?{}", req.query) };
            Response::from(super::partners::route(req.is_post(), full.as_bytes()))
        }
        #[cfg(debug_assertions)]
        "/debug/panic" if req.is_post() => debug_panic(req),
        #[cfg(debug_assertions)]
        "/debug/directory-hold" if req.is_post() => debug_directory_hold(req),
        _ => Response::text(
            "404 Not Found",
            "try /health, /ready, /metrics, /bans, /report, /dashboard, /partners, /pool/status or POST /reload\n",
        ),
    }
}

/// Ok when the route is open or the request carries the token; else the refusal to send.
fn authorize(req: &Request) -> Result<(), Response> {
    match TOKEN.get() {
        Some(Some(token)) => authorize_with(req, token),
        _ => Ok(()),
    }
}

/// Pages a browser opens by address: it cannot add a bearer header, so these two accept `?token=` instead.
/// Only them, only on GET (they change nothing), so a token in a URL never authorizes `/reload` or a partner
/// change; the query is never logged (the refusal below logs the path alone).
pub const BROWSER_PAGES: &[&str] = &["/report", "/dashboard"];

fn authorize_with(req: &Request, token: &str) -> Result<(), Response> {
    if OPEN.contains(&req.path.as_str()) {
        return Ok(());
    }
    let bearer = req.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let in_url = (req.method == "GET" && BROWSER_PAGES.contains(&req.path.as_str()))
        .then(|| req.param("token").map(percent_decode))
        .flatten();
    let given = bearer.map(str::to_string).or(in_url);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => {
            tracing::warn!(path = %req.path, "management request refused: wrong token");
            Err(Response::text("403 Forbidden", "wrong token\n"))
        }
        None => Err(Response::text(
            "401 Unauthorized",
            "send Authorization: Bearer <the token in [mgmt] token_file> (GET /report and /dashboard also take ?token=)\n",
        )),
    }
}

/// `%XX` and `+` as a browser's form encoding writes them; a malformed escape is kept as is (it then simply
/// fails the comparison).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without an early exit, so the time taken says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_request(stream: &mut TcpStream) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(Response::text("431 Request Header Fields Too Large", "request head too large\n"));
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(Response::text("400 Bad Request", "incomplete request\n")),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
        }
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or(&[])).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut authorization = None;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap_or(usize::MAX);
        }
    }
    if length > BODY_BYTES_MAX {
        return Err(Response::text("413 Payload Too Large", format!("body over {BODY_BYTES_MAX} bytes\n")));
    }
    let mut body = buf.get(head_end + 4..).unwrap_or(&[]).to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(Response::text("400 Bad Request", "incomplete body\n")),
            Ok(n) => body.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
        }
    }
    body.truncate(length);
    Ok(Request { method, path: path.to_string(), query: query.to_string(), authorization, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type ReloadHook = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

static RELOAD: OnceLock<ReloadHook> = OnceLock::new();

/// What `POST /reload` runs (set once by the process that has something to reload).
pub fn on_reload(hook: ReloadHook) {
    let _ = RELOAD.set(hook);
}

fn reload() -> Response {
    match RELOAD.get().map(|f| f()) {
        Some(Ok(summary)) => Response::ok(format!("{summary}\n")),
        Some(Err(e)) => Response::text("422 Unprocessable Entity", format!("{e}\n")),
        None => Response::text("404 Not Found", "nothing to reload in this process\n"),
    }
}

/// Debug builds only: `POST /debug/panic?core=N` kills core N (see [`crate::shard::watch::request_panic`]).
#[cfg(debug_assertions)]
fn debug_panic(req: &Request) -> Response {
    match req.param("core").and_then(|v| v.parse().ok()) {
        Some(id) => {
            crate::shard::watch::request_panic(id);
            Response::ok(format!("core {id} will panic within a second (debug build)\n"))
        }
        None => Response::text("400 Bad Request", "use POST /debug/panic?core=N\n"),
    }
}

/// Debug builds only: `POST /debug/directory-hold?on=1|0` (see [`crate::directory::search::hold_gathers`]).
#[cfg(debug_assertions)]
fn debug_directory_hold(req: &Request) -> Response {
    match req.param("on") {
        Some("1") => {
            crate::directory::search::hold_gathers(true);
            Response::ok("SIP directory searches held (debug build)\n")
        }
        Some("0") => {
            crate::directory::search::hold_gathers(false);
            Response::ok("SIP directory searches released (debug build)\n")
        }
        _ => Response::text("400 Bad Request", "use POST /debug/directory-hold?on=1 or ?on=0\n"),
    }
}

/// A client for the CLI commands that call a running process's management API: sends the token from the same
/// config (`[mgmt] token_file`) the process uses. Returns the body of a 2xx answer, else the status and body.
pub fn call(cfg: &crate::config::Config, method: &str, path: &str, body: &str) -> Result<String, String> {
    let m = cfg.mgmt.as_ref().ok_or("config has no [mgmt] table: no management listener to call")?;
    let token = m.token().map_err(|e| e.to_string())?;
    // A wildcard listen address is reached on loopback.
    let mut addr = m.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("management listener {addr}: {e} (is the process running?)"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("management listener {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("management listener {addr}: {e}"))?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.lines().next().unwrap_or("").split_once(' ').map_or("", |(_, s)| s).to_string();
    if status.starts_with('2') {
        Ok(body.to_string())
    } else {
        Err(format!("{method} {path}: {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_and_params() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let r = Request {
            method: "POST".into(),
            path: "/debug/panic".into(),
            query: "x=1&core=3".into(),
            authorization: None,
            body: Vec::new(),
        };
        assert_eq!(r.param("core"), Some("3"));
        assert_eq!(r.param("cor"), None);
    }

    fn get(method: &str, path: &str, query: &str, authorization: Option<&str>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            authorization: authorization.map(str::to_string),
            body: Vec::new(),
        }
    }

    fn status(r: Result<(), Response>) -> &'static str {
        r.map_or_else(|resp| resp.status, |()| "ok")
    }

    #[test]
    fn token_in_the_url_only_for_get_of_the_browser_pages() {
        let t = "s3cret/+token";
        let enc = "s3cret%2F%2Btoken";
        assert_eq!(status(authorize_with(&get("GET", "/dashboard", &format!("token={enc}"), None), t)), "ok");
        assert_eq!(status(authorize_with(&get("GET", "/report", &format!("since=7d&token={enc}"), None), t)), "ok");
        assert!(status(authorize_with(&get("GET", "/report", "token=s3cret", None), t)).starts_with("403"));
        assert!(status(authorize_with(&get("GET", "/dashboard", "", None), t)).starts_with("401"));
        // Anywhere else, or as a POST, the URL's token counts for nothing.
        assert!(status(authorize_with(&get("POST", "/reload", &format!("token={enc}"), None), t)).starts_with("401"));
        assert!(status(authorize_with(&get("GET", "/bans", &format!("token={enc}"), None), t)).starts_with("401"));
        assert!(status(authorize_with(&get("POST", "/dashboard", &format!("token={enc}"), None), t)).starts_with("401"));
        // The header still works everywhere, and open routes need nothing.
        assert_eq!(status(authorize_with(&get("POST", "/reload", "", Some("Bearer s3cret/+token")), t)), "ok");
        assert_eq!(status(authorize_with(&get("GET", "/metrics", "", None), t)), "ok");
        assert_eq!(percent_decode("a%20b+c%zz%"), "a b c%zz%");
    }
}
