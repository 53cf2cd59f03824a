//! What the OIDC tests and bench need: keys they generate (RSA 2048, P-256), tokens they sign
//! in the shapes GitHub Actions and Kubernetes issue, and a JWKS server on 127.0.0.1 that counts
//! requests and can be switched off, broken, made to hang, and given other keys.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const GITHUB: &str = "https://token.actions.githubusercontent.com";
pub const KUBERNETES: &str = "https://kubernetes.default.svc.cluster.local";
pub const AUDIENCE: &str = "registry.example.com";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_else(|e| panic!("clock before 1970: {e}"))
}

fn or_panic<T, E: std::fmt::Debug>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A key pair made by the test, its public half as a JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`): what a key-confusion attacker
    /// uses as an HMAC secret.
    pub public_pem: String,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> SigningKey {
        let pair = or_panic(
            "RSA key generation",
            aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048),
        );
        let pkcs8: Pkcs8V1Der = or_panic("PKCS#8", pair.as_der());
        let encoding = or_panic(
            "RSA signing key",
            EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()),
        );
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let spki: PublicKeyX509Der = or_panic("SPKI", pair.public_key().as_der());
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding,
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    pub fn p256(kid: &str) -> SigningKey {
        let pair = or_panic(
            "P-256 key generation",
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING),
        );
        let pkcs8 = or_panic("PKCS#8", pair.to_pkcs8v1());
        let point = pair.public_key().as_ref();
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
            public_pem: String::new(),
        }
    }

    pub fn p384(kid: &str) -> SigningKey {
        let pair = or_panic(
            "P-384 key generation",
            EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING),
        );
        let pkcs8 = or_panic("PKCS#8", pair.to_pkcs8v1());
        let point = pair.public_key().as_ref();
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::ES384,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-384", "use": "sig", "alg": "ES384", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..49]), "y": URL_SAFE_NO_PAD.encode(&point[49..97]),
            }),
            public_pem: String::new(),
        }
    }

    pub fn ed25519(kid: &str) -> SigningKey {
        let pair = or_panic("Ed25519 key generation", Ed25519KeyPair::generate());
        let pkcs8 = or_panic("PKCS#8", pair.to_pkcs8());
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
            public_pem: String::new(),
        }
    }

    /// Signs with another algorithm of the key's family (an RSA key: RS384, PS256, ...).
    pub fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// The JWK without `alg` and `use`, as some issuers publish them.
    pub fn bare_jwk(&self) -> Value {
        let mut jwk = self.jwk.clone();
        if let Some(object) = jwk.as_object_mut() {
            object.remove("alg");
            object.remove("use");
        }
        jwk
    }

    /// Signs `claims` with this key, `kid` and `typ: JWT` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_string());
        self.sign_with(&header, claims)
    }

    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        or_panic("signing", jsonwebtoken::encode(header, claims, &self.encoding))
    }
}

/// Signs header and claims as given (any `alg`, any fields) with `key`, for tokens the library
/// would not make: the header is not checked against the key.
pub fn sign_raw(header: &Value, claims: &Value, key: &SigningKey) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = or_panic(
        "signing",
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg),
    );
    format!("{message}.{signature}")
}

/// `header.claims.signature` from JSON, the signature given as is.
pub fn assemble(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The three parts of a token, header and claims decoded.
pub fn split(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |part: &str| -> Value {
        or_panic(
            "JSON",
            serde_json::from_slice(&or_panic("base64url", URL_SAFE_NO_PAD.decode(part))),
        )
    };
    (decode(parts[0]), decode(parts[1]), parts[2].to_string())
}

pub fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// The claims of a GitHub Actions OIDC token for a push to main of `repository`, as GitHub's
/// documentation shows them; valid for 5 minutes from now.
pub fn github_claims(repository: &str) -> Value {
    let now = now();
    let owner = repository.split('/').next().unwrap_or(repository);
    json!({
        "jti": "8ea8373e-0f9d-489d-a480-ac37deadbeef",
        "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "aud": AUDIENCE,
        "ref": "refs/heads/main",
        "sha": "d6e7c7ee1a9ab64ecdbd2ddcdbf0e3ec1bd8ab91",
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": "65",
        "repository_id": "74",
        "repository_visibility": "private",
        "run_id": "8712345678",
        "run_number": "10",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "12",
        "workflow": "release",
        "workflow_ref": format!("{repository}/.github/workflows/release.yml@refs/heads/main"),
        "job_workflow_ref": format!("{repository}/.github/workflows/release.yml@refs/heads/main"),
        "event_name": "push",
        "ref_type": "branch",
        "head_ref": "",
        "base_ref": "",
        "runner_environment": "github-hosted",
        "iss": GITHUB,
        "nbf": now - 5,
        "iat": now - 5,
        "exp": now + 300,
    })
}

/// The claims of a Kubernetes projected service-account token (`serviceAccountToken` volume
/// with `audience`), valid for an hour from now.
pub fn kubernetes_claims(namespace: &str, account: &str) -> Value {
    let now = now();
    json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now - 5,
        "nbf": now - 5,
        "iss": KUBERNETES,
        "jti": "4b9b3d5f-6a5c-4d0e-9b1f-2f1c2e3d4a5b",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "9a0b8c7d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"},
            "pod": {"name": format!("{account}-7d9f8b6c5-x2x4z"), "uid": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"},
            "serviceaccount": {"name": account, "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"},
            "warnafter": now + 3000,
        },
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
    })
}

/// How the JWKS server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the key set.
    Serve,
    /// This status, with the key set as the body.
    Status(u16),
    /// Reads the request and never answers.
    Hang,
}

struct State {
    body: Mutex<String>,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    stop: AtomicBool,
}

/// A JWKS endpoint on 127.0.0.1: one thread, one request per connection.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Serving `body` at `http://127.0.0.1:PORT/jwks`.
    pub fn start(body: &str) -> JwksServer {
        let mut server = JwksServer::down(body);
        server.resume();
        server
    }

    /// A port nothing listens on yet (connections are refused) until `resume`.
    pub fn down(body: &str) -> JwksServer {
        let probe = or_panic("bind 127.0.0.1:0", TcpListener::bind("127.0.0.1:0"));
        let addr = or_panic("local address", probe.local_addr());
        drop(probe);
        JwksServer {
            addr,
            state: Arc::new(State {
                body: Mutex::new(body.to_string()),
                mode: Mutex::new(Mode::Serve),
                requests: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
            thread: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks", self.addr)
    }

    /// Requests received (whatever they were answered).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, body: &str) {
        *self.state.body.lock().unwrap_or_else(|e| e.into_inner()) = body.to_string();
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Stops listening: connections are refused until `resume`.
    pub fn stop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        if self.thread.is_some() {
            return;
        }
        self.state.stop.store(false, Ordering::SeqCst);
        let listener = or_panic(&format!("bind {}", self.addr), TcpListener::bind(self.addr));
        or_panic("nonblocking", listener.set_nonblocking(true));
        let state = Arc::clone(&self.state);
        self.thread = Some(std::thread::spawn(move || serve(listener, &state)));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, state: &State) {
    // Connections told to hang stay open until the server stops.
    let mut hanging: Vec<TcpStream> = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(stream) = answer(stream, state) {
                    hanging.push(stream);
                }
            }
            // Nothing to accept: look again shortly (this is the server's accept loop).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer(mut stream: TcpStream, state: &State) -> Option<TcpStream> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap_or_else(|e| e.into_inner());
    let body = state.body.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let status = match mode {
        Mode::Hang => return Some(stream),
        Mode::Serve => 200,
        Mode::Status(status) => status,
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    None
}
