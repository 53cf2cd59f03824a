//! The real `csel-auth serve`: [`Setup`] says what to start (files in a temporary directory,
//! TCP or a unix socket, token mode, flags, the user it runs as), [`Setup::start`] starts it and
//! waits until `/healthz` answers, and the [`CselAuth`] it gives is killed when dropped, its log
//! tail printed if the test is failing.
//!
//! Tests that measure latencies or load the machine run [`alone`]: while one does, no other
//! csel-auth of this test binary runs.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Condvar, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use anyhow::Result;

use super::files::TestDir;
use super::http::{Conn, Endpoint, Request, Response};
use super::metrics::parse_metrics;
use super::ports::free_addr;
use super::process::{limit_open_files, port_in_use, start_on_free_port, ProcessGuard, Signal, Started};
use super::wait::wait_for;

/// How long the service may take to answer `/healthz` (tests run in parallel on a small, shared
/// machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A new version of a watched file is in force within this (docs/operations.md, "Reload").
pub const RELOAD_DEADLINE: Duration = Duration::from_millis(100);

/// The binary under test: `CSEL_AUTH_BIN` (e.g. a release build), else cargo's build.
pub fn binary() -> PathBuf {
    std::env::var_os("CSEL_AUTH_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_csel-auth")), PathBuf::from)
}

// ---------------------------------------------------------------------------------------------
// Running alone

/// Who runs: any number of csel-auth services, or one test alone. A service never waits for a
/// test waiting to run alone (a test may hold several services), and the test running alone
/// starts its own services freely.
struct Gate {
    state: Mutex<(usize, Option<ThreadId>)>,
    changed: Condvar,
}

static GATE: Gate = Gate {
    state: Mutex::new((0, None)),
    changed: Condvar::new(),
};

/// A place at the [`GATE`], given back on drop.
pub struct Turn {
    alone: bool,
    counted: bool,
}

impl Gate {
    fn enter(&'static self, alone: bool) -> Turn {
        let me = thread::current().id();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (services, owner) = *state;
            if owner == Some(me) {
                return Turn { alone, counted: false };
            }
            let free = if alone {
                services == 0 && owner.is_none()
            } else {
                owner.is_none()
            };
            if free {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if alone {
            state.1 = Some(me);
        } else {
            state.0 += 1;
        }
        Turn { alone, counted: true }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut state = GATE.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.alone {
            state.1 = None;
        } else {
            state.0 -= 1;
        }
        GATE.changed.notify_all();
    }
}

/// Runs the rest of the test while no other csel-auth of this test binary runs (for tests that
/// measure time or load the machine): `let _alone = alone();`.
pub fn alone() -> Turn {
    GATE.enter(true)
}

// ---------------------------------------------------------------------------------------------
// Starting it

/// Token mode: where the realm is, the service name, the key file.
enum Token {
    /// `--token-realm http://<listen>/token --token-service test-registry --token-key KEY`.
    OwnRealm(PathBuf),
    Realm {
        realm: String,
        service: String,
        key: PathBuf,
    },
}

/// A service's files: its temporary directory, its rules and its htpasswd file. A [`Setup`]
/// and the [`CselAuth`] it starts read as their files (`service.rules()`).
pub struct Files {
    dir: TestDir,
    rules: PathBuf,
    htpasswd: Option<PathBuf>,
}

impl Files {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn rules(&self) -> &Path {
        &self.rules
    }

    /// The htpasswd file; fails the test if there is none.
    pub fn htpasswd(&self) -> &Path {
        match &self.htpasswd {
            Some(path) => path,
            None => panic!("no htpasswd file in {}", self.dir.path().display()),
        }
    }
}

/// What to start. Files are written into a fresh temporary directory, which the [`CselAuth`]
/// keeps until it is dropped.
pub struct Setup {
    files: Files,
    config: Option<PathBuf>,
    unix_socket: Option<Option<String>>,
    token: Option<Token>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: Option<u32>,
    open_files: Option<u64>,
}

impl Setup {
    /// `rules` in `registry.rules`, the test users ([`super::standard_htpasswd`]) in
    /// `users.htpasswd`.
    pub fn new(rules: &str) -> Setup {
        Setup::with_users(rules, &super::standard_htpasswd())
    }

    /// `rules` in `registry.rules`, `htpasswd` in `users.htpasswd`.
    pub fn with_users(rules: &str, htpasswd: &str) -> Setup {
        let setup = Setup::bare();
        let htpasswd_path = setup.path("users.htpasswd");
        super::files::write(setup.rules(), rules);
        super::files::write(&htpasswd_path, htpasswd);
        setup.htpasswd_at(Some(htpasswd_path))
    }

