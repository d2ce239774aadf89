//! HTTP: the dashboard at `/`, the site, provider and incident pages (and their
//! JSON under `/api/`), `/api/state`, `/api/incidents`, `/api/history`,
//! `/api/series` and Prometheus text at `/metrics`. Handlers read a [`Snapshot`] taken after the
//! latest evaluation (and the ingest counters): nothing renders under the engine's
//! lock. Access (Host allow-list, token, security headers) is [`guard`]'s job.

pub mod chart;
pub mod guard;
pub mod maintenance;
pub mod metrics;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::{Value, json};

use crate::config::Config;
use crate::engine::Presence;
use crate::service::{Shared, now_ms};
use guard::Guard;

const DASHBOARD: &str = include_str!("dashboard.html");
const LOGIN: &str = include_str!("login.html");

/// What a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// The pages, the API and `/metrics` (one node, correlators).
    Everything,
    /// `/metrics` alone: a cluster site worker's ingest counters and its sites'
    /// per-probe series (it holds no verdicts).
    Metrics,
}

/// Binds `listen` and serves `what` in the background; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    shared: Arc<Shared>,
    cfg: Config,
    what: Serve,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let guard = Arc::new(Guard::new(
        addr,
        &cfg.http_hosts,
        cfg.http_token.clone(),
        &[DASHBOARD, LOGIN, pages::STYLE],
    ));
    tracing::info!(
        "{} on http://{addr}/ ({}; Host names served: {})",
        if what == Serve::Metrics {
            "/metrics"
        } else {
            "dashboard"
        },
        if guard.has_token() {
            "token_file: every path but /metrics needs the token"
        } else {
            "no token_file: open to whoever reaches it"
        },
        guard.hosts().join(", ")
    );
    let login_post = {
        let g = guard.clone();
        move |headers: HeaderMap, Form(f): Form<LoginForm>| async move { login(&g, &headers, &f) }
    };
    let has_token = guard.has_token();
    let maintenance_add = move |AxState(s): AxState<Arc<Shared>>,
                                Json(n): Json<maintenance::NewWindow>| {
        maintenance::add(s, has_token, n)
    };
    let maintenance_remove = move |AxState(s): AxState<Arc<Shared>>,
                                   Path(w): maintenance::WindowPath| {
        maintenance::remove(s, has_token, w)
    };
    let app = match what {
        Serve::Everything => Router::new()
            .route("/", get(|| async { Html(DASHBOARD) }))
            .route("/login", get(login_page).post(login_post))
            .route("/logout", post(logout))
            .route("/api/state", get(api_state))
            .route("/api/incidents", get(api_incidents))
            .route("/api/history", get(api_history))
            .route("/api/counters", get(api_counters))
            .route("/api/series", get(api_series))
            .route("/sites/:site", get(site_page))
            .route("/api/sites/:site", get(api_site))
            .route("/providers/:id", get(provider_page))
            .route("/providers/:id/availability.csv", get(provider_csv))
            .route("/api/providers/:id", get(api_provider))
            .route("/incidents/:id", get(incident_page))
            .route("/api/incidents/:id", get(api_incident))
            .route(
                "/api/maintenance",
                get(maintenance::list).post(maintenance_add),
            )
            .route(
                "/api/maintenance/:window",
                axum::routing::delete(maintenance_remove),
            ),
        Serve::Metrics => Router::new(),
    };
    let app = app
        .fallback(not_found)
        .route("/metrics", get(metrics::serve))
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.recv().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!("http server: {e}");
        }
    });
    Ok(addr)
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// The login form; `error` shows that the last token was wrong.
fn login_html(error: bool) -> Html<String> {
    let msg = if error {
        "<p class=\"err\">That is not the token.</p>"
    } else {
        ""
    };
    Html(LOGIN.replace("<!--error-->", msg))
}

async fn login_page() -> Html<String> {
    login_html(false)
}

/// Checks the token from the form; sets the session cookie and goes to `/`.
fn login(g: &Guard, headers: &HeaderMap, f: &LoginForm) -> Response {
    if !g.has_token() {
        return Redirect::to("/").into_response();
    }
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    match g.login(&f.token, now_ms(), https) {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        None => (StatusCode::UNAUTHORIZED, login_html(true)).into_response(),
    }
}

async fn logout() -> Response {
    let gone = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        guard::COOKIE
    );
    ([(header::SET_COOKIE, gone)], Redirect::to("/login")).into_response()
}

