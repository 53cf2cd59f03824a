//! An issuer's public keys (a JWKS document), where they come from, and when they are fetched
//! again.
//!
//! Keys are fetched at start, then every `jwks_refresh`, and early when a token names a `kid`
//! the current set lacks (keys were rotated) or when there are no keys yet. Early fetches are
//! rate-limited to one per `jwks_min_interval` per issuer, and concurrent ones wait for the one
//! under way: a flood of tokens with made-up key ids costs the issuer one request. A fetch that
//! fails leaves the last good key set in place. A file is looked at on the schedule and read
//! again only when its size, time or inode changed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::outbound::describe;
use sha2::{Digest, Sha256};

use super::settings::JwksSource;
use super::stats::Health;

/// A key set is a few KB; anything much larger is not one.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys kept from one document; real issuers publish two to five.
pub const MAX_KEYS: usize = 64;
/// RSA keys shorter than this are skipped (NIST has disallowed them since 2013).
const MIN_RSA_BITS: usize = 2048;

/// What a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be checked with a key of this kind: the header's
    /// algorithm must match the key's type, never the other way round.
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "a P-256 key",
            KeyKind::P384 => "a P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The key's own `alg`, when it names one: then only that algorithm.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl Key {
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The usable keys of one JWKS document.
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Key>,
    /// Tells a changed key set from the same one fetched again.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|key| (key.kid.as_deref(), key.kind, key.alg)))
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures here (symmetric `oct` keys,
    /// `use: enc`, unknown types or curves, short RSA keys) are skipped; a document without a
    /// single usable key is an error, so it never replaces a good set.
    pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document (invalid JSON: {e})"))?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS document (no \"keys\" array)".to_string());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        let mut fingerprints = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            match parse_key(entry) {
                Ok(key) if keys.len() < MAX_KEYS => {
                    fingerprints.push(Sha256::digest(entry.to_string().as_bytes()));
                    keys.push(key);
                }
                Ok(_) => skipped.push(format!("key {index}: more than {MAX_KEYS} keys")),
                Err(reason) => skipped.push(format!("key {index}: {reason}")),
            }
        }
        if !skipped.is_empty() {
            tracing::debug!("OIDC: JWKS keys skipped: {}", skipped.join("; "));
        }
        if keys.is_empty() {
            return Err(format!(
                "the JWKS document holds no usable signing key ({})",
                if skipped.is_empty() {
                    "it is empty".to_string()
                } else {
                    skipped.join("; ")
                }
            ));
        }
        // Order does not matter: the same keys in another order are the same set.
        fingerprints.sort();
        let mut all = Sha256::new();
        for fingerprint in &fingerprints {
            all.update(fingerprint);
        }
        Ok(KeySet {
            keys,
            fingerprint: all.finalize().into(),
        })
    }

    /// The keys a token with this `kid` (or none) and `alg` may be checked with.
    pub(crate) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&Key> {
        self.keys
            .iter()
            .filter(|key| kid.is_none_or(|kid| key.kid.as_deref() == Some(kid)) && key.fits(alg))
            .collect()
    }

    /// Any key with this `kid`, whatever its type.
    pub(crate) fn has_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|key| key.kid.as_deref() == Some(kid))
    }
}

fn parse_key(entry: &Value) -> Result<Key, String> {
    let text = |name: &str| entry.get(name).and_then(Value::as_str);
    let kid = match entry.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("its kid is not a string".to_string()),
    };
    if let Some(usage) = entry.get("use") {
        if usage != "sig" {
            return Err(format!("use {usage} is not \"sig\""));
        }
    }
    if let Some(ops) = entry.get("key_ops") {
        if !ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify")) {
            return Err("its key_ops do not include \"verify\"".to_string());
        }
    }
    let alg = match text("alg") {
        None => None,
        Some(name) => Some(
            super::settings::public_key_algorithm(name)
                .ok_or_else(|| format!("alg {name:?} is not a public-key signature algorithm"))?,
        ),
    };
    let member = |name: &str| text(name).ok_or_else(|| format!("no \"{name}\" string"));
    let (kind, decoding) = match text("kty") {
        Some("RSA") => {
            let n = member("n")?;
            let bytes = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| "its n is not base64url".to_string())?;
            let significant = bytes.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return Err(format!("an RSA key shorter than {MIN_RSA_BITS} bits"));
            }
            let key = DecodingKey::from_rsa_components(n, member("e")?).map_err(|e| format!("bad RSA key: {e}"))?;
            (KeyKind::Rsa, key)
        }
        Some("EC") => {
            let (kind, size) = match text("crv") {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                other => return Err(format!("curve {other:?} is not P-256 or P-384")),
            };
            let (x, y) = (member("x")?, member("y")?);
            for coordinate in [x, y] {
                if URL_SAFE_NO_PAD.decode(coordinate).map(|b| b.len()) != Ok(size) {
                    return Err(format!("a coordinate is not {size} bytes of base64url"));
                }
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| format!("bad EC key: {e}"))?;
            (kind, key)
        }
        Some("OKP") => {
            if text("crv") != Some("Ed25519") {
                return Err(format!("OKP curve {:?} is not Ed25519", text("crv")));
            }
            let x = member("x")?;
            if URL_SAFE_NO_PAD.decode(x).map(|b| b.len()) != Ok(32) {
                return Err("its x is not 32 bytes of base64url".to_string());
            }
            let key = DecodingKey::from_ed_components(x).map_err(|e| format!("bad Ed25519 key: {e}"))?;
            (KeyKind::Ed25519, key)
        }
        Some("oct") => return Err("a symmetric (oct) key: never used".to_string()),
        other => return Err(format!("key type {other:?} is not RSA, EC or OKP")),
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("{} cannot be used with its own alg {alg:?}", kind.name()));
        }
    }
    Ok(Key {
        kid,
        kind,
        alg,
        decoding,
    })
}

