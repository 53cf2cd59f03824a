//! Helper of `scripts/load --flood`: a flood of logins that their clients abandon, and the latency
//! of real logins meanwhile.
//!
//! ```text
//! login_flood TARGET PATH FLOOD_USERS_FROM CACHED UNCACHED METRICS_URL_HOST_PORT
//! ```
//!
//! * `TARGET`: `127.0.0.1:PORT` of nginx (or of csel-auth's `/auth`, see `PATH`).
//! * `PATH`: the request path, e.g. `/v2/library/alpine/manifests/1`.
//! * `FLOOD_USERS_FROM`: `one` (every flood request from 127.0.0.1) or `many` (each from its own
//!   loopback address, 127.2.x.y: a flood the per-address limits do not stop).
//! * `CACHED`, `UNCACHED`: `user:password` of a login made once before the flood (then cached)
//!   and of one made during it; they connect from 127.1.0.1 and 127.1.0.2.
//! * `METRICS`: `127.0.0.1:PORT` of csel-auth, for its `/metrics`.
//!
//! 1 000 requests with unknown users, one every 3 ms, each closed 0.5 s after it was sent; once a
//! third is sent, 20 cached logins and one uncached login are timed. Prints one line of numbers.
//! Talks to loopback addresses only, and stops by itself.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;

const FLOOD: usize = 1000;
const ABANDON_AFTER: Duration = Duration::from_millis(500);
const PACE: Duration = Duration::from_millis(3);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn request(path: &str, user: &str, password: &str) -> Vec<u8> {
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("GET {path} HTTP/1.1\r\nHost: registry.test\r\nAuthorization: Basic {credentials}\r\n\r\n").into_bytes()
}

/// Opens connections from a chosen loopback source address (std cannot bind before connecting;
/// tokio's `TcpSocket` can). One per thread.
struct Connector(tokio::runtime::Runtime);

impl Connector {
    fn new() -> std::io::Result<Connector> {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map(Connector)
    }

