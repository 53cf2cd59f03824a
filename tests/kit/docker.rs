//! A private docker engine and the docker CLI bound to it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::files::TestDir;
use super::http::Endpoint;
use super::images::tiny_layer_tar;
use super::process::{require_program, run_command, CmdOutput, ProcessGuard, Signal, COMMAND_TIMEOUT};

/// dockerd with vfs starts in well under a second here; leave room for a busy CI.
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A private docker engine: vfs storage, no iptables, no bridge, its own
/// data-root, exec-root, pidfile, config file and socket in a temporary dir.
pub struct Dockerd {
    socket: PathBuf,
    client: DockerClient,
    process: ProcessGuard,
    dir: TestDir,
}

/// The docker CLI bound to one engine with its own `DOCKER_CONFIG` dir, so
/// login state is per client (two clients = two users on one engine).
pub struct DockerClient {
    docker: PathBuf,
    host: String,
    config_dir: TestDir,
}

impl Dockerd {
    /// `insecure_registry_addr` is passed as `--insecure-registry` (docker
    /// also treats every 127.0.0.0/8 registry as insecure by itself).
    pub fn start(insecure_registry_addr: SocketAddr) -> Result<Self> {
        let dockerd = require_program("dockerd")?;
        let docker = require_program("docker")?;
        let dir = TestDir::new("dockerd")?;
        let socket = dir.join("docker.sock");
        // An explicit empty config file keeps /etc/docker/daemon.json out.
        let config_file = dir.write("daemon.json", "{}\n")?;
        let mut command = Command::new(&dockerd);
        command
            .arg("--storage-driver=vfs")
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .arg("--config-file")
            .arg(&config_file)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--insecure-registry")
            .arg(insecure_registry_addr.to_string())
            .env_remove("DOCKER_HOST");
        let mut process = ProcessGuard::spawn("dockerd", command, &dir.join("dockerd.log"), Signal::SIGTERM)?;
        let host = format!("unix://{}", socket.display());
        let client = DockerClient::new(&docker, &host)?;
        let mut last_info = String::new();
        let ready = process.wait_ready("`docker info` to succeed", DOCKERD_START_TIMEOUT, || {
            // The cheap /_ping first; `docker info` once the socket answers.
            let ping = Endpoint::Unix(socket.clone()).get("/_ping");
            if !ping.is_ok_and(|r| r.status == 200) {
                return false;
            }
            match client.run(&["info"]) {
                Ok(out) if out.success() => true,
                Ok(out) => {
                    last_info = out.to_string();
                    false
                }
                Err(err) => {
                    last_info = err.to_string();
                    false
                }
            }
        });
        let dockerd = Dockerd {
            socket,
            client,
            process,
            dir,
        };
        match ready {
            Ok(()) => Ok(dockerd),
            Err(err) => Err(anyhow!("{err}\nlast `docker info`: {last_info}")),
        }
    }

    /// `unix:///tmp/csel-dockerd-…/docker.sock`, for `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the docker CLI against this engine with the default client's config.
    pub fn docker(&self, args: &[&str]) -> Result<CmdOutput> {
        self.client.run(args)
    }

    /// A further client with its own, empty DOCKER_CONFIG.
    pub fn new_client(&self) -> Result<DockerClient> {
        DockerClient::new(&self.client.docker, &self.host())
    }

    /// Makes a one-layer image (one small file) with `docker import` and tags
    /// it `reference` (e.g. `127.0.0.1:PORT/library/alpine:1`). Returns the
    /// image id. `content` makes layers distinct (cross-repo mount tests).
    pub fn import_tiny_image(&self, reference: &str, content: &str) -> Result<String> {
        let tar = self
            .dir
            .write("import.tar", tiny_layer_tar("hello.txt", content.as_bytes()))?;
        let tar = tar.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp path"))?;
        let out = self.docker(&["import", tar, reference])?.ok()?;
        Ok(out.stdout.trim().to_string())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.process.stop_with(|log| log.contains("Daemon shutdown complete"));
        // dockerd bind-mounts its data-root onto itself; after an unclean stop
        // that mount remains and the directory cannot be removed.
        unmount_below(self.dir.path());
    }
}

impl DockerClient {
    fn new(docker: &Path, host: &str) -> Result<Self> {
        Ok(Self {
            docker: docker.to_path_buf(),
            host: host.to_string(),
            config_dir: TestDir::new("dockercfg")?,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.docker);
        command
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .env("DOCKER_CONFIG", self.config_dir.path())
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        command
    }

    pub fn run(&self, args: &[&str]) -> Result<CmdOutput> {
        run_command(self.command(args), None, COMMAND_TIMEOUT)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Result<CmdOutput> {
        run_command(self.command(args), Some(stdin.as_bytes()), COMMAND_TIMEOUT)
    }

    /// `docker login REGISTRY -u USER --password-stdin`.
    pub fn login(&self, registry: SocketAddr, user: &str, password: &str) -> Result<CmdOutput> {
        let registry = registry.to_string();
        self.run_with_stdin(&["login", &registry, "-u", user, "--password-stdin"], password)
    }

    pub fn config_dir(&self) -> &Path {
        self.config_dir.path()
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        let status = Command::new("umount").arg("-l").arg(&point).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("warning: could not unmount {}", point.display());
        }
    }
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let code = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
