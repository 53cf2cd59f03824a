//! Secrets and ids: how a key's secret is made, what it looks like, and how it is compared.
//!
//! A secret is `csk_<id>_<random>`: the fixed prefix lets secret scanners (and the login path)
//! recognise a key at a glance, the id finds its line without trying every hash, and the random
//! part is 43 characters drawn uniformly from the 62 letters and digits by the operating
//! system's generator: 43 × log2(62) ≈ 256.03 bits. Only the SHA-256 of the whole secret is
//! stored; it is fast to check, and a 256-bit random secret cannot be guessed from it, so no
//! slow hash is needed.

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every secret starts with this; a password without it is not an access key.
pub const SECRET_PREFIX: &str = "csk_";

/// Characters of the random part of a secret.
pub(super) const RANDOM_CHARS: usize = 43;

/// The longest id: keeps lines and log lines short.
pub const MAX_ID_CHARS: usize = 64;

/// Longer passwords are refused without hashing them: a real secret is far shorter.
pub(super) const MAX_SECRET_BYTES: usize = SECRET_PREFIX.len() + MAX_ID_CHARS + 1 + RANDOM_CHARS;

/// SHA-256 of a whole secret, as the file stores it.
pub(super) type SecretHash = [u8; 32];

pub(super) fn hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two hashes in constant time: how much of a guess was right stays unknown.
pub(super) fn same_hash(a: &SecretHash, b: &SecretHash) -> bool {
    a[..].ct_eq(&b[..]).into()
}

/// The id a secret names: the text between the prefix and the last `_`, or `None` when the
/// secret does not have the shape `csk_<id>_<random>`.
pub(super) fn id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (id, random) = rest.rsplit_once('_')?;
    (!id.is_empty() && !random.is_empty()).then_some(id)
}

/// A new secret for the key `id`.
pub(super) fn generate(id: &str) -> String {
    let random = Alphanumeric.sample_string(&mut OsRng, RANDOM_CHARS);
    format!("{SECRET_PREFIX}{id}_{random}")
}

/// A new random id: 12 hexadecimal digits (48 bits, so ids drawn for one file do not collide
/// in practice; the caller still checks).
pub(super) fn generate_id() -> String {
    let mut bytes = [0u8; 6];
    OsRng.fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// Why `id` cannot be a key id, if it cannot.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the key id is empty".into());
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(format!("the key id is longer than {MAX_ID_CHARS} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if let Some(bad) = id.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "the key id `{}` contains {bad:?}: ids are ASCII letters, digits and `-` (no `_`, which \
             separates the id from the random part of the secret)",
            id.escape_debug()
        ));
    }
    if id.starts_with('-') {
        return Err(format!("the key id `{id}` starts with `-`"));
    }
    Ok(())
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hexadecimal digits (either case) to a hash.
pub(super) fn hash_from_hex(text: &str) -> Option<SecretHash> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, pair) in text.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[index] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_id_and_has_256_bits() {
        let secret = generate("ci-7f3a2b");
        assert!(secret.starts_with("csk_ci-7f3a2b_"), "{secret}");
        let random = secret.rsplit('_').next().unwrap();
        assert_eq!(random.len(), RANDOM_CHARS);
        assert!(random.chars().all(|c| c.is_ascii_alphanumeric()), "{random}");
        assert!(RANDOM_CHARS as f64 * 62f64.log2() >= 256.0);
        assert_eq!(id_of(&secret), Some("ci-7f3a2b"));
        assert_ne!(generate("x"), generate("x"));
        assert!(secret.len() <= MAX_SECRET_BYTES);
    }

    #[test]
    fn only_the_secret_shape_yields_an_id() {
        for not_a_secret in ["csk_", "csk__abc", "csk_abc", "csk_abc_", "password", "CSK_a_b"] {
            assert_eq!(id_of(not_a_secret), None, "{not_a_secret}");
        }
        // The id cannot hold `_`, so the last one separates the random part.
        assert_eq!(id_of("csk_a-b_xyz"), Some("a-b"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("ci-7f3a2b").is_ok());
        assert!(check_id(&generate_id()).is_ok());
        for bad in ["", "a_b", "a b", "-a", "é", &"a".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_round_trip_through_hex_and_compare() {
        let h = hash("csk_a_b");
        assert_eq!(hash_from_hex(&to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex(&to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(hash_from_hex("00"), None);
        assert_eq!(hash_from_hex(&"g".repeat(64)), None);
        assert_eq!(hash_from_hex(&"é".repeat(32)), None);
        assert_eq!(hash_from_hex(&"+f".repeat(32)), None);
        assert!(same_hash(&h, &hash("csk_a_b")));
        assert!(!same_hash(&h, &hash("csk_a_c")));
        // `printf %s SECRET | sha256sum` gives the same digits.
        assert_eq!(
            to_hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
