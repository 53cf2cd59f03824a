//! Users and groups from an LDAP directory (OpenLDAP, Active Directory, ...), configured by
//! the `[ldap]` section of the config file.
//!
//! A login is checked the way directories expect it: the service account searches the user's
//! entry, then another connection binds as that entry's DN with the password given. Passwords
//! are never compared here, and an empty password fails without asking the directory (an
//! "unauthenticated bind" with a DN and no password succeeds on many servers). User input is
//! escaped before it goes into a filter.
//!
//! Groups come from a search under `group_base` (`group_filter`, `{dn}` being the member) or
//! from an attribute of the user entry (`member_of_attribute`), and with `nested_groups` also
//! the groups those groups are in.
//!
//! Confirmed logins are cached for `cache_ttl` (see `cache`), so a repeated request costs no
//! round trip. When the directory is down or slow, cached logins keep working until their TTL
//! ends and every other login is [`LdapError::Unavailable`]: nothing succeeds that the directory
//! did not confirm.
//!
//! Wiring: build one [`Directory`] from [`LdapSettings::from_section`] and share it (`Arc`);
//! [`Directory::login`] checks Basic credentials (401 for [`LdapError::WrongCredentials`], 503
//! for [`LdapError::Unavailable`]), [`Directory::groups_of`] serves `explain`,
//! [`Directory::clear`] is for SIGHUP and [`Directory::stats`] for /metrics. Calls need a
//! Tokio runtime.

mod cache;
mod connection;
mod escape;
mod groups;
mod health;
mod settings;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ldap3::{Scope, SearchEntry};
use tokio::sync::OnceCell;

use cache::{CacheKey, LoginCache};
use connection::{Bind, BindPool, Connector, Down, ServiceLink};
use health::Health;

pub use escape::FilterTemplate;
pub use groups::{MAX_GROUPS, MAX_NESTING};
pub use health::LdapStats;
pub use settings::{
    GroupSource, LdapConfigError, LdapSettings, DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_TTL, DEFAULT_GROUP_FILTER,
    DEFAULT_GROUP_NAME_ATTRIBUTE, DEFAULT_TIMEOUT, DEFAULT_USER_FILTER,
};

/// Longer names are refused without asking the directory.
const MAX_USER_BYTES: usize = 256;
/// Longer passwords are refused without asking the directory.
const MAX_PASSWORD_BYTES: usize = 1024;

/// A login the directory confirmed. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapLogin {
    user: Arc<str>,
    dn: Arc<str>,
    groups: Arc<[String]>,
}

impl LdapLogin {
    pub(crate) fn new(user: &str, dn: &str, groups: Vec<String>) -> LdapLogin {
        LdapLogin {
            user: user.into(),
            dn: dn.into(),
            groups: groups.into(),
        }
    }

    /// The user's name as the directory spells it: the entry's value of the attribute that
    /// `user_filter` compares `{user}` with (`uid` in `(uid={user})`). LDAP matching ignores
    /// case and extra spaces, so `Alice ` logs in as `alice`; use this name, not the typed one,
    /// for the rules. It is the typed name when the filter has no such attribute.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The DN of the user's entry.
    pub fn dn(&self) -> &str {
        &self.dn
    }

    /// The names of the user's groups (nested ones included), sorted, without duplicates.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }
}

impl fmt::Debug for LdapLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapLogin")
            .field("user", &self.user)
            .field("dn", &self.dn)
            .field("groups", &self.groups)
            .finish()
    }
}

/// Why a login or lookup did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LdapError {
    /// Unknown user, wrong or empty password, or a name that matches several entries: 401.
    #[error("wrong user name or password")]
    WrongCredentials,
    /// From `groups_of` only: no entry, or several, match the name.
    #[error("no single entry in the directory matches this user name")]
    UnknownUser,
    /// The directory could not say (down, timeout, TLS failure, refused service account, a
    /// search it answered with an error): 503, and never a success.
    #[error("the LDAP directory is unavailable: {0}")]
    Unavailable(String),
}

impl From<Down> for LdapError {
    fn from(down: Down) -> LdapError {
        LdapError::Unavailable(down.0)
    }
}

