//! Faults: rules or htpasswd missing, unreadable, a directory, a FIFO, 50 MB, not UTF-8 — at
//! start (the service refuses to start, saying why) and while running (the last good version
//! stays in force, nothing else changes); pathological rules (10k-deep parentheses, 10k
//! negations, a 1 MB literal, regexes that compile to huge automata); slow clients holding
//! connections; 10 000 concurrent connections. Each with bounded time and memory.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::files::write;
use crate::kit::http::{Conn, Request};
use crate::kit::service::{alone, binary, CselAuth, Setup};
use crate::kit::wait::wait_for;
use crate::kit::{full, htpasswd, report};

/// The rules of the fault tests (and what they decide, below).
const RULES: &str = "selector library = format == \"docker\" and path =^ \"/v2/library/\"\n\
                     selector team = format == \"docker\" and path =^ \"/v2/team/\"\n\
                     group team = alice\n\
                     grant pull on library to anonymous\n\
                     grant push on team to @team\n";

/// (user, method, path, status) under [`RULES`] with alice's password right.
const DECISIONS: [(Option<&str>, &str, &str, u16); 5] = [
    (None, "GET", "/v2/library/alpine/manifests/1", 200),
    (None, "GET", "/v2/team/app/manifests/1", 401),
    (Some("alice"), "PUT", "/v2/team/app/manifests/1", 200),
    (Some("bob"), "PUT", "/v2/team/app/manifests/1", 403),
    (Some("bob"), "GET", "/v2/library/alpine/manifests/1", 200),
];

