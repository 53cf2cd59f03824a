//! The processes the tests start: servers owned by a [`ProcessGuard`] (its own process group,
//! stopped on drop, its log tail printed when the test fails) and client commands run to
//! completion with a deadline ([`run_command`]).
//!
//! Every child gets a parent-death signal, which fires when the *thread* that started it ends
//! (also when the test binary is killed), so an aborted run leaves no server behind: guards must
//! be dropped on the thread that created them.

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
pub use nix::sys::signal::Signal;
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;

use super::wait::wait_until;

/// How long a process gets to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a log shown in an error or after a failed test.
const LOG_TAIL_LINES: usize = 60;
/// Default limit for one client command. docker 20.10 retries a denied layer upload five times
/// with 5+10+15+20 s back-off (~50 s) before it gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Programs the tests run and the Debian packages that provide them.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("docker-registry", "docker-registry"),
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("skopeo", "skopeo"),
    ("podman", "podman"),
    ("umount", "mount"),
    ("slapd", "slapd"),
    ("ldapadd", "ldap-utils"),
    ("ldapmodify", "ldap-utils"),
    ("ldapwhoami", "ldap-utils"),
    ("openssl", "openssl"),
    ("git", "git"),
    ("mkfifo", "coreutils"),
    ("prlimit", "util-linux"),
];

/// Finds `name` in PATH (or sbin, which a non-root PATH may lack), or fails naming the Debian
/// package to install.
pub fn require_program(name: &str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    let found = std::env::split_paths(&path_var)
        .chain(sbin)
        .map(|dir| dir.join(name))
        .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    if let Some(path) = found {
        return Ok(path);
    }
    let package = DEBIAN_PACKAGES
        .iter()
        .find(|(program, _)| *program == name)
        .map_or(name, |(_, package)| *package);
    bail!(
        "required program `{name}` was not found in PATH; run scripts/install-test-deps or \
         `apt-get install -y {package}` (Debian package `{package}`)"
    )
}

/// Sends `signal` to process `pid`, refusing 0 and 1 (this process group, init).
pub fn signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    if raw <= 1 {
        bail!("refusing to signal pid {raw}");
    }
    kill(Pid::from_raw(raw), signal).with_context(|| format!("kill({raw}, {signal})"))
}

/// Sends `signal` to every process in the group `pgid` (a process started with its own group).
/// Refuses 0 and 1: they would hit the test's own group, or every process on the machine. An
/// empty group is fine.
///
/// Do not shell out to `kill -SIG -PGID` instead: procps-ng 4.0.2 (Debian 12) turns that into
/// kill(-1, SIG), i.e. it signals every process.
pub fn signal_group(pgid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pgid).context("process group id out of range")?;
    if raw <= 1 {
        bail!("refusing to signal process group {raw}");
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(error) => bail!("killpg({raw}, {signal}): {error}"),
    }
}

/// The child gets `signal` when the thread that started it ends, and starts in a process group
/// of its own.
fn own_group_dying_with_parent(command: &mut Command, signal: Signal) {
    command.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec; it only calls prctl(2) and getppid(2),
    // both async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal)?;
            // The parent may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// The child may open at most `limit` files (`RLIMIT_NOFILE`).
pub fn limit_open_files(command: &mut Command, limit: u64) {
    // SAFETY: setrlimit(2) is async-signal-safe and the closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)?;
            Ok(())
        });
    }
}

/// A server in its own process group, its stdout and stderr appended to a log file. Drop stops
/// the group (SIGTERM to the leader, up to [`STOP_GRACE`] for it to exit, then SIGKILL to the
/// group) and, when the test is failing, prints the tails of its logs.
pub struct ProcessGuard {
    name: String,
    command_line: String,
    child: Child,
    log_path: PathBuf,
    /// Further logs worth showing after a failure (nginx's error and access logs).
    pub extra_logs: Vec<PathBuf>,
    stopped: bool,
}

impl ProcessGuard {
    /// Spawns `command`, which gets `death_signal` when the starting thread ends.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path, death_signal: Signal) -> Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating a log file handle")?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        own_group_dying_with_parent(&mut command, death_signal);
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

