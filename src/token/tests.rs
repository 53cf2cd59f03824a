use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use super::cache::ANONYMOUS_TOKEN_CACHE_ENTRIES;
use super::jwt::{rfc3339_utc, sign_raw, JWT_HEADER_JSON};
use super::key::write_new_private_file;
use super::scope::{MAX_SCOPES, MAX_SCOPE_NAME_LEN};
use super::*;

/// The identity an access token verifies as.
fn verify_access(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    verify(key, settings, TokenKind::Access, token, now).map(|verified| verified.identity)
}

/// The identity a refresh token verifies as.
fn verify_refresh(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    verify(key, settings, TokenKind::Refresh, token, now).map(|verified| verified.identity)
}

const SERVICE: &str = "registry.example.com";

fn settings() -> TokenSettings {
    TokenSettings {
        realm: "https://auth.example.com/token".to_string(),
        service: SERVICE.to_string(),
        ttl: Duration::from_secs(300),
        refresh_ttl: Duration::from_secs(30 * 86_400),
    }
}

fn key() -> TokenKey {
    TokenKey::from_bytes(&[7u8; 32]).unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_700_000_000;

fn alice() -> Identity {
    Identity::user("alice")
}

fn pull(name: &str) -> Scope {
    Scope {
        kind: "repository".to_string(),
        name: name.to_string(),
        actions: vec!["pull".to_string()],
    }
}

fn access_token(identity: &Identity) -> String {
    issue(
        &key(),
        &settings(),
        identity,
        &[pull("library/alpine")],
        "",
        false,
        at(NOW),
    )
    .token
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn forge(kind: TokenKind, header: &str, claims: &Value) -> String {
    sign_raw(&key(), kind, header.as_bytes(), claims.to_string().as_bytes())
}

// --- issue / verify -----------------------------------------------------

#[test]
fn round_trip_user() {
    let issued = issue(
        &key(),
        &settings(),
        &alice(),
        &[pull("library/alpine")],
        "",
        true,
        at(NOW),
    );
    assert_eq!(issued.expires_in, 300);
    assert_eq!(issued.issued_at, "2023-11-14T22:13:20Z");
    assert_eq!(issued.scope, "repository:library/alpine:pull");
    let verified = verify(&key(), &settings(), TokenKind::Access, &issued.token, at(NOW + 10)).unwrap();
    assert_eq!(verified.identity, alice());
    assert_eq!(verified.access, vec![pull("library/alpine")]);
    assert_eq!(verified.expires_at, NOW + 300);
    assert_eq!(verified.token_id.len(), 32);
    let refresh = issued.refresh_token.unwrap();
    assert_eq!(
        verify_refresh(&key(), &settings(), &refresh, at(NOW + 86_400)),
        Ok(alice())
    );
    let claims = claims_of(&issued.token);
    assert_eq!(claims["iss"], SERVICE);
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["typ"], "access");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "library/alpine", "actions": ["pull"]}])
    );
    let header = issued.token.split('.').next().unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(header).unwrap(), JWT_HEADER_JSON.as_bytes());
}

#[test]
fn round_trip_anonymous_has_empty_subject_and_no_refresh_token() {
    let issued = issue(&key(), &settings(), &Identity::anonymous(), &[], "", true, at(NOW));
    assert_eq!(issued.refresh_token, None);
    assert_eq!(claims_of(&issued.token)["sub"], "");
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(NOW)),
        Ok(Identity::anonymous())
    );
    let empty_user = issue(&key(), &settings(), &Identity::user(""), &[], "", true, at(NOW));
    assert_eq!(empty_user.refresh_token, None);
    assert_eq!(
        verify_access(&key(), &settings(), &empty_user.token, at(NOW)),
        Ok(Identity::anonymous())
    );
}

#[test]
fn tokens_have_distinct_ids() {
    assert_ne!(
        claims_of(&access_token(&alice()))["jti"],
        claims_of(&access_token(&alice()))["jti"]
    );
}

#[test]
fn short_ttl_is_raised_to_sixty_seconds() {
    let mut short = settings();
    short.ttl = Duration::from_secs(5);
    let issued = issue(&key(), &short, &alice(), &[], "", false, at(NOW));
    assert_eq!(issued.expires_in, 60);
    assert!(verify_access(&key(), &short, &issued.token, at(NOW + 59)).is_ok());
}

#[test]
fn expired_token_is_rejected_after_leeway() {
    let token = access_token(&alice());
    let expiry = NOW + 300;
    assert!(verify_access(&key(), &settings(), &token, at(expiry + 29)).is_ok());
    assert_eq!(
        verify_access(&key(), &settings(), &token, at(expiry + 30)),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify_access(&key(), &settings(), &token, at(expiry + 86_400)),
        Err(TokenError::Expired)
    );
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let issued = issue(&key(), &settings(), &alice(), &[], "", false, at(NOW + 3600));
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(NOW)),
        Err(TokenError::NotYetValid)
    );
    assert!(verify_access(&key(), &settings(), &issued.token, at(NOW + 3600 - 29)).is_ok());
}

#[test]
fn lifetime_longer_than_configured_is_rejected() {
    let mut long = settings();
    long.ttl = Duration::from_secs(3600);
    let issued = issue(&key(), &long, &alice(), &[], "", false, at(NOW));
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(NOW)),
        Err(TokenError::LifetimeTooLong)
    );
}