/// Why a fetch was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// At start, on the schedule, or by the operator: always made.
    Now,
    /// A login found no fitting key in the set of this generation: made unless the set has
    /// changed since, or a fetch was made less than `min_interval` ago.
    Early { seen_generation: u64 },
}

/// What a fetch brought.
enum Fetched {
    New(Vec<u8>),
    /// The file is as it was when it last gave a usable key set.
    Unchanged,
    /// The file is as missing or unusable as when that was last reported.
    StillBroken,
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: i64,
    changed_nanos: i64,
}

/// The keys of one issuer and the means to fetch them.
pub(crate) struct IssuerKeys {
    source: JwksSource,
    min_interval: Duration,
    current: ArcSwapOption<KeySet>,
    /// Bumped whenever the key set changes; cached tokens carry the generation they were
    /// verified under, so a key dropped from the set stops working at once.
    generation: AtomicU64,
    /// When the last fetch was started: the rate limit of early fetches.
    last_attempt: Mutex<Option<Instant>>,
    /// The file as last looked at (`None`: missing), and whether it gave a usable key set.
    file_stamp: Mutex<Option<(Option<FileStamp>, bool)>>,
    /// One fetch at a time per issuer; early fetches queue behind it and usually find it made
    /// theirs unnecessary.
    fetching: tokio::sync::Mutex<()>,
}

impl IssuerKeys {
    pub(crate) fn new(source: JwksSource, min_interval: Duration) -> IssuerKeys {
        IssuerKeys {
            source,
            min_interval,
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            file_stamp: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn key_count(&self) -> usize {
        self.current.load().as_ref().map_or(0, |set| set.keys.len())
    }

    /// Fetches the keys if `why` allows it now. Failures are counted and logged in `health`;
    /// the last good key set stays.
    pub(crate) async fn refresh(&self, why: Fetch, health: &Health) {
        let _one_at_a_time = self.fetching.lock().await;
        if let Fetch::Early { seen_generation } = why {
            if self.generation() != seen_generation {
                return;
            }
            let last = *self.last_attempt.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < self.min_interval) {
                Health::count(&health.fetches_limited);
                return;
            }
        }
        *self.last_attempt.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let fetched = match &self.source {
            JwksSource::Url { url, client } => {
                Health::count(&health.fetches);
                fetch_url(client, url).await.map(Fetched::New)
            }
            JwksSource::File { path } => self.read_file_if_changed(path, health).await,
        };
        match fetched.and_then(|fetched| match fetched {
            Fetched::New(bytes) => KeySet::parse(&bytes).map(Some),
            Fetched::Unchanged => Ok(None),
            Fetched::StillBroken => Err(String::new()),
        }) {
            Ok(Some(set)) => {
                self.remember_file_result(true);
                let count = set.keys.len();
                self.install(set);
                health.succeeded(count);
            }
            Ok(None) => health.succeeded(self.key_count()),
            // Already counted and logged when it broke.
            Err(reason) if reason.is_empty() => {}
            Err(reason) => {
                self.remember_file_result(false);
                health.failed(&reason, self.current.load().is_some());
            }
        }
    }

    fn install(&self, set: KeySet) {
        let changed = self
            .current
            .load()
            .as_ref()
            .is_none_or(|old| old.fingerprint != set.fingerprint);
        if changed {
            let count = set.keys.len();
            self.current.store(Some(Arc::new(set)));
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(source = %self.source, keys = count, "OIDC: key set loaded");
        }
    }

    /// The file's content when it changed since last looked at. An unchanged file is not read
    /// again, and one that was missing or unusable is reported once, not at every look.
    async fn read_file_if_changed(&self, path: &Path, health: &Health) -> Result<Fetched, String> {
        let (stamp, problem) = match tokio::fs::metadata(path).await {
            Ok(metadata) if metadata.is_file() => (
                Some(FileStamp {
                    modified: metadata.modified().ok(),
                    len: metadata.len(),
                    inode: metadata.ino(),
                    changed: metadata.ctime(),
                    changed_nanos: metadata.ctime_nsec(),
                }),
                None,
            ),
            Ok(_) => (None, Some(format!("{}: not a regular file", path.display()))),
            Err(e) => (None, Some(format!("{}: {e}", path.display()))),
        };
        {
            let mut last = self.file_stamp.lock().unwrap_or_else(PoisonError::into_inner);
            match *last {
                Some((seen, true)) if seen == stamp => return Ok(Fetched::Unchanged),
                Some((seen, false)) if seen == stamp => return Ok(Fetched::StillBroken),
                _ => *last = Some((stamp, false)),
            }
        }
        if let Some(problem) = problem {
            return Err(problem);
        }
        Health::count(&health.fetches);
        if stamp.is_some_and(|stamp| stamp.len > MAX_JWKS_BYTES as u64) {
            return Err(format!(
                "{}: larger than {MAX_JWKS_BYTES} bytes; is it the right file?",
                path.display()
            ));
        }
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Fetched::New(bytes))
    }

