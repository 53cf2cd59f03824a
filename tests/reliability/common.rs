//! What the reliability tests share: the real `csel-auth serve` in a temporary
//! directory, a raw HTTP/1.1 client that sends bytes exactly as given and tells
//! a dropped connection from an answer, the expected status of a request under
//! given rules, metrics, memory readings and the CI / full-size scale.
//!
//! Nothing here synchronises by sleeping: effects are polled conditions with a
//! deadline ([`wait_for`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use csel_auth::decision::{decide_and_answer, AccessRequest, Credential};
use csel_auth::rules::Rules;

/// Socket timeout of the client: a hung service fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the service may take to start on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

const PR_SET_PDEATHSIG: i32 = 1;
const SIGTERM: i32 = 15;
const RLIMIT_NOFILE: i32 = 7;
extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn setrlimit(resource: i32, limits: *const [u64; 2]) -> i32;
}

// ---------------------------------------------------------------------------------------------
// scale and reporting

/// `CSEL_AUTH_FULL=1` runs the full-size versions (see the README); CI runs the trimmed ones.
pub fn full() -> bool {
    std::env::var("CSEL_AUTH_FULL").is_ok_and(|v| v == "1")
}

/// `ci` normally, `full` with `CSEL_AUTH_FULL=1`.
pub fn scale<T>(ci: T, full_size: T) -> T {
    if full() {
        full_size
    } else {
        ci
    }
}

/// Prints a result line that shows in `cargo test` output even when the test passes (written to
/// the process's stderr directly, which the test harness does not capture).
pub fn report(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// The tests that load the machine take turns, so they neither starve each other on a small CI
/// machine nor disturb the timing test.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `condition` until it gives a value, failing the test after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// users and expected answers

/// Users of [`htpasswd`]; each one's password is `<user>-password`.
pub const USERS: [&str; 4] = ["alice", "bob", "carol", "admin-parente"];

pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// An htpasswd file for `users` at bcrypt `cost` (one hash computed per user).
pub fn htpasswd(users: &[&str], cost: u32) -> String {
    users
        .iter()
        .map(|user| match bcrypt::hash(password(user), cost) {
            Ok(hash) => format!("{user}:{hash}\n"),
            Err(error) => panic!("bcrypt: {error}"),
        })
        .collect()
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The status csel-auth must answer for this request under `rules` in basic mode (Basic
/// credentials for a user, none for anonymous), by the service's own mapping.
pub fn expected_status(rules: &Rules, user: Option<&str>, method: &str, uri: &str, content_type: Option<&str>) -> u16 {
    let credential = if user.is_some() {
        Credential::Basic
    } else {
        Credential::None
    };
    let request = AccessRequest {
        method,
        uri,
        format: "docker",
        content_type,
    };
    decide_and_answer(rules, user, credential, false, &request).1.status()
}

// ---------------------------------------------------------------------------------------------
// the service

/// Files and options of one `csel-auth serve`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub rules: PathBuf,
    pub htpasswd: PathBuf,
    args: Vec<String>,
    uid: Option<u32>,
    open_files: Option<u64>,
}

impl Setup {
    /// A temporary directory with `rules.rules` and `users.htpasswd` written.
    pub fn new(rules: &str, htpasswd: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("csel-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let setup = Setup {
            rules: dir.path().join("rules.rules"),
            htpasswd: dir.path().join("users.htpasswd"),
            dir,
            args: Vec::new(),
            uid: None,
            open_files: None,
        };
        write(&setup.rules, rules.as_bytes());
        write(&setup.htpasswd, htpasswd.as_bytes());
        setup
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(mut self, arg: &str) -> Setup {
        self.args.push(arg.to_string());
        self
    }

    /// Runs the service as this user id (and group id), e.g. so that a file can be made
    /// unreadable to it while the test runs as root.
    pub fn run_as(mut self, uid: u32) -> Setup {
        self.uid = Some(uid);
        self
    }

    /// Runs the service with at most this many open files (`RLIMIT_NOFILE`).
    pub fn open_files_limit(mut self, limit: u64) -> Setup {
        self.open_files = Some(limit);
        self
    }

    fn command(&self, listen: &str, log: &Path) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--rules")
            .arg(&self.rules)
            .arg("--htpasswd")
            .arg(&self.htpasswd)
            .arg("--listen")
            .arg(listen)
            // A decision line per request would make the log the bottleneck of a load test.
            .arg("--log")
            .arg("csel_auth::decision=warn,info")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display())));
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        let open_files = self.open_files;
        // SAFETY: prctl(2) and setrlimit(2) are async-signal-safe, as pre_exec requires. The
        // service gets SIGTERM when the test thread that started it ends, so an aborted run
        // leaves no server behind.
        unsafe {
            command.pre_exec(move || {
                if prctl(PR_SET_PDEATHSIG, SIGTERM as u64, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(limit) = open_files {
                    if setrlimit(RLIMIT_NOFILE, &[limit, limit]) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        command
    }

    /// Starts the service and waits until `/healthz` answers; panics with its log otherwise.
    pub fn start(self) -> Service {
        let mut last = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = self.dir.path().join(format!("csel-auth-{}.log", addr.port()));
            let mut child = self
                .command(&addr.to_string(), &log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting csel-auth: {e}"));
            match wait_ready(&mut child, addr, &log) {
                Ok(()) => {
                    return Service {
                        child,
                        addr,
                        log,
                        setup: self,
                    }
                }
                Err(text) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(text.contains("cannot listen"), "csel-auth did not start:\n{text}");
                    // The port was taken between picking and binding: try another.
                    last = text;
                }
            }
        }
        panic!("csel-auth found no free port three times:\n{last}")
    }

    /// Runs `serve` expecting it to refuse to start: its exit status and log.
    pub fn start_expecting_failure(&self) -> (ExitStatus, String) {
        let log = self.dir.path().join("refused.log");
        let mut child = self
            .command(&format!("127.0.0.1:{}", free_port()), &log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting csel-auth: {e}"));
        let status = wait_for(START_TIMEOUT, "csel-auth to exit", || child.try_wait().ok().flatten());
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }
}

fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}:\n{}", log_text()));
        }
        let health = Conn::connect(addr).and_then(|mut c| c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"));
        if health.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on {addr} after {START_TIMEOUT:?}:\n{}", log_text()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The binary under test: `CSEL_AUTH_BIN` (e.g. a release build), else cargo's build.
pub fn binary() -> PathBuf {
    std::env::var_os("CSEL_AUTH_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_csel-auth")), PathBuf::from)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Writes a file in one piece.
pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A running `csel-auth serve`, killed when dropped; its log is printed if the test fails.
pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    setup: Setup,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            report(&format!("--- csel-auth log (tail) ---\n{}", tail(&self.log_text(), 40)));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Service {
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr).unwrap_or_else(|e| panic!("connecting to {}: {e}", self.addr))
    }

    fn try_get(&self, path: &str) -> io::Result<Response> {
        Conn::connect(self.addr)?.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
    }

    pub fn get(&self, path: &str) -> Response {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// One `/auth` subrequest as nginx sends it, on a new connection.
    pub fn auth(&self, user: Option<&str>, method: &str, uri: &str) -> u16 {
        let request = Subrequest::new(method, uri).user(user).bytes();
        match self.connect().send(&request) {
            Ok(response) => response.status,
            Err(e) => panic!("{method} {uri} as {user:?}: {e}"),
        }
    }

    pub fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&self.get("/metrics").text())
    }

    /// One series, e.g. `csel_auth_version{file="rules"}`; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().get(series).copied().unwrap_or(0.0)
    }

    /// CPU time the service has used (user and system), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// `VmRSS` and `VmHWM` (peak) of the service, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// `name{labels} value` lines of the Prometheus text format.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// the client

