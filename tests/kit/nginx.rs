//! nginx with the repository's `nginx/` files, unmodified but for addresses and paths, on both
//! nginx versions the tests cover.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::files::TestDir;
use super::http::{Endpoint, Response};
use super::ports::free_port;
use super::process::{port_in_use, require_program, run_command, start_on_free_port, ProcessGuard, Signal, Started};

/// How long nginx may take to answer.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where `scripts/install-test-deps` unpacks Debian 13's nginx 1.26 (`CSEL_NGINX_126` overrides
/// it).
pub const NGINX_126_DEFAULT: &str = "/opt/csel-auth-test/nginx-1.26/usr/sbin/nginx";

/// One nginx the tests run against.
#[derive(Clone, Debug)]
pub struct NginxBinary {
    pub path: PathBuf,
    /// As `nginx -v` says it: `nginx/1.22.1`.
    pub version: String,
}

impl NginxBinary {
    /// Checks that `path` runs and has the auth_request module.
    pub fn probe(path: &Path) -> Result<Self> {
        let output = Command::new(path)
            .arg("-V")
            .output()
            .with_context(|| format!("running `{} -V`", path.display()))?;
        // nginx prints its version and build configuration on stderr.
        let text = String::from_utf8_lossy(&output.stderr);
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("nginx version: "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("`{} -V` printed no version:\n{text}", path.display()))?;
        if !text.contains("http_auth_request_module") {
            bail!(
                "{} was built without the auth_request module; install the Debian \
                 package `nginx-light` (or `nginx`), which includes it",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
        })
    }

    /// The system's nginx (Debian 12: 1.22).
    pub fn system() -> Result<Self> {
        Self::probe(&require_program("nginx")?)
    }
}

impl fmt::Display for NginxBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.version)
    }
}

/// Whether this runs in CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Every nginx the tests must pass on: the system's (1.22 on Debian 12) and Debian 13's 1.26.
/// nginx 1.23 changed how repeated request headers reach variables (`$content_type` joins them
/// with ", "), so both sides of that change are tested. Without the 1.26 binary this fails in
/// CI and, outside CI, says loudly that only one version is tested.
pub fn nginx_binaries() -> Result<Vec<NginxBinary>> {
    let mut binaries = vec![NginxBinary::system()?];
    let newer = std::env::var_os("CSEL_NGINX_126").map_or_else(|| PathBuf::from(NGINX_126_DEFAULT), PathBuf::from);
    match NginxBinary::probe(&newer) {
        Ok(binary) if binary.version.starts_with("nginx/1.26.") => binaries.push(binary),
        found => {
            let what = match found {
                Ok(binary) => format!("{} is {}, not 1.26", newer.display(), binary.version),
                Err(error) => format!("{error:#}"),
            };
            let message = format!(
                "nginx 1.26 is missing ({what}); run scripts/install-test-deps, which unpacks \
                 Debian 13's nginx into {NGINX_126_DEFAULT} (or set CSEL_NGINX_126)"
            );
            if in_ci() {
                bail!("{message}");
            }
            eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
            eprintln!("!!! WARNING: {message}");
            eprintln!("!!! testing only {}", binaries[0]);
            eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
        }
    }
    Ok(binaries)
}

/// The repository's nginx files and the exact text each substitution replaces.
const UPSTREAM_FILE: &str = "csel-auth-upstream.conf";
const SNIPPET_FILE: &str = "csel-auth.conf";
const SERVER_FILE: &str = "registry.conf";
const SUBST_CSEL_AUTH_SERVER: &str = "server 127.0.0.1:9000;";
const SUBST_REGISTRY_SERVER: &str = "server 127.0.0.1:5001;";
const SUBST_LISTEN: &str = "listen 127.0.0.1:5000;";
const SUBST_ACCESS_LOG: &str = "access_log /var/log/nginx/registry.access.log csel_auth;";

/// Where nginx sends what.
pub struct NginxOptions {
    pub registry_addr: SocketAddr,
    pub csel_auth_addr: Endpoint,
    /// Listen on this port (e.g. reserved earlier for csel-auth's `--token-realm`); a free one
    /// when `None`.
    pub listen_port: Option<u16>,
}

/// nginx with the repository's nginx/ files, `user root;`, its own prefix, temp paths, error log
/// and access log.
pub struct Nginx {
    addr: SocketAddr,
    // Dropped before its directory.
    _process: ProcessGuard,
    dir: TestDir,
}

