//! Maintenance windows over HTTP against a running collector (its embedded broker):
//! changes need `[http] token_file` and its token, are refused outright without
//! one, are validated field by field, and survive a restart; windows from
//! collector.toml are listed but not removable over HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::{Child, TempDir, free_tcp_port, http_request, wait_for_tcp};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-token-for-the-tests-0123";

/// One request; returns the status and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: &str,
) -> (u16, String) {
    let headers: Vec<String> = token
        .map(|t| format!("Authorization: Bearer {t}"))
        .into_iter()
        .collect();
    let r = http_request(addr, method, path, &headers, json);
    (r.status, r.body)
}

fn start(dir: &Path, token: bool) -> (Child, SocketAddr) {
    std::fs::write(dir.join("http.token"), format!("{TOKEN}\n")).unwrap();
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let token_line = if token {
        "token_file = \"http.token\"\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("c.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n{token_line}[storage]\npath = \"h.db\"\n\
             [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n\
             [[maintenance]]\nscope = \"isp\"\nid = \"IspA\"\nfrom = \"2026-12-01T02:00:00Z\"\n\
             to = \"2026-12-01T04:00:00Z\"\nnote = \"fibre works\"\n"
        ),
    )
    .unwrap();
    let child = Child::spawn(
        "faultline-collector",
        Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
            .args(["run", "--config", "c.toml"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    assert!(wait_for_tcp(addr, LONG), "collector HTTP did not come up");
    (child, addr)
}

fn windows(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = request(addr, "GET", "/api/maintenance", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["windows"].as_array().unwrap().clone()
}

const NEW: &str = r#"{"scope": "provider", "id": "voipco", "from": "2026-01-01T00:00:00Z", "to": "2099-12-01T04:00:00Z", "note": "SBC upgrade"}"#;

#[test]
fn windows_over_http_need_the_token_and_survive_a_restart() {
    let dir = TempDir::new("maintenance-http");
    let (mut c, addr) = start(dir.path(), true);
    let listed = windows(addr);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["origin"], "config");
    assert_eq!(listed[0]["note"], "fibre works");
    assert_eq!(listed[0]["from"], "2026-12-01T02:00:00Z");

    assert_eq!(request(addr, "POST", "/api/maintenance", None, NEW).0, 401);
    assert_eq!(
        request(
            addr,
            "POST",
            "/api/maintenance",
            Some("wrong-token-0123456789"),
            NEW
        )
        .0,
        401
    );
    for (bad, field) in [
        (NEW.replace("provider", "carrier"), "scope"),
        (NEW.replace("\"voipco\"", "\"a b\""), "id"),
        (NEW.replace("2026-01-01T00:00:00Z", "yesterday"), "from"),
        (NEW.replace("2099", "2020"), "to"),
    ] {
        let (status, body) = request(addr, "POST", "/api/maintenance", Some(TOKEN), &bad);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(&format!("{field}:")), "{body}");
    }
    let (status, body) = request(addr, "POST", "/api/maintenance", Some(TOKEN), NEW);
    assert_eq!(status, 201, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    let handle = made["window"].as_str().unwrap().to_owned();
    assert_eq!(
        (made["scope"].as_str(), made["id"].as_str()),
        (Some("provider"), Some("voipco"))
    );
    assert_eq!(made["active"], true);
    assert_eq!(windows(addr).len(), 2);

    // A restart keeps it.
    c.signal("TERM");
    assert!(c.wait_timeout(LONG).is_some());
    let (_c, addr) = start(dir.path(), true);
    let listed = windows(addr);
    assert!(
        listed.iter().any(|w| w["window"] == handle.as_str()),
        "{listed:?}"
    );

    let config_window = listed.iter().find(|w| w["origin"] == "config").unwrap()["window"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/maintenance/{config_window}");
    assert_eq!(request(addr, "DELETE", &path, Some(TOKEN), "").0, 409);
    let path = format!("/api/maintenance/{handle}");
    assert_eq!(request(addr, "DELETE", &path, None, "").0, 401);
    assert_eq!(request(addr, "DELETE", &path, Some(TOKEN), "").0, 204);
    assert_eq!(request(addr, "DELETE", &path, Some(TOKEN), "").0, 404);
    assert_eq!(windows(addr).len(), 1);
}

#[test]
fn without_a_token_file_http_changes_are_refused() {
    let dir = TempDir::new("maintenance-open");
    let (_c, addr) = start(dir.path(), false);
    let (status, body) = request(addr, "POST", "/api/maintenance", None, NEW);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("token_file"), "{body}");
    assert_eq!(windows(addr).len(), 1);
}