    /// An empty directory; point [`Setup::rules_at`] (and [`Setup::htpasswd_at`]) at files the
    /// test lays out itself.
    pub fn bare() -> Setup {
        let dir = match TestDir::new("auth") {
            Ok(dir) => dir,
            Err(error) => panic!("{error:#}"),
        };
        Setup {
            files: Files {
                rules: dir.join("registry.rules"),
                dir,
                htpasswd: None,
            },
            config: None,
            unix_socket: None,
            token: None,
            args: Vec::new(),
            env: Vec::new(),
            uid: None,
            open_files: None,
        }
    }

    pub fn rules_at(mut self, path: PathBuf) -> Setup {
        self.files.rules = path;
        self
    }

    pub fn htpasswd_at(mut self, path: Option<PathBuf>) -> Setup {
        self.files.htpasswd = path;
        self
    }

    /// Listen on `<dir>/csel-auth.sock`, with `--socket-mode` when given.
    pub fn unix_socket(mut self, mode: Option<&str>) -> Setup {
        self.unix_socket = Some(mode.map(str::to_string));
        self
    }

    /// Token mode with the realm at the service itself: `--token-realm http://<listen>/token
    /// --token-service test-registry --token-key KEY`.
    pub fn token_realm(mut self, key: PathBuf) -> Setup {
        self.token = Some(Token::OwnRealm(key));
        self
    }

    /// Token mode with the realm elsewhere (nginx's `/token`).
    pub fn token(mut self, realm: &str, service: &str, key: PathBuf) -> Setup {
        self.token = Some(Token::Realm {
            realm: realm.to_string(),
            service: service.to_string(),
            key,
        });
        self
    }

    /// `--access-keys FILE`: Basic logins whose password is a key are checked against it.
    pub fn access_keys(self, path: &Path) -> Setup {
        self.arg("--access-keys").arg(&path.to_string_lossy())
    }

    /// `--registry URL`: the registry's own address (tag checks, the catalog).
    pub fn registry(self, url: &str) -> Setup {
        self.arg("--registry").arg(url)
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

    /// `--token-realm`, `--token-service` and `--token-key` for a service on `endpoint`.
    fn token_args(&self, endpoint: &Endpoint) -> Option<(String, &str, &Path)> {
        match &self.token {
            None => None,
            Some(Token::OwnRealm(key)) => {
                let realm = match endpoint {
                    Endpoint::Tcp(addr) => format!("http://{addr}/token"),
                    Endpoint::Unix(_) => "http://registry.test/token".to_string(),
                };
                Some((realm, "test-registry", key))
            }
            Some(Token::Realm { realm, service, key }) => Some((realm.clone(), service, key)),
        }
    }

    fn command(&self, endpoint: &Endpoint) -> Command {
        let mut command = Command::new(binary());
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        } else {
            command.arg("--rules").arg(self.rules());
            if let Some(htpasswd) = &self.files.htpasswd {
                command.arg("--htpasswd").arg(htpasswd);
            }
        }
        command.arg("--listen").arg(endpoint.to_arg());
        if let Some(Some(mode)) = &self.unix_socket {
            command.arg("--socket-mode").arg(mode);
        }
        if let Some((realm, service, key)) = self.token_args(endpoint) {
            command
                .arg("--token-realm")
                .arg(realm)
                .arg("--token-service")
                .arg(service)
                .arg("--token-key")
                .arg(key);
        }
        command
            .args(&self.args)
            .env_remove("CSEL_AUTH_LOG")
            .env_remove("CSEL_AUTH_FAULT_PANIC_URI")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        if let Some(limit) = self.open_files {
            limit_open_files(&mut command, limit);
        }
        command
    }

    fn spawn(&self, endpoint: &Endpoint, log: &Path) -> Result<ProcessGuard> {
        ProcessGuard::spawn("csel-auth", self.command(endpoint), log, Signal::SIGKILL)
    }

    /// One try on `endpoint`: ready, or its port was taken, or another failure.
    fn attempt(&self, endpoint: &Endpoint) -> Result<Started<ProcessGuard>> {
        let log = match endpoint {
            Endpoint::Tcp(addr) => self.path(&format!("csel-auth-{}.log", addr.port())),
            Endpoint::Unix(_) => self.path("csel-auth.log"),
        };
        let mut process = self.spawn(endpoint, &log)?;
        let ready = process.wait_ready("csel-auth to answer GET /healthz with 200", START_TIMEOUT, || {
            endpoint.get("/healthz").is_ok_and(|r| r.status == 200)
        });
        match ready {
            Ok(()) => Ok(Started::Ready(process)),
            Err(error) if matches!(endpoint, Endpoint::Tcp(_)) && port_in_use(&process.log()) => {
                process.kill();
                Ok(Started::PortTaken(format!("{error:#}")))
            }
            Err(error) => {
                process.kill();
                Err(error)
            }
        }
    }