/// What a file can be made into.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Missing,
    Unreadable,
    Directory,
    Fifo,
    Huge,
    NotUtf8,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::Missing,
        Fault::Unreadable,
        Fault::Directory,
        Fault::Fifo,
        Fault::Huge,
        Fault::NotUtf8,
    ];

    /// Puts the fault in place of `path`.
    fn apply(self, path: &Path) {
        let _ = fs::remove_file(path);
        match self {
            Fault::Missing => {}
            Fault::Unreadable => {
                use std::os::unix::fs::PermissionsExt;
                write(path, RULES.as_bytes());
                let made = fs::set_permissions(path, fs::Permissions::from_mode(0o000));
                assert!(made.is_ok(), "chmod: {made:?}");
            }
            Fault::Directory => assert!(fs::create_dir(path).is_ok()),
            Fault::Fifo => {
                let made = Command::new("mkfifo").arg(path).status();
                assert!(made.as_ref().is_ok_and(|s| s.success()), "mkfifo: {made:?}");
            }
            Fault::Huge => {
                // 50 MB of comment lines: it would even parse.
                let line = format!("# {}\n", "x".repeat(1021));
                let mut file = fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
                for _ in 0..50 * 1024 {
                    file.write_all(line.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Fault::NotUtf8 => write(path, b"group team = al\xffice\n"),
        }
    }

    /// Text the refusal must contain.
    fn reason(self) -> &'static str {
        match self {
            Fault::Missing => "No such file",
            Fault::Unreadable => "Permission denied",
            Fault::Directory | Fault::Fifo => "not a regular file",
            Fault::Huge => "the limit is",
            Fault::NotUtf8 => "UTF-8",
        }
    }

    fn undo(self, path: &Path) {
        let _ = fs::remove_dir(path);
        let _ = fs::remove_file(path);
    }
}

/// Runs the service as `nobody` when the tests run as root, so that a file mode can make a file
/// unreadable to it.
fn unprivileged(setup: Setup) -> Setup {
    if running_as_root() {
        open_to_nobody(&setup);
        setup.run_as(NOBODY)
    } else {
        setup
    }
}

fn users() -> String {
    htpasswd(&["alice", "bob"], 4)
}

fn assert_decisions(service: &CselAuth, when: &str) {
    for (user, method, path, status) in DECISIONS {
        assert_eq!(
            service.auth_status(user, method, path),
            status,
            "{when}: {user:?} {method} {path}"
        );
    }
}

#[test]
fn a_missing_unreadable_or_odd_file_stops_the_start_with_the_reason() {
    for which in ["rules", "htpasswd"] {
        for fault in Fault::ALL {
            let setup = unprivileged(super::setup(RULES, &users()));
            let path = if which == "rules" {
                setup.rules().to_path_buf()
            } else {
                setup.htpasswd().to_path_buf()
            };
            fault.apply(&path);
            let started = Instant::now();
            let (status, log) = setup.start_expecting_failure();
            let what = format!("{which} {fault:?}");
            assert_eq!(status.code(), Some(1), "{what}: {status}\n{log}");
            assert!(
                log.contains(&path.display().to_string()),
                "{what}: the path is not named:\n{log}"
            );
            assert!(
                log.contains(fault.reason()),
                "{what}: no `{}` in:\n{log}",
                fault.reason()
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: took {:?}",
                started.elapsed()
            );
            fault.undo(&path);
        }
    }
}

#[test]
fn a_file_broken_while_running_leaves_the_last_version_in_force() {
    let _turn = alone();
    let service = unprivileged(super::setup(RULES, &users()))
        .arg("--reload-interval")
        .arg("3600")
        .start();
    assert_decisions(&service, "at start");
    let (_, start_peak) = service.memory_kib();
    for which in ["rules", "htpasswd"] {
        let path = if which == "rules" {
            service.rules()
        } else {
            service.htpasswd()
        };
        let failed = format!("csel_auth_reloads_total{{file=\"{which}\",result=\"failed\"}}");
        let version = format!("csel_auth_version{{file=\"{which}\"}}");
        for fault in Fault::ALL {
            let what = format!("{which} {fault:?}");
            let before = service.metric(&failed);
            fault.apply(path);
            wait_for(Duration::from_secs(10), &format!("{what} to be refused"), || {
                (service.metric(&failed) > before).then_some(())
            });
            assert_eq!(
                service.metric(&format!("csel_auth_reload_failing{{file=\"{which}\"}}")),
                1.0,
                "{what}"
            );
            assert!(
                service.log().contains(fault.reason()),
                "{what}: the log does not say `{}`",
                fault.reason()
            );
            assert_decisions(&service, &what);
            // Back to a good file: it loads.
            fault.undo(path);
            let loaded = service.metric(&version);
            let good = if which == "rules" {
                format!("{RULES}# {fault:?}\n")
            } else {
                users()
            };
            write(path, good.as_bytes());
            wait_for(Duration::from_secs(10), &format!("{what} repaired"), || {
                (service.metric(&version) > loaded).then_some(())
            });
            assert_decisions(&service, &format!("{what} repaired"));
        }
    }
    // The new htpasswd is in force: bob's old password hash was replaced by a new one of the same
    // password, alice's too; a changed password shows it is really the new file.
    write(service.htpasswd(), htpasswd(&["bob"], 4).as_bytes());
    wait_for(Duration::from_secs(10), "alice removed", || {
        (service.auth_status(Some("alice"), "PUT", "/v2/team/app/manifests/1") == 401).then_some(())
    });
    let (_, peak) = service.memory_kib();
    report(&format!(
        "reliability: broken files while running: memory peak {} MiB (at start {} MiB)",
        peak / 1024,
        start_peak / 1024
    ));
    // The 50 MB files were never read: the peak stays far below their size.
    assert!(
        peak < start_peak + 40 * 1024,
        "memory peak {peak} KiB, {start_peak} KiB at start"
    );
}

/// Rules that are pathological: refused with a position, or loaded and harmless — quickly and
/// in bounded memory, by `check` and by a running service.
#[test]
fn pathological_rules_are_refused_or_harmless() {
    let _turn = alone();
    let deep = 10_000;
    let grant = "\ngrant read on x to anonymous\n";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "10k-deep parentheses",
            format!(
                "selector x = {}path == \"/a\"{}{grant}",
                "(".repeat(deep),
                ")".repeat(deep)
            ),
            Some("nested deeper than"),
        ),
        (
            "10k-deep parentheses in a grant",
            format!(
                "grant read on {}path == \"/a\"{} to anonymous\n",
                "(".repeat(deep),
                ")".repeat(deep)
            ),
            Some("nested deeper than"),
        ),
        (
            "10k negations",
            format!("selector x = {}path == \"/a\"{grant}", "not ".repeat(deep)),
            Some("negations"),
        ),
        (
            "10k unclosed parentheses",
            format!("selector x = {}{grant}", "(".repeat(deep)),
            Some("nested deeper than"),
        ),
        (
            "a 1 MB string literal",
            format!("selector x = path == \"/v2/library/{}\"{grant}", "a".repeat(1 << 20)),
            None,
        ),
        (
            "a 1 MB regex",
            format!("selector x = path =~ \"/v2/library/{}\"{grant}", "a".repeat(1 << 20)),
            Some("too large once compiled"),
        ),
        (
            "a regex with a huge automaton",
            format!("selector x = path =~ \"(?:.{{100}}){{100}}\"{grant}"),
            Some("too large once compiled"),
        ),
        (
            "a regex with a huge automaton per user",
            format!("selector x = path =~ \"/v2/${{user}}/.{{10000}}\"{grant}"),
            Some("too large once compiled"),
        ),
        (
            "100 000 alternatives",
            format!(
                "selector x = {}{grant}",
                (0..100_000)
                    .map(|i| format!("path == \"/a{i}\""))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            None,
        ),
    ];
    let service = super::setup(RULES, &users())
        .arg("--reload-interval")
        .arg("3600")
        .start();
    let mut loaded = 1.0;
    for (what, text, refusal) in &cases {
        // `csel-auth check`, as an operator would run it.
        let file = service.path("case.rules");
        write(&file, text.as_bytes());
        let started = Instant::now();
        let output = Command::new(binary())
            .arg("check")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        let shown = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        let head: String = shown.chars().take(300).collect();
        assert!(took < Duration::from_secs(20), "{what}: check took {took:?}");
        match refusal {
            Some(reason) => {
                assert_eq!(output.status.code(), Some(1), "{what}: {head}");
                assert!(shown.contains(reason) && shown.contains("--> "), "{what}: {head}");
            }
            None => assert_eq!(output.status.code(), Some(0), "{what}: {head}"),
        }
        // The same file as a reload.
        let failed = service.metric("csel_auth_reloads_total{file=\"rules\",result=\"failed\"}");
        write(service.rules(), text.as_bytes());
        wait_for(
            Duration::from_secs(20),
            &format!("{what} to be reloaded or refused"),
            || match refusal {
                Some(_) => {
                    (service.metric("csel_auth_reloads_total{file=\"rules\",result=\"failed\"}") > failed).then_some(())
                }
                None => (service.metric("csel_auth_version{file=\"rules\"}") > loaded).then_some(()),
            },
        );
        if refusal.is_some() {
            assert_decisions(&service, what);
        } else {
            loaded += 1.0;
            // Loaded: x reads nothing real, and the library is no longer granted.
            assert_eq!(
                service.auth_status(None, "GET", "/v2/library/alpine/manifests/1"),
                401,
                "{what}"
            );
            assert_eq!(service.auth_status(None, "GET", "/v2/a7/manifests/1"), 401, "{what}");
            write(service.rules(), format!("{RULES}# after {what}\n").as_bytes());
            wait_for(Duration::from_secs(20), "the good rules again", || {
                (service.metric("csel_auth_version{file=\"rules\"}") > loaded).then_some(())
            });
            loaded += 1.0;
            assert_decisions(&service, what);
        }
    }
    let (_, peak) = service.memory_kib();
    report(&format!(
        "reliability: pathological rules: service memory peak {} MiB",
        peak / 1024
    ));
    assert!(peak < 512 * 1024, "memory peak {peak} KiB");
}

