//! `faultline-agent check` and `run` on good and bad config files: a bad file prints
//! one message naming the file, line and field, and exits 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use faultline_tests::{TempDir, workspace_bin};

const GOOD: &str = r#"site = "acme-hq"
customer = "Acme"
isp = "Comcast"
window_seconds = 10
format = "postcard"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[target]]
name = "web"
layer = "internet"
kind = "tcp"
host = "127.0.0.1:443"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn agent(args: &[&str], config: &Path) -> Output {
    Command::new(workspace_bin("faultline-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run faultline-agent")
}

#[test]
fn check_prints_the_resolved_plan() {
    let dir = TempDir::new("agent-check");
    let cfg = write(dir.path(), "good.toml", GOOD);
    let out = agent(&["check"], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "acme-hq",
        "Comcast",
        "Acme",
        "10 s",
        "postcard",
        "faultline/v1/sites/acme-hq/report",
        "mqtt://127.0.0.1:1883",
        "faultline-acme-hq",
        "8640 reports",
        "targets  1",
        "web",
    ] {
        assert!(stdout.contains(want), "plan lacks {want:?}:\n{stdout}");
    }
}

/// (what is wrong, the file's text, `field` and line the message must name)
const BAD: &[(&str, &str, &str, usize)] = &[
    (
        "syntax error",
        "site = \"acme-hq\"\nisp = \"Comcast\n[mqtt]\nurl = \"mqtt://b\"\n",
        "",
        2,
    ),
    (
        "bad id characters",
        "site = \"acme hq\"\nisp = \"Comcast\"\n[mqtt]\nurl = \"mqtt://b\"\n",
        "site",
        1,
    ),
    (
        "bad url scheme",
        "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"http://broker:1883\"\n",
        "mqtt.url",
        4,
    ),
    (
        "missing url",
        "site = \"a\"\nisp = \"b\"\n\n[mqtt]\nclient_id = \"x\"\n",
        "mqtt.url",
        4,
    ),
    (
        "window_seconds 0",
        "site = \"a\"\nisp = \"b\"\nwindow_seconds = 0\n[mqtt]\nurl = \"mqtt://b\"\n",
        "window_seconds",
        3,
    ),
    (
        "unknown key",
        "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\npasword_file = \"pw\"\n",
        "mqtt.pasword_file",
        5,
    ),
    (
        "wrong type",
        "site = \"a\"\nisp = \"b\"\nwindow_seconds = \"10\"\n[mqtt]\nurl = \"mqtt://b\"\n",
        "window_seconds",
        3,
    ),
    (
        "unknown format",
        "site = \"a\"\nisp = \"b\"\nformat = \"xml\"\n[mqtt]\nurl = \"mqtt://b\"\n",
        "format",
        3,
    ),
    (
        "unknown kind",
        "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\n\n[[target]]\nname = \"x\"\nlayer = \"lan\"\nkind = \"quic\"\nhost = \"10.0.0.1\"\n",
        "target[0].kind",
        9,
    ),
    (
        "duplicate target",
        "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\n\
         [[target]]\nname = \"x\"\nlayer = \"lan\"\nkind = \"tcp\"\nhost = \"10.0.0.1:80\"\n\
         [[target]]\nname = \"x\"\nlayer = \"lan\"\nkind = \"tcp\"\nhost = \"10.0.0.2:80\"\n",
        "target[1].name",
        11,
    ),
];

#[test]
fn bad_files_name_field_and_line_and_exit_2() {
    let dir = TempDir::new("agent-bad-config");
    for (i, (what, text, field, line)) in BAD.iter().enumerate() {
        let cfg = write(dir.path(), &format!("bad{i}.toml"), text);
        for cmd in ["check", "run"] {
            let out = agent(&[cmd], &cfg);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what} ({cmd}): {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{what} ({cmd}): printed once: {stderr}");
            let want = format!("{}:{line}: {field}", cfg.display());
            assert!(
                lines[0].starts_with(&want),
                "{what} ({cmd}): want {want:?}…, got {:?}",
                lines[0]
            );
            assert!(out.stdout.is_empty(), "{what} ({cmd}): nothing on stdout");
        }
    }
}

#[test]
fn a_missing_file_exits_2() {
    let out = agent(&["check"], Path::new("/nonexistent/agent.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn the_example_config_is_valid_apart_from_its_secrets() {
    // agent.example.toml names files a real site has (password, CA); check it with
    // those lines removed. Its gateway target needs no route: the probe looks it up.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml"))
        .expect("agent/agent.example.toml");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("password_file") && !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = TempDir::new("agent-example");
    let cfg = write(dir.path(), "agent.toml", &text);
    let out = agent(&["check"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_prints_stored_central_targets_and_where_each_comes_from() {
    let dir = TempDir::new("agent-check-central");
    let state = dir.path().join("state");
    // Only site, isp and [mqtt] (and where its state lives): valid, no targets yet.
    let minimal = format!(
        "site = \"acme-hq\"\nisp = \"Comcast\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
        state.display()
    );
    let cfg = write(dir.path(), "agent.toml", &minimal);
    let out = agent(&["check"], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("central  none stored yet"), "{stdout}");
    assert!(
        stdout.contains("targets  0 (0 local, 0 central)"),
        "{stdout}"
    );

    // The last applied central config, as the agent stores it; `web` is local too.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("central.json"),
        r#"{"version":3,"window_seconds":2,"targets":[
            {"name":"web","layer":"lan","kind":"tcp","host":"127.0.0.1:1"},
            {"name":"media","layer":"provider","provider":"voipco","kind":"stamp","host":"127.0.0.1"}]}"#,
    )
    .unwrap();
    let with_web = format!(
        "{minimal}[[target]]\nname = \"web\"\nlayer = \"internet\"\nkind = \"tcp\"\nhost = \"127.0.0.1:443\"\n"
    );
    let cfg = write(dir.path(), "agent.toml", &with_web);
    let out = agent(&["check"], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        "central  v3 stored in",
        "window   2 s from central v3",
        "targets  2 (1 local, 1 central)",
        "  web layer=internet kind=tcp host=127.0.0.1:443 (local)",
        "  media layer=provider provider=voipco kind=stamp host=127.0.0.1:862",
        "(central v3)",
    ] {
        assert!(stdout.contains(want), "plan lacks {want:?}:\n{stdout}");
    }
}
