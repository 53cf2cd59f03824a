//! Shared support for the integration tests that run the real `csel-auth`
//! binary: start it on a temporary directory of rules and htpasswd, talk
//! HTTP/1.1 to it over TCP or a unix socket, read its metrics and logs.
//!
//! A [`Service`] is killed when dropped, also when the test panics; on a
//! panic its log (stderr) is printed so the failure can be understood.
//! Nothing waits by sleeping: readiness and effects are polled conditions
//! with a deadline.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

pub const SIGHUP: i32 = 1;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
const PR_SET_PDEATHSIG: i32 = 1;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// How long the service may take to answer /healthz after being started
/// (generous: tests run in parallel on a small, shared machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// docs/operations.md, "Reload": a new version of a watched file is in force within this.
pub const RELOAD_DEADLINE: Duration = Duration::from_millis(100);
/// Socket timeout of the test client, so a hung server fails the test.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The rules most tests run on (the README's example).
pub const RULES: &str = r#"
selector library  = format == "docker" and path =^ "/v2/library/"
selector coolteam = format == "docker" and path =^ "/v2/coolteam/"
selector personal = format == "docker" and path =^ "/v2/${user}/"

group coolteam = alice, bob
group admins   = "admin-parente"

grant pull on library  to anonymous
grant push on coolteam to @coolteam
grant *    on personal to authenticated
grant *    on *        to @admins
"#;

/// The users of [`standard_htpasswd`]; each one's password is `<user>-password`.
pub const USERS: &[&str] = &["alice", "bob", "carol", "admin-parente", "dave"];

pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// A bcrypt hash at cost 4 (the minimum: tests stay fast).
pub fn bcrypt_hash(password: &str) -> String {
    match bcrypt::hash(password, 4) {
        Ok(hash) => hash,
        Err(error) => panic!("bcrypt: {error}"),
    }
}

/// `user:hash` lines for `users`, password `<user>-password`.
pub fn htpasswd_for(users: &[&str]) -> String {
    users
        .iter()
        .map(|user| format!("{user}:{}\n", bcrypt_hash(&password(user))))
        .collect()
}

/// htpasswd text for [`USERS`], hashed once per test binary.
pub fn standard_htpasswd() -> String {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| htpasswd_for(USERS)).clone()
}

/// `Authorization` value for Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `condition` until it yields a value or `timeout` passes; panics
/// naming `what` on timeout.
pub fn wait_for<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `condition` until true or `timeout` passes; returns how long it
/// took, `None` on timeout. The clock starts when this is called.
pub fn time_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------
// Running alone

/// Timing-sensitive tests (reload deadlines) run while no other service of
/// this test binary runs; the others share. A reader never waits for a
/// waiting writer, so one thread may hold several shared guards.
struct Gate {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

static GATE: Gate = Gate {
    state: Mutex::new((0, false)),
    changed: Condvar::new(),
};

pub struct GateGuard {
    exclusive: bool,
}

impl Gate {
    fn enter(&'static self, exclusive: bool) -> GateGuard {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (readers, writer) = *state;
            let free = if exclusive { readers == 0 && !writer } else { !writer };
            if free {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if exclusive {
            state.1 = true;
        } else {
            state.0 += 1;
        }
        GateGuard { exclusive }
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut state = GATE.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.exclusive {
            state.1 = false;
        } else {
            state.0 -= 1;
        }
        GATE.changed.notify_all();
    }
}

// ---------------------------------------------------------------------------
// Starting the service

#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// What to start. Files are written into a fresh temporary directory
/// (`dir`), which the [`Service`] keeps until it is dropped.
pub struct Setup {
    pub dir: tempfile::TempDir,
    rules: PathBuf,
    htpasswd: Option<PathBuf>,
    unix_socket: Option<Option<String>>,
    token_key: Option<PathBuf>,
    config: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    alone: bool,
}

impl Setup {
    /// `rules` in `registry.rules`, [`standard_htpasswd`] in `users.htpasswd`.
    pub fn new(rules: &str) -> Setup {
        let setup = Setup::bare();
        let rules_path = setup.dir.path().join("registry.rules");
        let htpasswd_path = setup.dir.path().join("users.htpasswd");
        write(&rules_path, rules);
        write(&htpasswd_path, &standard_htpasswd());
        Setup {
            rules: rules_path,
            htpasswd: Some(htpasswd_path),
            ..setup
        }
    }

