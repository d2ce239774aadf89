//! One HTTP POST per attempt over hyper's HTTP/1 client: a fresh connection each
//! time (alerts are rare; no pool to go stale behind a load balancer), https through
//! tokio-rustls on ring with the system's CA certificates. Only the status code is
//! read: a receiver's answer body means nothing to the queue.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one attempt (connect, TLS, request, status line) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// An `http://` or `https://` URL to POST to, checked once at config time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, `/` when the URL has none.
    path: String,
}

impl Endpoint {
    /// Parses `url`; only http and https with a host are accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: expected an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} has no host"))?;
        // `Uri` keeps IPv6 brackets in the host; the socket and SNI want them off.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }

    /// The same server with `path` appended to this URL's path (Alertmanager's API
    /// under its base URL, which may itself sit under a prefix).
    pub fn join(&self, path: &str) -> Self {
        let base = self
            .path
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        Self {
            path: format!("{base}{path}"),
            ..self.clone()
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Why an attempt failed (the receiver's status when it answered).
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("bad server name for TLS: {0}")]
    ServerName(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {ATTEMPT_TIMEOUT:?}")]
    Timeout,
    #[error("answered {0}")]
    Status(u16),
}

/// Sends POSTs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    /// A client trusting the system's CA certificates (https receivers fail each
    /// attempt, with the reason logged, when the system has none).
    pub fn new() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Self::with_roots(roots)
    }

    /// A client trusting exactly `roots` (tests with their own CA).
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // ring supports the default protocol versions: cannot fail.
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            tls: Arc::new(config),
        }
    }

    /// POSTs `body` as JSON with `headers`; `Ok` only on a 2xx answer.
    pub async fn post(
        &self,
        to: &Endpoint,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<(), PostError> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(to, headers, body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(PostError::Status(status)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PostError::Timeout),
        }
    }

    async fn attempt(
        &self,
        to: &Endpoint,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<u16, PostError> {
        let mut req = Request::post(to.path.as_str())
            .header(HOST, to.authority())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("faultline-collector/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_static(name),
                HeaderValue::try_from(value.as_str()).map_err(hyper::http::Error::from)?,
            );
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let tcp = TcpStream::connect((to.host.as_str(), to.port))
            .await
            .map_err(PostError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !to.tls {
            return send(TokioIo::new(tcp), req).await;
        }
        let name = rustls::pki_types::ServerName::try_from(to.host.clone())
            .map_err(|e| PostError::ServerName(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(PostError::Tls)?;
        send(TokioIo::new(stream), req).await
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

async fn send<IO>(io: TokioIo<IO>, req: Request<Full<Bytes>>) -> Result<u16, PostError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection is driven beside the request and dropped with it.
    let driver = tokio::spawn(conn);
    let answer = sender.send_request(req).await;
    driver.abort();
    Ok(answer?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_paths() {
        let e = Endpoint::parse("https://psa.example/hooks/faultline?x=1").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (true, "psa.example", 443));
        assert_eq!(e.path, "/hooks/faultline?x=1");
        assert_eq!(e.to_string(), "https://psa.example/hooks/faultline?x=1");
        let e = Endpoint::parse("http://127.0.0.1:9093").unwrap();
        assert_eq!((e.port, e.path.as_str()), (9093, "/"));
        assert_eq!(e.join("/api/v2/alerts").path, "/api/v2/alerts");
        let e = Endpoint::parse("http://am.example/prefix/").unwrap();
        assert_eq!(e.join("/api/v2/alerts").path, "/prefix/api/v2/alerts");
        let e = Endpoint::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(
            (e.host.as_str(), e.authority()),
            ("::1", "[::1]:8080".into())
        );
        for bad in ["ftp://x/", "psa.example/hook", "http:///nohost", ""] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
