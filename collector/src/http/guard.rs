//! Who may read the collector's HTTP pages, and how the browser must treat them.
//!
//! - **Host allow-list** (every path): loopback names, the listen address and
//!   `[http] hosts`. Anything else gets 421, so a DNS-rebinding page on another
//!   name cannot read the API through a browser that reaches the collector.
//! - **Token** (`[http] token_file`; every path but `/metrics` and `/login`):
//!   `Authorization: Bearer <token>`, or the session cookie `/login` sets from it
//!   (HttpOnly, SameSite=Strict, expiring; an HMAC under the token, so a new token
//!   ends every session). Pages redirect to `/login`; APIs answer 401.
//! - **Headers** on every answer: a Content-Security-Policy allowing only the
//!   pages' own inline script and style (by hash) and same-origin fetches,
//!   `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: no-referrer`.
//!
//! It decides access; it does not render pages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use ring::hmac;

use crate::config::Secret;
use crate::passwd::constant_time_eq;

/// The session cookie's name.
pub const COOKIE: &str = "faultline_session";
/// How long a session from `/login` lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Paths any client reaching an allowed Host may read without the token.
const OPEN_PATHS: &[&str] = &["/metrics", "/login"];

/// Normalises one `[http] hosts` entry (or a Host header): lower case, no port, no
/// brackets around an IPv6 address, no trailing dot.
pub fn host_name(entry: &str) -> Result<String, String> {
    let e = entry.trim();
    let name = if let Some(v6) = e.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("{entry:?}: unclosed '['"))?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return Err(format!("{entry:?}: expected [ipv6] or [ipv6]:port"));
        }
        h
    } else {
        match e.rsplit_once(':') {
            Some((h, p)) if is_port(p) && !h.contains(':') => h,
            _ => e,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && (name.parse::<IpAddr>().is_ok()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !ok {
        return Err(format!(
            "{entry:?} is not a host name or IP address (e.g. \"faultline.msp.example\")"
        ));
    }
    Ok(name)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The access rules of one HTTP listener.
#[derive(Debug)]
pub struct Guard {
    hosts: Vec<String>,
    token: Option<Token>,
    csp: HeaderValue,
}

struct Token {
    secret: Secret,
    /// Signs session cookies; derived from the token.
    key: hmac::Key,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Guard {
    /// Rules for a listener bound to `listen`, with `[http] hosts` and token, whose
    /// pages are `pages` (their inline scripts and styles are allowed by hash).
    pub fn new(
        listen: SocketAddr,
        hosts: &[String],
        token: Option<Secret>,
        pages: &[&str],
    ) -> Self {
        let mut allowed: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        if !listen.ip().is_unspecified() {
            allowed.push(listen.ip().to_string());
        }
        allowed.extend(hosts.iter().cloned());
        allowed.sort();
        allowed.dedup();
        let token = token.map(|secret| Token {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            secret,
        });
        Self {
            hosts: allowed,
            token,
            csp: csp(pages),
        }
    }

    /// Whether the token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The Host names served.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn host_allowed(&self, headers: &HeaderMap) -> Result<(), String> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| "no Host header".to_owned())?;
        let name = host_name(host).map_err(|_| format!("bad Host {host:?}"))?;
        if self.hosts.contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "Host {name:?} is not served here: add it to [http] hosts in the collector's config"
            ))
        }
    }

    /// Whether the request carries the token or a live session from it.
    fn authorized(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        let Some(t) = &self.token else { return true };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|v| constant_time_eq(v.trim().as_bytes(), t.secret.expose().as_bytes()));
        bearer || cookies(headers, COOKIE).any(|v| session_valid(&t.key, v, now_ms))
    }

    /// Checks `token` (from the login form); on success the `Set-Cookie` value for a
    /// new session. `secure`: the page was reached over HTTPS (via a proxy).
    pub fn login(&self, token: &str, now_ms: u64, secure: bool) -> Option<String> {
        let t = self.token.as_ref()?;
        if !constant_time_eq(token.trim().as_bytes(), t.secret.expose().as_bytes()) {
            return None;
        }
        let expires = now_ms + SESSION_TTL.as_millis() as u64;
        Some(format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            session_value(&t.key, expires),
            SESSION_TTL.as_secs(),
            if secure { "; Secure" } else { "" }
        ))
    }
}

/// `{expires_ms}.{base64url HMAC-SHA256(key, "faultline-session." expires_ms)}`.
fn session_value(key: &hmac::Key, expires_ms: u64) -> String {
    let tag = hmac::sign(key, format!("faultline-session.{expires_ms}").as_bytes());
    format!(
        "{expires_ms}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

fn session_valid(key: &hmac::Key, value: &str, now_ms: u64) -> bool {
    let Some((exp, tag)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expires), Ok(tag)) = (
        exp.parse::<u64>(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag),
    ) else {
        return false;
    };
    expires > now_ms
        && hmac::verify(key, format!("faultline-session.{expires}").as_bytes(), &tag).is_ok()
}

/// Values of cookie `name` in the request.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The Content-Security-Policy for `pages`: nothing but their own inline script and
/// style blocks (by SHA-256) and same-origin requests.
fn csp(pages: &[&str]) -> HeaderValue {
    let mut scripts = String::new();
    let mut styles = String::new();
    for page in pages {
        for (tag, out) in [("script", &mut scripts), ("style", &mut styles)] {
            for block in inline_blocks(page, tag) {
                let d = ring::digest::digest(&ring::digest::SHA256, block.as_bytes());
                out.push_str(&format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
                ));
            }
        }
    }
    let none = |s: &str| {
        if s.is_empty() {
            " 'none'".to_owned()
        } else {
            s.to_owned()
        }
    };
    let policy = format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src 'self' data:; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        none(&scripts),
        none(&styles)
    );
    // Built from base64 and fixed ASCII only.
    HeaderValue::from_str(&policy).expect("the CSP is ASCII")
}