#[test]
fn tampered_payload_is_rejected() {
    let token = access_token(&alice());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = claims_of(&token);
    claims["sub"] = json!("admin");
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn tampered_signature_is_rejected() {
    let token = access_token(&alice());
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let mut signature = signature.to_string();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    signature.replace_range(0..1, first);
    let forged = format!("{signing_input}.{signature}");
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::BadSignature)
    );
    let without_signature = format!("{signing_input}.");
    assert_eq!(
        verify_access(&key(), &settings(), &without_signature, at(NOW)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn alg_none_is_rejected() {
    let claims = claims_of(&access_token(&alice()));
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_eq!(
        verify_access(&key(), &settings(), &unsigned, at(NOW)),
        Err(TokenError::UnsupportedAlgorithm)
    );
    // Even a correct HMAC does not make another algorithm acceptable.
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"RS256","typ":"JWT"}"#,
        r#"{"alg":"hs256","typ":"JWT"}"#,
        r#"{"alg":"HS512","typ":"JWT"}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":["HS256"],"typ":"JWT"}"#,
    ] {
        let forged = forge(TokenKind::Access, header, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::UnsupportedAlgorithm),
            "{header}"
        );
    }
}

#[test]
fn key_material_or_extra_fields_in_header_are_rejected() {
    let claims = claims_of(&access_token(&alice()));
    for header in [
        r#"{"alg":"HS256","typ":"JWT","jwk":{"kty":"oct","k":"AAAA"}}"#,
        r#"{"alg":"HS256","typ":"JWT","kid":"../../dev/null"}"#,
        r#"{"alg":"HS256","jku":"https://evil.example/keys"}"#,
        r#"{"alg":"HS256","x5c":["MIIB"]}"#,
    ] {
        let forged = forge(TokenKind::Access, header, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::HeaderKeyMaterial),
            "{header}"
        );
    }
    for header in [
        r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#,
        r#"{"alg":"HS256","typ":"JOSE+JSON"}"#,
    ] {
        let forged = forge(TokenKind::Access, header, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::UnsupportedHeader),
            "{header}"
        );
    }
    // Without `typ` the header is still acceptable.
    let minimal = forge(TokenKind::Access, r#"{"alg":"HS256"}"#, &claims);
    assert!(verify_access(&key(), &settings(), &minimal, at(NOW)).is_ok());
}

#[test]
fn wrong_issuer_or_audience_is_rejected() {
    let token = access_token(&alice());
    let mut other = settings();
    other.service = "other.example.com".to_string();
    assert_eq!(
        verify_access(&key(), &other, &token, at(NOW)),
        Err(TokenError::WrongIssuer)
    );
    let mut claims = claims_of(&token);
    claims["aud"] = json!("other.example.com");
    let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::WrongAudience)
    );
    claims["aud"] = json!([SERVICE]);
    let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn unknown_or_missing_claims_are_rejected() {
    let mut claims = claims_of(&access_token(&alice()));
    claims["admin"] = json!(true);
    let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::Malformed)
    );
    let mut claims = claims_of(&access_token(&alice()));
    claims.as_object_mut().unwrap().remove("exp");
    let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn refresh_and_access_tokens_are_not_interchangeable() {
    let issued = issue(&key(), &settings(), &alice(), &[], "", true, at(NOW));
    let refresh = issued.refresh_token.unwrap();
    assert_eq!(
        verify_access(&key(), &settings(), &refresh, at(NOW)),
        Err(TokenError::RefreshTokenAsAccess)
    );
    assert_eq!(
        verify_refresh(&key(), &settings(), &issued.token, at(NOW)),
        Err(TokenError::AccessTokenAsRefresh)
    );
    // A `typ` claim edited to match, signed with the other kind's key, is
    // still refused: the claim and the key must agree.
    let mut claims = claims_of(&refresh);
    claims["typ"] = json!("access");
    let forged = forge(TokenKind::Refresh, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::RefreshTokenAsAccess)
    );
    let mut claims = claims_of(&issued.token);
    claims["typ"] = json!("refresh");
    let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_access(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::RefreshTokenAsAccess)
    );
}

#[test]
fn refresh_token_outlives_access_token_and_then_expires() {
    let issued = issue(&key(), &settings(), &alice(), &[], "", true, at(NOW));
    let refresh = issued.refresh_token.unwrap();
    let later = NOW + 10 * 86_400;
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(later)),
        Err(TokenError::Expired)
    );
    assert_eq!(verify_refresh(&key(), &settings(), &refresh, at(later)), Ok(alice()));
    assert_eq!(
        verify_refresh(&key(), &settings(), &refresh, at(NOW + 31 * 86_400)),
        Err(TokenError::Expired)
    );
}

#[test]
fn anonymous_refresh_token_is_rejected() {
    let claims = json!({
        "iss": SERVICE, "sub": "", "aud": SERVICE, "exp": NOW + 60, "nbf": NOW,
        "iat": NOW, "jti": "x", "typ": "refresh", "access": [],
    });
    let forged = forge(TokenKind::Refresh, JWT_HEADER_JSON, &claims);
    assert_eq!(
        verify_refresh(&key(), &settings(), &forged, at(NOW)),
        Err(TokenError::NoSubject)
    );
}

