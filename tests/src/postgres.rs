//! A real PostgreSQL server for tests: its own cluster (`initdb`) in a temporary
//! directory, listening on 127.0.0.1 at an ephemeral port (Unix socket inside the
//! directory), fsync on, password login over TCP; a fresh database per test from
//! [`Postgres::database`]; a fast shutdown when dropped.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and the server run as the
//! `postgres` system user (Debian's package creates it) on a directory it owns.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Child, TempDir, free_tcp_port, require, wait_until};

/// The login every test database belongs to.
pub const USER: &str = "faultline";
/// Its password (over TCP the server asks for it: SCRAM-SHA-256).
pub const PASSWORD: &str = "faultline-test-pw";

/// A running PostgreSQL server; stopped (fast shutdown) on drop.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
    databases: AtomicU32,
}

/// Debian keeps the server's programs off PATH, per major version: the newest.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

impl Postgres {
    /// Starts a server. `None` when PostgreSQL is not installed (the test should
    /// return; the reason is printed; under `FAULTLINE_REQUIRE_ALL=1` it panics).
    pub fn start() -> Option<Self> {
        let bin = match bin_dir() {
            Some(b) => b,
            None => require("initdb", "postgresql")?.parent()?.to_path_buf(),
        };
        let dir = TempDir::new("pg");
        let pg = Self {
            port: free_tcp_port(),
            bin,
            dir,
            child: None,
            databases: AtomicU32::new(0),
        };
        pg.init();
        let mut pg = pg;
        pg.launch();
        Some(pg)
    }

    /// A command for one of the server's programs, as the `postgres` user when root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if crate::lab::is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn init(&self) {
        let pwfile = self.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        std::fs::create_dir_all(self.socket_dir()).expect("create the socket dir");
        if crate::lab::is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.dir.path())
                .status()
                .expect("run chown");
            assert!(st.success(), "chown the PostgreSQL test directory");
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", USER, "-E", "UTF8", "--no-instructions"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log (its stderr), kept in the temporary directory.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("open postgres.log");
        let child = Child::spawn(
            "postgres",
            self.command("postgres")
                .arg("-D")
                .arg(self.data())
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(self.socket_dir())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
                .args(["-c", "log_min_messages=warning"])
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("spawn postgres");
        self.child = Some(child);
        let ready = wait_until(Duration::from_secs(30), || {
            Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.socket_dir())
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(ready, "postgres did not start on port {}", self.port);
    }

    /// Creates a fresh database; returns its URL (password included).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{n}");
        let out = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", USER, &name])
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// `postgres://` URL of database `db`, with the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The same URL without the password (for `password_file`).
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server with a fast shutdown (SIGINT) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal("INT");
            if c.wait_timeout(Duration::from_secs(30)).is_none() {
                c.kill();
            }
        }
    }
}

impl Postgres {
    /// Stops the server and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
