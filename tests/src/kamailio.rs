//! A real Kamailio SIP server on an ephemeral loopback port (UDP and TCP), answering
//! OPTIONS statelessly with a chosen status: the `sip` probe's counterpart.
//!
//! Kamailio forks worker processes, so it runs in its own process group and the whole
//! group is stopped on drop. Its runtime directory, pid file and config live in a
//! [`TempDir`].

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Child, TempDir, free_tcp_port, require, wait_for_tcp};

/// A running Kamailio.
#[derive(Debug)]
pub struct Kamailio {
    /// The port it listens on, for both UDP and TCP, on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    _dir: TempDir,
}

/// Where Debian (or a source install) puts Kamailio's modules.
fn module_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("kamailio/modules"))
        .collect();
    candidates.extend(
        [
            "/usr/lib/kamailio/modules",
            "/usr/lib64/kamailio/modules",
            "/usr/local/lib64/kamailio/modules",
            "/usr/local/lib/kamailio/modules",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|d| d.join("sl.so").is_file())
}

impl Kamailio {
    /// Starts Kamailio answering OPTIONS with `200 OK`. `None` when it is not
    /// installed (the test should return; the reason has been printed).
    pub fn start() -> Option<Self> {
        Self::start_answering(200, "OK")
    }

    /// Starts Kamailio answering OPTIONS with `code reason` (e.g. 503 to play a
    /// server that is up but not serving).
    pub fn start_answering(code: u16, reason: &str) -> Option<Self> {
        let bin = require("kamailio", "kamailio")?;
        let modules =
            module_dir().expect("kamailio is installed but its sl.so module was not found");
        let dir = TempDir::new("kamailio");
        let port = free_tcp_port();
        let cfg = dir.path().join("kamailio.cfg");
        std::fs::write(
            &cfg,
            format!(
                "#!KAMAILIO\n\
                 debug=1\n\
                 log_stderror=yes\n\
                 children=1\n\
                 tcp_children=1\n\
                 auto_aliases=no\n\
                 dns=no\n\
                 rev_dns=no\n\
                 listen=udp:127.0.0.1:{port}\n\
                 listen=tcp:127.0.0.1:{port}\n\
                 mpath=\"{modules}/\"\n\
                 loadmodule \"sl.so\"\n\
                 request_route {{\n\
                 \x20   if (method==\"OPTIONS\") {{\n\
                 \x20       sl_send_reply(\"{code}\", \"{reason}\");\n\
                 \x20       exit;\n\
                 \x20   }}\n\
                 \x20   sl_send_reply(\"501\", \"Not Implemented\");\n\
                 }}\n",
                modules = modules.display(),
            ),
        )
        .expect("write kamailio.cfg");
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "16", "-M", "4"])
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = Child::spawn("kamailio", &mut cmd).expect("spawn kamailio");
        let k = Self {
            port,
            child: Some(child),
            _dir: dir,
        };
        assert!(
            wait_for_tcp(k.addr(), Duration::from_secs(15)),
            "kamailio did not start listening on {}",
            k.addr()
        );
        Some(k)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The main process and its forked workers share one process group.
            let group = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            if c.wait_timeout(Duration::from_secs(5)).is_none() {
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            }
            c.kill();
        }
    }
}