    /// An empty directory; point `rules_at` (and `htpasswd_at`) at files
    /// the test lays out itself.
    pub fn bare() -> Setup {
        let dir = match tempfile::Builder::new().prefix("csel-auth-test-").tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("cannot create a temporary directory: {error}"),
        };
        Setup {
            rules: dir.path().join("registry.rules"),
            dir,
            htpasswd: None,
            unix_socket: None,
            token_key: None,
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            alone: false,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn rules_at(mut self, path: PathBuf) -> Setup {
        self.rules = path;
        self
    }

    pub fn htpasswd_at(mut self, path: Option<PathBuf>) -> Setup {
        self.htpasswd = path;
        self
    }

    /// Listen on `<dir>/csel-auth.sock`, with `--socket-mode` when given.
    pub fn unix_socket(mut self, mode: Option<&str>) -> Setup {
        self.unix_socket = Some(mode.map(str::to_string));
        self
    }

    /// Token mode: `--token-realm http://<listen>/token --token-service
    /// test-registry --token-key <key>`.
    pub fn token_realm(mut self, key: PathBuf) -> Setup {
        self.token_key = Some(key);
        self
    }

    /// `serve --config FILE --listen …`: every other setting comes from the file.
    pub fn config_file(mut self, path: PathBuf) -> Setup {
        self.config = Some(path);
        self
    }

    pub fn arg(mut self, arg: &str) -> Setup {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Run while no other service of this test binary runs (for tests that
    /// measure latencies).
    pub fn alone(mut self) -> Setup {
        self.alone = true;
        self
    }

    pub fn start(self) -> Service {
        let gate = GATE.enter(self.alone);
        // A free port can be taken by someone else between the probe and
        // the bind: try again with another one.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            match self.try_start() {
                Ok(mut service) => {
                    service._gate = Some(gate);
                    service.dir = Some(self.dir);
                    return service;
                }
                Err(log) => {
                    last_log = log;
                    if !last_log.contains("cannot listen") {
                        break;
                    }
                }
            }
        }
        panic!("csel-auth did not start; its log:\n{last_log}");
    }

    fn try_start(&self) -> Result<Service, String> {
        let endpoint = match &self.unix_socket {
            Some(_) => Endpoint::Unix(self.dir.path().join("csel-auth.sock")),
            None => Endpoint::Tcp(free_port()),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_csel-auth"));
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        } else {
            command.arg("--rules").arg(&self.rules);
            if let Some(htpasswd) = &self.htpasswd {
                command.arg("--htpasswd").arg(htpasswd);
            }
        }
        match &endpoint {
            Endpoint::Tcp(addr) => command.arg("--listen").arg(addr.to_string()),
            Endpoint::Unix(path) => command.arg("--listen").arg(format!("unix:{}", path.display())),
        };
        if let Some(Some(mode)) = &self.unix_socket {
            command.arg("--socket-mode").arg(mode);
        }
        if let Some(key) = &self.token_key {
            let realm = match &endpoint {
                Endpoint::Tcp(addr) => format!("http://{addr}/token"),
                Endpoint::Unix(_) => "http://registry.test/token".to_string(),
            };
            command
                .arg("--token-realm")
                .arg(realm)
                .arg("--token-service")
                .arg("test-registry")
                .arg("--token-key")
                .arg(key);
        }
        command
            .args(&self.args)
            .env_remove("CSEL_AUTH_LOG")
            .env_remove("CSEL_AUTH_FAULT_PANIC_URI")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the child dies with the thread
        // that started it, so an aborted test leaves no server behind.
        unsafe {
            command.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL as u64, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => panic!("cannot run {}: {error}", env!("CARGO_BIN_EXE_csel-auth")),
        };
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr);
                let mut line = String::new();
                while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                    if let Ok(mut text) = log.lock() {
                        text.push_str(&line);
                    }
                    line.clear();
                }
            });
        }
        let mut service = Service {
            child: Some(child),
            endpoint,
            log,
            rules: self.rules.clone(),
            htpasswd: self.htpasswd.clone(),
            dir: None,
            _gate: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = service.try_request("GET", "/healthz", &[], b"") {
                if response.status == 200 {
                    return Ok(service);
                }
            }
            let exited = service
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                service.kill();
                // Let the log reader catch the last lines.
                let _ = time_until(Duration::from_secs(2), || service.log_text().contains("cannot listen"));
                return Err(service.log_text());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn free_port() -> SocketAddr {
    let probe = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => panic!("cannot find a free port: {error}"),
    };
    match probe.local_addr() {
        Ok(addr) => addr,
        Err(error) => panic!("cannot find a free port: {error}"),
    }
}

pub fn write(path: &Path, text: &str) {
    if let Err(error) = fs::write(path, text) {
        panic!("cannot write {}: {error}", path.display());
    }
}

/// Writes `text` to a temporary file beside `path` and renames it over
/// `path`, as editors and config tools do.
pub fn write_and_rename(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp-new");
    write(&temporary, text);
    if let Err(error) = fs::rename(&temporary, path) {
        panic!("cannot rename onto {}: {error}", path.display());
    }
}

/// A running `csel-auth serve`.
pub struct Service {
    child: Option<Child>,
    pub endpoint: Endpoint,
    log: Arc<Mutex<String>>,
    pub rules: PathBuf,
    pub htpasswd: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    _gate: Option<GateGuard>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- csel-auth log ({:?}) -----\n{}-----",
                self.endpoint,
                self.log_text()
            );
        }
    }
}

