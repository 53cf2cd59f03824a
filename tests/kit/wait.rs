//! Waiting on a condition with a deadline: the only way the tests synchronise with the processes
//! they drive. The pause between probes grows from 1 ms to 20 ms; the condition, not the pause,
//! is what a caller relies on.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(20);
/// The pause of [`time_until`]: fine enough for the latencies it measures, and a ceiling on the
/// probes a second. A probe is often a request on a new connection, and a loop without a pause
/// opened thousands a second, each leaving a socket in TIME_WAIT for a minute: next to the other
/// tests' connections that ran the machine out of local ports, and the next connect failed.
const MEASURED_PAUSE: Duration = Duration::from_millis(1);

/// A condition that did not come true in time.
#[derive(Debug)]
pub struct TimedOut {
    what: String,
    timeout: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?} waiting for {}", self.timeout, self.what)
    }
}

impl std::error::Error for TimedOut {}

/// Polls `probe` until it gives a value, or fails after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// [`wait_until`] that fails the test on timeout.
pub fn wait_for<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    match wait_until(timeout, what, probe) {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out}"),
    }
}

/// How long `condition` took to become true, polled every [`MEASURED_PAUSE`] (for latencies that
/// are measured), or `None` after `timeout`. The clock starts when this is called.
pub fn time_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(MEASURED_PAUSE);
    }
}

/// [`wait_for`] for an async probe, pausing on the tokio timer.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        let now = Instant::now();
        assert!(now < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}
