//! What the end-to-end tests share: a registry behind nginx and csel-auth in basic or token
//! mode ([`Stack`]), images seeded straight into the registry, rule changes that wait for the
//! reload, and named steps whose failure says which step failed.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::files::{example, TestDir};
use super::http::Response;
use super::images::write_oci_layout;
use super::metrics::parse_metrics;
use super::nginx::{Nginx, NginxBinary, NginxOptions};
use super::ports::free_port;
use super::process::CmdOutput;
use super::registry::Registry;
use super::service::{CselAuth, Setup};
use super::wait::wait_until;
use super::{basic, password};

/// The `--token-service` of token-mode stacks.
pub const TOKEN_SERVICE: &str = "csel-e2e";
/// How long a rules change may take to be in force (100 ms is the promise;
/// leave room for a busy CI machine, the wait ends as soon as it is).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How csel-auth authenticates clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `WWW-Authenticate: Basic`, htpasswd credentials on every request.
    Basic,
    /// `--token-realm`: Bearer challenges, tokens from nginx's `/token`.
    Token,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Basic => "basic",
            Mode::Token => "token",
        })
    }
}

/// `Basic base64(user:password)` with the example password (examples/users.htpasswd).
pub fn basic_auth(user: &str) -> String {
    basic(user, &password(user))
}

/// Runs one named step of a scenario: its error names the step, and its
/// duration is printed (shown by `cargo test -- --nocapture` or on failure).
pub fn step<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let result = body();
    eprintln!(
        "[{:>9}] {} {name}",
        format!("{:.2?}", started.elapsed()),
        if result.is_ok() { "ok    " } else { "FAILED" }
    );
    result.with_context(|| format!("step failed: {name}"))
}

/// The command succeeded.
pub fn succeeded(out: CmdOutput) -> Result<CmdOutput> {
    out.ok()
}

/// The command failed and its output contains `expected` (the client's exact error text; the
/// output is shown when it does not).
pub fn failed_with(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    containing(out.failed()?, expected)
}

/// The command failed and its stderr, without surrounding white space, is exactly `expected`.
pub fn failed_with_stderr(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    let out = out.failed()?;
    ensure!(
        out.stderr.trim() == expected,
        "expected exactly {expected:?} on stderr, but it was:\n{out}"
    );
    Ok(out)
}

/// The command succeeded and its output contains `expected`.
pub fn succeeded_with(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    containing(out.ok()?, expected)
}

fn containing(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    ensure!(
        out.combined().contains(expected),
        "expected the output to contain\n    {expected}\nbut it was:\n{out}"
    );
    Ok(out)
}

/// How long a refused push may take. It is a few round trips on loopback; a client retrying the
/// refused upload takes tens of seconds (docker: five attempts, 5 to 20 s apart, ~50 s).
/// Generous for a busy 2-core machine.
pub const REFUSED_PUSH_BOUND: Duration = Duration::from_secs(15);

/// A refused push that ended at once (within [`REFUSED_PUSH_BOUND`]), not retried.
pub fn refused_at_once(out: CmdOutput) -> Result<CmdOutput> {
    ensure!(
        out.duration <= REFUSED_PUSH_BOUND,
        "the refused push took {:.1?}, more than {REFUSED_PUSH_BOUND:?}: the client retried it\n{out}",
        out.duration
    );
    Ok(out)
}

/// An image put straight into the registry (bypassing nginx and csel-auth).
#[derive(Clone, Debug)]
pub struct SeededImage {
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    /// The file content inside the layer: a string no error page contains.
    pub content: String,
}

/// A registry behind nginx (the repository's nginx/ files) and csel-auth
/// with the example htpasswd and a rules file the test can rewrite.
/// Fields drop in order: nginx, csel-auth, registry, the directory.
pub struct Stack {
    pub nginx: Nginx,
    pub auth: CselAuth,
    pub registry: Registry,
    pub mode: Mode,
    rules: PathBuf,
    dir: TestDir,
}

