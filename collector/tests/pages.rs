//! The pages in a real browser (Debian's headless `chromium`): a collector serving
//! a history replayed into its database (three sites, two targets each, two hours
//! of windows, one provider outage), every page loaded without a console message
//! (script errors and CSP refusals both print one), the charts drawn with points
//! for the requested range, the incident's band where the incident was, unknown
//! names answered 404, and the provider page agreeing with `report`. Screenshots
//! of each page go to `target/pages/` for review.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_collector::engine::{TargetPoint, WindowRow};
use faultline_collector::store::Store;
use faultline_shared::{
    Cause, Id, Incident, IncidentEvent, IncidentEventKind, Layer, Scope, State, Subject, Verdict,
};
use faultline_tests::{Child, HttpResponse, TempDir, free_tcp_port, require, wait_for_tcp};

const LONG: Duration = Duration::from_secs(60);
const MIN: u64 = 60_000;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

/// Times of the replayed history: windows from `start` to `end`, the outage
/// between `opened` and `closed`.
struct Times {
    start: u64,
    end: u64,
    opened: u64,
    closed: u64,
}

fn verdict(at_ms: u64, scope: Scope, who: &str, state: State, incident: Option<&str>) -> Verdict {
    Verdict {
        at_ms,
        scope,
        id: Subject::from(id(who)),
        state,
        cause: (!state.is_ok()).then_some(Cause::Provider),
        isp: None,
        provider: (scope == Scope::Site).then(|| id("voipco")),
        sites: if state.is_ok() {
            vec![]
        } else {
            vec![id("a"), id("b")]
        },
        incident: incident.map(str::to_owned),
        recommendation: None,
        maintenance: None,
    }
}

/// Writes the history: sites a, b (hit by the outage) and c, each with `gw` (LAN)
/// and `voipco-media` (the provider), one window every 10 s.
fn replay_history(path: &Path, t: &Times) {
    let mut s = Store::open(path).unwrap();
    s.begin().unwrap();
    for (site, isp) in [("a", "IspA"), ("b", "IspB"), ("c", "IspA")] {
        s.site(&id(site), Some(&id(isp)), Some("Acme")).unwrap();
        let mut seq = 0;
        let mut at = t.start;
        while at <= t.end {
            seq += 1;
            let hit = site != "c" && at >= t.opened && at < t.closed;
            let wobble = (seq % 7) as f32;
            let targets = vec![
                TargetPoint {
                    target: id("gw"),
                    layer: Layer::Lan,
                    provider: None,
                    rtt_p50_ms: Some(1.0 + wobble / 10.0),
                    rtt_p95_ms: Some(2.0 + wobble / 5.0),
                    jitter_ms: Some(0.3),
                    loss: 0.0,
                    mos: None,
                },
                TargetPoint {
                    target: id("voipco-media"),
                    layer: Layer::Provider,
                    provider: Some(id("voipco")),
                    rtt_p50_ms: Some(if hit { 180.0 } else { 20.0 + wobble }),
                    rtt_p95_ms: Some(if hit { 400.0 } else { 30.0 + wobble }),
                    jitter_ms: Some(if hit { 40.0 } else { 2.0 }),
                    loss: if hit { 0.3 } else { 0.0 },
                    mos: Some(if hit { 2.1 } else { 4.3 }),
                },
            ];
            s.window(&WindowRow {
                site: id(site),
                recv_ms: at,
                start_ms: at - 10_000,
                boot: 1,
                seq,
                bad: u32::from(hit),
                max_loss: if hit { 0.3 } else { 0.0 },
                max_rtt_ms: Some(if hit { 180.0 } else { 27.0 }),
                min_mos: Some(if hit { 2.1 } else { 4.3 }),
                providers: vec![id("voipco")],
                window_ms: 10_000,
                targets,
            })
            .unwrap();
            at += 10_000;
        }
    }
    let inc = |state: State, closed_ms: Option<u64>| Incident {
        id: "inc-000001".into(),
        scope: Scope::Provider,
        target_id: Subject::from(id("voipco")),
        cause: Some(Cause::Provider),
        state,
        opened_ms: t.opened,
        closed_ms,
        sites: vec![id("a"), id("b")],
    };
    for (event, state, closed) in [
        (IncidentEventKind::Opened, State::Outage, None),
        (IncidentEventKind::Updated, State::Degraded, None),
        (IncidentEventKind::Closed, State::Degraded, Some(t.closed)),
    ] {
        s.incident(&IncidentEvent {
            event,
            incident: inc(state, closed),
        })
        .unwrap();
    }
    for site in ["a", "b"] {
        s.verdict(&verdict(
            t.opened - 20_000,
            Scope::Site,
            site,
            State::Degraded,
            None,
        ))
        .unwrap();
        s.verdict(&verdict(t.closed, Scope::Site, site, State::Ok, None))
            .unwrap();
    }
    let p = Scope::Provider;
    s.verdict(&verdict(
        t.opened,
        p,
        "voipco",
        State::Outage,
        Some("inc-000001"),
    ))
    .unwrap();
    s.verdict(&verdict(
        t.opened + 5 * MIN,
        p,
        "voipco",
        State::Degraded,
        Some("inc-000001"),
    ))
    .unwrap();
    s.verdict(&verdict(t.closed, p, "voipco", State::Ok, None))
        .unwrap();
    s.commit().unwrap();
}

