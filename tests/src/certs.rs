//! Throwaway TLS material for tests, made with openssl: a CA, a server certificate
//! for `localhost` / 127.0.0.1 and client certificates for mutual TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of a test PKI in one folder.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA certificate (PEM) that signed everything else.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// A CA and a server certificate in `dir`. `None` (reason printed) when openssl
    /// is missing; panics under `FAULTLINE_REQUIRE_ALL=1`.
    pub fn new(dir: &Path) -> Option<Self> {
        crate::require("openssl", "openssl")?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(
            dir,
            &format!(
                "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj '/CN=Faultline Test CA'"
            ),
        );
        sh(
            dir,
            &format!("openssl req {ec} -keyout server.key -out server.csr -subj '/CN=localhost'"),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        sh(
            dir,
            "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.ext",
        );
        Some(Self {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        })
    }

    /// A client certificate with common name `cn`, signed by the CA: (cert, key).
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(
            &self.dir,
            &format!("openssl req {ec} -keyout {cn}.key -out {cn}.csr -subj '/CN={cn}'"),
        );
        std::fs::write(
            self.dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write client.ext");
        sh(
            &self.dir,
            &format!(
                "openssl x509 -req -in {cn}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {cn}.pem -days 2 -extfile client.ext"
            ),
        );
        (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        )
    }
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