impl Stack {
    /// Starts registry, csel-auth (`mode`, rules `rules`) and the system's nginx.
    pub fn start(mode: Mode, rules: &str) -> Result<Self> {
        Self::start_on(&NginxBinary::system()?, mode, rules)
    }

    /// [`Stack::start`] with `nginx` (one of [`super::nginx::nginx_binaries`]).
    pub fn start_on(nginx: &NginxBinary, mode: Mode, rules: &str) -> Result<Self> {
        Self::start_configured(nginx, mode, rules, None, None)
    }

    /// [`Stack::start`] with a config file naming the rules and htpasswd files, followed by
    /// `sections` (TOML: `[ldap]`, `[[oidc]]`; relative paths are in [`Stack::dir`]'s).
    pub fn start_with_config(mode: Mode, rules: &str, sections: &str, files: &[(&str, &str)]) -> Result<Self> {
        Self::start_configured(&NginxBinary::system()?, mode, rules, Some((sections, files)), None)
    }

    /// [`Stack::start`] with csel-auth reading the access keys file `keys`.
    pub fn start_with_access_keys(mode: Mode, rules: &str, keys: &Path) -> Result<Self> {
        Self::start_configured(&NginxBinary::system()?, mode, rules, None, Some(keys))
    }

    fn start_configured(
        nginx: &NginxBinary,
        mode: Mode,
        rules: &str,
        config: Option<(&str, &[(&str, &str)])>,
        keys: Option<&Path>,
    ) -> Result<Self> {
        let dir = TestDir::new(&format!("stack-{mode}"))?;
        let rules_path = dir.write("registry.rules", rules)?;
        let htpasswd = dir.write("users.htpasswd", example("users.htpasswd")?)?;
        let registry = Registry::start()?;
        let mut setup = match config {
            None => Setup::bare().rules_at(rules_path.clone()).htpasswd_at(Some(htpasswd)),
            Some((sections, files)) => {
                for (name, contents) in files {
                    let path = dir.write(name, contents)?;
                    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                }
                let text = format!("rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n{sections}");
                Setup::bare().config_file(dir.write("csel-auth.toml", text)?)
            }
        };
        if let Some(keys) = keys {
            setup = setup.access_keys(keys);
        }
        // Its own address, not nginx's: asked whether a tag exists, and for the catalog (which
        // nginx/csel-auth.conf sends to csel-auth). A config file's `[registry]` is overridden.
        setup = setup.registry(&format!("http://{}", registry.addr()));
        // Token mode: nginx's /token is the realm, so nginx's port is chosen first.
        let listen_port = match mode {
            Mode::Basic => None,
            Mode::Token => {
                let port = free_port();
                let realm = format!("http://127.0.0.1:{port}/token");
                setup = setup.token(&realm, TOKEN_SERVICE, dir.join("token.key"));
                Some(port)
            }
        };
        let auth = setup.try_start()?;
        let nginx = Nginx::start_on(
            nginx,
            NginxOptions {
                registry_addr: registry.addr(),
                csel_auth_addr: auth.endpoint().clone(),
                listen_port,
            },
        )?;
        Ok(Self {
            nginx,
            auth,
            registry,
            mode,
            rules: rules_path,
            dir,
        })
    }

    /// `127.0.0.1:PORT`, the registry host name clients use.
    pub fn host(&self) -> String {
        self.nginx.addr().to_string()
    }

    /// `127.0.0.1:PORT/<name>`, an image reference through nginx.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Replaces the rules file the way an editor or `git checkout` does
    /// (write a new file, rename it over the old one) and waits until
    /// csel-auth reports the new version in force.
    pub fn set_rules(&self, text: &str) -> Result<()> {
        let before = self.rules_version()?;
        let temp = self.dir.write("registry.rules.new", text)?;
        fs::rename(&temp, &self.rules).with_context(|| format!("renaming over {}", self.rules.display()))?;
        wait_until(
            RELOAD_TIMEOUT,
            &format!("csel-auth to load rules version {}", before + 1),
            || self.rules_version().ok().filter(|v| *v > before),
        )
        .with_context(|| self.auth.log())?;
        Ok(())
    }

