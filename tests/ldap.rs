//! The LDAP identity source against a real OpenLDAP server (Debian's slapd, started per test on
//! 127.0.0.1 by tests/kit/slapd.rs): logins, groups, injection, caching, TLS, outages.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use csel_auth::config::ConfigFile;
use csel_auth::ldap::{Directory, LdapError, LdapSettings, MAX_NESTING};

use crate::kit::slapd::{Slapd, SERVICE_DN, SERVICE_PASSWORD};

mod service;
use crate::kit::wait::eventually;

pub(crate) const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub(crate) const GROUPS: &str = "ou=groups,dc=example,dc=org";
const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
/// Groups chained one inside the next, deeper than the nesting limit.
const CHAIN: usize = MAX_NESTING + 4;

/// Users and groups, in an order the memberOf overlay can follow (members before groups).
fn data() -> String {
    let mut ldif = String::new();
    let person = |uid_line: &str, rdn: &str, password: &str| {
        format!(
            "dn: {rdn},{PEOPLE}\nobjectClass: inetOrgPerson\n{uid_line}\ncn: {rdn}\nsn: Test\nuserPassword: {password}\n\n"
        )
    };
    for (uid, password) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
        ("dave", "dave-pw"),
        ("erin", "erin-pw"),
        ("frank", "frank-pw"),
    ] {
        ldif += &person(&format!("uid: {uid}"), &format!("uid={uid}"), password);
    }
    // Names that are filter syntax, and one that is not ASCII ("zoë", base64 in LDIF).
    ldif += &person("uid: star*name", "cn=Star", "star-pw");
    ldif += &person("uid: paren(x)", "cn=Paren", "paren-pw");
    ldif += &person("uid: back\\slash", "cn=Backslash", "backslash-pw");
    ldif += &person("uid:: em/Dqw==", "cn=Zoe", "zoe-pw");
    // Two entries with the same uid.
    ldif += &person("uid: twin", "cn=Twin One", "twin-one-pw");
    ldif += &person("uid: twin", "cn=Twin Two", "twin-two-pw");

    let group = |cn: &str, members: &[String]| {
        let mut entry = format!("dn: cn={cn},{GROUPS}\nobjectClass: groupOfNames\ncn: {cn}\n");
        for member in members {
            entry += &format!("member: {member}\n");
        }
        entry + "\n"
    };
    let user = |uid: &str| format!("uid={uid},{PEOPLE}");
    let grp = |cn: &str| format!("cn={cn},{GROUPS}");
    // alice: devs, inside platform, inside engineering (two levels of nesting).
    // frank keeps devs non-empty when alice leaves (groupOfNames needs a member).
    ldif += &group("devs", &[user("alice"), user("frank")]);
    ldif += &group("platform", &[grp("devs")]);
    ldif += &group("engineering", &[grp("platform")]);
    // bob: a groupOfUniqueNames.
    ldif += &format!(
        "dn: cn=ops,{GROUPS}\nobjectClass: groupOfUniqueNames\ncn: ops\nuniqueMember: {}\n\n",
        user("bob")
    );
    // carol: loop-a and loop-b contain each other (the second link is added by `close_loop`).
    ldif += &group("loop-a", &[user("carol")]);
    ldif += &group("loop-b", &[grp("loop-a")]);
    // dave: a chain of groups deeper than the nesting limit.
    ldif += &group("chain-0", &[user("dave")]);
    for i in 1..CHAIN {
        ldif += &group(&format!("chain-{i}"), &[grp(&format!("chain-{}", i - 1))]);
    }
    // erin: a group whose DN is filter syntax, nested in another.
    ldif += &group("team (blue)", &[user("erin")]);
    ldif += &group("blue-parent", &[grp("team (blue)")]);
    ldif
}

pub(crate) fn start() -> Slapd {
    let slapd = Slapd::start(&data()).unwrap();
    slapd
        .modify(&format!(
            "dn: cn=loop-a,{GROUPS}\nchangetype: modify\nadd: member\nmember: cn=loop-b,{GROUPS}\n"
        ))
        .unwrap();
    slapd
}