/// The `/auth` subrequest nginx's snippet builds, with room for what a broken proxy might add.
#[derive(Clone, Debug)]
pub struct Subrequest {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Subrequest {
    pub fn new(method: &str, uri: &str) -> Subrequest {
        Subrequest::raw(method.as_bytes(), uri.as_bytes())
    }

    pub fn raw(method: &[u8], uri: &[u8]) -> Subrequest {
        Subrequest {
            headers: vec![
                (b"X-Original-URI".to_vec(), uri.to_vec()),
                (b"X-Original-Method".to_vec(), method.to_vec()),
                (b"X-Real-IP".to_vec(), b"127.0.0.1".to_vec()),
                (b"X-Repository-Format".to_vec(), b"docker".to_vec()),
            ],
        }
    }

    /// Basic credentials `<user>:<user>-password`, or none for anonymous.
    pub fn user(self, user: Option<&str>) -> Subrequest {
        match user {
            Some(user) => self.header(b"Authorization", basic(user, &password(user)).as_bytes()),
            None => self,
        }
    }

    pub fn header(mut self, name: &[u8], value: &[u8]) -> Subrequest {
        self.headers.push((name.to_vec(), value.to_vec()));
        self
    }

    /// Drops every header named `name` (case-insensitive).
    pub fn without(mut self, name: &[u8]) -> Subrequest {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GET /auth HTTP/1.1\r\nHost: csel-auth\r\n".to_vec();
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive HTTP/1.1 connection. Requests are raw bytes, sent as given.
pub struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buffer: Vec::with_capacity(1024),
        })
    }

    /// Sends one request and reads its answer. An error means the connection failed or was
    /// closed before a complete answer: a dropped connection.
    pub fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request)?;
        self.read_response()
    }

    /// Reads one answer (headers and a `Content-Length` or close-delimited body).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        self.buffer.drain(..head_end + 4);
        let body = match length {
            Some(length) => {
                while self.buffer.len() < length {
                    self.fill()?;
                }
                self.buffer.drain(..length).collect()
            }
            None => {
                let mut rest = std::mem::take(&mut self.buffer);
                self.stream.read_to_end(&mut rest)?;
                rest
            }
        };
        Ok(Response { status, headers, body })
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Whether this process runs as root (then file modes do not stop it, and the service must run
/// as another user for "unreadable" to mean anything).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user id tests run the service as when the test runs as root: `nobody`.
pub const NOBODY: u32 = 65534;

/// Makes the setup's directory and files usable by [`NOBODY`].
pub fn open_to_nobody(setup: &Setup) {
    use std::os::unix::fs::PermissionsExt;
    for path in [setup.dir.path(), &setup.rules, &setup.htpasswd] {
        let mode = if path.is_dir() { 0o777 } else { 0o644 };
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
}