/// Everything the dashboard shows, as JSON (from the latest snapshot).
pub fn state_json(shared: &Shared) -> Value {
    let (e, _) = shared.snapshot.get();
    let sites: Vec<Value> = e
        .sites()
        .iter()
        .map(|(id, s)| {
            let verdict = e.site_verdicts.get(id).cloned();
            let (presence, offline_since) = match s.presence {
                Presence::Online => ("online", None),
                Presence::Offline { since_ms, .. } => ("offline", Some(since_ms)),
            };
            json!({
                "id": id, "isp": s.isp, "customer": s.customer, "presence": presence,
                "offline_since_ms": offline_since,
                "last_report_ms": s.last_report_ms, "clock_skew_ms": s.clock_skew_ms,
                "window": s.last_window.map(|(b, q, st)| json!({"boot": b, "seq": q, "start_ms": st})),
                "boot": s.boot,
                "missing_windows": s.missing_windows,
                "window_ms": s.window_ms,
                "verdict": verdict,
                "providers": s.health.iter().flat_map(|h| &h.providers).map(|p| (p.provider.to_string(), json!(p.health))).collect::<serde_json::Map<_, _>>(),
                "layers": s.health.as_ref().map(|h| json!({"lan": h.lan, "net": h.net, "host_busy": h.host_busy})),
                "targets": s.targets,
            })
        })
        .collect();
    json!({
        "now_ms": now_ms(),
        "started_ms": shared.started_ms,
        "window_ms": e.window_ms,
        "providers": e.providers,
        "isps": e.isps,
        "routes": e.routes,
        "sites": sites,
        "open_incidents": e.open_incidents,
    })
}

async fn api_state(AxState(shared): AxState<Arc<Shared>>) -> Json<Value> {
    Json(state_json(&shared))
}

async fn api_incidents(AxState(shared): AxState<Arc<Shared>>) -> Response {
    let res = with_history(shared, |store, snapshot| {
        let recent = store
            .incidents(None, 0, u64::MAX / 2, 100)
            .unwrap_or_default();
        Ok(json!({"open": snapshot.open_incidents, "recent": recent}))
    })
    .await;
    res.map_or_else(Fail::json, |v| Json(v).into_response())
}

/// Ingest counters only: cheap to poll.
async fn api_counters(AxState(shared): AxState<Arc<Shared>>) -> Json<Value> {
    let (e, c) = shared.snapshot.get();
    let rejected: u64 = c.rejected.values().sum();
    let h = &shared.history_stats;
    Json(json!({
        "reports": c.reports, "statuses": c.statuses, "rejected": rejected,
        "rejected_by_reason": c.rejected, "late": c.late, "clock_skew": c.skewed,
        "evaluations": c.evaluations, "sites": e.sites().len(),
        "stored": h.stored.load(Ordering::Relaxed),
        "acked": h.acked.load(Ordering::Relaxed),
        "missing_windows": c.missing_windows,
    }))
}

async fn api_history(AxState(shared): AxState<Arc<Shared>>) -> Response {
    let res = with_history(shared, |store, _| {
        let changes = store.recent_changes(200).unwrap_or_default();
        Ok(json!({"changes": changes}))
    })
    .await;
    res.map_or_else(Fail::json, |v| Json(v).into_response())
}

/// Why a page or API answer could not be made.
#[derive(Debug)]
enum Fail {
    NotFound(String),
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        Fail::Internal(e)
    }
}

impl Fail {
    fn status(&self) -> (StatusCode, String) {
        match self {
            Fail::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            Fail::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Fail::Internal(e) => {
                tracing::error!("http: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the collector could not read its history: {e:#}"),
                )
            }
        }
    }

    fn page(self) -> Response {
        let (code, msg) = self.status();
        (code, Html(pages::not_found(&msg))).into_response()
    }

    fn json(self) -> Response {
        let (code, msg) = self.status();
        (code, Json(json!({"error": msg}))).into_response()
    }
}

/// Runs `f` on the history connection and the latest snapshot, off the async
/// workers (a week of a site's windows takes a moment to read).
async fn with_history<T: Send + 'static>(
    shared: Arc<Shared>,
    f: impl FnOnce(&crate::store::Store, &crate::snapshot::Snapshot) -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(move || {
        let (snap, _) = shared.snapshot.get();
        let store = shared.history.lock().expect("history lock");
        f(&store, &snap)
    })
    .await
    .map_err(|e| Fail::Internal(anyhow::anyhow!("page task: {e}")))?
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let f = Fail::NotFound(format!("No page at {}", uri.path()));
    if uri.path().starts_with("/api/") {
        f.json()
    } else {
        f.page()
    }
}

#[derive(Debug, serde::Deserialize)]
struct SiteQuery {
    range: Option<String>,
    to_ms: Option<u64>,
}

fn site_data(
    shared: Arc<Shared>,
    site: String,
    q: SiteQuery,
) -> impl std::future::Future<Output = Result<pages::SitePage, Fail>> {
    let range = q.range.unwrap_or_else(|| "1h".to_owned());
    let to_ms = q.to_ms.unwrap_or_else(now_ms);
    async move {
        if !pages::RANGES.iter().any(|r| r.0 == range) {
            return Err(Fail::BadRequest(format!(
                "range {range:?}: use 1h, 24h or 7d"
            )));
        }
        with_history(shared, move |store, snap| {
            pages::site_page(store, snap, &site, &range, to_ms)?
                .ok_or_else(|| Fail::NotFound(format!("No site {site:?}")))
        })
        .await
    }
}