#[test]
fn token_signed_with_another_key_is_rejected() {
    let other = TokenKey::from_bytes(&[8u8; 32]).unwrap();
    let issued = issue(&other, &settings(), &alice(), &[], "", true, at(NOW));
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(NOW)),
        Err(TokenError::BadSignature)
    );
    assert_eq!(
        verify_refresh(&key(), &settings(), &issued.refresh_token.unwrap(), at(NOW)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn truncated_tokens_are_rejected() {
    let token = access_token(&alice());
    for cut in [1, 5, 43, 44, token.len() / 2, token.len() - 1] {
        let truncated = &token[..token.len() - cut];
        assert!(
            verify_access(&key(), &settings(), truncated, at(NOW)).is_err(),
            "cut {cut}"
        );
    }
    let two_parts = token.rsplit_once('.').unwrap().0.to_string();
    assert_eq!(
        verify_access(&key(), &settings(), &two_parts, at(NOW)),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        verify_access(&key(), &settings(), &format!("{token}.x"), at(NOW)),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        verify_access(&key(), &settings(), "", at(NOW)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn huge_token_is_rejected_before_parsing() {
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        verify_access(&key(), &settings(), &huge, at(NOW)),
        Err(TokenError::TooLarge)
    );
    let token = access_token(&alice());
    let padded = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
    assert_eq!(
        verify_access(&key(), &settings(), &padded, at(NOW)),
        Err(TokenError::TooLarge)
    );
}

#[test]
fn garbage_is_rejected() {
    let token = access_token(&alice());
    let parts: Vec<&str> = token.split('.').collect();
    for garbage in [
        "!!!.###.$$$".to_string(),
        "a.b.c".to_string(),
        "..".to_string(),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("[1,2]"), parts[1], parts[2]),
    ] {
        assert_eq!(
            verify_access(&key(), &settings(), &garbage, at(NOW)),
            Err(TokenError::Malformed),
            "{garbage}"
        );
    }
    let signed_garbage = sign_raw(
        &key(),
        TokenKind::Access,
        JWT_HEADER_JSON.as_bytes(),
        b"\xff\xfe not json",
    );
    assert_eq!(
        verify_access(&key(), &settings(), &signed_garbage, at(NOW)),
        Err(TokenError::Malformed)
    );
}

#[test]
fn access_claim_is_trimmed_to_keep_tokens_small() {
    let scopes: Vec<Scope> = (0..200)
        .map(|i| Scope {
            kind: "repository".to_string(),
            name: format!("team-{i:03}/{}", "x".repeat(200)),
            actions: vec!["pull".to_string(), "push".to_string()],
        })
        .collect();
    let issued = issue(&key(), &settings(), &alice(), &scopes, "", false, at(NOW));
    assert!(issued.token.len() <= MAX_TOKEN_LEN - 100, "{}", issued.token.len());
    let verified = verify(&key(), &settings(), TokenKind::Access, &issued.token, at(NOW)).unwrap();
    assert!(!verified.access.is_empty());
    assert_eq!(verified.access, scopes[..verified.access.len()]);
    assert_eq!(issued.scope, format_scopes(&verified.access));
}

#[test]
fn token_error_display_is_fixed_text() {
    let token = access_token(&alice());
    for error in [
        verify_access(&key(), &settings(), &token, at(NOW + 86_400)).unwrap_err(),
        verify_access(&key(), &settings(), &token[1..], at(NOW)).unwrap_err(),
    ] {
        let text = error.to_string();
        assert!(text.len() < 60 && !text.contains(&token[10..20]), "{text}");
    }
}

#[test]
fn debug_output_redacts_secrets() {
    let issued = issue(&key(), &settings(), &alice(), &[], "", true, at(NOW));
    let debug = format!("{issued:?} {:?}", key());
    assert!(!debug.contains(&issued.token[..20]), "{debug}");
    assert!(!debug.contains("0707"), "{debug}");
    let request = parse_token_post(
        Some("application/x-www-form-urlencoded"),
        b"grant_type=password&username=alice&password=hunter2",
    )
    .unwrap();
    assert!(!format!("{request:?}").contains("hunter2"));
}

// --- key file -------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_file_is_created_private_and_reused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("token.key");
    let first = TokenKey::load_or_create(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let content = fs::read_to_string(&path).unwrap();
    assert_eq!(content.trim().len(), 64);
    let second = TokenKey::load_or_create(&path).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    let issued = issue(&first, &settings(), &alice(), &[], "", true, at(NOW));
    assert_eq!(verify_access(&second, &settings(), &issued.token, at(NOW)), Ok(alice()));
    assert_eq!(
        verify_refresh(&second, &settings(), &issued.refresh_token.unwrap(), at(NOW)),
        Ok(alice())
    );
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 1);
    // A fresh file holds a different key.
    let other_path = directory.path().join("other.key");
    let other = TokenKey::load_or_create(&other_path).unwrap();
    let issued = issue(&other, &settings(), &alice(), &[], "", false, at(NOW));
    assert_eq!(
        verify_access(&first, &settings(), &issued.token, at(NOW)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn racing_creators_agree_on_one_key() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("token.key");
    let keys: Vec<TokenKey> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| TokenKey::load_or_create(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let issued = issue(&keys[0], &settings(), &alice(), &[], "", false, at(NOW));
    for key in &keys {
        assert_eq!(verify_access(key, &settings(), &issued.token, at(NOW)), Ok(alice()));
    }
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("token.key");
    TokenKey::load_or_create(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let error = TokenKey::load_or_create(&path).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, TokenKeyError::Permissions { .. }), "{message}");
        assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
        assert!(message.contains(&format!("{mode:03o}")), "{message}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(TokenKey::load_or_create(&path).is_ok());
}

fn write_key_file(directory: &Path, content: &[u8]) -> PathBuf {
    let path = directory.join("token.key");
    let _ = fs::remove_file(&path);
    write_new_private_file(&path, content).unwrap();
    path
}

#[test]
fn key_file_content_is_validated() {
    let directory = tempfile::tempdir().unwrap();
    let short = write_key_file(directory.path(), format!("{}\n", "ab".repeat(31)).as_bytes());
    let message = TokenKey::load_or_create(&short).unwrap_err().to_string();
    assert!(
        message.contains("31 bytes") && message.contains("openssl rand"),
        "{message}"
    );

    let text = write_key_file(directory.path(), b"correct horse battery staple, but not hex\n");
    let message = TokenKey::load_or_create(&text).unwrap_err().to_string();
    assert!(message.contains("not hex or base64"), "{message}");

    let huge = write_key_file(directory.path(), "ab".repeat(4096).as_bytes());
    let message = TokenKey::load_or_create(&huge).unwrap_err().to_string();
    assert!(message.contains("larger than"), "{message}");

    let secret = [42u8; 32];
    let base64 = write_key_file(directory.path(), format!("{}\n", STANDARD.encode(secret)).as_bytes());
    let from_file = TokenKey::load_or_create(&base64).unwrap();
    let issued = issue(&from_file, &settings(), &alice(), &[], "", false, at(NOW));
    let direct = TokenKey::from_bytes(&secret).unwrap();
    assert_eq!(verify_access(&direct, &settings(), &issued.token, at(NOW)), Ok(alice()));

    let upper_hex = write_key_file(directory.path(), hex::encode(secret).to_uppercase().as_bytes());
    let from_hex = TokenKey::load_or_create(&upper_hex).unwrap();
    assert_eq!(
        verify_access(&from_hex, &settings(), &issued.token, at(NOW)),
        Ok(alice())
    );
}

#[test]
fn key_file_problems_name_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let missing_directory = directory.path().join("absent").join("token.key");
    let message = TokenKey::load_or_create(&missing_directory).unwrap_err().to_string();
    assert!(message.contains(&missing_directory.display().to_string()), "{message}");

    let message = TokenKey::load_or_create(directory.path()).unwrap_err().to_string();
    assert!(message.contains("not a regular file"), "{message}");
}

#[test]
fn key_file_owned_by_another_user_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = write_key_file(directory.path(), format!("{}\n", "0".repeat(64)).as_bytes());
    if let Err(error) = std::os::unix::fs::chown(&path, Some(65_534), None) {
        // Only root can give a file away.
        eprintln!("skipped: cannot chown to uid 65534 ({error})");
        return;
    }
    let error = TokenKey::load_or_create(&path).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, TokenKeyError::Owner { owner: 65_534, .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("owned by uid 65534"), "{message}");
    assert!(message.contains(&format!("chown root {}", path.display())), "{message}");
    // Root may own the key of a service running as another user.
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    assert!(TokenKey::load_or_create(&path).is_ok());
}

#[test]
fn a_missing_key_directory_is_explained() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("absent").join("token.key");
    let message = TokenKey::load_or_create(&path).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!(
            "directory {} does not exist",
            directory.path().join("absent").display()
        )),
        "{message}"
    );
    assert!(message.contains("--token-key"), "{message}");
}

