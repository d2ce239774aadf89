//! The shipped config profiles stay valid: `check` accepts each one and prints its plan.
//! Both probe `host = "gateway"`, which `check` accepts whatever this machine's routing
//! table says (the probes look the gateway up every window), so these tests pass on a
//! machine without a default route too.

use std::process::Command;

use faultline_tests::workspace_bin;

fn check(path: &str) -> String {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_owned() + "/" + path;
    let out = Command::new(workspace_bin("faultline-agent"))
        .args(["check", "--config", &file])
        .output()
        .expect("run faultline-agent check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{path}: check failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn metered_profile_is_valid_with_its_sparse_voice_bursts() {
    let plan = check("agent/agent.metered.toml");
    assert!(plan.contains("window   30 s"), "{plan}");
    assert!(
        plan.contains("stamp_seconds=2 stamp_every=20 stamp_idle_packets=1"),
        "{plan}"
    );
    assert!(plan.contains("count=3"), "{plan}");
}

#[test]
fn packaged_example_is_valid() {
    let plan = check("cross-config/agent.toml");
    assert!(plan.contains("targets"), "{plan}");
}
