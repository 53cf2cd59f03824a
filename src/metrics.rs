//! Counters for `/metrics`, in the Prometheus text format. Plain atomics: a
//! handful of series does not need a metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::identity::throttle::{LimitKind, LoginThrottle};
use crate::identity::{Overload, Verifier};

/// Upper bounds (seconds) of the decision latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 0.5, 1.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    /// Denied for an anonymous subject or bad credentials: 401.
    Unauthorized,
    /// Denied for a known subject: 403.
    Forbidden,
    /// Malformed or misconfigured request: 403 or 500.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watched {
    Rules,
    Htpasswd,
    AccessKeys,
}

impl Watched {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Watched::Rules => "rules",
            Watched::Htpasswd => "htpasswd",
            Watched::AccessKeys => "access_keys",
        }
    }

    /// Every watched file, in the order of the reload's arrays.
    pub(crate) const ALL: [Watched; 3] = [Watched::Rules, Watched::Htpasswd, Watched::AccessKeys];
}

#[derive(Default)]
pub(crate) struct FileMetrics {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// 1 while the file on disk is not the version in force (it failed to load).
    pub last_reload_failed: AtomicU64,
    /// Number of the version in force (1 at start).
    pub version: AtomicU64,
    /// Unix time the version in force was loaded.
    pub loaded_at: AtomicU64,
    /// 1 while a writer has the file open: its changes are not read until it closes it.
    pub waiting_for_writer: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Metrics {
    decisions: [AtomicU64; 4],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
    pub rules: FileMetrics,
    pub htpasswd: FileMetrics,
    pub access_keys: FileMetrics,
    pub tokens_issued: AtomicU64,
    pub token_failures: AtomicU64,
    pub throttled_logins: AtomicU64,
    throttle_delay_micros: AtomicU64,
}

impl Metrics {
    pub(crate) fn file(&self, which: Watched) -> &FileMetrics {
        match which {
            Watched::Rules => &self.rules,
            Watched::Htpasswd => &self.htpasswd,
            Watched::AccessKeys => &self.access_keys,
        }
    }

