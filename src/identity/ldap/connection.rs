//! Connections to the directory: one shared connection bound as the service account for
//! searches, and a small pool of connections used only to bind as users.
//!
//! A user bind changes who the connection is, so it never happens on the search connection,
//! and a connection a user bound on is only ever used for further user binds. A connection
//! that fails is dropped; the next request opens a new one, so the service recovers by itself
//! when the directory is back. While the service connection cannot be opened, requests fail
//! at once for a short back-off instead of each waiting for the timeout.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, ResultEntry, Scope, SearchEntry, SearchOptions, SearchResult};
use native_tls::TlsConnector;

use super::health::Health;
use super::settings::LdapSettings;

/// After the service connection failed to open, requests fail without trying for this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Idle user-bind connections kept for the next logins.
const MAX_IDLE_BIND_CONNECTIONS: usize = 4;

/// Result codes of a user bind that mean "not this user with this password" (RFC 4511):
/// inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform.
const BIND_REFUSALS: &[u32] = &[48, 49, 50, 53];

/// Why the directory gave no usable answer; becomes `LdapError::Unavailable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Down(pub(crate) String);

/// Opens connections as the settings say: URL, StartTLS, trusted CAs, timeout.
pub(crate) struct Connector {
    url: String,
    starttls: bool,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(settings: &LdapSettings) -> Connector {
        Connector {
            url: settings.url.clone(),
            starttls: settings.starttls,
            tls: settings.tls.clone(),
            timeout: settings.timeout,
        }
    }

    /// A new connection (TCP, then StartTLS or TLS as configured), not yet bound.
    async fn open(&self, health: &Health) -> Result<Ldap, Down> {
        health.request();
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_connector(tls.clone());
        }
        match tokio::time::timeout(self.timeout, LdapConnAsync::with_settings(settings, &self.url)).await {
            Ok(Ok((connection, ldap))) => {
                let url = self.url.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection.drive().await {
                        tracing::debug!(%url, "LDAP connection closed: {e}");
                    }
                });
                Ok(ldap)
            }
            Ok(Err(ldap3::LdapError::Timeout { .. })) | Err(_) => {
                Err(Down(format!("no connection to {} within {:?}", self.url, self.timeout)))
            }
            Ok(Err(e)) => Err(Down(format!("cannot connect to {}: {e}", self.url))),
        }
    }
}

/// What a search found.
pub(crate) struct Found {
    pub(crate) entries: Vec<SearchEntry>,
    pub(crate) rc: u32,
}

/// The connection bound as the service account, shared by all searches.
pub(crate) struct ServiceLink {
    connector: Arc<Connector>,
    health: Arc<Health>,
    account: Option<(String, String)>,
    state: tokio::sync::Mutex<LinkState>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    /// The open connection and an id, so a failure discards that connection and not a newer one.
    open: Option<(u64, Ldap)>,
    /// When and why opening it last failed.
    failed: Option<(Instant, String)>,
}

impl ServiceLink {
    pub(crate) fn new(
        connector: Arc<Connector>,
        health: Arc<Health>,
        account: Option<(String, String)>,
    ) -> ServiceLink {
        ServiceLink {
            connector,
            health,
            account,
            state: tokio::sync::Mutex::new(LinkState::default()),
            next_id: AtomicU64::new(0),
        }
    }