#[test]
fn short_keys_are_refused() {
    assert!(matches!(
        TokenKey::from_bytes(&[1u8; 31]),
        Err(TokenKeyError::TooShort { len: 31 })
    ));
    assert!(TokenKey::from_bytes(&[]).is_err());
    assert!(TokenKey::from_bytes(&[1u8; 64]).is_ok());
}

// --- bindings and the verified-token cache -------------------------------

#[test]
fn user_tokens_carry_their_binding() {
    let issued = issue(&key(), &settings(), &alice(), &[], "b1nd", true, at(NOW));
    assert_eq!(claims_of(&issued.token)["bnd"], "b1nd");
    let verified = verify(&key(), &settings(), TokenKind::Access, &issued.token, at(NOW)).unwrap();
    assert_eq!(verified.binding, "b1nd");
    let refresh = issued.refresh_token.unwrap();
    assert_eq!(
        verify(&key(), &settings(), TokenKind::Refresh, &refresh, at(NOW)).map(|v| (v.identity, v.binding)),
        Ok((alice(), "b1nd".to_string()))
    );
    let unbound = issue(&key(), &settings(), &alice(), &[], "", false, at(NOW));
    assert!(claims_of(&unbound.token).get("bnd").is_none());
    assert_eq!(unbound.refresh_token, None);
    // Anonymous tokens name no credential.
    let anonymous = issue(&key(), &settings(), &Identity::anonymous(), &[], "b1nd", true, at(NOW));
    assert!(claims_of(&anonymous.token).get("bnd").is_none());
    assert_eq!(anonymous.refresh_token, None);
}