impl Nginx {
    /// `binary` (one of [`nginx_binaries`]) with `options`.
    pub fn start_on(binary: &NginxBinary, options: NginxOptions) -> Result<Self> {
        let attempt = |port: u16| -> Result<Started<Nginx>> {
            let dir = TestDir::new("nginx")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = write_nginx_files(&dir, addr, &options)?;
            let error_log = dir.join("logs/error.log");
            let check = run_command(
                nginx_command(&binary.path, &dir, &conf, &error_log, true),
                None,
                START_TIMEOUT,
            )?;
            if !check.success() {
                bail!("`nginx -t` rejected the test configuration:\n{check}");
            }
            let mut process = ProcessGuard::spawn(
                "nginx",
                nginx_command(&binary.path, &dir, &conf, &error_log, false),
                &dir.join("logs/stdout.log"),
                Signal::SIGTERM,
            )?;
            process.extra_logs = vec![error_log.clone(), dir.join("logs/access.log")];
            let target = Endpoint::Tcp(addr);
            // A worker is accepting once nginx answers; /_csel_auth is `internal`, so nginx
            // itself says 404 without asking csel-auth (and, unlike a missing file, without an
            // error-log line).
            let ready = process.wait_ready("nginx to answer HTTP", START_TIMEOUT, || {
                target.get("/_csel_auth").is_ok()
            });
            match ready {
                Ok(()) => Ok(Started::Ready(Nginx {
                    addr,
                    _process: process,
                    dir,
                })),
                Err(err) => {
                    let errors = fs::read_to_string(&error_log).unwrap_or_default();
                    if options.listen_port.is_none() && port_in_use(&errors) {
                        Ok(Started::PortTaken(format!("{err:#}")))
                    } else {
                        Err(err)
                    }
                }
            }
        };
        match options.listen_port {
            Some(port) => match attempt(port)? {
                Started::Ready(nginx) => Ok(nginx),
                Started::PortTaken(log) => bail!("{log}"),
            },
            None => start_on_free_port("nginx", || attempt(free_port())),
        }
    }

    /// Where clients connect (`127.0.0.1:PORT`, also the registry host name).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// nginx's access log (`csel_auth` format: the request line and status).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        Endpoint::Tcp(self.addr).request(method, path, headers, body)
    }

    /// The repository's nginx/ directory the files are taken from (`CSEL_NGINX_DIR` overrides
    /// it).
    pub fn source_dir() -> PathBuf {
        std::env::var_os("CSEL_NGINX_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx"))
    }
}

fn nginx_command(nginx: &Path, dir: &TestDir, conf: &Path, error_log: &Path, test_only: bool) -> Command {
    let mut command = Command::new(nginx);
    if test_only {
        command.arg("-t").arg("-q");
    }
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(error_log);
    command
}

/// Copies the repository's files into `<dir>/conf` with the test addresses and returns the path
/// of the generated top-level nginx.conf.
fn write_nginx_files(dir: &TestDir, listen: SocketAddr, options: &NginxOptions) -> Result<PathBuf> {
    let source = Nginx::source_dir();
    let conf_dir = dir.mkdir("conf")?;
    let logs = dir.mkdir("logs")?;
    let temp = dir.mkdir("temp")?;
    let read = |name: &str| {
        let path = source.join(name);
        fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (set CSEL_NGINX_DIR to the repository's nginx/ directory)",
                path.display()
            )
        })
    };
    let access_log = logs.join("access.log");
    let files = [
        (
            UPSTREAM_FILE,
            substitute(
                UPSTREAM_FILE,
                read(UPSTREAM_FILE)?,
                &[(
                    SUBST_CSEL_AUTH_SERVER,
                    format!("server {};", options.csel_auth_addr.to_arg()),
                )],
            )?,
        ),
        (SNIPPET_FILE, read(SNIPPET_FILE)?),
        (
            SERVER_FILE,
            substitute(
                SERVER_FILE,
                read(SERVER_FILE)?,
                &[
                    (SUBST_REGISTRY_SERVER, format!("server {};", options.registry_addr)),
                    (SUBST_LISTEN, format!("listen {listen};")),
                    (
                        SUBST_ACCESS_LOG,
                        format!("access_log {} csel_auth;", access_log.display()),
                    ),
                ],
            )?,
        ),
    ];
    for (name, contents) in files {
        fs::write(conf_dir.join(name), contents).with_context(|| format!("writing {name}"))?;
    }
    let t = |name: &str| temp.join(name).display().to_string();
    let top = format!(
        "# Generated by tests/kit/nginx.rs\n\
         user root;\n\
         daemon off;\n\
         worker_processes 1;\n\
         pid {pid};\n\
         error_log {error_log} info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   client_body_temp_path {body};\n\
         \x20   proxy_temp_path {proxy};\n\
         \x20   fastcgi_temp_path {fastcgi};\n\
         \x20   uwsgi_temp_path {uwsgi};\n\
         \x20   scgi_temp_path {scgi};\n\
         \x20   include {upstream};\n\
         \x20   include {server};\n\
         }}\n",
        pid = dir.join("nginx.pid").display(),
        error_log = logs.join("error.log").display(),
        body = t("body"),
        proxy = t("proxy"),
        fastcgi = t("fastcgi"),
        uwsgi = t("uwsgi"),
        scgi = t("scgi"),
        upstream = UPSTREAM_FILE,
        server = SERVER_FILE,
    );
    let conf = conf_dir.join("nginx.conf");
    fs::write(&conf, top).context("writing nginx.conf")?;
    Ok(conf)
}

/// Replaces the one line whose text (without indentation) is `from` by `to`, keeping the
/// indentation; comments never match. A file that changed shape fails loudly instead of
/// silently testing the wrong address.
fn substitute(file: &str, text: String, replacements: &[(&str, String)]) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (from, to) in replacements {
        let matches: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.trim() == *from)
            .map(|(index, _)| index)
            .collect();
        let [index] = matches[..] else {
            bail!(
                "nginx/{file}: expected exactly one line `{from}` (a substitution point the \
                 tests replace with `{to}`), found {}",
                matches.len()
            );
        };
        let indent_len = lines[index].len() - lines[index].trim_start().len();
        let indent = lines[index][..indent_len].to_string();
        lines[index] = format!("{indent}{to}");
    }
    Ok(lines.join("\n") + "\n")
}
