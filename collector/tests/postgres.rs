//! History in PostgreSQL against a real server (the test kit's [`Postgres`]): the
//! same writes give the same reads, restore and `report` numbers as SQLite;
//! windows are stored exactly once with a second writer on the same database;
//! migrations apply once, also when two collectors open at once; and a collector
//! run with `[storage] url` stores what Mosquitto delivers and `report` reads it.
//! HTTP-made maintenance windows are kept alike (and `report` leaves them out).
//! Skips (with the reason) when PostgreSQL is not installed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_collector::config::{PgLocation, StorageLocation};
use faultline_collector::engine::{BootMeta, TargetPoint, WindowRow};
use faultline_collector::maintenance::{Origin, Window};
use faultline_collector::report;
use faultline_collector::store::Store;
use faultline_shared::{
    Cause, Id, Incident, IncidentEvent, IncidentEventKind, Layer, Scope, State, Verdict,
};
use faultline_tests::{Child, Mosquitto, Postgres, TempDir, free_tcp_port, http_get, wait_for_tcp};

const DAY_MS: u64 = 86_400_000;
/// An hour boundary (2025-11-27T00:00Z): where the scenario's windows start.
const BASE: u64 = 1_764_201_600_000;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn pg_location(url: &str) -> StorageLocation {
    let config: postgres::Config = url.parse().unwrap();
    StorageLocation::Postgres(Box::new(PgLocation {
        config,
        shown: "test".into(),
    }))
}

fn connect(url: &str) -> Store {
    Store::connect(&pg_location(url)).unwrap()
}

fn target(name: &str, layer: Layer, provider: Option<&str>, loss: f32) -> TargetPoint {
    TargetPoint {
        target: id(name),
        layer,
        provider: provider.map(id),
        rtt_p50_ms: Some(20.0),
        rtt_p95_ms: Some(30.0),
        jitter_ms: (layer == Layer::Provider).then_some(2.5),
        loss,
        mos: (layer == Layer::Provider).then_some(4.25),
    }
}

fn window(site: &str, boot: u32, seq: u64) -> WindowRow {
    let bad = u32::from(seq.is_multiple_of(7));
    WindowRow {
        site: id(site),
        recv_ms: BASE + seq * 10_000,
        start_ms: BASE + seq * 10_000 - 10_000,
        boot,
        seq,
        bad,
        max_loss: if bad > 0 { 0.5 } else { 0.0 },
        max_rtt_ms: Some(30.0),
        min_mos: Some(4.25),
        providers: vec![id("voipco")],
        window_ms: 10_000,
        targets: vec![
            target("gw", Layer::Lan, None, 0.0),
            target(
                "voipco-media",
                Layer::Provider,
                Some("voipco"),
                0.25 * bad as f32,
            ),
        ],
    }
}

fn incident(state: State, closed_ms: Option<u64>) -> IncidentEvent {
    IncidentEvent {
        event: if closed_ms.is_some() {
            IncidentEventKind::Closed
        } else {
            IncidentEventKind::Opened
        },
        incident: Incident {
            id: "inc-000007".into(),
            scope: Scope::Provider,
            target_id: id("voipco").into(),
            cause: Some(Cause::Provider),
            state,
            opened_ms: BASE + 300_000,
            closed_ms,
            sites: vec![id("acme"), id("bobs")],
        },
    }
}

fn verdict(at_ms: u64, state: State) -> Verdict {
    Verdict {
        at_ms,
        scope: Scope::Provider,
        id: id("voipco").into(),
        state,
        cause: Some(Cause::Provider),
        isp: None,
        provider: None,
        sites: vec![id("acme"), id("bobs")],
        incident: Some("inc-000007".into()),
        recommendation: None,
        maintenance: None,
    }
}

/// An HTTP-made maintenance window on voipco.
fn maintenance_window(name: &str, from_ms: u64, to_ms: u64) -> Window {
    Window {
        window: name.into(),
        scope: Scope::Provider,
        id: id("voipco").into(),
        from_ms,
        to_ms,
        note: Some("SBC upgrade".into()),
        origin: Origin::Http,
    }
}

