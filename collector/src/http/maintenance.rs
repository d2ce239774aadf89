//! `/api/maintenance`: list (GET), add (POST, JSON) and remove (DELETE
//! `/api/maintenance/{window}`) maintenance windows. Changes need `[http] token_file`
//! (the guard has checked the token by the time a handler runs); without one they are
//! refused, never open to whoever reaches the port. Windows from collector.toml are
//! listed but changed only in the file.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use crate::alerts::alertmanager::rfc3339;
use crate::maintenance::{self, Origin, Window};
use crate::service::{Shared, now_ms};

/// What `POST /api/maintenance` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWindow {
    scope: String,
    id: String,
    from: String,
    to: String,
    #[serde(default)]
    note: Option<String>,
}

/// The most running or planned windows HTTP may hold (a script in a loop must not
/// grow memory without bound).
const MAX_HTTP_WINDOWS: usize = 1_000;
/// Longest note kept.
const MAX_NOTE: usize = 500;

/// A window as the API shows it: the config keys plus epoch milliseconds.
pub fn window_json(w: &Window, now_ms: u64) -> Value {
    json!({
        "window": w.window,
        "scope": w.scope.as_str(),
        "id": w.id.to_string(),
        "from": rfc3339(w.from_ms),
        "to": rfc3339(w.to_ms),
        "from_ms": w.from_ms,
        "to_ms": w.to_ms,
        "note": w.note,
        "origin": w.origin,
        "active": w.covers(now_ms),
    })
}

pub async fn list(AxState(shared): AxState<Arc<Shared>>) -> Json<Value> {
    let now = now_ms();
    let windows: Vec<Value> = shared
        .maintenance
        .get()
        .iter()
        .map(|w| window_json(w, now))
        .collect();
    Json(json!({ "windows": windows }))
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// Validates a new window (each error names its field).
pub fn validate(n: &NewWindow, now_ms: u64) -> Result<Window, String> {
    let scope = maintenance::parse_scope(&n.scope).map_err(|e| format!("scope: {e}"))?;
    let id = maintenance::parse_subject(scope, &n.id).map_err(|e| format!("id: {e}"))?;
    let from_ms = maintenance::parse_time(&n.from).map_err(|e| format!("from: {e}"))?;
    let to_ms = maintenance::parse_time(&n.to).map_err(|e| format!("to: {e}"))?;
    maintenance::check_bounds(from_ms, to_ms).map_err(|e| format!("to: {e}"))?;
    if to_ms <= now_ms {
        return Err("to: the window is already over".into());
    }
    if n.note.as_ref().is_some_and(|t| t.len() > MAX_NOTE) {
        return Err(format!("note: longer than {MAX_NOTE} bytes"));
    }
    Ok(Window {
        window: format!("mw-{from_ms}-{:04x}", fastrand::u16(..)),
        scope,
        id,
        from_ms,
        to_ms,
        note: n.note.clone(),
        origin: Origin::Http,
    })
}

/// `POST /api/maintenance`; `has_token`: `[http] token_file` is set.
pub async fn add(shared: Arc<Shared>, has_token: bool, n: NewWindow) -> Response {
    if !has_token {
        return refuse(
            StatusCode::FORBIDDEN,
            "maintenance windows can be changed over HTTP only with [http] token_file set; \
             without it, add [[maintenance]] to collector.toml",
        );
    }
    let now = now_ms();
    let w = match validate(&n, now) {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let held = shared.maintenance.get();
    // Past windows stay (report needs them for past periods); only those still
    // to come or running are capped.
    let pending = held
        .iter()
        .filter(|w| w.origin == Origin::Http && w.to_ms > now)
        .count();
    if pending >= MAX_HTTP_WINDOWS {
        return refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("{MAX_HTTP_WINDOWS} windows are running or planned: delete some first"),
        );
    }
    // Kept in history before it takes effect.
    let store = {
        let w = w.clone();
        move |s: &mut crate::store::Store| s.save_maintenance(&w)
    };
    if let Err(e) = with_writable_history(&shared, store).await {
        tracing::error!("cannot store a maintenance window: {e:#}");
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the window");
    }
    tracing::info!(window = w.window, scope = w.scope.as_str(), id = %w.id, "maintenance window added");
    let body = window_json(&w, now);
    shared.maintenance.add(w);
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `DELETE /api/maintenance/{window}`.
pub async fn remove(shared: Arc<Shared>, has_token: bool, handle: String) -> Response {
    if !has_token {
        return refuse(
            StatusCode::FORBIDDEN,
            "maintenance windows can be changed over HTTP only with [http] token_file set",
        );
    }
    let windows = shared.maintenance.get();
    match windows.iter().find(|w| w.window == handle) {
        None => refuse(StatusCode::NOT_FOUND, format!("no window {handle:?}")),
        Some(w) if w.origin == Origin::Config => refuse(
            StatusCode::CONFLICT,
            format!("{handle} is in collector.toml: change it there"),
        ),
        Some(_) => {
            let forget = {
                let handle = handle.clone();
                move |s: &mut crate::store::Store| s.delete_maintenance(&handle).map(|_| ())
            };
            if let Err(e) = with_writable_history(&shared, forget).await {
                tracing::error!("cannot delete a maintenance window: {e:#}");
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot delete the window",
                );
            }
            shared.maintenance.remove(&handle);
            tracing::info!(window = handle, "maintenance window removed");
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Runs `f` on the history connection the pages read through, off the async
/// workers (the PostgreSQL client blocks).
async fn with_writable_history(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut crate::store::Store) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut shared.history.lock().expect("history lock")))
        .await
        .map_err(|e| anyhow::anyhow!("history task: {e}"))?
}

/// Axum's path extractor, for the route.
pub type WindowPath = Path<String>;
