//! Certificates for the tests that speak TLS (LDAP over TLS, an https JWKS, an https registry),
//! made with the `openssl` CLI: a CA, a server certificate it signs for 127.0.0.1 and
//! localhost, and an unrelated CA. Files in the directory given: `ca.pem`, `server.pem`,
//! `server.key`, `other-ca.pem`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A CA, a server certificate it signs for 127.0.0.1 and localhost, and an unrelated CA.
pub fn make_certificates(dir: &Path) -> Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    for (name, subject) in [("ca", "/CN=csel-auth test CA"), ("other-ca", "/CN=unrelated test CA")] {
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(ec);
        args.extend(ca_extensions);
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        args.extend(["-keyout", &key, "-out", &pem]);
        openssl(dir, &args)?;
    }
    let mut args = vec![
        "req",
        "-new",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(dir, &args)?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The files of a directory over https on 127.0.0.1: `openssl s_server -WWW` with the
/// directory's `server.pem` and `server.key` (see [`make_certificates`]). HTTP/1.0, one request
/// at a time: enough for a key set or two.
pub struct HttpsFiles {
    addr: std::net::SocketAddr,
    _process: super::process::ProcessGuard,
}

impl HttpsFiles {
    pub fn start(dir: &Path) -> Result<HttpsFiles> {
        let program = super::process::require_program("openssl")?;
        super::process::start_on_free_port("openssl s_server", || {
            let addr = super::ports::free_addr();
            let mut command = Command::new(&program);
            command
                .args([
                    "s_server",
                    "-quiet",
                    "-WWW",
                    "-cert",
                    "server.pem",
                    "-key",
                    "server.key",
                    "-accept",
                ])
                .arg(addr.to_string())
                .current_dir(dir);
            let log = dir.join(format!("s_server-{}.log", addr.port()));
            let mut process = super::process::ProcessGuard::spawn(
                "openssl s_server",
                command,
                &log,
                super::process::Signal::SIGTERM,
            )?;
            match process.wait_ready(
                "openssl s_server to accept connections",
                std::time::Duration::from_secs(10),
                || std::net::TcpStream::connect(addr).is_ok(),
            ) {
                Ok(()) => Ok(super::process::Started::Ready(HttpsFiles {
                    addr,
                    _process: process,
                })),
                Err(err) if super::process::port_in_use(&process.log()) => {
                    Ok(super::process::Started::PortTaken(format!("{err:#}")))
                }
                Err(err) => Err(err),
            }
        })
    }

    /// `https://127.0.0.1:PORT/FILE`.
    pub fn url(&self, file: &str) -> String {
        format!("https://{}/{file}", self.addr)
    }
}
