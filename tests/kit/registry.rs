//! The CNCF distribution registry (`docker-registry serve`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
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
        let program = require_program("docker-registry")?;
        start_on_free_port("docker-registry", || {
            let dir = TestDir::new("registry")?;
            let addr = free_addr();
            let storage = dir.mkdir("storage")?;
            let config = dir.write("config.yml", registry_config(addr, &storage))?;
            let mut command = Command::new(&program);
            command.arg("serve").arg(&config);
            let mut process =
                ProcessGuard::spawn("docker-registry", command, &dir.join("registry.log"), Signal::SIGTERM)?;
            let target = Endpoint::Tcp(addr);
            match process.wait_ready("the registry to answer GET /v2/ with 200", START_TIMEOUT, || {
                target.get("/v2/").is_ok_and(|r| r.status == 200)
            }) {
                Ok(()) => Ok(Started::Ready(Registry { addr, process, dir })),
                Err(err) if port_in_use(&process.log()) => Ok(Started::PortTaken(format!("{err:#}"))),
                Err(err) => Err(err),
            }
        })
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

fn registry_config(addr: SocketAddr, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\n\
         health:\n  storagedriver:\n    enabled: false\n",
        storage = storage.display()
    )
}
