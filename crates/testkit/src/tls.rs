//! [`TestCerts`]: throw-away TLS certificates for tests of `rediss://`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Throw-away TLS material made with the `openssl` command: a CA, a server
/// certificate for `127.0.0.1` and `localhost`, and a client certificate,
/// all signed by that CA (ECDSA P-256, valid for a day). The files live in a
/// temporary directory removed on drop.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let certs = ostq_testkit::TestCerts::generate()?;
/// let tls_port = ostq_testkit::free_port().to_string();
/// let mut args = vec!["--tls-port", tls_port.as_str()];
/// args.extend(certs.server_args());
/// let redis = ostq_testkit::RedisServer::start_with(&args)?;
/// // connect to rediss://127.0.0.1:{tls_port} trusting certs.ca()
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The paths as strings, for [`TestCerts::server_args`].
    paths: Vec<String>,
}

impl TestCerts {
    /// Generates the CA and the two certificates; fails if `openssl` is
    /// missing or refuses.
    pub fn generate() -> anyhow::Result<TestCerts> {
        let dir = tempfile::Builder::new()
            .prefix("ostq-certs-")
            .tempdir()
            .context("creating a temporary directory for certificates")?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .context("running openssl (is it installed?)")?;
            if !output.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut ca = vec!["req", "-x509", "-nodes", "-days", "1"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ostq test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&ca)?;
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            std::fs::write(
                dir.path().join(&ext),
                format!(
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                     keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
                ),
            )
            .context("writing an openssl extension file")?;
            let mut req = vec!["req", "-nodes"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
            run(&req)?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ])?;
        }
        let paths = ["ca.crt", "server.crt", "server.key"]
            .iter()
            .map(|file| dir.path().join(file).display().to_string())
            .collect();
        Ok(TestCerts { dir, paths })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM), for `127.0.0.1` and `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate (PEM) signed by the same CA.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client certificate's private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// `redis-server` arguments that use these files: `--tls-cert-file`,
    /// `--tls-key-file`, `--tls-ca-cert-file`. Add `--tls-port` (and
    /// `--tls-auth-clients no` unless clients should present a certificate).
    pub fn server_args(&self) -> Vec<&str> {
        let [ca, cert, key] = [0, 1, 2].map(|i| self.paths[i].as_str());
        vec![
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
        ]
    }
}