    fn remember_file_result(&self, good: bool) {
        if let Some((_, result)) = self.file_stamp.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            *result = good;
        }
    }
}

/// GETs the key set: 200 and at most `MAX_JWKS_BYTES`, within the client's timeout.
async fn fetch_url(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("{url} answered {status}"));
    }
    if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
        return Err(format!("{url}: the answer is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{url}: the answer is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real 2048-bit modulus is not needed to test the parser's decisions: these are shaped
    // like one (256 bytes), and P-256 coordinates are 32 bytes.
    fn rsa(kid: &str) -> Value {
        serde_json::json!({"kty": "RSA", "kid": kid, "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB"})
    }

    fn ec(kid: &str) -> Value {
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])})
    }

    fn parse(keys: Vec<Value>) -> Result<KeySet, String> {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn unusable_keys_are_skipped_and_an_empty_set_is_an_error() {
        let mut short = rsa("short");
        short["n"] = URL_SAFE_NO_PAD.encode([0xc5u8; 128]).into();
        let mut enc = rsa("enc");
        enc["use"] = "enc".into();
        let mut ops = rsa("ops");
        ops["key_ops"] = serde_json::json!(["encrypt"]);
        let mut hs = rsa("hs");
        hs["alg"] = "HS256".into();
        let mut mismatch = ec("mismatch");
        mismatch["alg"] = "RS256".into();
        let oct = serde_json::json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"});
        let set = parse(vec![short, enc, ops, hs, mismatch, oct, rsa("good"), ec("good-ec")]).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, vec!["good", "good-ec"]);

        let error = parse(vec![serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})]).unwrap_err();
        assert!(
            error.contains("no usable signing key") && error.contains("never used"),
            "{error}"
        );
        assert!(parse(vec![]).unwrap_err().contains("it is empty"));
        assert!(KeySet::parse(b"{}").unwrap_err().contains("no \"keys\" array"));
        assert!(KeySet::parse(b"<html>").unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn candidates_follow_kid_and_the_key_type() {
        let mut pinned = rsa("pinned");
        pinned["alg"] = "RS384".into();
        let set = parse(vec![rsa("r1"), ec("e1"), pinned]).unwrap();
        let kids = |kid: Option<&str>, alg| -> Vec<String> {
            set.candidates(kid, alg)
                .iter()
                .map(|k| k.kid.clone().unwrap())
                .collect()
        };
        assert_eq!(kids(Some("r1"), Algorithm::RS256), vec!["r1"]);
        assert!(
            kids(Some("r1"), Algorithm::ES256).is_empty(),
            "an RSA key never checks ES256"
        );
        assert!(
            kids(Some("e1"), Algorithm::RS256).is_empty(),
            "an EC key never checks RS256"
        );
        assert!(
            kids(Some("pinned"), Algorithm::RS256).is_empty(),
            "the key's own alg binds"
        );
        assert_eq!(kids(Some("pinned"), Algorithm::RS384), vec!["pinned"]);
        assert_eq!(kids(None, Algorithm::ES256), vec!["e1"]);
        assert_eq!(kids(None, Algorithm::RS256), vec!["r1"]);
        assert!(set.has_kid("e1").is_some() && set.has_kid("nope").is_none());
    }

    #[test]
    fn the_fingerprint_ignores_order_but_not_keys() {
        let a = parse(vec![rsa("r1"), ec("e1")]).unwrap();
        let b = parse(vec![ec("e1"), rsa("r1")]).unwrap();
        let c = parse(vec![rsa("r1"), ec("e2")]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }
}