/// The text inside each `<tag>…</tag>` (attribute-less) block of `page`.
pub fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The middleware: Host, then token, then the handler; security headers on every
/// answer.
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut res = match g.host_allowed(req.headers()) {
        Err(why) => (StatusCode::MISDIRECTED_REQUEST, why).into_response(),
        Ok(()) => {
            let path = req.uri().path();
            if OPEN_PATHS.contains(&path) || g.authorized(req.headers(), now_ms()) {
                next.run(req).await
            } else if req.method() == Method::GET && !path.starts_with("/api/") {
                Redirect::to("/login").into_response()
            } else {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    "a token is needed: Authorization: Bearer <token>, or log in at /login",
                )
                    .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"faultline\""),
                );
                r
            }
        }
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, g.csp.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn guard_with_token() -> Guard {
        Guard::new(
            "127.0.0.1:8080".parse().unwrap(),
            &["dash.example".into()],
            Some(Secret::new("0123456789abcdef")),
            &[],
        )
    }

    #[test]
    fn host_names_are_normalised() {
        assert_eq!(host_name("LocalHost:8080").unwrap(), "localhost");
        assert_eq!(host_name("[::1]:80").unwrap(), "::1");
        assert_eq!(host_name("::1").unwrap(), "::1");
        assert_eq!(host_name("dash.example.").unwrap(), "dash.example");
        for bad in ["", "a b", "http://x", "x/y", "[::1", "[::1]x", "é.example"] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_listed_hosts_are_served() {
        let g = guard_with_token();
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "dash.example",
            "DASH.example:443",
        ] {
            assert!(
                g.host_allowed(&headers(&[(header::HOST, ok)])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "127.0.0.2",
            "dash.example.evil.example",
            "localhost.evil.example",
        ] {
            assert!(
                g.host_allowed(&headers(&[(header::HOST, bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(g.host_allowed(&HeaderMap::new()).is_err());
        // The listen address counts unless it is 0.0.0.0.
        let any = Guard::new("0.0.0.0:80".parse().unwrap(), &[], None, &[]);
        assert!(
            any.host_allowed(&headers(&[(header::HOST, "0.0.0.0")]))
                .is_err()
        );
        let lan = Guard::new("10.0.0.5:80".parse().unwrap(), &[], None, &[]);
        assert!(
            lan.host_allowed(&headers(&[(header::HOST, "10.0.0.5")]))
                .is_ok()
        );
    }

    #[test]
    fn bearer_or_session_cookie() {
        let g = guard_with_token();
        let now = 1_000_000;
        assert!(!g.authorized(&HeaderMap::new(), now));
        let ok = headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdef")]);
        assert!(g.authorized(&ok, now));
        let bad = headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdeX")]);
        assert!(!g.authorized(&bad, now));
        let basic = headers(&[(header::AUTHORIZATION, "Basic 0123456789abcdef")]);
        assert!(!g.authorized(&basic, now));

        assert!(g.login("wrong", now, false).is_none());
        let set = g.login("0123456789abcdef", now, false).unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"));
        assert!(
            g.login("0123456789abcdef", now, true)
                .unwrap()
                .ends_with("; Secure")
        );
        let value = set.split(';').next().unwrap().to_owned();
        let with = |c: &str| headers(&[(header::COOKIE, c)]);
        assert!(g.authorized(&with(&value), now));
        assert!(g.authorized(&with(&format!("theme=dark; {value}")), now));
        // Expired, tampered, or signed under another token: refused.
        let expires = now + SESSION_TTL.as_millis() as u64;
        assert!(!g.authorized(&with(&value), expires));
        let (name_exp, tag) = value.rsplit_once('.').unwrap();
        let later = format!("{COOKIE}={}.{tag}", expires + 1);
        assert!(!g.authorized(&with(&later), now), "{name_exp}");
        let other = Guard::new(
            "127.0.0.1:8080".parse().unwrap(),
            &[],
            Some(Secret::new("another-token-0123")),
            &[],
        );
        assert!(!other.authorized(&with(&value), now));
        // Without a token everything is open.
        let open = Guard::new("127.0.0.1:8080".parse().unwrap(), &[], None, &[]);
        assert!(open.authorized(&HeaderMap::new(), now));
        assert!(open.login("x", now, false).is_none());
    }

    #[test]
    fn csp_allows_exactly_the_pages_inline_blocks() {
        let page = "<style>a{}</style><script>1</script><p>x</p><script>2</script>";
        assert_eq!(inline_blocks(page, "script"), ["1", "2"]);
        let v = csp(&[page]);
        let v = v.to_str().unwrap();
        let sha = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
        };
        assert!(
            v.contains(&format!(
                "script-src 'sha256-{}' 'sha256-{}';",
                sha("1"),
                sha("2")
            )),
            "{v}"
        );
        assert!(
            v.contains(&format!("style-src 'sha256-{}';", sha("a{}"))),
            "{v}"
        );
        assert!(v.contains("frame-ancestors 'none'") && v.starts_with("default-src 'none'"));
        assert!(csp(&[]).to_str().unwrap().contains("script-src 'none'"));
    }
}
