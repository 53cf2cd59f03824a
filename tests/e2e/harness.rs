//! End-to-end test harness: real nginx, a real CNCF distribution registry,
//! csel-auth, a private docker engine, skopeo and podman, all on 127.0.0.1.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "e2e/harness.rs"]
//! mod harness;
//! ```
//!
//! Every process is started in its own process group and owned by a guard
//! whose `Drop` stops the whole group and removes its temporary directory,
//! also when the test panics. Readiness is always a polled condition with a
//! deadline, never a fixed sleep.
//!
//! Guards must be dropped on the thread that created them: children get
//! `PR_SET_PDEATHSIG`, which fires when the *creating thread* ends, so a
//! killed test binary does not leave servers behind.
//!
//! Environment knobs:
//! * `CSEL_AUTH_BIN`: csel-auth binary (default: cargo's `CARGO_BIN_EXE_csel-auth`).
//! * `CSEL_NGINX_DIR`: directory with csel-auth.conf, csel-auth-upstream.conf
//!   and registry.conf (default: `<crate>/nginx`).
//! * `CSEL_E2E_KEEP_TMP=1`: keep temporary directories for post-mortem.
//! * `CSEL_NGINX_126`: the nginx 1.26 binary the tests that run on both nginx
//!   versions use (default: where `scripts/install-test-deps` unpacks it).
//!
//! Programs and the Debian packages that provide them: nginx (nginx-light),
//! docker-registry (docker-registry), dockerd and docker (docker.io), skopeo
//! (skopeo), podman (podman), htpasswd (apache2-utils), umount (mount).

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// How long a server may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// dockerd with vfs starts in well under a second here; leave room for a busy CI.
pub const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one client command. docker 20.10 retries a denied layer
/// upload five times with 5+10+15+20 s back-off (~50 s) before it gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a process gets to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a log shown in an error or after a failed test.
const LOG_TAIL_LINES: usize = 60;

pub const SIGHUP: i32 = 1;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
const PR_SET_PDEATHSIG: i32 = 1;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn getppid() -> i32;
}

// ---------------------------------------------------------------------------
// Programs

/// Programs the harness runs and the Debian packages that provide them.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("docker-registry", "docker-registry"),
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("skopeo", "skopeo"),
    ("podman", "podman"),
    ("htpasswd", "apache2-utils"),
    ("umount", "mount"),
];