#[test]
fn federated_tokens_carry_source_and_groups_and_end_with_the_proof() {
    let federation = super::Federation {
        source: "oidc:https://issuer".to_string(),
        groups: vec!["devs".to_string()],
        expires_at: Some(at(NOW + 60)),
    };
    let issued = super::issue_federated(&key(), &settings(), &alice(), &[], &federation, at(NOW));
    assert!(issued.refresh_token.is_none());
    assert_eq!(issued.expires_in, 60);
    let claims = claims_of(&issued.token);
    assert_eq!(
        (claims["src"].clone(), claims["grp"].clone()),
        (serde_json::json!("oidc:https://issuer"), serde_json::json!(["devs"]))
    );
    assert!(claims.get("bnd").is_none());
    let verified = verify(&key(), &settings(), TokenKind::Access, &issued.token, at(NOW + 30)).unwrap();
    assert_eq!(verified.source.as_deref(), Some("oidc:https://issuer"));
    assert_eq!(verified.groups, ["devs"]);
    assert_eq!(verified.binding, "");
    assert!(verify(&key(), &settings(), TokenKind::Access, &issued.token, at(NOW + 200)).is_err());
    // A proof without an end: the realm's lifetime. An htpasswd token has neither claim.
    let ldap = super::Federation {
        source: "ldap".to_string(),
        groups: Vec::new(),
        expires_at: None,
    };
    assert_eq!(
        super::issue_federated(&key(), &settings(), &alice(), &[], &ldap, at(NOW)).expires_in,
        300
    );
    let plain = claims_of(&user_token("alice", "b1nd"));
    assert!(plain.get("src").is_none() && plain.get("grp").is_none());
}

fn user_token(user: &str, binding: &str) -> String {
    issue(&key(), &settings(), &Identity::user(user), &[], binding, false, at(NOW)).token
}

fn anonymous_token() -> String {
    issue(&key(), &settings(), &Identity::anonymous(), &[], "", false, at(NOW)).token
}

#[test]
fn cache_answers_repeated_tokens_with_their_binding() {
    let cache = VerifiedTokenCache::default();
    let token = user_token("alice", "b1nd");
    let expected = CachedAccess {
        identity: alice(),
        binding: "b1nd".to_string(),
        source: None,
        groups: Vec::new(),
    };
    assert_eq!(cache.verify(&key(), &settings(), &token, at(NOW)), Ok(expected.clone()));
    assert_eq!(cache.hits(), 0);
    assert_eq!(cache.verify(&key(), &settings(), &token, at(NOW + 1)), Ok(expected));
    assert_eq!(cache.hits(), 1);
    let anonymous = anonymous_token();
    for _ in 0..2 {
        assert_eq!(
            cache
                .verify(&key(), &settings(), &anonymous, at(NOW))
                .map(|a| a.identity),
            Ok(Identity::anonymous())
        );
    }
    assert_eq!(cache.hits(), 2);
    assert_eq!(cache.len(), (1, 1));
}

#[test]
fn cache_never_keeps_bad_or_expired_tokens() {
    let cache = VerifiedTokenCache::default();
    let forged = issue(
        &TokenKey::from_bytes(&[8u8; 32]).unwrap(),
        &settings(),
        &alice(),
        &[],
        "",
        false,
        at(NOW),
    )
    .token;
    for _ in 0..2 {
        assert_eq!(
            cache.verify(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::BadSignature)
        );
    }
    assert_eq!(cache.len(), (0, 0));
    let token = user_token("alice", "b1nd");
    assert!(cache.verify(&key(), &settings(), &token, at(NOW)).is_ok());
    let expired = at(NOW + 300 + CLOCK_LEEWAY.as_secs());
    assert_eq!(
        cache.verify(&key(), &settings(), &token, expired),
        Err(TokenError::Expired)
    );
    assert_eq!(cache.hits(), 0);
    assert_eq!(
        cache.verify(&key(), &settings(), &"a".repeat(MAX_TOKEN_LEN + 1), at(NOW)),
        Err(TokenError::TooLarge)
    );
}

#[test]
fn cache_evicts_the_least_recently_used_user_token() {
    let cache = VerifiedTokenCache::new(2, 1);
    let [a, b, c] = ["a", "b", "c"].map(|user| user_token(user, "x"));
    for token in [&a, &b, &a, &c] {
        assert!(cache.verify(&key(), &settings(), token, at(NOW)).is_ok());
    }
    assert_eq!(cache.hits(), 1, "a's second use");
    assert_eq!(cache.len(), (2, 0));
    assert!(cache.verify(&key(), &settings(), &a, at(NOW)).is_ok());
    assert_eq!(cache.hits(), 2, "a stayed: b was the least recently used");
    assert!(cache.verify(&key(), &settings(), &b, at(NOW)).is_ok());
    assert_eq!(cache.hits(), 2, "b was evicted");
}

