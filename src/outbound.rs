//! What csel-auth asks of other services over HTTP (a JWT issuer's keys, the registry's own
//! address): their failures told in full.

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