/// Finds `name` in PATH, or fails naming the Debian package to install.
pub fn require_program(name: &str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    // dockerd, nginx and umount live in sbin, which a non-root PATH may lack.
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    let package = DEBIAN_PACKAGES
        .iter()
        .find(|(program, _)| *program == name)
        .map_or(name, |(_, package)| *package);
    bail!(
        "required program `{name}` was not found in PATH; install it with \
         `apt-get install -y {package}` (Debian package `{package}`)"
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// nginx found in PATH and built with the auth_request module.
pub fn require_nginx() -> Result<PathBuf> {
    Ok(NginxBinary::probe(&require_program("nginx")?)?.path)
}

/// Where `scripts/install-test-deps` unpacks Debian 13's nginx 1.26
/// (`CSEL_NGINX_126` overrides it).
pub const NGINX_126_DEFAULT: &str = "/opt/csel-auth-test/nginx-1.26/usr/sbin/nginx";

/// One nginx the end-to-end tests run against.
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

/// Every nginx the tests must pass on: the system's (1.22 on Debian 12) and
/// Debian 13's 1.26. nginx 1.23 changed how repeated request headers reach
/// variables (`$content_type` joins them with ", "), so both sides of that
/// change are tested. Without the 1.26 binary this fails in CI and, outside
/// CI, says loudly that only one version is tested.
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

// ---------------------------------------------------------------------------
// Temporary directories

/// A temporary directory under /tmp (short: unix socket paths are limited to
/// ~107 bytes), removed on drop unless `CSEL_E2E_KEEP_TMP=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("csel-{label}-"))
            .tempdir_in("/tmp")
            .context("creating a temporary directory in /tmp")?;
        let path = dir.path().to_path_buf();
        Ok(Self { dir: Some(dir), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn mkdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::env::var_os("CSEL_E2E_KEEP_TMP").is_some_and(|v| v == "1") {
            eprintln!("CSEL_E2E_KEEP_TMP=1: keeping {}", dir.keep().display());
            return;
        }
        if let Err(err) = dir.close() {
            eprintln!("warning: could not remove {}: {err}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Ports and addresses

/// Where a service listens: a TCP address or a unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// As csel-auth's `--listen` and nginx's upstream `server` take it:
    /// `127.0.0.1:9000` or `unix:/path`.
    pub fn to_arg(&self) -> String {
        match self {
            ListenAddr::Tcp(addr) => addr.to_string(),
            ListenAddr::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_arg())
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

fn handed_out_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has
/// not handed out before. Another process can still take it before it is
/// bound; the servers below retry with a new port when that happens.
pub fn pick_free_port() -> Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr().context("reading the bound port")?.port();
        let mut handed = handed_out_ports().lock().unwrap_or_else(|e| e.into_inner());
        if handed.insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free port on 127.0.0.1 that was not already handed out")
}

/// `127.0.0.1:<free port>`.
pub fn pick_free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], pick_free_port()?)))
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `probe` until it returns `Some`, failing after `timeout`.
/// The pause between probes grows from 10 ms to 200 ms; the condition, not
/// the pause, is what the caller synchronises on.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Waits until a TCP connection to `addr` succeeds.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_until(&format!("a TCP connection to {addr}"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .ok()
            .map(drop)
    })
}

/// Waits until `GET path` on `addr` answers `status`.
pub fn wait_for_http_status(addr: &ListenAddr, path: &str, status: u16, timeout: Duration) -> Result<()> {
    wait_until(
        &format!("GET {path} on {addr} to answer {status}"),
        timeout,
        || match http_request(addr, "GET", path, &[], b"") {
            Ok(response) if response.status == status => Some(()),
            _ => None,
        },
    )
}

/// Waits until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    wait_until(&format!("{} to exist", path.display()), timeout, || {
        path.exists().then_some(())
    })
}

/// Waits until the file at `path` contains `needle`.
pub fn wait_for_file_contains(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{} to contain {needle:?}", path.display()), timeout, || {
        fs::read_to_string(path)
            .ok()
            .filter(|text| text.contains(needle))
            .map(drop)
    })
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client (no client crate in the dependency set)

/// An HTTP response read to the end.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Sends one request (`Connection: close`) and reads the whole answer.
/// `headers` are sent as given; `Host` and `Content-Length` are added.
pub fn http_request(
    addr: &ListenAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let io_timeout = Some(Duration::from_secs(30));
    let (mut stream, host): (Box<dyn ReadWrite>, String) = match addr {
        ListenAddr::Tcp(sock) => {
            let s = TcpStream::connect_timeout(sock, Duration::from_secs(5))
                .with_context(|| format!("connecting to {sock}"))?;
            s.set_read_timeout(io_timeout)?;
            s.set_write_timeout(io_timeout)?;
            (Box::new(s), sock.to_string())
        }
        ListenAddr::Unix(path) => {
            let s = UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
            s.set_read_timeout(io_timeout)?;
            s.set_write_timeout(io_timeout)?;
            (Box::new(s), "localhost".to_string())
        }
    };
    let mut request = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending to {addr}"))?;
    stream
        .write_all(body)
        .with_context(|| format!("sending a body to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}"))?;
    parse_http_response(&raw, method == "HEAD")
        .with_context(|| format!("parsing the answer of {addr} to {method} {path_and_query}"))
}

/// `GET path` without extra headers.
pub fn http_get(addr: &ListenAddr, path: &str) -> Result<HttpResponse> {
    http_request(addr, "GET", path, &[], b"")
}

