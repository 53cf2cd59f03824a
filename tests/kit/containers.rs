//! skopeo and podman with state of their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Result};

use super::files::TestDir;
use super::images::{tiny_layer_tar, write_oci_layout, OciImage};
use super::process::{require_program, run_command, CmdOutput, COMMAND_TIMEOUT};

/// skopeo and podman with isolated state: their own auth file
/// (`REGISTRY_AUTH_FILE`), registries.conf marking the given registries
/// insecure (plain HTTP allowed), an accept-anything signature policy, an
/// empty `DOCKER_CONFIG` and `HOME` (both tools also read docker's
/// config.json for credentials, even with `--authfile`), and podman storage
/// (`--root`, `--runroot`, `--storage-driver vfs`, `--tmpdir`) in a temp dir.
pub struct ContainerTools {
    dir: TestDir,
    auth_file: PathBuf,
    registries_conf: PathBuf,
    policy: PathBuf,
}

impl ContainerTools {
    pub fn new(insecure_registries: &[SocketAddr]) -> Result<Self> {
        let dir = TestDir::new("ctools")?;
        // podman refuses a missing auth file; skopeo accepts either.
        let auth_file = dir.write("auth.json", "{\"auths\":{}}\n")?;
        let mut registries = String::from("unqualified-search-registries = []\n");
        for addr in insecure_registries {
            registries.push_str(&format!("\n[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"));
        }
        let registries_conf = dir.write("registries.conf", registries)?;
        let policy = dir.write("policy.json", "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n")?;
        for sub in [
            "home",
            "docker-config",
            "tmp",
            "podman/root",
            "podman/runroot",
            "podman/tmp",
        ] {
            dir.mkdir(sub)?;
        }
        Ok(Self {
            dir,
            auth_file,
            registries_conf,
            policy,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn isolate(&self, command: &mut Command) {
        command
            .env("REGISTRY_AUTH_FILE", &self.auth_file)
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("DOCKER_CONFIG", self.dir.join("docker-config"))
            .env("HOME", self.dir.join("home"))
            .env("XDG_CONFIG_HOME", self.dir.join("home/.config"))
            .env("XDG_RUNTIME_DIR", self.dir.join("tmp"))
            .env("TMPDIR", self.dir.join("tmp"));
    }

    /// `skopeo --registries-conf … --policy … --tmpdir …` (skopeo 1.9 ignores
    /// CONTAINERS_REGISTRIES_CONF; the hidden global `--registries-conf` works).
    fn skopeo_command(&self) -> Result<Command> {
        let mut command = Command::new(require_program("skopeo")?);
        command
            .arg("--registries-conf")
            .arg(&self.registries_conf)
            .arg("--policy")
            .arg(&self.policy)
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        self.isolate(&mut command);
        Ok(command)
    }

    /// `podman --root … --runroot … --storage-driver vfs --tmpdir …
    /// --events-backend file --cgroup-manager cgroupfs`.
    fn podman_command(&self) -> Result<Command> {
        let mut command = Command::new(require_program("podman")?);
        command
            .arg("--root")
            .arg(self.dir.join("podman/root"))
            .arg("--runroot")
            .arg(self.dir.join("podman/runroot"))
            .args(["--storage-driver", "vfs"])
            .arg("--tmpdir")
            .arg(self.dir.join("podman/tmp"))
            .args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"]);
        self.isolate(&mut command);
        Ok(command)
    }

    /// Runs `skopeo ARGS` with the isolated configuration.
    pub fn skopeo(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut command = self.skopeo_command()?;
        command.args(args);
        run_command(command, None, COMMAND_TIMEOUT)
    }

    /// Runs `podman ARGS` with the isolated configuration and storage.
    pub fn podman(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut command = self.podman_command()?;
        command.args(args);
        run_command(command, None, COMMAND_TIMEOUT)
    }

    /// `skopeo login -u USER --password-stdin REGISTRY` into the auth file.
    pub fn skopeo_login(&self, registry: SocketAddr, user: &str, password: &str) -> Result<CmdOutput> {
        let mut command = self.skopeo_command()?;
        command.args(["login", "-u", user, "--password-stdin", &registry.to_string()]);
        run_command(command, Some(password.as_bytes()), COMMAND_TIMEOUT)
    }

    /// `podman login -u USER --password-stdin REGISTRY` into the auth file.
    pub fn podman_login(&self, registry: SocketAddr, user: &str, password: &str) -> Result<CmdOutput> {
        let mut command = self.podman_command()?;
        command.args(["login", "-u", user, "--password-stdin", &registry.to_string()]);
        run_command(command, Some(password.as_bytes()), COMMAND_TIMEOUT)
    }

    /// Writes a one-layer OCI image layout (no network, no daemon) for
    /// `skopeo copy oci:DIR:TAG docker://…`.
    pub fn oci_image(&self, name: &str, tag: &str, content: &str) -> Result<OciImage> {
        write_oci_layout(&self.dir.join(format!("oci/{name}")), tag, content.as_bytes())
    }

    /// Imports a one-layer image into podman's storage as `reference`.
    pub fn podman_import_tiny(&self, reference: &str, content: &str) -> Result<CmdOutput> {
        let tar = self
            .dir
            .write("podman-import.tar", tiny_layer_tar("hello.txt", content.as_bytes()))?;
        let tar = tar.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp path"))?;
        self.podman(&["import", tar, reference])?.ok()
    }
}