    /// Its pid, also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self::signal(self.child.id(), signal)
    }

    /// Freezes the process (SIGSTOP) and waits until every one of its threads is stopped: a
    /// thread the kernel has not yet told to stop can still answer a request.
    pub fn pause(&self) -> Result<()> {
        self.signal_threads(Signal::SIGSTOP, true)
    }

    /// Lets a paused process run again (SIGCONT) and waits until no thread of it is stopped.
    pub fn resume(&self) -> Result<()> {
        self.signal_threads(Signal::SIGCONT, false)
    }

    fn signal_threads(&self, signal: Signal, stopped: bool) -> Result<()> {
        self.signal(signal)?;
        let what = format!("{signal} to take effect in every thread of {}", self.name);
        wait_until(Duration::from_secs(10), &what, || {
            self.threads_stopped(stopped).then_some(())
        })?;
        Ok(())
    }

    /// Whether every thread (`stopped`) or no thread (`!stopped`) of the process is stopped, by
    /// the state in `/proc/<pid>/task/<tid>/stat`.
    fn threads_stopped(&self, stopped: bool) -> bool {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|task| {
            let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The state follows the command name, which may hold spaces and parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state.is_some_and(|s| (s == "T") == stopped)
        })
    }

    /// Waits until `probe` succeeds, failing early (with the log) if the process exits first.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) -> Result<()> {
        let mut exit = None;
        let result = wait_until(timeout, what, || {
            if probe() {
                return Some(());
            }
            exit = self.exited();
            exit.map(|_| ())
        });
        match (result, exit) {
            (Ok(()), None) => Ok(()),
            (_, Some(status)) => Err(anyhow!(
                "{} exited ({}) before {what}\ncommand: {}\n{}",
                self.name,
                describe_status(status),
                self.command_line,
                self.failure_report()
            )),
            (Err(timed_out), None) => Err(anyhow!(
                "{timed_out}\ncommand: {}\n{}",
                self.command_line,
                self.failure_report()
            )),
        }
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = wait_until(timeout, &format!("{} to exit", self.name), || self.exited())?;
        self.stopped = true;
        Ok(status)
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

    /// Like [`ProcessGuard::stop`], but stops waiting for the leader as soon as `done(log)` says
    /// the rest is only slow teardown (dockerd idles ~3 s after "Daemon shutdown complete"
    /// waiting for its containerd).
    pub fn stop_with(&mut self, done: impl Fn(&str) -> bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if thread::panicking() {
            eprintln!("{}", self.failure_report());
        }
        if self.exited().is_none() {
            // A stopped (SIGSTOP) process acts on SIGTERM only once it runs again.
            let _ = self.signal(Signal::SIGCONT);
            let _ = self.signal(Signal::SIGTERM);
            let _ = wait_until(STOP_GRACE, &format!("{} to stop", self.name), || {
                (self.exited().is_some() || done(&self.log())).then_some(())
            });
        }
        self.kill_group();
    }

    /// Kills the process group now, without a grace period.
    pub fn kill(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if thread::panicking() {
            eprintln!("{}", self.failure_report());
        }
        self.kill_group();
    }

    /// Whatever is left of the group (nginx workers, containerd, ...).
    fn kill_group(&mut self) {
        if let Err(err) = signal_group(self.child.id(), Signal::SIGKILL) {
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

/// What one try to start a server on a free port gave.
pub enum Started<T> {
    Ready(T),
    /// The port was taken between picking it and the server's bind; the server's log.
    PortTaken(String),
}

/// Starts a server up to five times, with new ports each time the port was taken between
/// picking it and the server's bind.
pub fn start_on_free_port<T>(what: &str, mut attempt: impl FnMut() -> Result<Started<T>>) -> Result<T> {
    let mut last_log = String::new();
    for _ in 0..5 {
        match attempt()? {
            Started::Ready(server) => return Ok(server),
            Started::PortTaken(log) => last_log = log,
        }
    }
    bail!("{what}: the port was taken five times in a row\n{last_log}")
}

/// Whether a server's log says its port was in use.
pub fn port_in_use(log: &str) -> bool {
    let lower = log.to_ascii_lowercase();
    ["address already in use", "addrinuse", "errno=98", "cannot listen"]
        .iter()
        .any(|sign| lower.contains(sign))
}

pub fn describe_command(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

/// Runs `command` to completion with `stdin`, killing its process group after `timeout`.
pub fn run_command(mut command: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<CmdOutput> {
    let command_line = describe_command(&command);
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_group_dying_with_parent(&mut command, Signal::SIGTERM);
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting `{command_line}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .with_context(|| format!("writing stdin of `{command_line}`"))?;
    }
    let stdout = child.stdout.take().map(read_in_background);
    let stderr = child.stderr.take().map(read_in_background);
    let pgid = child.id();
    let waited = wait_until(timeout, &format!("`{command_line}` to finish"), || {
        child.try_wait().ok().flatten()
    });
    let joined =
        |handle: Option<thread::JoinHandle<String>>| handle.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let status = match waited {
        Ok(status) => status,
        Err(timed_out) => {
            let _ = signal_group(pgid, Signal::SIGKILL);
            let _ = child.wait();
            let (out, errs) = (joined(stdout), joined(stderr));
            bail!("{timed_out}; killed it\n--- stdout ---\n{out}\n--- stderr ---\n{errs}");
        }
    };
    // Grandchildren that outlive the command (none expected) go too.
    let _ = signal_group(pgid, Signal::SIGKILL);
    let (stdout, stderr) = (joined(stdout), joined(stderr));
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