/// The same writes, whatever the backend: two sites' windows (one repeated, one
/// rolled back), an incident opened as an outage and closed degraded, verdicts.
fn fill(s: &mut Store) {
    s.begin().unwrap();
    for site in ["acme", "bobs"] {
        s.boot(
            &id(site),
            &BootMeta {
                boot: 7,
                ordinal: 1,
                announced: true,
                floor: Some(0),
                last_ms: BASE,
            },
        )
        .unwrap();
    }
    s.site(&id("acme"), Some(&id("IspA")), Some("Acme"))
        .unwrap();
    s.site(&id("bobs"), Some(&id("IspB")), None).unwrap();
    for seq in 0..120 {
        assert!(s.window(&window("acme", 7, seq)).unwrap());
        if seq < 90 {
            assert!(s.window(&window("bobs", 7, seq)).unwrap());
        }
    }
    assert!(!s.window(&window("acme", 7, 5)).unwrap(), "a repeat");
    s.incident(&incident(State::Outage, None)).unwrap();
    s.verdict(&verdict(BASE + 300_000, State::Outage)).unwrap();
    s.commit().unwrap();

    s.begin().unwrap();
    s.incident(&incident(State::Degraded, None)).unwrap();
    s.verdict(&verdict(BASE + 400_000, State::Degraded))
        .unwrap();
    assert!(s.window(&window("acme", 7, 500)).unwrap());
    s.rollback();

    s.begin().unwrap();
    s.incident(&incident(State::Degraded, Some(BASE + 600_000)))
        .unwrap();
    s.verdict(&verdict(BASE + 600_000, State::Ok)).unwrap();
    s.commit().unwrap();

    // Maintenance windows: kept, replaced by name, deleted.
    s.save_maintenance(&maintenance_window("mw-1", BASE, BASE + 60_000))
        .unwrap();
    s.save_maintenance(&maintenance_window("mw-1", BASE + 100_000, BASE + 200_000))
        .unwrap();
    s.save_maintenance(&maintenance_window("mw-2", BASE, BASE + 1))
        .unwrap();
    assert!(s.delete_maintenance("mw-2").unwrap());
    assert!(!s.delete_maintenance("mw-2").unwrap());
}

/// Everything pages and `report` read, as text to compare across backends.
fn reads(s: &Store) -> String {
    let to = BASE + DAY_MS;
    let mut out = String::new();
    let mut add = |name: &str, v: String| out.push_str(&format!("{name}: {v}\n"));
    let mut r = s.restore(BASE + 1_200_000).unwrap();
    r.sites.sort_by(|a, b| a.0.cmp(&b.0));
    r.boots.sort_by(|a, b| a.0.cmp(&b.0));
    add("restore", format!("{r:?}"));
    add("changes", format!("{:?}", s.recent_changes(10).unwrap()));
    add(
        "changes_voipco",
        format!(
            "{:?}",
            s.changes("provider", Some("voipco"), 0, to, 10).unwrap()
        ),
    );
    add(
        "incidents",
        format!("{:?}", s.incidents_worst(None, 0, to, 10).unwrap()),
    );
    add(
        "incident",
        format!("{:?}", s.incident_by_id("inc-000007").unwrap()),
    );
    add(
        "provider_sites",
        format!("{:?}", s.provider_sites("voipco", 0, to).unwrap()),
    );
    add("providers", format!("{:?}", s.providers().unwrap()));
    add(
        "site",
        format!(
            "{:?} {:?} {:?}",
            s.site_known("acme").unwrap(),
            s.site_known("nobody").unwrap(),
            s.site_identity("acme").unwrap()
        ),
    );
    add("targets", format!("{:?}", s.site_targets("acme").unwrap()));
    add(
        "series",
        format!("{:?}", s.series("acme", "voipco-media", 0, to).unwrap()),
    );
    add(
        "coverage",
        format!("{:?}", s.coverage("bobs", 0, to).unwrap().watched(0, to)),
    );
    add("evidence_end", format!("{:?}", s.evidence_end(to).unwrap()));
    let windows = s.maintenance().unwrap();
    add("maintenance", format!("{windows:?}"));
    let rows = report::availability(s, BASE, to, Some("voipco"), &windows).unwrap();
    add("report", serde_json::to_string(&rows).unwrap());
    for t in [
        "windows",
        "windows_hourly",
        "target_minutes",
        "target_hourly",
        "boots",
    ] {
        add(t, s.count(t).unwrap().to_string());
    }
    out
}

/// Fills a store, reads it; downsamples and reads again (and once more after
/// reopening, with `reopen`).
fn exercise(mut s: Store, reopen: impl Fn() -> Store) -> (String, String) {
    fill(&mut s);
    let fresh = reads(&s);
    s.maintain(BASE + 3 * DAY_MS, 2, 90, 400).unwrap();
    let rolled = reads(&s);
    drop(s);
    let s = reopen();
    assert_eq!(reads(&s), rolled, "reopened");
    // A late copy of a downsampled window is still known.
    let mut s = s;
    s.begin().unwrap();
    assert!(!s.window(&window("acme", 7, 3)).unwrap());
    s.commit().unwrap();
    (fresh, rolled)
}