/// The directory, its connections, and the cache of confirmed logins. Share it via `Arc`.
pub struct Directory {
    settings: LdapSettings,
    cache: LoginCache,
    health: Arc<Health>,
    service: ServiceLink,
    binds: BindPool,
    /// Logins being asked of the directory, with how many callers wait for each.
    in_flight: Mutex<HashMap<CacheKey, (Arc<LoginCell>, usize)>>,
    /// Attributes read from a user entry: the name attribute and, if groups come from it,
    /// the membership attribute.
    user_attributes: Vec<String>,
}

impl Directory {
    /// Opens no connection: the first login does (use [`Directory::check`] to find out early).
    pub fn new(settings: LdapSettings) -> Directory {
        let connector = Arc::new(Connector::new(&settings));
        let mut user_attributes: Vec<String> = settings
            .user_filter
            .equality_attribute()
            .map(str::to_string)
            .into_iter()
            .collect();
        if let GroupSource::MemberOf { attribute } = &settings.groups {
            user_attributes.push(attribute.clone());
        }
        if user_attributes.is_empty() {
            // "1.1": no attributes, only the DN (RFC 4511).
            user_attributes.push("1.1".to_string());
        }
        let health = Arc::new(Health::new(&settings.url));
        Directory {
            cache: LoginCache::new(settings.cache_capacity, settings.cache_ttl),
            service: ServiceLink::new(
                Arc::clone(&connector),
                Arc::clone(&health),
                settings.service_account.clone(),
            ),
            binds: BindPool::new(connector, Arc::clone(&health)),
            in_flight: Mutex::new(HashMap::new()),
            health,
            user_attributes,
            settings,
        }
    }

    /// Checks `password` for `user` and reads the user's groups; a confirmed login is served
    /// from the cache for `cache_ttl`.
    pub async fn login(&self, user: &str, password: &str) -> Result<LdapLogin, LdapError> {
        Health::count(&self.health.logins);
        if user.is_empty() || password.is_empty() || user.len() > MAX_USER_BYTES || password.len() > MAX_PASSWORD_BYTES
        {
            return Err(self.refuse());
        }
        let key = self.cache.key(user, password);
        if let Some(login) = self.cache.get(&key) {
            Health::count(&self.health.cache_hits);
            return Ok(login);
        }
        // Identical logins arriving together (the parallel requests of one `docker pull`) ask
        // the directory once. If the one asking goes away, a waiting one asks instead.
        let participant = self.join_in_flight(key);
        participant
            .cell
            .get_or_init(|| self.ask_directory(user, password, key))
            .await
            .clone()
    }

    async fn ask_directory(&self, user: &str, password: &str, key: CacheKey) -> Result<LdapLogin, LdapError> {
        let confirmed = Instant::now();
        let generation = self.cache.generation();
        let Some(entry) = self.find_user(user).await? else {
            return Err(self.refuse());
        };
        match self.binds.bind(&entry.dn, password).await? {
            Bind::Accepted => {}
            Bind::Refused => return Err(self.refuse()),
        }
        let groups = groups::groups_of(&self.service, &self.settings, &entry).await?;
        let login = LdapLogin::new(&self.name_in_directory(user, &entry), &entry.dn, groups);
        self.cache.insert(key, login.clone(), confirmed, generation);
        Ok(login)
    }