impl Service {
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            None => Path::new("/nonexistent"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn port(&self) -> u16 {
        match &self.endpoint {
            Endpoint::Tcp(addr) => addr.port(),
            Endpoint::Unix(_) => 0,
        }
    }

    /// The realm announced in Bearer challenges (token mode).
    pub fn realm(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(addr) => format!("http://{addr}/token"),
            Endpoint::Unix(_) => "http://registry.test/token".to_string(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        assert!(pid > 0, "the service is not running");
        // SAFETY: plain kill(2) on our own child.
        let result = unsafe { kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = {
            let Some(child) = self.child.as_mut() else {
                panic!("the service was already stopped");
            };
            wait_for(timeout, "csel-auth to exit", || child.try_wait().ok().flatten())
        };
        self.child = None;
        status
    }

    /// Everything the service wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns the matching line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, &format!("log line containing {needle:?}"), || {
            self.log_text().lines().find(|l| l.contains(needle)).map(str::to_string)
        })
    }

    pub fn connect(&self) -> Connection {
        match self.try_connect() {
            Ok(connection) => connection,
            Err(error) => panic!("cannot connect to {:?}: {error}", self.endpoint),
        }
    }

    pub fn try_connect(&self) -> io::Result<Connection> {
        let stream: Box<dyn Stream> = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, IO_TIMEOUT)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                Box::new(stream)
            }
        };
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    fn try_request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        self.try_connect()?.try_send(method, target, headers, body)
    }

    /// One request on a new connection.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        match self.try_request(method, target, headers, body) {
            Ok(response) => response,
            Err(error) => panic!("{method} {target} on {:?} failed: {error}", self.endpoint),
        }
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// GET /auth with exactly these headers (duplicates allowed).
    pub fn auth_headers(&self, headers: &[(&str, &str)]) -> Response {
        self.request("GET", "/auth", headers, b"")
    }

    /// The subrequest nginx sends for `method uri`, with Basic credentials
    /// when `user_pass` is given.
    pub fn auth(&self, method: &str, uri: &str, user_pass: Option<(&str, &str)>) -> Response {
        let credentials = user_pass.map(|(user, pass)| basic(user, pass));
        let mut headers = vec![("X-Original-URI", uri), ("X-Original-Method", method)];
        if let Some(value) = &credentials {
            headers.push(("Authorization", value));
        }
        self.auth_headers(&headers)
    }

    /// [`Service::auth`] as `user` with the standard password `<user>-password`.
    pub fn auth_user(&self, method: &str, uri: &str, user: &str) -> Response {
        self.auth(method, uri, Some((user, &password(user))))
    }

    /// Like [`Service::auth`] with `Authorization: Bearer <token>`.
    pub fn auth_bearer(&self, method: &str, uri: &str, token: &str) -> Response {
        let authorization = format!("Bearer {token}");
        self.auth_headers(&[
            ("X-Original-URI", uri),
            ("X-Original-Method", method),
            ("Authorization", &authorization),
        ])
    }

    pub fn metrics_text(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "/metrics: {}", response.text());
        response.text()
    }

    /// Every sample of /metrics, keyed by name with labels exactly as
    /// rendered (`csel_auth_version{file="rules"}`).
    pub fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&self.metrics_text())
    }

    /// One sample of /metrics; panics when it is absent.
    pub fn metric(&self, name_with_labels: &str) -> f64 {
        let all = self.metrics();
        match all.get(name_with_labels) {
            Some(value) => *value,
            None => panic!("/metrics has no sample {name_with_labels}"),
        }
    }
}

pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client: arbitrary (and repeated) headers, keep-alive,
// TCP or unix socket.

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Connection {
    reader: BufReader<Box<dyn Stream>>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The only value of header `name`; panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.header_all(name);
        assert!(values.len() <= 1, "header {name} repeated: {values:?}");
        values.first().copied()
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(error) => panic!("response body is not JSON ({error}): {}", self.text()),
        }
    }
}

impl Connection {
    pub fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        match self.try_send(method, target, headers, body) {
            Ok(response) => response,
            Err(error) => panic!("{method} {target} failed: {error}"),
        }
    }

    /// GET /auth as nginx sends it, on this connection.
    pub fn auth(&mut self, method: &str, uri: &str, user_pass: Option<(&str, &str)>) -> Response {
        let credentials = user_pass.map(|(user, pass)| basic(user, pass));
        let mut headers = vec![("X-Original-URI", uri), ("X-Original-Method", method)];
        if let Some(value) = &credentials {
            headers.push(("Authorization", value));
        }
        self.send("GET", "/auth", &headers, b"")
    }

    pub fn try_send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: csel-auth.test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let stream = self.reader.get_mut();
        stream.write_all(&bytes)?;
        stream.flush()?;
        self.read_response(method == "HEAD")
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let status_line = self.read_line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
        } else if let Some(length) = find("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let size_line = self.read_line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                self.read_line()?;
            }
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Response { status, headers, body })
    }
}