#[test]
fn postgres_reads_what_sqlite_reads_for_the_same_writes() {
    let Some(pg) = Postgres::start() else { return };
    let dir = TempDir::new("pg-vs-sqlite");
    let path = dir.path().join("h.db");
    let sqlite = exercise(Store::open(&path).unwrap(), || Store::open(&path).unwrap());
    let url = pg.database();
    let postgres = exercise(connect(&url), || connect(&url));
    assert_eq!(postgres.0, sqlite.0, "before downsampling");
    assert_eq!(postgres.1, sqlite.1, "after downsampling");
    // And the numbers are the expected ones, not merely equal.
    assert!(sqlite.0.contains("windows: 210\n"), "{}", sqlite.0);
    assert!(sqlite.1.contains("windows: 0\n"), "{}", sqlite.1);
    assert!(sqlite.0.contains("next_incident: 7"), "{}", sqlite.0);
    let incident = sqlite
        .0
        .lines()
        .find(|l| l.starts_with("incident:"))
        .unwrap();
    assert!(
        incident.ends_with(", Outage))"),
        "the incident keeps its worst state: {incident}"
    );
    assert!(sqlite.0.contains("runs: [(0, 119)]"), "{}", sqlite.0);
    assert!(sqlite.1.contains("windows_hourly: 2\n"), "{}", sqlite.1);
    assert!(
        sqlite.0.contains("window: \"mw-1\"") && !sqlite.0.contains("mw-2"),
        "{}",
        sqlite.0
    );
    assert!(
        sqlite.0.contains("\"maintenance\":[{\"window\":\"mw-1\""),
        "{}",
        sqlite.0
    );
}

#[test]
fn migrations_apply_once_even_when_two_collectors_open_at_once() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database();
    let openers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || connect(&url))
        })
        .collect();
    let stores: Vec<Store> = openers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Each migration once.
    assert_eq!(
        versions,
        (1..=faultline_collector::store::postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    drop(stores);
    // Reopening changes nothing.
    let s = connect(&url);
    assert_eq!(
        s.count("schema_migrations").unwrap(),
        i64::from(faultline_collector::store::postgres::SCHEMA_VERSION)
    );
    assert_eq!(s.count("windows").unwrap(), 0);
}

#[test]
fn a_window_is_stored_once_with_a_second_writer_on_the_same_database() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database();
    // Both writers store the same 600 windows, in batches, as the history thread
    // does (a failed batch, e.g. a deadlock, is rolled back and retried): one a
    // window at a time, the other a batch in one statement.
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = connect(&url);
                let mut stored = 0;
                for batch in 0..12u64 {
                    let n = loop {
                        let mut n = 0;
                        let res = (|| {
                            s.begin()?;
                            let rows: Vec<_> = (batch * 50..(batch + 1) * 50)
                                .map(|seq| window("acme", 7, seq))
                                .collect();
                            if writer == 0 {
                                for w in &rows {
                                    n += u64::from(s.window(w)?);
                                }
                            } else {
                                n += s.windows(&rows.iter().collect::<Vec<_>>())?.0;
                            }
                            s.commit()
                        })();
                        match res {
                            Ok(()) => break n,
                            Err(_) => s.rollback(),
                        }
                    };
                    stored += n;
                }
                stored
            })
        })
        .collect();
    let stored: u64 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        stored, 600,
        "each window counted as new by exactly one writer"
    );
    let s = connect(&url);
    assert_eq!(s.count("windows").unwrap(), 600);
    let r = s.restore(BASE).unwrap();
    assert_eq!(r.boots.len(), 1);
    assert_eq!(r.boots[0].1.seqs.to_string(), "0-599");
    let series = s
        .series("acme", "gw", 0, BASE + DAY_MS)
        .unwrap()
        .iter()
        .map(|p| p.windows)
        .sum::<u64>();
    assert_eq!(series, 600, "chart sums merged once per window");
}

#[test]
fn a_boot_record_keeps_the_seqs_of_both_writers() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database();
    let (mut a, mut b) = (connect(&url), connect(&url));
    // Bare windows: no targets or providers, whose rows the two open transactions
    // would wait on each other for (on one thread here, in two processes in life).
    let bare = |seq| WindowRow {
        targets: vec![],
        providers: vec![],
        ..window("acme", 7, seq)
    };
    a.begin().unwrap();
    b.begin().unwrap();
    for seq in 0..10 {
        assert!(a.window(&bare(seq)).unwrap());
    }
    // b read the boot's record before a committed: it knows none of a's seqs.
    for seq in 10..20 {
        assert!(b.window(&bare(seq)).unwrap());
    }
    a.commit().unwrap();
    b.commit().unwrap();
    let r = connect(&url).restore(BASE).unwrap();
    assert_eq!(r.boots[0].1.seqs.to_string(), "0-19");
}

