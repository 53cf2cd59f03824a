//! Strict percent-decoding, the one decoder for request targets and token endpoint forms: every
//! `%` must start a two-hex-digit escape. Nothing is passed through undecoded, because a byte
//! that csel-auth and the server behind nginx could read in two ways must be refused, not guessed.

/// Why a text could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PercentError {
    /// The `%` at this byte offset is not followed by two hex digits.
    BadEscape { at: usize },
    /// An escape decodes to a byte the caller refuses.
    Refused { byte: u8 },
}

/// Decodes `%XX` escapes once; with `plus_is_space`, `+` is a space (form and query encoding).
/// An escape that decodes to one of `refused` is an error.
pub(crate) fn decode(raw: &str, plus_is_space: bool, refused: &[u8]) -> Result<Vec<u8>, PercentError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let mut value = [0u8; 1];
                let escape = bytes.get(i + 1..i + 3).ok_or(PercentError::BadEscape { at: i })?;
                hex::decode_to_slice(escape, &mut value).map_err(|_| PercentError::BadEscape { at: i })?;
                if refused.contains(&value[0]) {
                    return Err(PercentError::Refused { byte: value[0] });
                }
                decoded.push(value[0]);
                i += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                i += 1;
            }
            other => {
                decoded.push(other);
                i += 1;
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_once_and_must_be_complete() {
        assert_eq!(decode("a%2fb%2F%41", false, b""), Ok(b"a/b/A".to_vec()));
        assert_eq!(decode("%2541", false, b""), Ok(b"%41".to_vec()));
        assert_eq!(decode("a+b", false, b""), Ok(b"a+b".to_vec()));
        assert_eq!(decode("a+b", true, b""), Ok(b"a b".to_vec()));
        for bad in ["%", "%4", "%4g", "%g4", "a%", "%%41", "%+1"] {
            assert!(
                matches!(decode(bad, true, b""), Err(PercentError::BadEscape { .. })),
                "{bad}"
            );
        }
        assert_eq!(decode("ab%zz", false, b""), Err(PercentError::BadEscape { at: 2 }));
        assert_eq!(decode("a%2Fb", false, b"/"), Err(PercentError::Refused { byte: b'/' }));
        assert_eq!(decode("a/b", false, b"/"), Ok(b"a/b".to_vec()));
    }
}