#[test]
fn anonymous_tokens_never_evict_user_tokens() {
    let cache = VerifiedTokenCache::default();
    let alice = user_token("alice", "b1nd");
    assert!(cache.verify(&key(), &settings(), &alice, at(NOW)).is_ok());
    for _ in 0..20_000 {
        assert!(cache.verify(&key(), &settings(), &anonymous_token(), at(NOW)).is_ok());
    }
    assert_eq!(cache.hits(), 0);
    assert_eq!(cache.len(), (1, ANONYMOUS_TOKEN_CACHE_ENTRIES));
    assert!(cache.verify(&key(), &settings(), &alice, at(NOW)).is_ok());
    assert_eq!(cache.hits(), 1, "alice's entry was evicted");
    // Entries are keyed by a 32-byte hash, whatever the token's length.
    let long = issue(
        &key(),
        &settings(),
        &Identity::anonymous(),
        &(0..MAX_SCOPES)
            .map(|n| pull(&format!("{n}/{}", "x".repeat(200))))
            .collect::<Vec<_>>(),
        "",
        false,
        at(NOW),
    )
    .token;
    assert!(long.len() > 4096, "{}", long.len());
    assert!(cache.verify(&key(), &settings(), &long, at(NOW)).is_ok());
    assert_eq!(cache.len(), (1, ANONYMOUS_TOKEN_CACHE_ENTRIES));
}

// --- scopes -------------------------------------------------------------

fn scope(kind: &str, name: &str, actions: &[&str]) -> Scope {
    Scope {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

#[test]
fn scopes_are_parsed() {
    assert_eq!(
        parse_scopes(&["repository:samalba/my-app:pull,push"]),
        vec![scope("repository", "samalba/my-app", &["pull", "push"])]
    );
    assert_eq!(
        parse_scopes(&["repository:a/b:pull repository:c:push", "registry:catalog:*"]),
        vec![
            scope("repository", "a/b", &["pull"]),
            scope("repository", "c", &["push"]),
            scope("registry", "catalog", &["*"]),
        ]
    );
    assert_eq!(
        parse_scopes(&["repository:host:5000/a/b:pull,push"]),
        vec![scope("repository", "host:5000/a/b", &["pull", "push"])]
    );
    assert_eq!(
        parse_scopes(&["repository(plugin):vieux/sshfs:pull"]),
        vec![scope("repository(plugin)", "vieux/sshfs", &["pull"])]
    );
    assert_eq!(
        parse_scopes(&["  repository:x_y.z-w:pull  "]),
        vec![scope("repository", "x_y.z-w", &["pull"])]
    );
}

#[test]
fn scopes_for_one_resource_are_merged() {
    assert_eq!(
        parse_scopes(&["repository:a:pull", "repository:a:push,pull repository:a:delete"]),
        vec![scope("repository", "a", &["pull", "push", "delete"])]
    );
    assert_eq!(
        parse_scopes(&["repository:a:pull,pull"]),
        vec![scope("repository", "a", &["pull"])]
    );
}

#[test]
fn malformed_scopes_are_ignored() {
    for malformed in [
        "",
        "repository",
        "repository:a",
        "repository:a:",
        ":a:pull",
        "repository::pull",
        "Repository:a:pull",
        "repository:a:Pull",
        "repository:a:pull,",
        "repository:a:pull,,push",
        "repository:a b:pull",
        "repository:a\n:pull",
        "repository:a\"b:pull",
        "repository(:a:pull",
        "repository(x:a:pull",
        "repository():a:pull",
        "repository:a:p*",
        "repository:a:a,b,c,d,e,f,g,h,i",
    ] {
        assert_eq!(parse_scopes(&[malformed]), vec![], "{malformed:?}");
    }
    let long_name = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_NAME_LEN + 1));
    assert_eq!(parse_scopes(&[&long_name]), vec![]);
    assert_eq!(
        parse_scopes(&["bad repository:ok:pull :x:y"]),
        vec![scope("repository", "ok", &["pull"])]
    );
}