async fn site_page(
    AxState(shared): AxState<Arc<Shared>>,
    Path(site): Path<String>,
    Query(q): Query<SiteQuery>,
) -> Response {
    match site_data(shared, site, q).await {
        Ok(p) => Html(pages::site_html(&p)).into_response(),
        Err(f) => f.page(),
    }
}

async fn api_site(
    AxState(shared): AxState<Arc<Shared>>,
    Path(site): Path<String>,
    Query(q): Query<SiteQuery>,
) -> Response {
    match site_data(shared, site, q).await {
        Ok(p) => Json(p).into_response(),
        Err(f) => f.json(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct SeriesQuery {
    site: String,
    target: String,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// Bucket the values down to at most this many points (default: raw rows).
    points: Option<usize>,
}

/// One target's values over a period: raw rows, or buckets with `points`.
async fn api_series(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<SeriesQuery>,
) -> Response {
    let to_ms = q.to_ms.unwrap_or_else(now_ms);
    let from_ms = q.from_ms.unwrap_or(to_ms.saturating_sub(3_600_000));
    if from_ms >= to_ms {
        return Fail::BadRequest("from_ms must be before to_ms".into()).json();
    }
    let r = with_history(shared, move |store, snap| {
        let live = snap.sites.keys().any(|s| s.as_str() == q.site);
        if !live && !store.site_known(&q.site)? {
            return Err(Fail::NotFound(format!("No site {:?}", q.site)));
        }
        let rows = store.series(&q.site, &q.target, from_ms, to_ms)?;
        let incidents: Vec<Value> = store
            .incidents_worst(None, from_ms, to_ms, 500)?
            .into_iter()
            .filter(|(i, _)| i.sites.iter().any(|s| s.as_str() == q.site))
            .map(|(i, w)| {
                json!({"id": i.id, "scope": i.scope, "subject": i.target_id, "state": w,
                       "opened_ms": i.opened_ms, "closed_ms": i.closed_ms})
            })
            .collect();
        let body = match q.points {
            Some(n) => {
                let (step, points) = pages::buckets(&rows, from_ms, to_ms, n.clamp(1, 10_000));
                json!({"step_ms": step, "points": points})
            }
            None => json!({"points": rows}),
        };
        let mut v = json!({"site": q.site, "target": q.target, "from_ms": from_ms, "to_ms": to_ms, "incidents": incidents});
        if let (Some(o), Value::Object(b)) = (v.as_object_mut(), body) {
            o.extend(b);
        }
        Ok(v)
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(f) => f.json(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ProviderQuery {
    since: Option<String>,
}

async fn provider_data(
    shared: Arc<Shared>,
    id: String,
    q: ProviderQuery,
) -> Result<pages::ProviderPage, Fail> {
    let since = q.since.unwrap_or_else(|| "7d".to_owned());
    if let Err(e) = crate::report::parse_span(&since) {
        return Err(Fail::BadRequest(format!("since: {e}")));
    }
    let now = now_ms();
    let windows = shared.maintenance.get();
    with_history(shared, move |store, snap| {
        pages::provider_page(store, snap, &id, &since, now, &windows)?
            .ok_or_else(|| Fail::NotFound(format!("No provider {id:?}")))
    })
    .await
}

async fn provider_page(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<ProviderQuery>,
) -> Response {
    match provider_data(shared, id, q).await {
        Ok(p) => Html(pages::provider_html(&p)).into_response(),
        Err(f) => f.page(),
    }
}

async fn api_provider(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<ProviderQuery>,
) -> Response {
    match provider_data(shared, id, q).await {
        Ok(p) => Json(p).into_response(),
        Err(f) => f.json(),
    }
}

/// The provider's availability as `report --csv` writes it.
async fn provider_csv(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<ProviderQuery>,
) -> Response {
    match provider_data(shared, id, q).await {
        Ok(p) => {
            let name: String = p
                .provider
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"availability-{name}.csv\""),
                    ),
                ],
                crate::report::csv(&[p.availability]),
            )
                .into_response()
        }
        Err(f) => f.page(),
    }
}

async fn incident_data(shared: Arc<Shared>, id: String) -> Result<pages::IncidentPage, Fail> {
    let now = now_ms();
    with_history(shared, move |store, snap| {
        pages::incident_page(store, snap, &id, now)?
            .ok_or_else(|| Fail::NotFound(format!("No incident {id:?}")))
    })
    .await
}

async fn incident_page(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match incident_data(shared, id).await {
        Ok(p) => Html(pages::incident_html(&p, now_ms())).into_response(),
        Err(f) => f.page(),
    }
}

async fn api_incident(AxState(shared): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match incident_data(shared, id).await {
        Ok(p) => Json(p).into_response(),
        Err(f) => f.json(),
    }
}