/// Clients that open connections and send a request slowly, or never finish it, do not stop
/// others from being answered while connection slots are left; once every slot is taken, a new
/// connection waits (it is not refused or dropped) and is served when a slot frees.
#[test]
fn slow_clients_holding_connections_do_not_break_the_service() {
    let _turn = alone();
    let slots: usize = 32;
    let service = super::setup(RULES, &users())
        .arg("--max-connections")
        .arg(&slots.to_string())
        .start();
    let addr = service.addr();
    let partial = b"GET /auth HTTP/1.1\r\nHost: t\r\nX-Original-URI: /v2/library/a/manifests/1\r\n";
    let open_slow = |count: usize| -> Vec<TcpStream> {
        (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
                stream.write_all(partial).unwrap_or_else(|e| panic!("{e}"));
                stream
            })
            .collect()
    };
    // Half the slots held by slow clients: others are answered at once, correctly.
    let mut slow = open_slow(slots / 2);
    let started = Instant::now();
    for _ in 0..50 {
        assert_decisions(&service, "with slow clients");
    }
    let served = started.elapsed();
    // Trickling more header bytes does not break anything either.
    for stream in &mut slow {
        stream.write_all(b"X-Slow: 1\r\n").unwrap_or_else(|e| panic!("{e}"));
    }
    assert_decisions(&service, "with trickling clients");

    // Every slot held (the rest of the slots by slow clients, and one request waiting).
    slow.extend(open_slow(slots - slow.len()));
    let waiting = std::thread::spawn(move || {
        let mut connection = Conn::tcp(addr).unwrap_or_else(|e| panic!("{e}"));
        let request = Request::subrequest("GET", "/v2/library/alpine/manifests/1")
            .with_nginx_headers()
            .bytes();
        connection.send(&request).map(|r| r.status)
    });
    // One slow client finishes its request and leaves: its answer comes, then the waiting
    // request is served in the freed slot.
    let mut finisher = slow.pop().unwrap_or_else(|| panic!("no slow client"));
    finisher
        .write_all(b"X-Original-Method: GET\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    finisher.read_to_string(&mut answer).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the slow client's own answer: {answer}"
    );
    let waited = waiting.join().unwrap_or_else(|_| panic!("the waiting client panicked"));
    assert_eq!(waited.ok(), Some(200), "the request waiting for a slot");
    assert_decisions(&service, "after a slot freed");
    // With the full-size run, wait for the server to drop the slow clients itself (its header
    // read timeout is 75 s: longer than nginx keeps idle upstream connections).
    if full() {
        for (i, stream) in slow.iter_mut().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap_or_else(|e| panic!("{e}"));
            let closed = stream.read_to_end(&mut Vec::new());
            let timed_out =
                |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
            assert!(
                !closed.as_ref().is_err_and(timed_out),
                "slow client {i} was not closed: {closed:?}"
            );
        }
    }
    drop(slow);
    let (_, peak) = service.memory_kib();
    report(&format!(
        "reliability: slow clients: 250 answers in {served:?} with {} slow connections; memory peak {} MiB",
        slots / 2,
        peak / 1024
    ));
}