#[test]
fn scope_count_is_bounded() {
    let many: Vec<String> = (0..100).map(|i| format!("repository:r{i}:pull")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let parsed = parse_scopes(&refs);
    assert_eq!(parsed.len(), MAX_SCOPES);
    assert_eq!(parsed[0].name, "r0");
}

#[test]
fn scopes_display_round_trip() {
    let parsed = parse_scopes(&["repository:host:5000/a:pull,push registry:catalog:*"]);
    assert_eq!(
        format_scopes(&parsed),
        "repository:host:5000/a:pull,push registry:catalog:*"
    );
}

// --- token requests ---------------------------------------------------------

#[test]
fn get_request_is_parsed() {
    let request = parse_token_get(
        "service=registry.example.com&scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush\
         &scope=repository:a:pull+repository:b:push&account=alice&offline_token=true&client_id=docker",
    )
    .unwrap();
    assert_eq!(
        request,
        TokenRequest::Get {
            service: Some(SERVICE.to_string()),
            scopes: vec![
                scope("repository", "samalba/my-app", &["pull", "push"]),
                scope("repository", "a", &["pull"]),
                scope("repository", "b", &["push"]),
            ],
            account: Some("alice".to_string()),
            offline_token: true,
        }
    );
    assert!(request.check_service(&settings()).is_ok());
}

#[test]
fn get_request_defaults_and_leniency() {
    for query in ["", "?", "service=", "foo=bar&&", "offline_token=false", "account="] {
        assert_eq!(
            parse_token_get(query),
            Ok(TokenRequest::Get {
                service: None,
                scopes: vec![],
                account: None,
                offline_token: false,
            }),
            "{query:?}"
        );
    }
    assert!(matches!(
        parse_token_get("offline_token=1"),
        Ok(TokenRequest::Get {
            offline_token: true,
            ..
        })
    ));
    assert!(matches!(
        parse_token_get("scope=repository:a:pull&scope=garbage"),
        Ok(TokenRequest::Get { ref scopes, .. }) if scopes.len() == 1
    ));
}

#[test]
fn get_request_errors() {
    assert_eq!(
        parse_token_get("service=a&service=b"),
        Err(TokenRequestError::DuplicateParameter("service"))
    );
    assert_eq!(
        parse_token_get("account=a&account=a"),
        Err(TokenRequestError::DuplicateParameter("account"))
    );
    assert_eq!(
        parse_token_get("offline_token=yes"),
        Err(TokenRequestError::InvalidParameter("offline_token"))
    );
    assert_eq!(
        parse_token_get("account=al%0Aice"),
        Err(TokenRequestError::InvalidParameter("account"))
    );
    for bad in ["scope=%zz", "scope=%4", "scope=%", "account=%ff"] {
        assert_eq!(parse_token_get(bad), Err(TokenRequestError::BadEncoding), "{bad}");
    }
    let long = format!("scope={}", "a".repeat(MAX_TOKEN_REQUEST_LEN));
    assert_eq!(parse_token_get(&long), Err(TokenRequestError::TooLarge));
}

#[test]
fn wrong_service_is_refused_unless_absent() {
    let request = parse_token_get("service=other.example.com").unwrap();
    let error = request.check_service(&settings()).unwrap_err();
    assert!(error.to_string().contains(SERVICE));
    assert!(!error.to_string().contains("other.example.com"));
    assert!(parse_token_get("").unwrap().check_service(&settings()).is_ok());
    let post = parse_token_post(
        Some("application/x-www-form-urlencoded"),
        b"grant_type=refresh_token&refresh_token=x&service=evil",
    )
    .unwrap();
    assert!(post.check_service(&settings()).is_err());
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[test]
fn docker_password_grant_is_parsed() {
    let request = parse_token_post(
        FORM,
        b"grant_type=password&username=johndoe&password=A3d%26dj3w%3D+x&service=registry.example.com\
          &client_id=docker&access_type=offline",
    )
    .unwrap();
    assert_eq!(
        request,
        TokenRequest::PasswordGrant {
            username: "johndoe".to_string(),
            password: "A3d&dj3w= x".to_string(),
            service: Some(SERVICE.to_string()),
            scopes: vec![],
            access_type_offline: true,
            client_id: Some("docker".to_string()),
        }
    );
}

#[test]
fn refresh_grant_is_parsed() {
    let request = parse_token_post(
        Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        b"grant_type=refresh_token&refresh_token=abc.def.ghi&service=registry.example.com\
          &client_id=docker&scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush",
    )
    .unwrap();
    assert_eq!(
        request,
        TokenRequest::RefreshGrant {
            refresh_token: "abc.def.ghi".to_string(),
            service: Some(SERVICE.to_string()),
            scopes: vec![scope("repository", "samalba/my-app", &["pull", "push"])],
        }
    );
}

#[test]
fn post_request_errors() {
    let cases: &[(Option<&str>, &[u8], TokenRequestError)] = &[
        (None, b"grant_type=password", TokenRequestError::UnsupportedContentType),
        (
            Some("application/json"),
            b"{}",
            TokenRequestError::UnsupportedContentType,
        ),
        (
            Some("multipart/form-data; boundary=x"),
            b"",
            TokenRequestError::UnsupportedContentType,
        ),
        (
            Some("application/x-www-form-urlencoded; charset=latin1"),
            b"grant_type=password",
            TokenRequestError::UnsupportedContentType,
        ),
        (FORM, b"", TokenRequestError::MissingParameter("grant_type")),
        (
            FORM,
            b"grant_type=authorization_code&code=x",
            TokenRequestError::UnsupportedGrantType,
        ),
        (
            FORM,
            b"grant_type=client_credentials",
            TokenRequestError::UnsupportedGrantType,
        ),
        (
            FORM,
            b"grant_type=password&grant_type=refresh_token&refresh_token=x",
            TokenRequestError::DuplicateParameter("grant_type"),
        ),
        (
            FORM,
            b"grant_type=password&password=x",
            TokenRequestError::MissingParameter("username"),
        ),
        (
            FORM,
            b"grant_type=password&username=&password=x",
            TokenRequestError::MissingParameter("username"),
        ),
        (
            FORM,
            b"grant_type=password&username=a",
            TokenRequestError::MissingParameter("password"),
        ),
        (
            FORM,
            b"grant_type=password&username=a&password=x&password=y",
            TokenRequestError::DuplicateParameter("password"),
        ),
        (
            FORM,
            b"grant_type=password&username=a%0d%0aforged&password=x",
            TokenRequestError::InvalidParameter("username"),
        ),
        (
            FORM,
            b"grant_type=refresh_token",
            TokenRequestError::MissingParameter("refresh_token"),
        ),
        (
            FORM,
            b"grant_type=refresh_token&refresh_token=a&refresh_token=b",
            TokenRequestError::DuplicateParameter("refresh_token"),
        ),
        (
            FORM,
            b"grant_type=password&username=a&password=b&access_type=sometimes",
            TokenRequestError::InvalidParameter("access_type"),
        ),
        (
            FORM,
            b"grant_type=password&username=a&password=b&client_id=%01",
            TokenRequestError::InvalidParameter("client_id"),
        ),
        (
            FORM,
            b"grant_type=password&username=a&password=%e9",
            TokenRequestError::BadEncoding,
        ),
        (
            FORM,
            b"grant_type=password&username=a&password=\xff",
            TokenRequestError::BadEncoding,
        ),
    ];
    for (content_type, body, expected) in cases {
        assert_eq!(
            parse_token_post(*content_type, body).as_ref(),
            Err(expected),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let oversized = vec![b'a'; MAX_TOKEN_REQUEST_LEN + 1];
    assert_eq!(parse_token_post(FORM, &oversized), Err(TokenRequestError::TooLarge));
    assert_eq!(
        TokenRequestError::UnsupportedGrantType.oauth_error(),
        "unsupported_grant_type"
    );
    assert_eq!(TokenRequestError::TooLarge.oauth_error(), "invalid_request");
}

#[test]
fn request_errors_never_echo_values() {
    let error = parse_token_post(FORM, b"grant_type=hunter2").unwrap_err();
    assert!(!error.to_string().contains("hunter2"));
    let error = parse_token_post(FORM, b"grant_type=password&username=a&password=x&password=hunter2").unwrap_err();
    assert!(!error.to_string().contains("hunter2"));
}

// --- challenge, responses -------------------------------------------------

#[test]
fn challenge_format() {
    assert_eq!(
        challenge(&settings(), None, None),
        r#"Bearer realm="https://auth.example.com/token",service="registry.example.com""#
    );
    assert_eq!(
        challenge(
            &settings(),
            Some(&scope("repository", "samalba/my-app", &["pull", "push"])),
            Some("invalid_token")
        ),
        "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example.com\",\
         scope=\"repository:samalba/my-app:pull,push\",error=\"invalid_token\""
    );
}

#[test]
fn challenge_quoting_is_safe() {
    let hostile = TokenSettings {
        realm: "https://a\"b\\c/token\r\nSet-Cookie: x=1".to_string(),
        service: "svc\",scope=\"repository:*:*".to_string(),
        ..settings()
    };
    let value = challenge(&hostile, None, Some("bad\"\n"));
    assert_eq!(
        value,
        "Bearer realm=\"https://a\\\"b\\\\c/tokenSet-Cookie: x=1\",\
         service=\"svc\\\",scope=\\\"repository:*:*\",error=\"bad\\\"\""
    );
    assert!(http::HeaderValue::from_str(&value).is_ok());
}

#[test]
fn token_response_fields() {
    let issued = issue(&key(), &settings(), &alice(), &[pull("a")], "", true, at(NOW));
    let body: Value = serde_json::from_str(&token_response_json(&issued)).unwrap();
    assert_eq!(body["token"], issued.token.as_str());
    assert_eq!(body["access_token"], issued.token.as_str());
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["issued_at"], "2023-11-14T22:13:20Z");
    assert_eq!(body["scope"], "repository:a:pull");
    assert_eq!(body["refresh_token"], issued.refresh_token.unwrap().as_str());

    let anonymous = issue(&key(), &settings(), &Identity::anonymous(), &[], "", false, at(NOW));
    let body: Value = serde_json::from_str(&token_response_json(&anonymous)).unwrap();
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["scope"], "");
}

#[test]
fn error_bodies() {
    let body: Value = serde_json::from_str(&error_json("UNAUTHORIZED", "bad \"creds\"")).unwrap();
    assert_eq!(
        body,
        json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad \"creds\"", "detail": null}]})
    );
    let body: Value = serde_json::from_str(&oauth_error_json("invalid_grant", "wrong password")).unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "wrong password");
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let body: Value = serde_json::from_str(&oauth_error_json("unsupported_grant_type", "no")).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
}