    fn join_in_flight(&self, key: CacheKey) -> InFlight<'_> {
        let mut in_flight = lock(&self.in_flight);
        let (cell, participants) = in_flight.entry(key).or_insert_with(|| (Arc::new(OnceCell::new()), 0));
        if *participants > 0 {
            Health::count(&self.health.shared);
        }
        *participants += 1;
        InFlight {
            directory: self,
            key,
            cell: Arc::clone(cell),
        }
    }

    /// The groups of `user`, looked up with the service account only (no password, no cache):
    /// for `explain --user`.
    pub async fn groups_of(&self, user: &str) -> Result<Vec<String>, LdapError> {
        Health::count(&self.health.logins);
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(LdapError::UnknownUser);
        }
        let Some(entry) = self.find_user(user).await? else {
            return Err(LdapError::UnknownUser);
        };
        Ok(groups::groups_of(&self.service, &self.settings, &entry).await?)
    }

    /// Connects, binds as the service account and reads the user and group bases: for start-up
    /// and `check --config`.
    pub async fn check(&self) -> Result<(), LdapError> {
        let mut bases = vec![self.settings.user_base.as_str()];
        if let GroupSource::Search { base, .. } = &self.settings.groups {
            bases.push(base);
        }
        for base in bases {
            self.service
                .search(base, Scope::Base, "(objectClass=*)", &["1.1"], 1, &[0])
                .await?;
        }
        Ok(())
    }

    /// Forgets every cached login (SIGHUP): the next request of each user asks the directory.
    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn stats(&self) -> LdapStats {
        self.health.snapshot(self.cache.len(), lock(&self.in_flight).len())
    }

    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    fn refuse(&self) -> LdapError {
        Health::count(&self.health.refused);
        LdapError::WrongCredentials
    }

    /// The one entry `user_filter` finds for `user`; `None` for none or several.
    async fn find_user(&self, user: &str) -> Result<Option<SearchEntry>, Down> {
        let filter = self.settings.user_filter.fill(user);
        let attributes: Vec<&str> = self.user_attributes.iter().map(String::as_str).collect();
        // Two entries are enough to tell that the name is ambiguous.
        let found = self
            .service
            .search(
                &self.settings.user_base,
                Scope::Subtree,
                &filter,
                &attributes,
                2,
                &[0, 4],
            )
            .await?;
        let mut entries = found.entries;
        match (entries.len(), found.rc) {
            (1, 0) => {
                let entry = entries.swap_remove(0);
                // An empty DN would make an anonymous bind.
                Ok(Some(entry).filter(|entry| !entry.dn.trim().is_empty()))
            }
            (0, 0) => Ok(None),
            _ => {
                tracing::warn!(
                    "LDAP: the user name {user:?} matches several entries under {} ({filter}): login refused",
                    self.settings.user_base
                );
                Ok(None)
            }
        }
    }

    fn name_in_directory(&self, typed: &str, entry: &SearchEntry) -> String {
        let Some(attribute) = self.settings.user_filter.equality_attribute() else {
            return typed.to_string();
        };
        let mut names = groups::values(entry, attribute);
        let first = names.next();
        let same = first
            .into_iter()
            .chain(names)
            .find(|name| name.eq_ignore_ascii_case(typed));
        same.or(first).map_or_else(|| typed.to_string(), String::clone)
    }
}

type LoginCell = OnceCell<Result<LdapLogin, LdapError>>;

/// One caller's share in a login being asked of the directory; the last to leave, done or
/// cancelled, removes it, so abandoned logins do not pile up.
struct InFlight<'a> {
    directory: &'a Directory,
    key: CacheKey,
    cell: Arc<LoginCell>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.directory.in_flight);
        if let Entry::Occupied(mut entry) = in_flight.entry(self.key) {
            let participants = &mut entry.get_mut().1;
            *participants = participants.saturating_sub(1);
            if *participants == 0 {
                entry.remove();
            }
        }
    }
}

/// A panic elsewhere must not turn every later login into a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LdapSection;

    #[test]
    fn the_directory_and_its_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Directory>();
        send_sync::<LdapLogin>();
        let section = LdapSection {
            url: "ldap://127.0.0.1:9".into(),
            user_base: "dc=example,dc=org".into(),
            ..LdapSection::default()
        };
        let directory = Directory::new(LdapSettings::from_section(&section).unwrap());
        send(&directory.login("alice", "pw"));
        send(&directory.groups_of("alice"));
        send(&directory.check());
    }

    #[tokio::test]
    async fn bad_input_is_refused_without_asking_the_directory() {
        // Port 9 (discard) on loopback: nothing listens, so any attempt would be Unavailable.
        let section = LdapSection {
            url: "ldap://127.0.0.1:9".into(),
            user_base: "dc=example,dc=org".into(),
            ..LdapSection::default()
        };
        let directory = Directory::new(LdapSettings::from_section(&section).unwrap());
        let long = "x".repeat(MAX_USER_BYTES + 1);
        let long_password = "x".repeat(MAX_PASSWORD_BYTES + 1);
        for (user, password) in [
            ("", "pw"),
            ("alice", ""),
            (long.as_str(), "pw"),
            ("alice", long_password.as_str()),
        ] {
            assert_eq!(directory.login(user, password).await, Err(LdapError::WrongCredentials));
        }
        assert_eq!(directory.groups_of("").await, Err(LdapError::UnknownUser));
        let stats = directory.stats();
        assert_eq!((stats.requests, stats.refused, stats.errors), (0, 4, 0), "{stats:?}");
        assert!(matches!(
            directory.login("alice", "pw").await,
            Err(LdapError::Unavailable(_))
        ));
    }
}
