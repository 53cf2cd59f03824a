//! The CNCF distribution registry (`docker-registry serve`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::files::TestDir;
use super::http::{Endpoint, Response};
use super::images::sha256_digest;
use super::ports::free_addr;
use super::process::{port_in_use, require_program, start_on_free_port, ProcessGuard, Signal, Started};

/// How long the registry may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry with filesystem storage in a temporary directory, deletes enabled.
pub struct Registry {
    addr: SocketAddr,
    // Dropped before its directory.
    process: ProcessGuard,
    dir: TestDir,
}

impl Registry {
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Serving https only, with a certificate for 127.0.0.1 from a CA of its own
    /// ([`Registry::ca_file`]; [`Registry::other_ca_file`] is an unrelated one). The plain-http
    /// helpers of this type do not reach it.
    pub fn start_tls() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Self> {
        let program = require_program("docker-registry")?;
        start_on_free_port("docker-registry", || {
            let dir = TestDir::new("registry")?;
            let addr = free_addr();
            let storage = dir.mkdir("storage")?;
            let tls_section = if tls {
                super::tls::make_certificates(dir.path())?;
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.join("server.pem").display(),
                    dir.join("server.key").display()
                )
            } else {
                String::new()
            };
            let config = dir.write("config.yml", registry_config(addr, &storage, &tls_section))?;
            let mut command = Command::new(&program);
            command.arg("serve").arg(&config);
            let mut process =
                ProcessGuard::spawn("docker-registry", command, &dir.join("registry.log"), Signal::SIGTERM)?;
            let target = Endpoint::Tcp(addr);
            // Over https the plain-http probe cannot ask; a connection accepted is enough.
            let ready = || match tls {
                true => std::net::TcpStream::connect(addr).is_ok(),
                false => target.get("/v2/").is_ok_and(|r| r.status == 200),
            };
            match process.wait_ready("the registry to listen", START_TIMEOUT, ready) {
                Ok(()) => Ok(Started::Ready(Registry { addr, process, dir })),
                Err(err) if port_in_use(&process.log()) => Ok(Started::PortTaken(format!("{err:#}"))),
                Err(err) => Err(err),
            }
        })
    }

    /// The CA of a [`Registry::start_tls`] registry's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing of this registry's.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freezes the registry (SIGSTOP): connections are accepted by the kernel and never answered.
    pub fn pause(&self) -> Result<()> {
        self.process.pause()
    }

    pub fn resume(&self) -> Result<()> {
        self.process.resume()
    }

    /// Makes `count` empty repositories `prefix/NNNNN` in the registry's storage, as the
    /// registry lays out a repository it has received a blob for (its catalog lists every
    /// directory with a `_layers`): thousands in a moment, where pushing takes minutes.
    pub fn add_empty_repositories(&self, prefix: &str, count: usize) -> Result<()> {
        let repositories = self.dir.join("storage/docker/registry/v2/repositories");
        for i in 0..count {
            let path = repositories.join(format!("{prefix}/{i:05}/_layers"));
            std::fs::create_dir_all(&path).map_err(|e| anyhow!("creating {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// A request straight to the registry, bypassing nginx and csel-auth.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        Endpoint::Tcp(self.addr).request(method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    /// Uploads `bytes` as a blob of `repository` straight into the registry (POST then PUT, as
    /// distribution 2.8 has no single-request upload). Returns the digest.
    pub fn push_blob(&self, repository: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let start = self.request("POST", &format!("/v2/{repository}/blobs/uploads/"), &[], b"")?;
        let location = start
            .header("Location")
            .filter(|_| start.status == 202)
            .ok_or_else(|| anyhow!("starting an upload to {repository} failed: {start:?}"))?;
        // The registry answers with an absolute URL; keep path and query.
        let path = match location.find("/v2/") {
            Some(index) => &location[index..],
            None => bail!("unexpected upload Location {location:?}"),
        };
        let separator = if path.contains('?') { '&' } else { '?' };
        let done = self.request(
            "PUT",
            &format!("{path}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        if done.status != 201 {
            bail!("finishing the upload to {repository} failed: {done:?}");
        }
        Ok(digest)
    }
}

fn registry_config(addr: SocketAddr, storage: &Path, tls_section: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\n{tls_section}\
         health:\n  storagedriver:\n    enabled: false\n",
        storage = storage.display()
    )
}
