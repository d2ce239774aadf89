//! The dashboard and API over real HTTP requests to a running collector: with
//! `[http] token_file` every path but `/metrics` needs the token (Bearer, or the
//! session cookie `/login` sets); only listed Host names are served; every answer
//! carries the security headers, and the CSP admits exactly the page's own inline
//! script and style.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use faultline_tests::{Child, HttpResponse, TempDir, free_tcp_port, wait_for_tcp};

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-token-for-the-tests-0123";

/// One HTTP/1.1 request; `lines` are extra header lines.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    lines: &[String],
    body: &str,
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(h) = host {
        req += &format!("Host: {h}\r\n");
    }
    for l in lines {
        req += &format!("{l}\r\n");
    }
    if !body.is_empty() {
        req += &format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    HttpResponse::parse(&out)
}

struct Dashboard {
    _child: Child,
    _dir: TempDir,
    addr: SocketAddr,
    host: String,
}

impl Dashboard {
    fn start() -> Self {
        let dir = TempDir::new("http");
        let d = dir.path();
        std::fs::write(d.join("http.token"), format!("{TOKEN}\n")).unwrap();
        let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        std::fs::write(
            d.join("c.toml"),
            format!(
                "[http]\nlisten = \"127.0.0.1:{http}\"\ntoken_file = \"http.token\"\n\
                 hosts = [\"dash.msp.example\"]\n[storage]\npath = \"h.db\"\n\
                 [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n"
            ),
        )
        .unwrap();
        let child = Child::spawn(
            "faultline-collector",
            Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
                .args(["run", "--config", "c.toml"])
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], http));
        assert!(wait_for_tcp(addr, LONG), "collector HTTP did not come up");
        Self {
            _child: child,
            _dir: dir,
            addr,
            host: addr.to_string(),
        }
    }

    fn get(&self, path: &str, lines: &[String]) -> HttpResponse {
        request(self.addr, "GET", path, Some(&self.host), lines, "")
    }

    fn post(&self, path: &str, lines: &[String], body: &str) -> HttpResponse {
        request(self.addr, "POST", path, Some(&self.host), lines, body)
    }
}

fn bearer(t: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {t}")]
}

#[test]
fn every_path_but_metrics_needs_the_token_or_a_session() {
    let d = Dashboard::start();
    // Nothing without the token, except /metrics and the login form.
    for path in [
        "/api/state",
        "/api/incidents",
        "/api/history",
        "/api/counters",
    ] {
        let a = d.get(path, &[]);
        assert_eq!(a.status, 401, "{path}");
        assert!(
            a.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
        assert!(!a.body.contains("sites"), "{path}: {}", a.body);
        assert_eq!(
            d.get(path, &bearer("s3cret-token-for-the-tests-0124"))
                .status,
            401
        );
    }
    let a = d.get("/", &[]);
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/login"));
    let m = d.get("/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("faultline_collector_messages_total"),
        "{}",
        m.body
    );
    let login = d.get("/login", &[]);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("name=\"token\""));

    // The token as a Bearer header.
    let a = d.get("/api/state", &bearer(TOKEN));
    assert_eq!(a.status, 200, "{}", a.body);
    let state: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert!(state["sites"].is_array(), "{state}");
    assert_eq!(d.get("/api/counters", &bearer(TOKEN)).status, 200);

    // A session from the login form.
    let wrong = d.post("/login", &[], "token=not-the-token");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("not the token"));
    let ok = d.post("/login", &[], &format!("token={TOKEN}"));
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location"), Some("/"));
    let set = ok
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(
        !set.contains(TOKEN),
        "the cookie must not be the token: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let with_cookie = vec![format!("Cookie: theme=dark; {cookie}")];
    assert_eq!(d.get("/api/state", &with_cookie).status, 200);
    let page = d.get("/", &with_cookie);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sites × providers"));
    // A cookie with its expiry pushed out no longer matches its signature.
    let (value, tag) = cookie.split_once('=').unwrap().1.split_once('.').unwrap();
    let later: u64 = value.parse::<u64>().unwrap() + 1;
    let forged = vec![format!("Cookie: faultline_session={later}.{tag}")];
    assert_eq!(d.get("/api/state", &forged).status, 401);

    // No page changes state: writes to the API are not routes.
    assert_eq!(d.post("/api/state", &bearer(TOKEN), "x=1").status, 405);
    let out = d.post("/logout", &with_cookie, "");
    assert_eq!(out.status, 303);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
}

#[test]
fn only_listed_host_names_are_served() {
    let d = Dashboard::start();
    let port = d.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "dash.msp.example".to_owned(),
        format!("DASH.msp.example:{port}"),
    ] {
        let a = request(
            d.addr,
            "GET",
            "/api/counters",
            Some(&host),
            &bearer(TOKEN),
            "",
        );
        assert_eq!(a.status, 200, "{host}");
    }
    // A DNS-rebinding page on another name: refused even with the token, and
    // /metrics too.
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        "dash.msp.example.evil.example".to_owned(),
        "127.0.0.2".to_owned(),
    ] {
        for path in ["/api/state", "/metrics", "/login"] {
            let a = request(d.addr, "GET", path, Some(&host), &bearer(TOKEN), "");
            assert_eq!(a.status, 421, "{host}{path}");
            assert!(!a.body.contains("faultline_collector"), "{}", a.body);
        }
    }
    // No Host at all (HTTP/1.1 requires it).
    let a = request(d.addr, "GET", "/api/state", None, &bearer(TOKEN), "");
    assert!(a.status == 421 || a.status == 400, "{}", a.status);
}

fn sha256_b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

/// The text of each `<tag>` block in `page`.
fn blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    page.split(&format!("<{tag}>"))
        .skip(1)
        .filter_map(|b| b.split_once(&format!("</{tag}>")).map(|(x, _)| x))
        .collect()
}

#[test]
fn every_answer_carries_the_security_headers_and_the_csp_fits_the_pages() {
    let d = Dashboard::start();
    let answers = [
        ("/ (logged in)", d.get("/", &bearer(TOKEN))),
        ("/login", d.get("/login", &[])),
        ("/api/state", d.get("/api/state", &bearer(TOKEN))),
        ("/metrics", d.get("/metrics", &[])),
        ("401", d.get("/api/state", &[])),
        (
            "421",
            request(d.addr, "GET", "/", Some("evil.example"), &[], ""),
        ),
    ];
    for (what, a) in &answers {
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{what}");
        let csp = a.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{what}: {csp}"
        );
    }
    // The pages run under their CSP: every inline script and style block is
    // admitted by its hash, and no inline style attribute (which it would block)
    // is left.
    for (what, a) in &answers[..2] {
        let csp = a.header("content-security-policy").unwrap();
        assert_eq!(a.status, 200, "{what}");
        for tag in ["script", "style"] {
            for b in blocks(&a.body, tag) {
                assert!(
                    csp.contains(&format!("'sha256-{}'", sha256_b64(b))),
                    "{what}: a <{tag}> block is not in the CSP"
                );
            }
        }
        assert!(
            !a.body.contains(" style=\""),
            "{what} has a style attribute"
        );
        assert!(
            !a.body.contains(" onclick="),
            "{what} has an inline handler"
        );
    }
    assert!(!blocks(&answers[0].1.body, "script").is_empty());
    assert!(
        answers[2]
            .1
            .header("cache-control")
            .is_some_and(|v| v.contains("no-store"))
    );
}