    /// Starts the service and waits until `/healthz` answers; fails the test otherwise, with the
    /// service's log.
    pub fn start(self) -> CselAuth {
        match self.try_start() {
            Ok(service) => service,
            Err(error) => panic!("csel-auth did not start: {error:#}"),
        }
    }

    pub fn try_start(self) -> Result<CselAuth> {
        let turn = GATE.enter(false);
        let (process, endpoint) = match &self.unix_socket {
            Some(_) => {
                let endpoint = Endpoint::Unix(self.path("csel-auth.sock"));
                match self.attempt(&endpoint)? {
                    Started::Ready(process) => (process, endpoint),
                    Started::PortTaken(log) => anyhow::bail!("{log}"),
                }
            }
            None => start_on_free_port("csel-auth", || {
                let endpoint = Endpoint::Tcp(free_addr());
                Ok(match self.attempt(&endpoint)? {
                    Started::Ready(process) => Started::Ready((process, endpoint)),
                    Started::PortTaken(log) => Started::PortTaken(log),
                })
            })?,
        };
        Ok(CselAuth {
            realm: self.token_args(&endpoint).map(|(realm, _, _)| realm),
            process,
            endpoint,
            files: self.files,
            _turn: turn,
        })
    }

    /// Runs `serve` expecting it to refuse to start: its exit status and log. Fails the test if
    /// it starts serving instead.
    pub fn start_expecting_failure(&self) -> (ExitStatus, String) {
        let addr = free_addr();
        let mut process = match self.spawn(&Endpoint::Tcp(addr), &self.path("refused.log")) {
            Ok(process) => process,
            Err(error) => panic!("{error:#}"),
        };
        let status = wait_for(START_TIMEOUT, "csel-auth to exit", || {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                panic!("csel-auth started serving on {addr}:\n{}", process.log());
            }
            process.exited()
        });
        (status, process.log())
    }
}

// ---------------------------------------------------------------------------------------------
// The running service

/// A running `csel-auth serve`, killed when dropped.
pub struct CselAuth {
    // Dropped first: the process goes before its directory.
    process: ProcessGuard,
    endpoint: Endpoint,
    realm: Option<String>,
    files: Files,
    _turn: Turn,
}

impl std::ops::Deref for Setup {
    type Target = Files;

    fn deref(&self) -> &Files {
        &self.files
    }
}

impl std::ops::Deref for CselAuth {
    type Target = Files;

    fn deref(&self) -> &Files {
        &self.files
    }
}

impl Drop for CselAuth {
    fn drop(&mut self) {
        self.process.kill();
    }
}

impl CselAuth {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The TCP address it listens on; fails the test for a unix socket.
    pub fn addr(&self) -> SocketAddr {
        match &self.endpoint {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(path) => panic!("csel-auth listens on the unix socket {}", path.display()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The realm announced in Bearer challenges (token mode).
    pub fn realm(&self) -> &str {
        self.realm.as_deref().unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        if let Err(error) = self.process.signal(signal) {
            panic!("{error:#}");
        }
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.process.wait_exit(timeout) {
            Ok(status) => status,
            Err(error) => panic!("{error:#}"),
        }
    }

    /// Everything the service wrote so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the log contains `needle`; returns the matching line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, &format!("log line containing {needle:?}"), || {
            self.log().lines().find(|l| l.contains(needle)).map(str::to_string)
        })
    }

    pub fn connect(&self) -> Conn {
        match self.endpoint.connect() {
            Ok(connection) => connection,
            Err(error) => panic!("{error}"),
        }
    }