    /// The shared connection (and whether it was already open), opened and bound if needed.
    /// One request opens it while the others wait for the outcome rather than each connecting.
    async fn connection(&self) -> Result<(u64, Ldap, bool), Down> {
        let mut state = self.state.lock().await;
        if let Some((id, ldap)) = &mut state.open {
            if !ldap.is_closed() {
                return Ok((*id, ldap.clone(), true));
            }
            state.open = None;
        }
        if let Some((at, why)) = &state.failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(Down(why.clone()));
            }
        }
        match self.open_bound().await {
            Ok(ldap) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                state.open = Some((id, ldap.clone()));
                state.failed = None;
                Ok((id, ldap, false))
            }
            Err(Down(why)) => {
                self.health.failed(&why);
                state.failed = Some((Instant::now(), why.clone()));
                Err(Down(why))
            }
        }
    }

    async fn open_bound(&self) -> Result<Ldap, Down> {
        let mut ldap = self.connector.open(&self.health).await?;
        let Some((dn, password)) = &self.account else {
            return Ok(ldap);
        };
        let timeout = self.connector.timeout;
        self.health.request();
        match tokio::time::timeout(timeout, ldap.with_timeout(timeout).simple_bind(dn, password)).await {
            Ok(Ok(result)) if result.rc == 0 => {
                self.health.answered();
                Ok(ldap)
            }
            Ok(Ok(result)) => Err(Down(format!(
                "the directory refused the service account {dn}: {} (check bind_dn and bind_password_file)",
                describe_result(result.rc, &result.text)
            ))),
            Ok(Err(e)) => Err(Down(format!("binding as the service account {dn}: {e}"))),
            Err(_) => Err(Down(format!(
                "binding as the service account {dn}: no answer within {timeout:?}"
            ))),
        }
    }

    /// Forgets the connection `id` (if it is still the current one) after it failed.
    async fn discard(&self, id: u64, why: &str, final_failure: bool) {
        let mut state = self.state.lock().await;
        if matches!(&state.open, Some((current, _)) if *current == id) {
            state.open = None;
        }
        if final_failure {
            state.failed = Some((Instant::now(), why.to_string()));
        }
    }

    /// Searches as the service account. A result code outside `accepted` is an error of the
    /// directory (a missing base, no access): the answer is unusable.
    pub(crate) async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[&str],
        size_limit: i32,
        accepted: &[u32],
    ) -> Result<Found, Down> {
        let timeout = self.connector.timeout;
        let mut retried = false;
        loop {
            let (id, mut ldap, reused) = self.connection().await?;
            self.health.request();
            let search = ldap
                .with_search_options(SearchOptions::new().sizelimit(size_limit))
                .with_timeout(timeout)
                .search(base, scope, filter, attributes.to_vec());
            let why = match tokio::time::timeout(timeout, search).await {
                Ok(Ok(SearchResult(entries, result))) if accepted.contains(&result.rc) => {
                    self.health.answered();
                    let entries = construct_entries(entries)?;
                    return Ok(Found { entries, rc: result.rc });
                }
                Ok(Ok(SearchResult(_, result))) => {
                    // No filter in the message: it holds the user name, and the message is logged
                    // once per distinct text.
                    let why = format!("searching {base}: {}", describe_result(result.rc, &result.text));
                    self.health.answered();
                    self.health.problem(&why);
                    return Err(Down(why));
                }
                // Refused before it was sent: nothing is wrong with the connection.
                Ok(Err(ldap3::LdapError::FilterParsing)) => {
                    let why = format!("searching {base}: the filter is not valid LDAP syntax");
                    self.health.problem(&why);
                    return Err(Down(why));
                }
                Ok(Err(e)) => format!("searching {base}: {e}"),
                Err(_) => format!("searching {base}: no answer within {timeout:?}"),
            };
            // A kept connection may have been closed by the server since its last use:
            // one more try on a fresh one before calling the directory down.
            let retry = reused && !retried;
            self.discard(id, &why, !retry).await;
            if !retry {
                self.health.failed(&why);
                return Err(Down(why));
            }
            retried = true;
        }
    }
}

/// The outcome of binding as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    Accepted,
    Refused,
}

/// Connections used only for user binds, kept open between logins.
pub(crate) struct BindPool {
    connector: Arc<Connector>,
    health: Arc<Health>,
    idle: Mutex<Vec<Ldap>>,
}

impl BindPool {
    pub(crate) fn new(connector: Arc<Connector>, health: Arc<Health>) -> BindPool {
        BindPool {
            connector,
            health,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Asks the directory whether `password` is the password of the entry `dn`.
    pub(crate) async fn bind(&self, dn: &str, password: &str) -> Result<Bind, Down> {
        let timeout = self.connector.timeout;
        let mut retried = false;
        loop {
            let (mut ldap, reused) = match self.take_idle() {
                Some(ldap) => (ldap, true),
                None => match self.connector.open(&self.health).await {
                    Ok(ldap) => (ldap, false),
                    Err(Down(why)) => {
                        self.health.failed(&why);
                        return Err(Down(why));
                    }
                },
            };
            self.health.request();
            let why = match tokio::time::timeout(timeout, ldap.with_timeout(timeout).simple_bind(dn, password)).await {
                Ok(Ok(result)) if result.rc == 0 => {
                    self.health.answered();
                    self.give_back(ldap);
                    return Ok(Bind::Accepted);
                }
                Ok(Ok(result)) if BIND_REFUSALS.contains(&result.rc) => {
                    self.health.answered();
                    tracing::debug!(dn, "bind refused: {}", describe_result(result.rc, &result.text));
                    self.give_back(ldap);
                    return Ok(Bind::Refused);
                }
                Ok(Ok(result)) => {
                    let why = format!("binding as {dn}: {}", describe_result(result.rc, &result.text));
                    self.health.failed(&why);
                    return Err(Down(why));
                }
                Ok(Err(e)) => format!("binding as {dn}: {e}"),
                Err(_) => format!("binding as {dn}: no answer within {timeout:?}"),
            };
            if !reused || retried {
                self.health.failed(&why);
                return Err(Down(why));
            }
            retried = true;
        }
    }

    fn take_idle(&self) -> Option<Ldap> {
        let mut idle = lock(&self.idle);
        while let Some(mut ldap) = idle.pop() {
            if !ldap.is_closed() {
                return Some(ldap);
            }
        }
        None
    }

    fn give_back(&self, ldap: Ldap) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_BIND_CONNECTIONS {
            idle.push(ldap);
        }
    }
}

/// ldap3 panics on an entry it cannot parse (a DN that is not UTF-8): a broken or hostile
/// directory must not take a request down with a panic.
fn construct_entries(entries: Vec<ResultEntry>) -> Result<Vec<SearchEntry>, Down> {
    catch_unwind(AssertUnwindSafe(|| {
        entries.into_iter().map(SearchEntry::construct).collect()
    }))
    .map_err(|_| Down("the directory sent an entry that cannot be parsed".to_string()))
}

/// `invalidCredentials (49): text`, for logs and errors.
pub(crate) fn describe_result(rc: u32, text: &str) -> String {
    let name = match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "result code",
    };
    if text.is_empty() {
        format!("{name} ({rc})")
    } else {
        format!("{name} ({rc}): {text}")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