/// One GET over HTTP/1.1: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let r = HttpResponse::parse(&out);
    (r.status, r.body)
}

/// What the browser made of one page: its DOM after scripts ran, and every
/// console message it printed.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

fn browse(chromium: &Path, profile: &Path, url: &str, shot: &Path, size: &str) -> Loaded {
    let common = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={size}"))
        .stdin(Stdio::null());
    };
    let mut dump = Command::new(chromium);
    common(&mut dump);
    let out = dump.arg("--dump-dom").arg(url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    let mut snap = Command::new(chromium);
    common(&mut snap);
    let s = snap
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        s.status.success() && shot.exists(),
        "screenshot of {url}: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    Loaded {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    }
}

/// The numbers in `attr="…"` on every element of `dom` that has it.
fn attr_values(dom: &str, attr: &str) -> Vec<f64> {
    let key = format!("{attr}=\"");
    dom.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &dom[i + key.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("pages");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_page_loads_in_a_browser_with_charts_bands_and_404s() {
    let Some(chromium) = require("chromium", "chromium") else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let end = now / 10_000 * 10_000 - 60_000;
    let t = Times {
        start: end - 120 * MIN,
        end,
        opened: end - 60 * MIN,
        closed: end - 40 * MIN,
    };
    let dir = TempDir::new("pages");
    let d = dir.path();
    replay_history(&d.join("h.db"), &t);
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    std::fs::write(
        d.join("c.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"h.db\"\n\
             [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n"
        ),
    )
    .unwrap();
    let _collector = Child::spawn(
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

    // The site page over a fixed day, so the band's place can be computed.
    let to_ms = end + 10 * MIN;
    let from_ms = to_ms - 86_400_000;
    let shots = shots_dir();
    let profile = d.join("chromium");
    let pages = [
        ("dashboard", "/".to_owned(), "1280,900"),
        (
            "site",
            format!("/sites/a?range=24h&to_ms={to_ms}"),
            "1280,2000",
        ),
        ("site-1h", "/sites/a".to_owned(), "1280,2000"),
        ("site-phone", "/sites/a".to_owned(), "412,2400"),
        (
            "provider",
            "/providers/voipco?since=7d".to_owned(),
            "1280,1000",
        ),
        ("incident", "/incidents/inc-000001".to_owned(), "1280,1400"),
        ("unknown-site", "/sites/nowhere".to_owned(), "1280,600"),
    ];
    let mut doms = std::collections::BTreeMap::new();
    for (name, path, size) in &pages {
        let url = format!("http://{addr}{path}");
        let l = browse(
            &chromium,
            &profile,
            &url,
            &shots.join(format!("{name}.png")),
            size,
        );
        assert!(
            l.console.is_empty(),
            "{path}: console messages in the browser:\n{}",
            l.console.join("\n")
        );
        assert!(
            l.dom.contains("Faultline"),
            "{path}: a blank page:\n{}",
            l.dom
        );
        doms.insert(*name, l.dom);
    }
    eprintln!("screenshots in {}", shots.display());

    // The dashboard's script ran and links each site to its page.
    assert!(
        doms["dashboard"].contains("href=\"/sites/a\""),
        "{}",
        doms["dashboard"]
    );
    // Charts with points for the range: gw's and voipco-media's four charts.
    let site = &doms["site"];
    let points = attr_values(site, "data-points");
    assert!(points.len() >= 7, "charts drawn: {points:?}");
    assert!(
        points.iter().all(|&p| p > 0.0),
        "a chart without points: {points:?}"
    );
    assert!(site.contains("data-target=\"voipco-media\"") && site.contains("data-target=\"gw\""));
    // The 1 h view has a point a minute (history sums chart points per minute).
    let hour = attr_values(&doms["site-1h"], "data-points");
    assert!(hour.iter().all(|&p| p >= 55.0), "1 h charts: {hour:?}");
    // The band sits where the incident was: x of its opening on a 24 h axis.
    let (left, right) = (44.0, 592.0);
    let x_at = |ms: u64| left + (ms - from_ms) as f64 / (to_ms - from_ms) as f64 * (right - left);
    let band = site
        .split("<rect class=\"band\" data-incident=\"inc-000001\"")
        .nth(1)
        .expect("an incident band on the site's charts");
    let x: f64 = attr_values(band, "x")[0];
    let w: f64 = attr_values(band, "width")[0];
    assert!(
        (x - x_at(t.opened)).abs() < 0.2,
        "band at {x}, incident at {}",
        x_at(t.opened)
    );
    assert!(
        (x + w - x_at(t.closed)).abs() < 0.2,
        "band ends at {}, incident at {}",
        x + w,
        x_at(t.closed)
    );
    // The incident page: its worst state, timeline, sites and evidence.
    let inc = &doms["incident"];
    assert!(
        inc.contains("worst <span class=\"pill outage\">outage</span>"),
        "{inc}"
    );
    assert!(inc.contains("Evidence that opened it") && inc.contains("voipco-media"));
    assert!(inc.contains("href=\"/sites/b\""));
    assert!(doms["unknown-site"].contains("No site"));

    // 404s: a page that says so, a JSON error under /api/.
    for path in [
        "/sites/nowhere",
        "/providers/nobody",
        "/incidents/inc-999999",
        "/nothing/here",
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 404, "{path}");
        assert!(
            body.contains("<html") && body.contains("No "),
            "{path}: {body}"
        );
    }
    for path in [
        "/api/sites/nowhere",
        "/api/providers/nobody",
        "/api/incidents/x",
        "/api/nothing",
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    // /api/series: a point a minute over the range (each the mean of its windows).
    let (status, body) = get(
        addr,
        &format!(
            "/api/series?site=a&target=voipco-media&from_ms={}&to_ms={}",
            t.opened,
            t.opened + 10 * MIN
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"at_ms\"").count(), 10, "{body}");
    assert!(body.contains("\"inc-000001\""));

    // The provider page shows what `report` says.
    let report = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["report", "--db", "h.db", "--since", "7d", "--json"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let a = rows[0]["availability"].as_f64().unwrap();
    // a and b were hit for 20 of their 120 minutes; c never: 1 − 40/360.
    assert!((a - (1.0 - 40.0 / 360.0)).abs() < 0.002, "report: {a}");
    assert_eq!(rows[0]["outages"][0]["state"], "outage");
    let shown = format!("{:.3} %", a * 100.0);
    assert!(
        doms["provider"].contains(&shown),
        "provider page lacks {shown}"
    );
    let (status, csv) = get(addr, "/providers/voipco/availability.csv?since=7d");
    assert_eq!(status, 200);
    assert!(csv.contains("inc-000001,outage,"), "{csv}");
}