    /// One request on a new connection; fails the test on an I/O error.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        match self.endpoint.request(method, target, headers, body) {
            Ok(response) => response,
            Err(error) => panic!("{method} {target} on {} failed: {error}", self.endpoint),
        }
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// GET /auth with exactly these headers (repeats allowed).
    pub fn auth_headers(&self, headers: &[(&str, &str)]) -> Response {
        self.request("GET", "/auth", headers, b"")
    }

    /// The subrequest for `method uri` with only `X-Original-URI` and `X-Original-Method`, and
    /// Basic credentials when `login` is given.
    pub fn auth(&self, method: &str, uri: &str, login: Option<(&str, &str)>) -> Response {
        let credentials = login.map(|(user, password)| super::http::basic(user, password));
        let mut headers = vec![("X-Original-URI", uri), ("X-Original-Method", method)];
        if let Some(value) = &credentials {
            headers.push(("Authorization", value));
        }
        self.auth_headers(&headers)
    }

    /// [`CselAuth::auth`] as `user` with the test password.
    pub fn auth_user(&self, method: &str, uri: &str, user: &str) -> Response {
        self.auth(method, uri, Some((user, &super::password(user))))
    }

    /// [`CselAuth::auth`] with `Authorization: Bearer <token>`.
    pub fn auth_bearer(&self, method: &str, uri: &str, token: &str) -> Response {
        let authorization = format!("Bearer {token}");
        self.auth_headers(&[
            ("X-Original-URI", uri),
            ("X-Original-Method", method),
            ("Authorization", &authorization),
        ])
    }

    /// The status of the subrequest nginx's snippet sends for `method uri` (with the client
    /// address and the format), as `user` with the test password or anonymous.
    pub fn auth_status(&self, user: Option<&str>, method: &str, uri: &str) -> u16 {
        let request = Request::subrequest(method, uri).with_nginx_headers().user(user);
        match self.connect().send(&request.bytes()) {
            Ok(response) => response.status,
            Err(error) => panic!("{method} {uri} as {user:?}: {error}"),
        }
    }

    pub fn metrics_text(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "/metrics: {}", response.text());
        response.text()
    }

    /// Every sample of `/metrics`.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        parse_metrics(&self.metrics_text())
    }

    /// One sample of `/metrics`, e.g. `csel_auth_version{file="rules"}`; fails the test when it
    /// is absent.
    pub fn metric(&self, name_with_labels: &str) -> f64 {
        match self.metrics().get(name_with_labels) {
            Some(value) => *value,
            None => panic!("/metrics has no sample {name_with_labels}"),
        }
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

/// Answers `/auth` subrequests: the binary over its socket ([`CselAuth`]), or the same service
/// in-process ([`InProcessAuth`]), so one table of outcomes checks both.
pub trait Answers {
    fn auth_headers(&self, headers: &[(&str, &str)]) -> Response;

    /// The subrequest for `method uri`, with Basic credentials when `login` is given.
    fn auth(&self, method: &str, uri: &str, login: Option<(&str, &str)>) -> Response {
        let credentials = login.map(|(user, password)| super::http::basic(user, password));
        let mut headers = vec![("X-Original-URI", uri), ("X-Original-Method", method)];
        if let Some(value) = &credentials {
            headers.push(("Authorization", value));
        }
        self.auth_headers(&headers)
    }

    /// [`Answers::auth`] as `user` with the test password.
    fn auth_user(&self, method: &str, uri: &str, user: &str) -> Response {
        self.auth(method, uri, Some((user, &super::password(user))))
    }
}

impl Answers for CselAuth {
    fn auth_headers(&self, headers: &[(&str, &str)]) -> Response {
        CselAuth::auth_headers(self, headers)
    }
}

/// The service built from `serve` arguments and called in-process: no process, no socket.
pub struct InProcessAuth {
    service: csel_auth::in_process::InProcess,
    _dir: TestDir,
}

impl InProcessAuth {
    /// `rules` and the standard htpasswd file, with `args` after `--rules … --htpasswd …`.
    pub fn start(rules: &str, args: &[&str]) -> InProcessAuth {
        let dir = match TestDir::new("in-process") {
            Ok(dir) => dir,
            Err(e) => panic!("cannot make a test directory: {e}"),
        };
        let (rules_path, htpasswd_path) = match (
            dir.write("registry.rules", rules),
            dir.write("users.htpasswd", super::standard_htpasswd()),
        ) {
            (Ok(r), Ok(h)) => (r, h),
            (r, h) => panic!("cannot write the test files: {:?} {:?}", r.err(), h.err()),
        };
        let rules_arg = rules_path.to_string_lossy().into_owned();
        let htpasswd_arg = htpasswd_path.to_string_lossy().into_owned();
        let mut all = vec!["--rules", &rules_arg, "--htpasswd", &htpasswd_arg];
        all.extend_from_slice(args);
        match csel_auth::in_process::InProcess::start(&all) {
            Ok(service) => InProcessAuth { service, _dir: dir },
            Err(e) => panic!("the service did not start in-process: {e}"),
        }
    }
}

impl Answers for InProcessAuth {
    fn auth_headers(&self, headers: &[(&str, &str)]) -> Response {
        match self.service.auth(headers) {
            Ok(answer) => Response {
                status: answer.status,
                headers: answer.headers,
                body: answer.body,
            },
            Err(e) => panic!("in-process /auth failed: {e}"),
        }
    }
}
