//! What csel-auth asks of other services over HTTP (a JWT issuer's keys, the registry's own
//! address): one way to build the client, and their failures told in full.

use std::path::Path;
use std::time::Duration;

/// The largest CA file read: certificates, not data.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// How csel-auth talks to one service.
pub(crate) struct ClientSettings<'a> {
    /// For the connection and for the whole request.
    pub timeout: Duration,
    /// The service is on the inside (a loopback sidecar, the registry): an `HTTP_PROXY` meant
    /// for the outside must not catch it.
    pub no_proxy: bool,
    /// PEM certificates: when given, the only ones trusted for `https://` (else the system's).
    pub ca_file: Option<&'a Path>,
}

/// The client for one service. Redirects are never followed: a service answers where it was
/// configured to be, and a redirect could lead anywhere, even to plain http.
pub(crate) fn http_client(settings: &ClientSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("csel-auth/", env!("CARGO_PKG_VERSION")));
    if settings.no_proxy {
        builder = builder.no_proxy();
    }
    if let Some(path) = settings.ca_file {
        builder = builder.tls_certs_only(certificates(path)?);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", describe(&e)))
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let shown = path.display();
    let pem = match crate::files::read_bounded(path, MAX_CA_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::files::ReadError::TooLarge(_)) => {
            return Err(format!(
                "ca_file {shown} is larger than {MAX_CA_FILE_BYTES} bytes: is it the right file?"
            ))
        }
        Err(crate::files::ReadError::Io(e)) => return Err(format!("ca_file {shown}: cannot read it: {e}")),
    };
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {shown}: not PEM certificates: {}", describe(&e)))?;
    if certificates.is_empty() {
        return Err(format!(
            "ca_file {shown}: no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certificates)
}

/// reqwest's message with its causes, which say what actually went wrong (refused, timeout,
/// certificate).
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        message.push_str(" (timed out)");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca_file: &Path) -> ClientSettings<'_> {
        ClientSettings {
            timeout: Duration::from_secs(1),
            no_proxy: true,
            ca_file: Some(ca_file),
        }
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = http_client(&settings(&missing)).unwrap_err();
        assert!(error.contains("missing.pem: cannot read it"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = http_client(&settings(&empty)).unwrap_err();
        assert!(error.contains("no certificate in it"), "{error}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = http_client(&settings(&broken)).unwrap_err();
        assert!(error.contains("broken.pem"), "{error}");
    }
}