fn parse_http_response(raw: &[u8], head_request: bool) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if head_request {
        Vec::new()
    } else if chunked {
        decode_chunked(rest)?
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, headers, body })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size line"))?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk of {size} bytes");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Processes

/// A child process in its own process group. Drop stops the group: SIGTERM to
/// the leader, up to `STOP_GRACE` for it to exit, then SIGKILL to the group.
pub struct ProcessGuard {
    name: String,
    command_line: String,
    child: Child,
    log_path: PathBuf,
    /// Extra logs worth showing after a failure (e.g. nginx's error.log).
    extra_logs: Vec<PathBuf>,
    stopped: bool,
}

impl ProcessGuard {
    /// Spawns `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating a log file handle")?;
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        set_parent_death_signal(&mut command);
        let command_line = describe_command(&command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command_line}"))?;
        Ok(Self {
            name: name.to_string(),
            command_line,
            child,
            log_path: log_path.to_path_buf(),
            extra_logs: Vec::new(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        if pid <= 1 {
            bail!("refusing to signal pid {pid}");
        }
        // SAFETY: kill(2) has no memory-safety preconditions; pid > 1 here.
        if unsafe { kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}) failed: {}", io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until `probe` succeeds, failing early (with the log) if the
    /// process exits first.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) -> Result<()> {
        let mut exit = None;
        let result = wait_until(what, timeout, || {
            if probe() {
                return Some(true);
            }
            exit = self.exited();
            exit.map(|_| false)
        });
        match (result, exit) {
            (Ok(true), _) => Ok(()),
            (_, Some(status)) => Err(anyhow!(
                "{} exited ({}) before {what}\ncommand: {}\n{}",
                self.name,
                describe_status(status),
                self.command_line,
                self.failure_report()
            )),
            (Err(err), None) => Err(anyhow!(
                "{err}\ncommand: {}\n{}",
                self.command_line,
                self.failure_report()
            )),
            (Ok(false), None) => Err(anyhow!("{} ended without a status", self.name)),
        }
    }

    /// The tails of this process's logs, for error messages.
    pub fn failure_report(&self) -> String {
        let mut report = format!(
            "--- {} log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.name,
            self.log_path.display(),
            tail(&self.log(), LOG_TAIL_LINES)
        );
        for extra in &self.extra_logs {
            let text = fs::read_to_string(extra).unwrap_or_default();
            report.push_str(&format!(
                "\n--- {} (last {LOG_TAIL_LINES} lines) ---\n{}",
                extra.display(),
                tail(&text, LOG_TAIL_LINES)
            ));
        }
        report
    }

    /// Stops the process group; called by Drop, callable earlier.
    pub fn stop(&mut self) {
        self.stop_with(|_| false)
    }

    /// Like `stop`, but stops waiting for the leader as soon as `done(log)`
    /// says the rest is only slow teardown (dockerd idles ~3 s after
    /// "Daemon shutdown complete" waiting for its containerd).
    fn stop_with(&mut self, done: impl Fn(&str) -> bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if thread::panicking() {
            eprintln!("{}", self.failure_report());
        }
        let pgid = self.child.id();
        if self.exited().is_none() {
            let _ = self.signal(SIGTERM);
            let _ = wait_until(&format!("{} to stop", self.name), STOP_GRACE, || {
                (self.child.try_wait().ok().flatten().is_some() || done(&self.log())).then_some(())
            });
        }
        // Whatever is left of the group (nginx workers, containerd, ...).
        if let Err(err) = kill_process_group(pgid, SIGKILL) {
            eprintln!("warning: stopping {}: {err}", self.name);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` to every process in the group `pgid` (a pid the harness
/// started with `process_group(0)`). Refuses 0 and 1: kill(0) would hit the
/// test's own group and kill(-1) every process on the machine.
///
/// Do not shell out to `kill -SIG -PGID` instead: procps-ng 4.0.2 (Debian 12)
/// turns that into kill(-1, SIG), i.e. it signals every process.
pub fn kill_process_group(pgid: u32, signal: i32) -> Result<()> {
    let pgid = i32::try_from(pgid).context("process group id out of range")?;
    if pgid <= 1 {
        bail!("refusing to signal process group {pgid}");
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pgid > 1 here.
    if unsafe { kill(-pgid, signal) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(3) {
            // ESRCH (3): the group is already gone, which is fine.
            bail!("kill(-{pgid}, {signal}) failed: {err}");
        }
    }
    Ok(())
}

/// Children get SIGTERM when the thread that started them ends (also when
/// the test binary is killed), so an aborted run leaves no servers behind.
fn set_parent_death_signal(command: &mut Command) {
    // The pid the child will see as its parent: this process.
    let parent = i32::try_from(std::process::id()).unwrap_or(-1);
    // SAFETY: the closure runs between fork and exec and only calls prctl(2)
    // and getppid(2), both async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGTERM as u64, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if getppid() != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

fn describe_command(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn port_in_use(log: &str) -> bool {
    let lower = log.to_ascii_lowercase();
    lower.contains("address already in use") || lower.contains("addrinuse")
}

/// Output of a finished client command.
#[derive(Debug)]
pub struct CmdOutput {
    pub command_line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// `self` if the command succeeded, else an error showing both outputs.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!("{self}"))
        }
    }

    /// `self` if the command failed, else an error (the test expected a failure).
    pub fn failed(self) -> Result<Self> {
        if self.success() {
            Err(anyhow!("expected a failure, but it succeeded:\n{self}"))
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command_line,
            describe_status(self.status),
            self.duration,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `command` to completion with `stdin`, killing its process group after
/// `timeout`.
pub fn run_command(mut command: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<CmdOutput> {
    let command_line = describe_command(&command);
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    set_parent_death_signal(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting `{command_line}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .with_context(|| format!("writing stdin of `{command_line}`"))?;
    }
    let stdout = child.stdout.take().map(read_in_background);
    let stderr = child.stderr.take().map(read_in_background);
    let pgid = child.id();
    let waited = wait_until(&format!("`{command_line}` to finish"), timeout, || {
        child.try_wait().ok().flatten()
    });
    let status = match waited {
        Ok(status) => status,
        Err(err) => {
            let _ = kill_process_group(pgid, SIGKILL);
            let _ = child.wait();
            let out = stdout.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
            let errs = stderr.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
            bail!("{err}; killed it\n--- stdout ---\n{out}\n--- stderr ---\n{errs}");
        }
    };
    // Grandchildren that outlive the command (none expected) go too.
    let _ = kill_process_group(pgid, SIGKILL);
    let stdout = stdout.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let stderr = stderr.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    Ok(CmdOutput {
        command_line,
        status,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Starts a server up to three times, with a new port each time the log says
/// the port was taken between `pick_free_port` and the server's bind.
fn start_with_port_retry<T>(what: &str, mut attempt: impl FnMut(u16) -> Result<(T, Option<String>)>) -> Result<T> {
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = pick_free_port()?;
        match attempt(port)? {
            (server, None) => return Ok(server),
            (_, Some(log)) => last_log = log,
        }
    }
    bail!("{what}: the port was taken three times in a row\n{last_log}")
}

// ---------------------------------------------------------------------------
// Registry

/// A CNCF distribution registry (`docker-registry serve`) with filesystem
/// storage in a temporary directory, deletes enabled.
pub struct Registry {
    addr: SocketAddr,
    process: ProcessGuard,
    dir: TestDir,
}

impl Registry {
    pub fn start() -> Result<Self> {
        let program = require_program("docker-registry")?;
        start_with_port_retry("docker-registry", |port| {
            let dir = TestDir::new("registry")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let storage = dir.mkdir("storage")?;
            let config = dir.write("config.yml", registry_config(addr, &storage))?;
            let mut command = Command::new(&program);
            command.arg("serve").arg(&config);
            let mut process = ProcessGuard::spawn("docker-registry", command, &dir.join("registry.log"))?;
            let target = ListenAddr::Tcp(addr);
            match process.wait_ready("the registry to answer GET /v2/ with 200", START_TIMEOUT, || {
                http_get(&target, "/v2/").is_ok_and(|r| r.status == 200)
            }) {
                Ok(()) => Ok((Registry { addr, process, dir }, None)),
                Err(err) if port_in_use(&process.log()) => Ok((Registry { addr, process, dir }, Some(err.to_string()))),
                Err(err) => Err(err),
            }
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Direct access to the registry, bypassing nginx and csel-auth.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        http_get(&ListenAddr::Tcp(self.addr), path)
    }

    /// Uploads `bytes` as a blob of `repository` straight into the registry
    /// (bypassing nginx; POST then PUT, as distribution 2.8 has no
    /// single-request upload). Returns the digest.
    pub fn push_blob(&self, repository: &str, bytes: &[u8]) -> Result<String> {
        let direct = ListenAddr::Tcp(self.addr);
        let digest = sha256_digest(bytes);
        let start = http_request(&direct, "POST", &format!("/v2/{repository}/blobs/uploads/"), &[], b"")?;
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
        let done = http_request(
            &direct,
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

// ---------------------------------------------------------------------------
// nginx

/// The repository's nginx files and the exact text each substitution replaces.
const NGINX_UPSTREAM_FILE: &str = "csel-auth-upstream.conf";
const NGINX_SNIPPET_FILE: &str = "csel-auth.conf";
const NGINX_SERVER_FILE: &str = "registry.conf";
const SUBST_CSEL_AUTH_SERVER: &str = "server 127.0.0.1:9000;";
const SUBST_REGISTRY_SERVER: &str = "server 127.0.0.1:5001;";
const SUBST_LISTEN: &str = "listen 127.0.0.1:5000;";
const SUBST_ACCESS_LOG: &str = "access_log /var/log/nginx/registry.access.log csel_auth;";

/// Rewrites one configuration file: called with (file name, contents).
pub type NginxEdit = Box<dyn Fn(&str, String) -> String>;

/// Options for `Nginx::start_with`.
pub struct NginxOptions {
    pub registry_addr: SocketAddr,
    pub csel_auth_addr: ListenAddr,
    /// Listen on this port (e.g. reserved earlier for csel-auth's
    /// `--token-realm`); a free one when `None`.
    pub listen_port: Option<u16>,
    /// Called with (file name, contents) after the substitutions, to test
    /// variants (e.g. without the JSON error pages).
    pub edit: Option<NginxEdit>,
}

/// nginx with the repository's nginx/ files, `user root;`, its own prefix,
/// temp paths, error log and access log.
pub struct Nginx {
    addr: SocketAddr,
    process: ProcessGuard,
    dir: TestDir,
    version: String,
}

impl Nginx {
    pub fn start(registry_addr: SocketAddr, csel_auth_addr: &ListenAddr) -> Result<Self> {
        Self::start_with(NginxOptions {
            registry_addr,
            csel_auth_addr: csel_auth_addr.clone(),
            listen_port: None,
            edit: None,
        })
    }

    /// The system's nginx with `options`.
    pub fn start_with(options: NginxOptions) -> Result<Self> {
        Self::start_on(&NginxBinary::system()?, options)
    }

    /// `binary` (one of [`nginx_binaries`]) with `options`.
    pub fn start_on(binary: &NginxBinary, options: NginxOptions) -> Result<Self> {
        let nginx = &binary.path;
        let version = binary.version.clone();
        let attempt = |port: u16| -> Result<(Nginx, Option<String>)> {
            let dir = TestDir::new("nginx")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = write_nginx_files(&dir, addr, &options)?;
            let error_log = dir.join("logs/error.log");
            let check = run_command(nginx_command(nginx, &dir, &conf, &error_log, true), None, START_TIMEOUT)?;
            if !check.success() {
                bail!("`nginx -t` rejected the test configuration:\n{check}");
            }
            let mut process = ProcessGuard::spawn(
                "nginx",
                nginx_command(nginx, &dir, &conf, &error_log, false),
                &dir.join("logs/stdout.log"),
            )?;
            process.extra_logs = vec![error_log.clone(), dir.join("logs/access.log")];
            let target = ListenAddr::Tcp(addr);
            // A worker is accepting once nginx answers; /_csel_auth is
            // `internal`, so nginx itself says 404 without asking csel-auth
            // (and, unlike a missing file, without an error-log line).
            let ready = process.wait_ready("nginx to answer HTTP", START_TIMEOUT, || {
                http_get(&target, "/_csel_auth").is_ok()
            });
            match ready {
                Ok(()) => Ok((
                    Nginx {
                        addr,
                        process,
                        dir,
                        version: version.clone(),
                    },
                    None,
                )),
                Err(err) => {
                    let errors = fs::read_to_string(&error_log).unwrap_or_default();
                    if options.listen_port.is_none() && port_in_use(&errors) {
                        Ok((
                            Nginx {
                                addr,
                                process,
                                dir,
                                version: version.clone(),
                            },
                            Some(err.to_string()),
                        ))
                    } else {
                        Err(err)
                    }
                }
            }
        };
        match options.listen_port {
            Some(port) => attempt(port).map(|(n, _)| n),
            None => start_with_port_retry("nginx", attempt),
        }
    }

    /// `nginx/1.22.1`, as `nginx -v` says.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where clients connect (`127.0.0.1:PORT`, also the registry host name).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn listen(&self) -> ListenAddr {
        ListenAddr::Tcp(self.addr)
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.dir.join("logs/error.log")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join("logs/access.log")
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// The configuration directory (nginx.conf and the substituted copies).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse> {
        http_request(&self.listen(), method, path, headers, body)
    }

    /// The repository's nginx/ directory the files are taken from.
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

/// Copies the repository's files into `<dir>/conf` with the test addresses
/// and returns the path of the generated top-level nginx.conf.
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
            NGINX_UPSTREAM_FILE,
            substitute(
                NGINX_UPSTREAM_FILE,
                read(NGINX_UPSTREAM_FILE)?,
                &[(
                    SUBST_CSEL_AUTH_SERVER,
                    format!("server {};", options.csel_auth_addr.to_arg()),
                )],
            )?,
        ),
        (NGINX_SNIPPET_FILE, read(NGINX_SNIPPET_FILE)?),
        (
            NGINX_SERVER_FILE,
            substitute(
                NGINX_SERVER_FILE,
                read(NGINX_SERVER_FILE)?,
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
        let contents = match &options.edit {
            Some(edit) => edit(name, contents),
            None => contents,
        };
        fs::write(conf_dir.join(name), contents).with_context(|| format!("writing {name}"))?;
    }
    let t = |name: &str| temp.join(name).display().to_string();
    let top = format!(
        "# Generated by tests/e2e/harness.rs\n\
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
        upstream = NGINX_UPSTREAM_FILE,
        server = NGINX_SERVER_FILE,
    );
    let conf = conf_dir.join("nginx.conf");
    fs::write(&conf, top).context("writing nginx.conf")?;
    Ok(conf)
}

/// Replaces the one line whose text (without indentation) is `from` by `to`,
/// keeping the indentation; comments never match. A file that changed shape
/// fails loudly instead of silently testing the wrong address.
pub fn substitute(file: &str, text: String, replacements: &[(&str, String)]) -> Result<String> {
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
                 harness replaces with `{to}`), found {}",
                matches.len()
            );
        };
        let indent_len = lines[index].len() - lines[index].trim_start().len();
        let indent = lines[index][..indent_len].to_string();
        lines[index] = format!("{indent}{to}");
    }
    Ok(lines.join("\n") + "\n")
}

// ---------------------------------------------------------------------------
// csel-auth

/// Token-realm options of `csel-auth serve`.
#[derive(Clone, Debug)]
pub struct TokenArgs {
    pub realm: String,
    pub service: String,
    pub key_file: PathBuf,
}

/// Arguments of `csel-auth serve`.
#[derive(Clone, Debug)]
pub struct CselAuthArgs {
    pub rules: PathBuf,
    pub htpasswd: PathBuf,
    /// A free 127.0.0.1 port when `None`.
    pub listen: Option<ListenAddr>,
    pub token: Option<TokenArgs>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl CselAuthArgs {
    pub fn new(rules: impl Into<PathBuf>, htpasswd: impl Into<PathBuf>) -> Self {
        Self {
            rules: rules.into(),
            htpasswd: htpasswd.into(),
            listen: None,
            token: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn listen(mut self, listen: ListenAddr) -> Self {
        self.listen = Some(listen);
        self
    }

    pub fn token(mut self, realm: &str, service: &str, key_file: impl Into<PathBuf>) -> Self {
        self.token = Some(TokenArgs {
            realm: realm.to_string(),
            service: service.to_string(),
            key_file: key_file.into(),
        });
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running `csel-auth serve`, ready (`/healthz` answered 200).
pub struct CselAuth {
    addr: ListenAddr,
    process: ProcessGuard,
    dir: TestDir,
}

impl CselAuth {
    /// The binary under test: `CSEL_AUTH_BIN`, else cargo's build of this crate.
    pub fn binary() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os("CSEL_AUTH_BIN") {
            return Ok(PathBuf::from(path));
        }
        match option_env!("CARGO_BIN_EXE_csel-auth") {
            Some(path) => Ok(PathBuf::from(path)),
            None => bail!(
                "no csel-auth binary: set CSEL_AUTH_BIN (CARGO_BIN_EXE_csel-auth exists only in \
                 the csel-auth crate's integration tests)"
            ),
        }
    }

    pub fn start(args: CselAuthArgs) -> Result<Self> {
        let binary = Self::binary()?;
        let attempt = |listen: ListenAddr| -> Result<(CselAuth, Option<String>)> {
            let dir = TestDir::new("auth")?;
            let mut command = Command::new(&binary);
            command
                .arg("serve")
                .arg("--rules")
                .arg(&args.rules)
                .arg("--htpasswd")
                .arg(&args.htpasswd)
                .arg("--listen")
                .arg(listen.to_arg());
            if let Some(token) = &args.token {
                command
                    .arg("--token-realm")
                    .arg(&token.realm)
                    .arg("--token-service")
                    .arg(&token.service)
                    .arg("--token-key")
                    .arg(&token.key_file);
            }
            command.args(&args.extra_args);
            command.envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut process = ProcessGuard::spawn("csel-auth", command, &dir.join("csel-auth.log"))?;
            let ready = process.wait_ready("csel-auth to answer GET /healthz with 200", START_TIMEOUT, || {
                http_get(&listen, "/healthz").is_ok_and(|r| r.status == 200)
            });
            match ready {
                Ok(()) => Ok((
                    CselAuth {
                        addr: listen,
                        process,
                        dir,
                    },
                    None,
                )),
                Err(err) if port_in_use(&process.log()) => Ok((
                    CselAuth {
                        addr: listen,
                        process,
                        dir,
                    },
                    Some(err.to_string()),
                )),
                Err(err) => Err(err),
            }
        };
        match &args.listen {
            Some(listen) => attempt(listen.clone()).map(|(c, _)| c),
            None => start_with_port_retry("csel-auth", |port| {
                attempt(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))))
            }),
        }
    }

    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGHUP (reload rules and htpasswd).
    pub fn sighup(&self) -> Result<()> {
        self.process.signal(SIGHUP)
    }

    /// Direct request to csel-auth (e.g. `/auth` with X-Original-* headers).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse> {
        http_request(&self.addr, method, path, headers, body)
    }

    /// Stops it now (e.g. to test nginx's answer when csel-auth is down).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// Writes an htpasswd file with bcrypt entries made by `htpasswd -B`.
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) -> Result<()> {
    let htpasswd = require_program("htpasswd")?;
    let mut text = String::new();
    for (user, password) in users {
        let mut command = Command::new(&htpasswd);
        // -i reads the password from stdin, so it is not on a command line.
        command.args(["-n", "-B", "-i", user]);
        let output = run_command(command, Some(password.as_bytes()), COMMAND_TIMEOUT)?.ok()?;
        text.push_str(output.stdout.trim_end());
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------
// docker

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
        let mut process = ProcessGuard::spawn("dockerd", command, &dir.join("dockerd.log"))?;
        let host = format!("unix://{}", socket.display());
        let client = DockerClient::new(&docker, &host)?;
        let mut last_info = String::new();
        let ready = process.wait_ready("`docker info` to succeed", DOCKERD_START_TIMEOUT, || {
            // The cheap /_ping first; `docker info` once the socket answers.
            let ping = http_get(&ListenAddr::Unix(socket.clone()), "/_ping");
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

    /// Like `docker`, with `stdin` (e.g. `login --password-stdin`).
    pub fn docker_with_stdin(&self, args: &[&str], stdin: &str) -> Result<CmdOutput> {
        self.client.run_with_stdin(args, stdin)
    }

    /// The default client (its DOCKER_CONFIG dir holds the login state).
    pub fn client(&self) -> &DockerClient {
        &self.client
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

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// dockerd's pid, also its process group id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
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

// ---------------------------------------------------------------------------
// skopeo and podman

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

    /// The auth file `login` writes to and `copy`/`pull`/`push` read.
    pub fn auth_file(&self) -> &Path {
        &self.auth_file
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

// ---------------------------------------------------------------------------
// Tiny images

/// An uncompressed tar holding one regular file.
pub fn tiny_layer_tar(file_name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name = file_name.as_bytes();
    header[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let mut field = |offset: usize, text: &str| {
        header[offset..offset + text.len()].copy_from_slice(text.as_bytes());
    };
    field(100, "0000644\0"); // mode
    field(108, "0000000\0"); // uid
    field(116, "0000000\0"); // gid
    field(124, &format!("{:011o}\0", content.len())); // size
    field(136, "00000000000\0"); // mtime: fixed, so equal content = equal digest
    field(156, "0"); // regular file
    field(257, "ustar\0");
    field(263, "00");
    // The checksum is computed with its own field read as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// A hand-made OCI image layout with one uncompressed layer.
#[derive(Clone, Debug)]
pub struct OciImage {
    pub layout_dir: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

impl OciImage {
    /// `oci:DIR:TAG`, a skopeo / podman image reference.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.layout_dir.display(), self.tag)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<String> {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let path = layout.join("blobs/sha256").join(hex);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Writes an OCI image layout at `layout` holding one image tagged `tag`
/// whose only layer contains `hello.txt` with `content`.
pub fn write_oci_layout(layout: &Path, tag: &str, content: &[u8]) -> Result<OciImage> {
    fs::create_dir_all(layout.join("blobs/sha256")).with_context(|| format!("creating {}", layout.display()))?;
    let layer = tiny_layer_tar("hello.txt", content);
    let layer_digest = write_blob(layout, &layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = write_blob(layout, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob(layout, &manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)
        .with_context(|| format!("writing {}/index.json", layout.display()))?;
    fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}")
        .with_context(|| format!("writing {}/oci-layout", layout.display()))?;
    Ok(OciImage {
        layout_dir: layout.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        config_digest,
        layer_digest,
    })
}

/// One message per program of `names` that is missing (empty when all are
/// there), for a test that wants to name every missing program at once.
pub fn missing_programs(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| require_program(name).err().map(|e| e.to_string()))
        .collect()
}