/// How many file descriptors this process may open; raised to the hard limit with `prlimit`
/// (util-linux) when the soft one is lower.
fn raise_open_files_limit(wanted: u64) -> u64 {
    let read = || -> (u64, u64) {
        let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default();
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        (
            numbers.first().copied().unwrap_or(1024),
            numbers.get(1).copied().unwrap_or(1024),
        )
    };
    let (soft, hard) = read();
    if soft < wanted {
        let target = wanted.min(hard);
        let _ = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={target}:{hard}"))
            .status();
    }
    read().0
}

/// 10 000 connections at once, each asking one question: every answer is right, the service
/// stays up and its memory bounded. Once with a slot for every connection (all 10 000 open in
/// the service at the same time), once with the default 4096 slots (the rest wait).
#[test]
fn ten_thousand_concurrent_connections() {
    let _turn = alone();
    let wanted: usize = 10_000;
    let limit = raise_open_files_limit(wanted as u64 + 2_000);
    let connections = wanted.min(limit.saturating_sub(500) as usize);
    if connections < wanted {
        report(&format!(
            "reliability: open-files limit {limit}: {connections} concurrent connections instead of {wanted}"
        ));
    }
    // All connections open at once in the service; with the full-size run also all of them
    // at once against the default 4096 slots, where those beyond the slots and the listen backlog
    // (1024) have their SYNs dropped and retried with back-off by the kernel (over a minute).
    let mut runs = vec![(connections + 100, true)];
    if full() {
        runs.push((4096, false));
    }
    for (slots, hold) in runs {
        let service = super::setup(RULES, &users())
            .arg("--max-connections")
            .arg(&slots.to_string())
            .start();
        let (_, idle_peak) = service.memory_kib();
        let started = Instant::now();
        let (answers, wrong, failures) = storm(&service, connections, hold);
        let took = started.elapsed();
        let (_, peak) = service.memory_kib();
        report(&format!(
            "reliability: {connections} concurrent connections ({slots} slots): {answers} answers, {wrong} wrong, \
             {failures} failed, {took:.1?}; memory peak {} MiB (idle {} MiB)",
            peak / 1024,
            idle_peak / 1024
        ));
        assert_eq!((answers, wrong, failures), (connections, 0, 0), "with {slots} slots");
        assert_decisions(&service, "after the storm");
        assert!(peak < 1024 * 1024, "memory peak {peak} KiB with {slots} slots");
    }
}