#[test]
fn rfc3339_formatting() {
    assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_utc(1_257_894_000), "2009-11-10T23:00:00Z");
    assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(rfc3339_utc(u64::MAX), "9999-12-31T23:59:59Z");
}

#[test]
fn issuing_with_a_clock_before_1970_yields_an_expired_token() {
    let issued = issue(
        &key(),
        &settings(),
        &alice(),
        &[],
        "",
        false,
        UNIX_EPOCH - Duration::from_secs(5),
    );
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, at(NOW)),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify_access(&key(), &settings(), &issued.token, UNIX_EPOCH - Duration::from_secs(5)),
        Err(TokenError::ClockBeforeEpoch)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn verify_never_panics_or_accepts_noise(token in "[A-Za-z0-9_.=-]{0,400}") {
        proptest::prop_assert!(verify_access(&key(), &settings(), &token, at(NOW)).is_err());
    }

    #[test]
    fn request_parsers_never_panic(input in ".{0,200}") {
        let _ = parse_token_get(&input);
        let _ = parse_token_post(FORM, input.as_bytes());
        let _ = parse_scopes(&[&input]);
    }

    #[test]
    fn challenge_is_always_a_valid_header(realm in ".{0,40}", service in ".{0,40}") {
        let hostile = TokenSettings { realm, service, ..settings() };
        let value = challenge(&hostile, None, Some("invalid_token"));
        proptest::prop_assert!(http::HeaderValue::from_str(&value).is_ok());
    }
}
