//! A Basic login answered from the LDAP login cache (the `Authorization` header parsed, the
//! secret-keyed cache key computed, the cache consulted), beside the same login answered from
//! the htpasswd login cache. The cache is filled by one real login against a local slapd
//! (tests/kit/slapd.rs); the benchmark checks afterwards that no request reached it.

// The integration tests' kit, for its slapd; the rest of it is unused here.
#[allow(dead_code)]
#[path = "../tests/kit/mod.rs"]
mod kit;

use kit::slapd;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use csel_auth::config::ConfigFile;
use csel_auth::identity::{parse_authorization, Credentials, Htpasswd, Verifier};
use csel_auth::ldap::{Directory, LdapSettings};

const USERS: &str = include_str!("../examples/users.htpasswd");

const DATA: &str = "\
dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: alice
sn: Test
userPassword: alice-password

dn: cn=devs,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: devs
member: uid=alice,ou=people,dc=example,dc=org
";

fn or_panic<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

fn directory(slapd: &slapd::Slapd, dir: &std::path::Path) -> Directory {
    let password = dir.join("ldap.password");
    or_panic(std::fs::write(&password, slapd::SERVICE_PASSWORD));
    or_panic(std::fs::set_permissions(
        &password,
        std::fs::Permissions::from_mode(0o600),
    ));
    let config = dir.join("csel-auth.toml");
    or_panic(std::fs::write(
        &config,
        format!(
            "[ldap]\nurl = {:?}\nbind_dn = {:?}\nbind_password_file = \"ldap.password\"\n\
             user_base = \"ou=people,dc=example,dc=org\"\ngroup_base = \"ou=groups,dc=example,dc=org\"\n\
             cache_ttl = \"1h\"\n",
            slapd.url(),
            slapd::SERVICE_DN
        ),
    ));
    let section = or_panic(ConfigFile::load(&config))
        .ldap
        .unwrap_or_else(|| panic!("no [ldap] section"));
    Directory::new(or_panic(LdapSettings::from_section(&section)))
}

fn ldap_cached(c: &mut Criterion) {
    let slapd = or_panic(slapd::Slapd::start(DATA));
    let dir = or_panic(tempfile::tempdir());
    let directory = directory(&slapd, dir.path());
    let runtime = or_panic(tokio::runtime::Builder::new_current_thread().enable_all().build());
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-password")
    );
    let ldap_check = |header: &str| {
        let Ok(Credentials::Basic { user, password }) = parse_authorization(Some(header.as_bytes())) else {
            return false;
        };
        runtime.block_on(directory.login(&user, &password)).is_ok()
    };
    assert!(ldap_check(&header), "the first login asks slapd and fills the cache");
    let requests = directory.stats().requests;

    let htpasswd = Arc::new(or_panic(Htpasswd::parse("users.htpasswd", USERS)));
    let verifier = Verifier::new(10_000, 2);
    let basic_check = |header: &str| {
        let Ok(Credentials::Basic { user, password }) = parse_authorization(Some(header.as_bytes())) else {
            return false;
        };
        runtime.block_on(verifier.verify(&htpasswd, &user, &password))
    };
    assert!(basic_check(&header), "the first check runs bcrypt and fills the cache");

    let mut group = c.benchmark_group("ldap");
    group.bench_function("cached_login", |b| b.iter(|| ldap_check(black_box(&header))));
    group.bench_function("htpasswd_cached_login", |b| b.iter(|| basic_check(black_box(&header))));
    group.finish();
    let stats = directory.stats();
    assert_eq!(
        stats.requests, requests,
        "every benchmarked login was a cache hit: {stats:?}"
    );
    assert!(stats.cache_hits > 0, "{stats:?}");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = ldap_cached
}
criterion_main!(benches);