#[test]
fn the_writer_and_the_pages_reconnect_after_the_server_restarts() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let url = pg.database();
    let mut s = connect(&url);
    s.begin().unwrap();
    assert!(s.window(&window("acme", 7, 0)).unwrap());
    s.commit().unwrap();
    // Mid-transaction, a lost connection fails the batch (nothing half-committed).
    s.begin().unwrap();
    assert!(s.window(&window("acme", 7, 1)).unwrap());
    pg.restart();
    assert!(
        s.window(&window("acme", 7, 2))
            .and_then(|_| s.commit())
            .is_err()
    );
    s.rollback();
    // The writer's retry goes through on a new connection.
    s.begin().unwrap();
    for seq in 1..3 {
        assert!(s.window(&window("acme", 7, seq)).unwrap());
    }
    s.commit().unwrap();
    assert_eq!(s.count("windows").unwrap(), 3);
    assert_eq!(s.restore(BASE).unwrap().boots[0].1.seqs.to_string(), "0-2");
}

fn write_config(
    dir: &Path,
    broker: &str,
    http: std::net::SocketAddr,
    storage: &str,
) -> std::path::PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "window_seconds = 1\n[mqtt]\nurl = \"{broker}\"\n[http]\nlisten = \"{http}\"\n\
             [storage]\n{storage}\n[providers.voipco]\n[thresholds]\nsilence_windows = 15\n"
        ),
    )
    .unwrap();
    path
}

fn report_json(site: &str, seq: u64, now_ms: u64) -> String {
    serde_json::json!({"v": 1, "site": site, "boot": 11, "seq": seq,
        "start_ms": now_ms - 1000, "window_ms": 1000,
        "probes": [
            {"target": "gw", "layer": "lan", "kind": "icmp", "sent": 10, "received": 10,
             "rtt_ms": {"min": 1.0, "p50": 1.0, "avg": 1.0, "p95": 2.0, "max": 2.0}},
            {"target": "voipco-media", "layer": "provider", "provider": "voipco", "kind": "icmp",
             "sent": 10, "received": 10,
             "rtt_ms": {"min": 10.0, "p50": 11.0, "avg": 11.0, "p95": 12.0, "max": 13.0}}]})
    .to_string()
}

#[test]
fn a_collector_with_a_postgres_url_stores_reports_and_report_reads_them() {
    let Some(pg) = Postgres::start() else { return };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let Some(mosquitto_pub) = faultline_tests::require("mosquitto_pub", "mosquitto-clients") else {
        return;
    };
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let dir = TempDir::new("pg-e2e");
    // The password from a file, not the URL.
    std::fs::write(
        dir.path().join("pg.secret"),
        format!("{}\n", faultline_tests::postgres::PASSWORD),
    )
    .unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let config = write_config(
        dir.path(),
        &broker.url(),
        http,
        &format!(
            "url = \"{}\"\npassword_file = \"pg.secret\"",
            pg.url_without_password(&db)
        ),
    );
    let mut collector = Child::spawn(
        "faultline-collector",
        Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    assert!(
        wait_for_tcp(http, Duration::from_secs(60)),
        "collector HTTP did not come up"
    );
    let now = faultline_tests::lab::now_ms();
    for site in ["acme-hq", "bobs-bakery"] {
        let lines: String = (0..20)
            .map(|seq| report_json(site, seq, now) + "\n")
            .collect();
        let mut p = Command::new(&mosquitto_pub)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-q",
                "1",
                "-l",
            ])
            .args(["-t", &format!("faultline/v1/sites/{site}/report/json")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        p.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(p.wait().unwrap().success());
    }
    let stored = faultline_tests::wait_until(Duration::from_secs(60), || {
        connect(&url).count("windows").unwrap() == 40
    });
    assert!(stored, "40 windows in PostgreSQL");
    // The pages read history through the service's own PostgreSQL connection.
    let series = http_get(
        http,
        &format!(
            "/api/series?site=acme-hq&target=voipco-media&from_ms={}&to_ms={}",
            now - 3_600_000,
            now + 3_600_000
        ),
    );
    let points: serde_json::Value = serde_json::from_str(&series).unwrap();
    let windows: u64 = points["points"]
        .as_array()
        .unwrap_or_else(|| panic!("series: {series}"))
        .iter()
        .map(|p| p["windows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(windows, 20, "{series}");
    for (path, key) in [("/api/history", "changes"), ("/api/incidents", "recent")] {
        let body = http_get(http, path);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(v[key].is_array(), "{path}: {body}");
    }
    collector.signal("TERM");
    let status = collector.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "a clean stop (the PostgreSQL client dropped off the async workers): {status:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["report", "--json", "--since", "1h", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let voipco = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "voipco")
        .unwrap_or_else(|| panic!("voipco in {rows}"));
    assert_eq!(voipco["availability"], 1.0, "{voipco}");
    assert!(voipco["site_ms"].as_u64().unwrap() > 0, "{voipco}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains(faultline_tests::postgres::PASSWORD),
        "the password is never printed"
    );
}