    pub(crate) fn record_decision(&self, outcome: Outcome, elapsed: Duration) {
        self.decisions[outcome as usize].fetch_add(1, Ordering::Relaxed);
        // One atomic per decision, not one per bucket above the latency: both worker threads
        // write these, and every shared write moves the cache line. `render` adds them up.
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos
            .fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// A failed login answered after `delay` (the throttle).
    pub(crate) fn record_throttled_login(&self, delay: Duration) {
        self.throttled_logins.fetch_add(1, Ordering::Relaxed);
        self.throttle_delay_micros
            .fetch_add(delay.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    pub(crate) fn decisions(&self, outcome: Outcome) -> u64 {
        self.decisions[outcome as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition. `extra` adds the series owned by
    /// other parts (bcrypt counters).
    pub(crate) fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP csel_auth_decisions_total Requests decided on /auth, by outcome."
        );
        let _ = writeln!(out, "# TYPE csel_auth_decisions_total counter");
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "csel_auth_decisions_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                self.decisions(outcome)
            );
        }
        let _ = writeln!(
            out,
            "# HELP csel_auth_decision_duration_seconds Time to answer /auth, bcrypt included."
        );
        let _ = writeln!(out, "# TYPE csel_auth_decision_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "csel_auth_decision_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "csel_auth_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "csel_auth_decision_duration_seconds_sum {sum}");
        let _ = writeln!(out, "csel_auth_decision_duration_seconds_count {count}");

        for (name, help, kind) in [
            ("reloads_total", "Reloads of a watched file, by result.", "counter"),
            (
                "reload_failing",
                "1 while the file on disk failed to load and an older version is in force.",
                "gauge",
            ),
            (
                "version",
                "Number of the version in force (1 at start, +1 per successful reload).",
                "gauge",
            ),
            (
                "loaded_timestamp_seconds",
                "Unix time the version in force was loaded.",
                "gauge",
            ),
            (
                "reload_waiting_for_writer",
                "1 while a writer has the file open: its changes are read once the writer closes it.",
                "gauge",
            ),
        ] {
            let _ = writeln!(out, "# HELP csel_auth_{name} {help}");
            let _ = writeln!(out, "# TYPE csel_auth_{name} {kind}");
            for which in Watched::ALL {
                let f = self.file(which);
                let file = which.label();
                match name {
                    "reloads_total" => {
                        let ok = f.reloads_ok.load(Ordering::Relaxed);
                        let failed = f.reloads_failed.load(Ordering::Relaxed);
                        let _ = writeln!(out, "csel_auth_reloads_total{{file=\"{file}\",result=\"ok\"}} {ok}");
                        let _ = writeln!(
                            out,
                            "csel_auth_reloads_total{{file=\"{file}\",result=\"failed\"}} {failed}"
                        );
                    }
                    "reload_failing" => {
                        let _ = writeln!(
                            out,
                            "csel_auth_reload_failing{{file=\"{file}\"}} {}",
                            f.last_reload_failed.load(Ordering::Relaxed)
                        );
                    }
                    "version" => {
                        let _ = writeln!(
                            out,
                            "csel_auth_version{{file=\"{file}\"}} {}",
                            f.version.load(Ordering::Relaxed)
                        );
                    }
                    "reload_waiting_for_writer" => {
                        let _ = writeln!(
                            out,
                            "csel_auth_reload_waiting_for_writer{{file=\"{file}\"}} {}",
                            f.waiting_for_writer.load(Ordering::Relaxed)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            "csel_auth_loaded_timestamp_seconds{{file=\"{file}\"}} {}",
                            f.loaded_at.load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
        let counters = [
            (
                "tokens_issued_total",
                "Tokens issued by /token.",
                self.tokens_issued.load(Ordering::Relaxed),
            ),
            (
                "token_failures_total",
                "Refused /token requests and invalid bearer tokens.",
                self.token_failures.load(Ordering::Relaxed),
            ),
            (
                "throttled_logins_total",
                "Failed logins answered after a delay.",
                self.throttled_logins.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters.iter().copied().chain(extra.iter().copied()) {
            let _ = writeln!(out, "# HELP csel_auth_{name} {help}");
            let _ = writeln!(out, "# TYPE csel_auth_{name} counter");
            let _ = writeln!(out, "csel_auth_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP csel_auth_throttle_delay_seconds_total Time failed logins were held back before their 401."
        );
        let _ = writeln!(out, "# TYPE csel_auth_throttle_delay_seconds_total counter");
        let _ = writeln!(
            out,
            "csel_auth_throttle_delay_seconds_total {}",
            self.throttle_delay_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        out
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// Writes one family in the Prometheus text format: `csel_auth_<name>`, with one sample per
/// `(labels, value)`; `labels` is empty or `key="value"` pairs.
pub(crate) fn write_family(out: &mut String, name: &str, help: &str, kind: Kind, samples: &[(&str, u64)]) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP csel_auth_{name} {help}");
    let _ = writeln!(out, "# TYPE csel_auth_{name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "csel_auth_{name} {value}");
        } else {
            let _ = writeln!(out, "csel_auth_{name}{{{labels}}} {value}");
        }
    }
}

/// The series of logins: the bcrypt queue, the failed-login throttle, and the users the htpasswd
/// file in force disables.
pub(crate) fn render_logins(verifier: &Verifier, throttle: &LoginThrottle, disabled_users: usize) -> String {
    let mut out = String::new();
    let gauges = [
        (
            "bcrypt_queue_length",
            "Password checks waiting for a bcrypt place.",
            verifier.queue_length() as u64,
        ),
        (
            "bcrypt_running",
            "bcrypt computations running.",
            verifier.bcrypt_in_progress() as u64,
        ),
        (
            "login_throttle_entries",
            "Failed-login records kept (per user, per address, per both).",
            throttle.tracked_entries() as u64,
        ),
        (
            "login_throttle_bytes",
            "Memory the failed-login records take, about.",
            throttle.approximate_bytes() as u64,
        ),
        (
            "htpasswd_disabled_users",
            "Users of the htpasswd file in force who cannot log in (their line has an error).",
            disabled_users as u64,
        ),
    ];
    for (name, help, value) in gauges {
        write_family(&mut out, name, help, Kind::Gauge, &[("", value)]);
    }
    write_family(
        &mut out,
        "bcrypt_abandoned_total",
        "Password checks that left the bcrypt queue unchecked: every request waiting for them went away.",
        Kind::Counter,
        &[("", verifier.abandoned())],
    );
    let reasons: Vec<(String, u64)> = [Overload::Deadline, Overload::QueueFull]
        .into_iter()
        .map(|why| (format!("reason=\"{}\"", why.label()), verifier.overloaded(why)))
        .collect();
    let reasons: Vec<(&str, u64)> = reasons.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    write_family(
        &mut out,
        "bcrypt_rejected_total",
        "Logins refused without a bcrypt: the queue was full, or no place came free before the deadline.",
        Kind::Counter,
        &reasons,
    );
    let limits: Vec<(String, u64)> = LimitKind::ALL
        .into_iter()
        .map(|limit| (format!("limit=\"{}\"", limit.label()), verifier.limited(limit)))
        .collect();
    let limits: Vec<(&str, u64)> = limits.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    write_family(
        &mut out,
        "login_rate_limited_total",
        "Logins refused without checking the password: too many failed logins, by budget.",
        Kind::Counter,
        &limits,
    );
    write_family(
        &mut out,
        "login_long_names_total",
        "Logins refused for a user name longer than 256 bytes, before anything was stored.",
        Kind::Counter,
        &[("", verifier.long_names())],
    );
    out
}

/// The series of the LDAP directory (`[ldap]`).
pub(crate) fn render_ldap(stats: &crate::identity::ldap::LdapStats) -> String {
    let mut out = String::new();
    let gauges = [
        (
            "ldap_up",
            "1 while the LDAP directory answers, 0 during an outage.",
            u64::from(stats.up),
        ),
        (
            "ldap_cached_logins",
            "Confirmed LDAP logins in the cache.",
            stats.cached_logins as u64,
        ),
        (
            "ldap_logins_in_flight",
            "LDAP logins being asked of the directory.",
            stats.logins_in_flight as u64,
        ),
    ];
    for (name, help, value) in gauges {
        write_family(&mut out, name, help, Kind::Gauge, &[("", value)]);
    }
    let counters = [
        (
            "ldap_logins_total",
            "LDAP logins checked (cached or not).",
            stats.logins,
        ),
        (
            "ldap_cache_hits_total",
            "LDAP logins answered from the cache.",
            stats.cache_hits,
        ),
        (
            "ldap_shared_total",
            "LDAP logins answered by waiting for the same login already asked.",
            stats.shared,
        ),
        (
            "ldap_refused_total",
            "LDAP logins refused: wrong user name or password.",
            stats.refused,
        ),
        (
            "ldap_requests_total",
            "Operations sent to the directory (binds and searches).",
            stats.requests,
        ),
        (
            "ldap_errors_total",
            "Directory operations that failed (down, timeout, TLS, error answers).",
            stats.errors,
        ),
        (
            "ldap_outages_total",
            "Times the directory went from answering to not answering.",
            stats.outages,
        ),
    ];
    for (name, help, value) in counters {
        write_family(&mut out, name, help, Kind::Counter, &[("", value)]);
    }
    out
}

/// The series of the JWT issuers (`[[oidc]]`), one sample per issuer.
/// The requests csel-auth made to the registry's own address.
pub(crate) fn render_registry(stats: &crate::registry::RegistryStats) -> String {
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    write_family(
        &mut out,
        "registry_tag_checks_total",
        "HEADs of a manifest on the registry before a push that needs `overwrite` or `edit` alone, by result (error: no answer, or not 200/404; the push was refused with 503).",
        Kind::Counter,
        &[
            ("result=\"exists\"", load(&stats.tag_exists)),
            ("result=\"new\"", load(&stats.tag_new)),
            ("result=\"error\"", load(&stats.tag_errors)),
        ],
    );
    write_family(
        &mut out,
        "registry_catalog_fetches_total",
        "Walks of the registry's repository list (the rest of the catalog requests were answered from the cache), by result.",
        Kind::Counter,
        &[
            ("result=\"ok\"", load(&stats.catalog_fetches).saturating_sub(load(&stats.catalog_errors))),
            ("result=\"error\"", load(&stats.catalog_errors)),
        ],
    );
    out
}

pub(crate) fn render_oidc(stats: &crate::oidc::OidcStats) -> String {
    let mut out = String::new();
    write_family(
        &mut out,
        "oidc_cached_tokens",
        "Verified JWTs in the cache.",
        Kind::Gauge,
        &[("", stats.cached_tokens as u64)],
    );
    let labels: Vec<String> = stats
        .issuers
        .iter()
        .map(|i| format!("issuer=\"{}\"", escape_label(&i.issuer)))
        .collect();
    type Field = fn(&crate::oidc::IssuerStats) -> u64;
    let families: [(&str, &str, Kind, Field); 10] = [
        (
            "oidc_up",
            "1 while the issuer's keys are in hand, 0 otherwise.",
            Kind::Gauge,
            |i| u64::from(i.up),
        ),
        (
            "oidc_keys",
            "Keys in the issuer's key set in force.",
            Kind::Gauge,
            |i| i.keys as u64,
        ),
        (
            "oidc_key_set_age_seconds",
            "Age of the issuer's key set in force (0: none yet).",
            Kind::Gauge,
            |i| i.key_set_age.map_or(0, |age| age.as_secs()),
        ),
        (
            "oidc_fetches_total",
            "Fetches of the issuer's key set.",
            Kind::Counter,
            |i| i.fetches,
        ),
        (
            "oidc_fetch_errors_total",
            "Fetches of the issuer's key set that failed.",
            Kind::Counter,
            |i| i.fetch_errors,
        ),
        (
            "oidc_fetches_limited_total",
            "Early fetches (unknown kid) the rate limit held back.",
            Kind::Counter,
            |i| i.fetches_limited,
        ),
        (
            "oidc_verified_total",
            "JWTs whose signature and claims were checked and accepted.",
            Kind::Counter,
            |i| i.verified,
        ),
        (
            "oidc_cache_hits_total",
            "JWTs answered from the cache.",
            Kind::Counter,
            |i| i.cache_hits,
        ),
        (
            "oidc_refused_total",
            "JWTs refused (signature, claims, algorithm, key).",
            Kind::Counter,
            |i| i.refused,
        ),
        (
            "oidc_unavailable_total",
            "JWTs not checked: the issuer's keys could not be had.",
            Kind::Counter,
            |i| i.unavailable,
        ),
    ];
    for (name, help, kind, field) in families {
        let samples: Vec<(&str, u64)> = stats
            .issuers
            .iter()
            .zip(&labels)
            .map(|(issuer, label)| (label.as_str(), field(issuer)))
            .collect();
        write_family(&mut out, name, help, kind, &samples);
    }
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