    /// A blocking connection from `source` to `target`.
    fn connect(&self, source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = self.0.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            socket.connect(target).await?.into_std()
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Sends `request` and reads the status of the answer (the whole head).
fn status_of(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<u16> {
    stream.write_all(request)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the answer"));
        }
        head.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Drain a short body so the connection can be reused.
    if let Some(length) = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
    {
        let body_start = text.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
        let mut have = head.len() - body_start;
        while have < length {
            let n = stream.read(&mut byte)?;
            if n == 0 {
                break;
            }
            have += n;
        }
    }
    Ok(status)
}

fn metrics(host_port: &str) -> std::collections::HashMap<String, f64> {
    let Ok(address) = host_port.parse::<SocketAddr>() else {
        return Default::default();
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, IO_TIMEOUT) else {
        return Default::default();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn split_login(text: &str) -> (String, String) {
    match text.split_once(':') {
        Some((user, password)) => (user.to_string(), password.to_string()),
        None => {
            eprintln!("error: expected user:password, got {text:?}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, path, from, cached, uncached, metrics_at] = &args[..] else {
        eprintln!(
            "usage: login_flood TARGET PATH one|many CACHED_USER:PASSWORD UNCACHED_USER:PASSWORD METRICS_HOST:PORT"
        );
        std::process::exit(2);
    };
    let target: SocketAddr = match target.parse() {
        Ok(target) => target,
        Err(e) => {
            eprintln!("error: TARGET {target}: {e}");
            std::process::exit(2);
        }
    };
    let many = match from.as_str() {
        "one" => false,
        "many" => true,
        other => {
            eprintln!("error: expected `one` or `many`, got {other:?}");
            std::process::exit(2);
        }
    };
    let (cached_user, cached_password) = split_login(cached);
    let (uncached_user, uncached_password) = split_login(uncached);
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("error: {what}: {e}");
        std::process::exit(1);
    };

    let connector = Connector::new().unwrap_or_else(|e| fail("runtime", e));
    let mut cached_connection = connector
        .connect(Ipv4Addr::new(127, 1, 0, 1), target)
        .unwrap_or_else(|e| fail("cached login", e));
    let cached_request = request(path, &cached_user, &cached_password);
    match status_of(&mut cached_connection, &cached_request) {
        Ok(200) => {}
        Ok(status) => fail("cached login", std::io::Error::other(format!("status {status}"))),
        Err(e) => fail("cached login", e),
    }
    let before = metrics(metrics_at);

    let sent = AtomicUsize::new(0);
    let started = Instant::now();
    let (cached_times, uncached_time, uncached_status, flood_time) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let connector = Connector::new().unwrap_or_else(|e| fail("runtime", e));
            let mut open: VecDeque<(Instant, TcpStream)> = VecDeque::new();
            for i in 0..FLOOD {
                let source = if many {
                    Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8)
                } else {
                    Ipv4Addr::LOCALHOST
                };
                match connector.connect(source, target) {
                    Ok(mut stream) => {
                        let _ = stream.write_all(&request(path, &format!("ghost-{i}"), "guess"));
                        open.push_back((Instant::now(), stream));
                    }
                    Err(e) => eprintln!("flood {i}: {e}"),
                }
                sent.fetch_add(1, Ordering::SeqCst);
                while open.front().is_some_and(|(at, _)| at.elapsed() >= ABANDON_AFTER) {
                    open.pop_front();
                }
                std::thread::sleep(PACE);
            }
            while let Some((at, stream)) = open.pop_front() {
                std::thread::sleep(ABANDON_AFTER.saturating_sub(at.elapsed()));
                drop(stream);
            }
            started.elapsed()
        });
        while sent.load(Ordering::SeqCst) < FLOOD / 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut cached_times: Vec<Duration> = (0..20)
            .map(|_| {
                let at = Instant::now();
                match status_of(&mut cached_connection, &cached_request) {
                    Ok(200) => at.elapsed(),
                    Ok(status) => fail("cached login", std::io::Error::other(format!("status {status}"))),
                    Err(e) => fail("cached login", e),
                }
            })
            .collect();
        cached_times.sort_unstable();
        let at = Instant::now();
        let mut connection = connector
            .connect(Ipv4Addr::new(127, 1, 0, 2), target)
            .unwrap_or_else(|e| fail("uncached login", e));
        let status = status_of(&mut connection, &request(path, &uncached_user, &uncached_password))
            .unwrap_or_else(|e| fail("uncached login", e));
        let uncached_time = at.elapsed();
        let flood_time = flood.join().unwrap_or_default();
        (cached_times, uncached_time, status, flood_time)
    });
    // Let the queue drain, then read the counters.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = metrics(metrics_at);
    while after.get("csel_auth_bcrypt_queue_length").copied().unwrap_or(0.0) > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = metrics(metrics_at);
    }
    let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
    let limited: f64 = ["address_and_user", "user", "address"]
        .iter()
        .map(|l| delta(&format!("csel_auth_login_rate_limited_total{{limit=\"{l}\"}}")))
        .sum();
    println!(
        "flood_from={from} flood={FLOOD} flood_seconds={:.1} cached_max_ms={:.2} cached_median_ms={:.2} uncached_ms={:.0} uncached_status={uncached_status} bcrypts={} abandoned={} rejected_deadline={} rate_limited={}",
        flood_time.as_secs_f64(),
        cached_times[cached_times.len() - 1].as_secs_f64() * 1000.0,
        cached_times[cached_times.len() / 2].as_secs_f64() * 1000.0,
        uncached_time.as_secs_f64() * 1000.0,
        delta("csel_auth_bcrypt_checks_total"),
        delta("csel_auth_bcrypt_abandoned_total"),
        delta("csel_auth_bcrypt_rejected_total{reason=\"deadline\"}"),
        limited,
    );
}
