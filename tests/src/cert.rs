//! `Cert`: a throw-away self-signed certificate and key made by `openssl req`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{cmd, sh};

/// Self-signed EC P-256 (or RSA-2048) certificate, `CN=enforcer-test`, with the given IP
/// addresses as subjectAltName, in a temporary directory removed on Drop.
pub struct Cert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    /// EC P-256: quick to make, accepted by OpenSSL, GnuTLS, NSS and Go.
    pub fn new(ips: &[IpAddr]) -> Cert {
        Self::generate(
            ips,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        )
    }

    /// RSA-2048, for clients or cipher suites that need an RSA key.
    pub fn rsa(ips: &[IpAddr]) -> Cert {
        Self::generate(ips, &["-newkey", "rsa:2048"])
    }

    fn generate(ips: &[IpAddr], key_args: &[&str]) -> Cert {
        let dir = tempfile::Builder::new()
            .prefix("enforcer-cert-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let mut san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        san.push("DNS:enforcer-test".into());
        let san = format!("subjectAltName={}", san.join(","));
        sh(cmd(
            "openssl",
            [
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=enforcer-test",
            ],
        )
        .args(key_args)
        .args(["-addext", &san])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
        Cert { dir, cert, key }
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// The directory holding both files (tests may put a CA bundle or NSS db beside them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The certificate in PEM.
    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("cannot read the certificate")
    }
}