    /// `csel_auth_version{file="rules"}` from csel-auth's /metrics.
    pub fn rules_version(&self) -> Result<u64> {
        let metrics = self.auth.endpoint().get("/metrics")?;
        ensure!(metrics.status == 200, "/metrics answered {}", metrics.status);
        let text = metrics.text();
        parse_metrics(&text)
            .get("csel_auth_version{file=\"rules\"}")
            .map(|version| *version as u64)
            .ok_or_else(|| anyhow!("no csel_auth_version{{file=\"rules\"}} in /metrics:\n{text}"))
    }

    /// Puts a one-layer OCI image straight into the registry. The layer's
    /// only file holds `content`.
    pub fn seed_image(&self, repository: &str, tag: &str, content: &str) -> Result<SeededImage> {
        let layout = self.dir.join(format!("seed/{repository}/{tag}"));
        let oci = write_oci_layout(&layout, tag, content.as_bytes())?;
        let blob = |digest: &str| {
            let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
            fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        for digest in [&oci.config_digest, &oci.layer_digest] {
            let pushed = self.registry.push_blob(repository, &blob(digest)?)?;
            ensure!(pushed == *digest, "pushed {pushed}, expected {digest}");
        }
        let manifest = blob(&oci.manifest_digest)?;
        let put = self.registry.request(
            "PUT",
            &format!("/v2/{repository}/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            &manifest,
        )?;
        ensure!(
            put.status == 201,
            "PUT manifest {repository}:{tag} straight to the registry: {} {}",
            put.status,
            put.text()
        );
        Ok(SeededImage {
            tag: tag.to_string(),
            manifest_digest: oci.manifest_digest,
            config_digest: oci.config_digest,
            layer_digest: oci.layer_digest,
            content: content.to_string(),
        })
    }

    /// Whether `repository:reference` has a manifest in the registry (asked
    /// straight, bypassing nginx).
    pub fn registry_has_manifest(&self, repository: &str, reference: &str) -> Result<bool> {
        let response = self.registry.request(
            "HEAD",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )],
            b"",
        )?;
        Ok(response.status == 200)
    }

    /// The `Authorization` value for `user` (`None`: anonymous): Basic with
    /// the example password in basic mode; in token mode a Bearer token from
    /// nginx's /token (fetched with those Basic credentials, or none).
    pub fn authorization(&self, user: Option<&str>) -> Result<Option<String>> {
        match (self.mode, user) {
            (Mode::Basic, None) => Ok(None),
            (Mode::Basic, Some(user)) => Ok(Some(basic_auth(user))),
            (Mode::Token, user) => {
                let credentials = user.map(basic_auth);
                let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
                let response = self.nginx.request(
                    "GET",
                    &format!("/token?service={TOKEN_SERVICE}&scope=repository:coolteam/app:pull"),
                    &headers,
                    b"",
                )?;
                ensure!(
                    response.status == 200,
                    "GET /token as {user:?}: {} {}",
                    response.status,
                    response.text()
                );
                let json: serde_json::Value = serde_json::from_slice(&response.body)?;
                let token = json["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no token in {}", response.text()))?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// A request through nginx with `authorization` (from [`Stack::authorization`]).
    pub fn request(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let mut all: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
        all.extend_from_slice(headers);
        Ok(self.nginx.request(method, path, &all, body)?)
    }

    /// csel-auth's log: one line per decision.
    pub fn decision_log(&self) -> String {
        self.auth.log()
    }

    /// nginx's access log (`csel_auth` format: the request line and status).
    pub fn access_log(&self) -> String {
        self.nginx.access_log()
    }
}

/// The lines of `log` containing every one of `needles`.
pub fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .collect()
}

/// Fails unless some line of `log` contains every one of `needles`.
pub fn expect_log_line(what: &str, log: &str, needles: &[&str]) -> Result<()> {
    if lines_with(log, needles).is_empty() {
        bail!("{what}: no line contains all of {needles:?}; the log:\n{log}");
    }
    Ok(())
}