/// A Directory built the way the service builds it: a config file with an `[ldap]` section
/// (`overrides` replace or add keys; values are TOML), read by `ConfigFile::load`.
fn directory(slapd: &Slapd, overrides: &[(&str, &str)]) -> Directory {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("ldap.password");
    std::fs::write(&password, format!("{SERVICE_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut keys: Vec<(String, String)> = vec![
        ("url".into(), format!("{:?}", slapd.url())),
        ("bind_dn".into(), format!("{SERVICE_DN:?}")),
        ("bind_password_file".into(), "\"ldap.password\"".into()),
        ("user_base".into(), format!("{PEOPLE:?}")),
        ("group_base".into(), format!("{GROUPS:?}")),
        ("cache_ttl".into(), "\"5m\"".into()),
        ("timeout".into(), "\"3s\"".into()),
    ];
    for (key, value) in overrides {
        keys.retain(|(k, _)| k != key);
        keys.push((key.to_string(), value.to_string()));
    }
    let mut text = "[ldap]\n".to_string();
    for (key, value) in keys {
        text += &format!("{key} = {value}\n");
    }
    let path = dir.path().join("csel-auth.toml");
    std::fs::write(&path, &text).unwrap();
    let config = ConfigFile::load(&path).unwrap();
    let section = config.ldap.unwrap();
    let settings = LdapSettings::from_section(&section).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Directory::new(settings)
}

fn quoted(value: &str) -> String {
    format!("{value:?}")
}

async fn groups(directory: &Directory, user: &str, password: &str) -> Vec<String> {
    match directory.login(user, password).await {
        Ok(login) => login.groups().to_vec(),
        Err(e) => panic!("{user} cannot log in: {e}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

fn is_unavailable(result: &Result<impl std::fmt::Debug, LdapError>) -> bool {
    matches!(result, Err(LdapError::Unavailable(_)))
}

#[tokio::test]
async fn login_by_uid_gives_the_dn_the_name_and_the_groups() {
    let slapd = start();
    let directory = directory(&slapd, &[]);
    let login = directory.login("alice", "alice-pw").await.unwrap();
    assert_eq!(login.dn(), ALICE_DN);
    assert_eq!(login.user(), "alice");
    // devs by `member`, platform and engineering through two levels of nesting.
    assert_eq!(login.groups(), names(&["devs", "engineering", "platform"]));
    // `uniqueMember`.
    assert_eq!(groups(&directory, "bob", "bob-pw").await, names(&["ops"]));
    // The directory matches names without regard to case: the name to use is its own.
    let login = directory.login("ALICE", "alice-pw").await.unwrap();
    assert_eq!(login.user(), "alice");
    assert_eq!(login.dn(), ALICE_DN);
    let stats = directory.stats();
    assert!(stats.up);
    assert_eq!((stats.logins, stats.refused, stats.errors), (3, 0, 0), "{stats:?}");
}

#[tokio::test]
async fn wrong_password_unknown_user_and_empty_password_are_refused() {
    let slapd = start();
    let directory = directory(&slapd, &[]);
    assert_eq!(
        directory.login("alice", "wrong").await,
        Err(LdapError::WrongCredentials)
    );
    assert_eq!(
        directory.login("nobody", "alice-pw").await,
        Err(LdapError::WrongCredentials)
    );
    assert_eq!(directory.login("", "alice-pw").await, Err(LdapError::WrongCredentials));
    // This directory, like many, lets a DN with an empty password bind (as anonymous): only
    // the client can refuse it, and it must do so without asking.
    assert!(
        slapd.accepts_bind(ALICE_DN, "").unwrap(),
        "the fixture accepts unauthenticated binds"
    );
    let requests = directory.stats().requests;
    assert_eq!(directory.login("alice", "").await, Err(LdapError::WrongCredentials));
    assert_eq!(directory.stats().requests, requests, "an empty password asks nothing");
    assert_eq!(directory.stats().refused, 4);
    assert_eq!(directory.stats().cached_logins, 0, "failures are not cached");
}

#[tokio::test]
async fn filter_syntax_in_the_user_name_logs_in_no_one() {
    let slapd = start();
    for filter in ["(uid={user})", "(&(objectClass=inetOrgPerson)(uid={user}))"] {
        let directory = directory(&slapd, &[("user_filter", &quoted(filter))]);
        let mut not_refused = Vec::new();
        for hostile in [
            "*",
            "al*",
            "*lice",
            "alice)(uid=*",
            "alice)(|(uid=*",
            "*)(uid=alice",
            "ali\\63e",
            "alice\\00",
            "alice\0",
            "\\2a",
        ] {
            match directory.login(hostile, "alice-pw").await {
                Err(LdapError::WrongCredentials) => {}
                other => not_refused.push(format!("{hostile:?}: {other:?}")),
            }
        }
        assert!(
            not_refused.is_empty(),
            "not refused with alice's password, filter {filter}:\n{}",
            not_refused.join("\n")
        );
        // Names that are filter syntax still log in as themselves.
        for (user, password) in [
            ("star*name", "star-pw"),
            ("paren(x)", "paren-pw"),
            ("back\\slash", "backslash-pw"),
            ("zoë", "zoe-pw"),
        ] {
            let login = directory.login(user, password).await;
            assert_eq!(login.map(|l| l.user().to_string()), Ok(user.to_string()), "{filter}");
        }
        assert_eq!(directory.stats().errors, 0, "every filter was valid");
    }
}

#[tokio::test]
async fn a_name_that_matches_two_entries_is_refused() {
    let slapd = start();
    let directory = directory(&slapd, &[]);
    assert_eq!(
        directory.login("twin", "twin-one-pw").await,
        Err(LdapError::WrongCredentials)
    );
    assert_eq!(
        directory.login("twin", "twin-two-pw").await,
        Err(LdapError::WrongCredentials)
    );
    assert_eq!(directory.groups_of("twin").await, Err(LdapError::UnknownUser));
}

#[tokio::test]
async fn nested_groups_are_followed_depth_limited_and_cycle_safe_by_search_and_by_member_of() {
    let slapd = start();
    let chain: Vec<String> = (0..=MAX_NESTING).map(|i| format!("chain-{i}")).collect();
    let mut chain_names: Vec<&str> = chain.iter().map(String::as_str).collect();
    chain_names.sort();
    for member_of in [false, true] {
        let mut overrides = vec![];
        if member_of {
            overrides.push(("member_of_attribute", "\"memberOf\""));
        }
        let nested = directory(&slapd, &overrides);
        let mode = if member_of { "memberOf" } else { "group_filter" };
        assert_eq!(
            groups(&nested, "alice", "alice-pw").await,
            names(&["devs", "engineering", "platform"]),
            "{mode}"
        );
        assert_eq!(
            groups(&nested, "carol", "carol-pw").await,
            names(&["loop-a", "loop-b"]),
            "{mode}"
        );
        assert_eq!(
            groups(&nested, "dave", "dave-pw").await,
            names(&chain_names),
            "{mode}: the user's group and {MAX_NESTING} levels above it"
        );
        // A group DN with parentheses is escaped when it is looked up as a member.
        assert_eq!(
            groups(&nested, "erin", "erin-pw").await,
            names(&["blue-parent", "team (blue)"]),
            "{mode}"
        );

        overrides.push(("nested_groups", "false"));
        let flat = directory(&slapd, &overrides);
        assert_eq!(groups(&flat, "alice", "alice-pw").await, names(&["devs"]), "{mode}");
        assert_eq!(groups(&flat, "dave", "dave-pw").await, names(&["chain-0"]), "{mode}");
        assert_eq!(groups(&flat, "carol", "carol-pw").await, names(&["loop-a"]), "{mode}");
    }
}

#[tokio::test]
async fn without_a_group_source_a_login_has_no_groups() {
    let slapd = start();
    let text = format!(
        "[ldap]\nurl = {:?}\nbind_dn = {SERVICE_DN:?}\nbind_password_file = \"pw\"\nuser_base = {PEOPLE:?}\n",
        slapd.url()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), SERVICE_PASSWORD).unwrap();
    std::fs::set_permissions(dir.path().join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    let section = ConfigFile::load(&dir.path().join("c.toml")).unwrap().ldap.unwrap();
    let directory = Directory::new(LdapSettings::from_section(&section).unwrap());
    let login = directory.login("alice", "alice-pw").await.unwrap();
    assert!(login.groups().is_empty(), "{login:?}");
}

#[tokio::test]
async fn a_removed_membership_ends_after_the_ttl_and_at_once_after_clear() {
    let slapd = start();
    let ttl = Duration::from_secs(2);
    let directory = directory(&slapd, &[("cache_ttl", "\"2s\"")]);
    let first = Instant::now();
    assert!(groups(&directory, "alice", "alice-pw")
        .await
        .contains(&"devs".to_string()));
    slapd
        .modify(&format!(
            "dn: cn=devs,{GROUPS}\nchangetype: modify\ndelete: member\nmember: {ALICE_DN}\n"
        ))
        .unwrap();
    // Served from the cache: no round trip, the old groups.
    let requests = directory.stats().requests;
    assert!(groups(&directory, "alice", "alice-pw")
        .await
        .contains(&"devs".to_string()));
    assert_eq!(directory.stats().requests, requests, "a cached login asks nothing");
    assert!(
        first.elapsed() < ttl,
        "the steps above took longer than the TTL: the check is void"
    );

    let groups_now = eventually(
        ttl + Duration::from_secs(10),
        "alice's cached groups to expire",
        || async {
            let now = groups(&directory, "alice", "alice-pw").await;
            (!now.contains(&"devs".to_string())).then_some(now)
        },
    )
    .await;
    assert!(first.elapsed() >= ttl, "the cache held the login for its TTL");
    assert!(
        groups_now.is_empty(),
        "devs and the groups around it are gone: {groups_now:?}"
    );

    // Back into the group: the cache hides it until clear().
    slapd
        .modify(&format!(
            "dn: cn=devs,{GROUPS}\nchangetype: modify\nadd: member\nmember: {ALICE_DN}\n"
        ))
        .unwrap();
    directory.clear();
    assert_eq!(directory.stats().cached_logins, 0);
    assert!(groups(&directory, "alice", "alice-pw")
        .await
        .contains(&"devs".to_string()));
}

#[tokio::test]
async fn a_changed_password_ends_the_cached_login_after_the_ttl() {
    let slapd = start();
    let ttl = Duration::from_secs(2);
    let directory = directory(&slapd, &[("cache_ttl", "\"2s\"")]);
    let first = Instant::now();
    directory.login("alice", "alice-pw").await.unwrap();
    slapd
        .modify(&format!(
            "dn: {ALICE_DN}\nchangetype: modify\nreplace: userPassword\nuserPassword: alice-new\n"
        ))
        .unwrap();
    assert!(directory.login("alice", "alice-pw").await.is_ok(), "cached");
    assert!(
        first.elapsed() < ttl,
        "the steps above took longer than the TTL: the check is void"
    );
    assert!(
        directory.login("alice", "alice-new").await.is_ok(),
        "the new password works at once"
    );
    eventually(
        ttl + Duration::from_secs(10),
        "the old password to stop working",
        || async { (directory.login("alice", "alice-pw").await == Err(LdapError::WrongCredentials)).then_some(()) },
    )
    .await;
    assert!(first.elapsed() >= ttl);
}

#[tokio::test]
async fn identical_logins_arriving_together_ask_the_directory_once() {
    let slapd = start();
    let single = directory(&slapd, &[]);
    single.login("alice", "alice-pw").await.unwrap();
    let one_login = single.stats().requests;

    let directory = std::sync::Arc::new(directory(&slapd, &[]));
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let directory = std::sync::Arc::clone(&directory);
        logins.spawn(async move { directory.login("alice", "alice-pw").await });
    }
    while let Some(login) = logins.join_next().await {
        assert_eq!(login.unwrap().map(|l| l.groups().len()), Ok(3));
    }
    let stats = directory.stats();
    assert_eq!(stats.requests, one_login, "{stats:?}");
    assert_eq!(stats.shared + stats.cache_hits, 19, "{stats:?}");
    assert_eq!(stats.logins_in_flight, 0, "{stats:?}");
}

#[tokio::test]
async fn a_waiting_login_takes_over_when_the_one_asking_goes_away() {
    let slapd = start();
    let directory = std::sync::Arc::new(directory(&slapd, &[]));
    // Frozen: the first login waits for an answer while the second joins it.
    slapd.pause().unwrap();
    let login = |directory: &std::sync::Arc<Directory>| {
        let directory = std::sync::Arc::clone(directory);
        tokio::spawn(async move { directory.login("alice", "alice-pw").await })
    };
    let first = login(&directory);
    eventually(Duration::from_secs(10), "the first login to be under way", || async {
        (directory.stats().logins_in_flight == 1).then_some(())
    })
    .await;
    let second = login(&directory);
    eventually(
        Duration::from_secs(10),
        "the second login to join the first",
        || async { (directory.stats().shared == 1).then_some(()) },
    )
    .await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    slapd.resume().unwrap();
    let second = second.await.unwrap();
    assert_eq!(second.map(|l| l.user().to_string()), Ok("alice".to_string()));
    assert_eq!(directory.stats().logins_in_flight, 0);

    // Abandoned alone: nothing is left behind.
    slapd.pause().unwrap();
    let bob = {
        let directory = std::sync::Arc::clone(&directory);
        tokio::spawn(async move { directory.login("bob", "bob-pw").await })
    };
    eventually(Duration::from_secs(10), "bob's login to be under way", || async {
        (directory.stats().logins_in_flight == 1).then_some(())
    })
    .await;
    bob.abort();
    assert!(bob.await.unwrap_err().is_cancelled());
    assert_eq!(directory.stats().logins_in_flight, 0);
    slapd.resume().unwrap();
}

#[tokio::test]
async fn starttls_and_ldaps_trust_the_configured_ca_only() {
    let slapd = start();
    let ca = quoted(&slapd.ca_file().display().to_string());
    let other_ca = quoted(&slapd.other_ca_file().display().to_string());
    let ldaps = quoted(&slapd.ldaps_url());

    let directory_ldaps = directory(&slapd, &[("url", &ldaps), ("ca_file", &ca)]);
    assert_eq!(
        groups(&directory_ldaps, "alice", "alice-pw").await,
        names(&["devs", "engineering", "platform"])
    );
    let starttls = directory(&slapd, &[("starttls", "true"), ("ca_file", &ca)]);
    assert!(starttls.login("bob", "bob-pw").await.is_ok());
    let log = slapd.log();
    assert!(log.contains("STARTTLS"), "StartTLS was used");
    assert!(log.matches("TLS established").count() >= 2, "both connections used TLS");

    for (what, overrides) in [
        (
            "ldaps, another CA",
            vec![("url", ldaps.as_str()), ("ca_file", other_ca.as_str())],
        ),
        ("ldaps, system CAs", vec![("url", ldaps.as_str())]),
        (
            "StartTLS, another CA",
            vec![("starttls", "true"), ("ca_file", other_ca.as_str())],
        ),
    ] {
        let untrusting = directory(&slapd, &overrides);
        let result = untrusting.login("alice", "alice-pw").await;
        assert!(is_unavailable(&result), "{what}: {result:?}");
        assert!(!untrusting.stats().up, "{what}");
    }
}

/// Log lines written while the guard lives (on this thread, which runs the whole test).
struct CapturedLog {
    lines: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLog {
    fn start() -> CapturedLog {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .finish();
        CapturedLog {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        String::from_utf8_lossy(&lines).matches(needle).count()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap()).into_owned()
    }
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stopped_directory_lets_only_cached_logins_pass_and_recovery_needs_no_new_directory() {
    let log = CapturedLog::start();
    let mut slapd = start();
    let directory = directory(&slapd, &[]);
    directory.login("alice", "alice-pw").await.unwrap();

    slapd.stop();
    let alice = directory.login("alice", "alice-pw").await;
    assert_eq!(alice.map(|l| l.groups().len()), Ok(3), "cached: still passes");
    for (user, password) in [
        ("bob", "bob-pw"),
        ("alice", "wrong"),
        ("nobody", "x"),
        ("bob", "bob-pw"),
    ] {
        let result = directory.login(user, password).await;
        assert!(is_unavailable(&result), "{user}/{password}: {result:?}");
    }
    assert!(is_unavailable(&directory.groups_of("alice").await));
    // Failures past the reconnect back-off: each is a new attempt, none a new outage.
    eventually(
        Duration::from_secs(15),
        "three failed attempts to reach the directory",
        || async {
            assert!(is_unavailable(&directory.login("bob", "bob-pw").await));
            (directory.stats().errors >= 3).then_some(())
        },
    )
    .await;
    let stats = directory.stats();
    assert!(!stats.up, "{stats:?}");
    assert_eq!(stats.outages, 1, "one outage, however many failures: {stats:?}");

    slapd.restart().unwrap();
    eventually(
        Duration::from_secs(15),
        "bob to log in once the directory is back",
        || async {
            match directory.login("bob", "bob-pw").await {
                Ok(_) => Some(()),
                Err(LdapError::Unavailable(_)) => None,
                Err(e) => panic!("bob refused after the restart: {e}"),
            }
        },
    )
    .await;
    let stats = directory.stats();
    assert!(stats.up, "{stats:?}");
    assert_eq!(stats.outages, 1, "{stats:?}");
    assert_eq!(
        directory.login("alice", "wrong").await,
        Err(LdapError::WrongCredentials)
    );
    let text = log.text();
    assert_eq!(
        log.count("LDAP directory unavailable"),
        1,
        "one line when it went down:\n{text}"
    );
    assert_eq!(
        log.count("LDAP directory answers again"),
        1,
        "one line when it came back:\n{text}"
    );
    println!("{text}");
}

#[tokio::test]
async fn a_directory_that_does_not_answer_times_out() {
    let slapd = start();
    let directory = directory(&slapd, &[("timeout", "\"300ms\"")]);
    directory.login("alice", "alice-pw").await.unwrap();
    slapd.pause().unwrap();
    let started = Instant::now();
    let result = directory.login("bob", "bob-pw").await;
    let waited = started.elapsed();
    assert!(is_unavailable(&result), "{result:?}");
    // A search on the kept connection, then one on a new one: about 2 x 300 ms. The bound
    // is generous for a busy machine; an endless wait is what it catches.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    println!("a frozen directory answered Unavailable after {waited:?} (timeout 300ms)");
    assert!(directory.login("alice", "alice-pw").await.is_ok(), "cached");
    slapd.resume().unwrap();
    eventually(
        Duration::from_secs(15),
        "bob to log in after the directory thaws",
        || async { directory.login("bob", "bob-pw").await.ok() },
    )
    .await;
    assert!(directory.stats().up);
}

#[tokio::test]
async fn groups_of_uses_the_service_account_only() {
    let slapd = start();
    let directory = directory(&slapd, &[]);
    assert_eq!(
        directory.groups_of("alice").await,
        Ok(names(&["devs", "engineering", "platform"]))
    );
    assert_eq!(directory.groups_of("nobody").await, Err(LdapError::UnknownUser));
    assert_eq!(directory.groups_of("*").await, Err(LdapError::UnknownUser));
    let log = slapd.log();
    assert!(
        log.contains(&format!("BIND dn=\"{SERVICE_DN}\"")),
        "bound as the service account"
    );
    assert!(!log.contains("BIND dn=\"uid=alice"), "never as the user");
}

#[tokio::test]
async fn a_refused_service_account_or_a_missing_base_is_unavailable_not_a_wrong_password() {
    let slapd = start();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let directory = directory(&slapd, &[("bind_password_file", &quoted(&wrong.display().to_string()))]);
    match directory.login("alice", "alice-pw").await {
        Err(LdapError::Unavailable(why)) => assert!(why.contains("service account"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(is_unavailable(&directory.check().await));
    assert!(!directory.stats().up);

    let directory = self::directory(&slapd, &[]);
    assert_eq!(directory.check().await, Ok(()));
    let directory = self::directory(&slapd, &[("user_base", "\"ou=nobody,dc=example,dc=org\"")]);
    match directory.check().await {
        Err(LdapError::Unavailable(why)) => assert!(why.contains("noSuchObject"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(is_unavailable(&directory.login("alice", "alice-pw").await));
}

/// Not a bound on speed: prints what a login costs against a local slapd.
#[tokio::test]
async fn uncached_login_cost() {
    let slapd = start();
    for (what, overrides) in [
        (
            "one search + one bind (no groups)",
            vec![("cache_ttl", "\"0s\""), ("group_base", "\"\"")],
        ),
        (
            "with nested groups (alice: 3 groups, 2 levels)",
            vec![("cache_ttl", "\"0s\"")],
        ),
    ] {
        let directory = directory(&slapd, &overrides);
        for _ in 0..10 {
            directory.login("alice", "alice-pw").await.unwrap();
        }
        let before = directory.stats().requests;
        let rounds = 200;
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            directory.login("alice", "alice-pw").await.unwrap();
            times.push(started.elapsed());
        }
        times.sort();
        let mean = times.iter().sum::<Duration>() / rounds as u32;
        let requests = (directory.stats().requests - before) as f64 / rounds as f64;
        println!(
            "uncached LDAP login, {what}: mean {mean:?}, p50 {:?}, p95 {:?}, {requests:.1} requests per login",
            times[rounds / 2],
            times[rounds * 95 / 100]
        );
        assert_eq!(directory.stats().cache_hits, 0);
    }
}