/// Opens `count` connections; each sends one subrequest and reads the answer. With `hold`, every
/// connection stays open until all are answered (so all are open at the same time), and at most
/// 512 are connecting or waiting for their answer at any moment, so the listen backlog never
/// overflows; otherwise all connect at once and each closes after its answer. Returns (answers,
/// wrong answers, failures).
fn storm(service: &CselAuth, count: usize, hold: bool) -> (usize, usize, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = service.addr();
    runtime.block_on(async move {
        let everyone = std::sync::Arc::new(tokio::sync::Barrier::new(count));
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(if hold { 512 } else { count }));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let (user, method, path, expected) = DECISIONS[i % DECISIONS.len()];
            let mut request = Request::subrequest(method, path).with_nginx_headers().user(user);
            if !hold {
                request = request.header(b"Connection", b"close");
            }
            let request = request.bytes();
            let everyone = std::sync::Arc::clone(&everyone);
            let in_flight = std::sync::Arc::clone(&in_flight);
            tasks.spawn(async move {
                let work = async {
                    let turn = in_flight.acquire().await.map_err(std::io::Error::other)?;
                    let mut stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.write_all(&request).await?;
                    let mut buffer = Vec::with_capacity(512);
                    let mut chunk = [0u8; 512];
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(std::io::Error::other("closed before the answer"));
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let status: u16 = String::from_utf8_lossy(&buffer[9..12]).parse().unwrap_or(0);
                    drop(turn);
                    if hold {
                        // Keep the connection until every connection has its answer.
                        everyone.wait().await;
                    }
                    Ok::<bool, std::io::Error>(status == expected)
                };
                tokio::time::timeout(Duration::from_secs(120), work)
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
            });
        }
        let (mut answers, mut wrong, mut failures) = (0, 0, 0);
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(right)) => {
                    answers += 1;
                    wrong += usize::from(!right);
                }
                _ => failures += 1,
            }
        }
        (answers, wrong, failures)
    })
}

/// Out of file descriptors (more connections than its open-files limit allows): the service
/// neither spins nor floods its log, keeps the connections it has, and accepts again once
/// descriptors free up.
#[test]
fn running_out_of_file_descriptors_is_survived() {
    let _turn = alone();
    let service = super::setup(RULES, &users()).open_files_limit(64).start();
    let mut first = service.connect();
    let request = Request::subrequest("GET", "/v2/library/alpine/manifests/1")
        .with_nginx_headers()
        .bytes();
    assert_eq!(first.send(&request).map(|r| r.status).ok(), Some(200));
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(service.addr()).ok())
        .collect();
    // Half a second with nothing to do but the connections it cannot accept (a measurement
    // window: the service should idle through it).
    let cpu_before = service.cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    // The connection accepted before the limit was reached is still answered.
    for _ in 0..10 {
        assert_eq!(
            first.send(&request).map(|r| r.status).ok(),
            Some(200),
            "while out of descriptors"
        );
    }
    let cpu = service.cpu_time().saturating_sub(cpu_before);
    let warnings = service.log().matches("accept failed").count();
    drop(held);
    wait_for(Duration::from_secs(10), "a new connection to be answered", || {
        Conn::tcp(service.addr())
            .and_then(|mut c| c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"))
            .ok()
            .filter(|r| r.status == 200)
    });
    report(&format!(
        "reliability: out of file descriptors: {cpu:?} of CPU in 0.5 s, {warnings} log lines"
    ));
    assert!(
        cpu < Duration::from_millis(200),
        "the service spun: {cpu:?} of CPU in 0.5 s"
    );
    assert!(warnings < 100, "{warnings} `accept failed` log lines");
}

/// Whether this process runs as root (then file modes do not stop it, and the service must run
/// as another user for "unreadable" to mean anything).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user id tests run the service as when the test runs as root: `nobody`.
const NOBODY: u32 = 65534;

/// Makes the setup's directory and files usable by [`NOBODY`].
fn open_to_nobody(setup: &Setup) {
    use std::os::unix::fs::PermissionsExt;
    for path in [setup.dir(), setup.rules(), setup.htpasswd()] {
        let mode = if path.is_dir() { 0o777 } else { 0o644 };
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
    }
}
