//! Free ports for the servers the tests start.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// Below the kernel's ephemeral range (32768 and up by default), from which outgoing connections
/// take their local ports: a port there can be taken between the probe and the server's bind.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before. Another process can still take it before it is bound: the servers retry with a new
/// one when their log says so ([`super::process::start_on_free_port`]).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let mut random = rand::thread_rng();
    for _ in 0..1000 {
        let port = random.gen_range(RANGE);
        let mut taken = handed_out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {} and {}", RANGE.start, RANGE.end)
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
