//! Step 1: find the credential in a request, as Cloud Run does.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};

use crate::Reason;
use crate::verifier::Rejection;

/// The header Cloud Run reads before `Authorization`, so that an app can use
/// `Authorization` for its own scheme.
pub const X_SERVERLESS_AUTHORIZATION: &str = "x-serverless-authorization";

/// Which header carried the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `X-Serverless-Authorization`.
    XServerlessAuthorization,
    /// `Authorization`.
    Authorization,
}

/// [`X_SERVERLESS_AUTHORIZATION`] as a header name, parsed once: a lookup by
/// `&str` parses and checks the name on every request.
const X_SERVERLESS_AUTHORIZATION_NAME: HeaderName =
    HeaderName::from_static(X_SERVERLESS_AUTHORIZATION);

impl CredentialHeader {
    /// The header's lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            CredentialHeader::XServerlessAuthorization => X_SERVERLESS_AUTHORIZATION,
            CredentialHeader::Authorization => "authorization",
        }
    }

    /// The header's name, for a `HeaderMap` (no parsing, no allocation).
    pub fn header_name(self) -> HeaderName {
        match self {
            CredentialHeader::XServerlessAuthorization => X_SERVERLESS_AUTHORIZATION_NAME,
            CredentialHeader::Authorization => AUTHORIZATION,
        }
    }
}

/// A bearer token and where it came from. Its `Debug` shows the token's
/// length, never the token: a `?credential` in a log line must not leak it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The token text, without scheme or surrounding whitespace.
    pub token: &'a str,
    /// The header that carried it.
    pub header: CredentialHeader,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token_bytes", &self.token.len())
            .field("header", &self.header)
            .finish()
    }
}

/// Find the bearer token in `headers`.
///
/// `X-Serverless-Authorization` wins over `Authorization` when both are
/// present. The scheme is `Bearer`, case-insensitive, then one or more
/// spaces; surrounding whitespace is ignored. Two values of the chosen
/// header, an empty token, a token with characters outside the JWS alphabet,
/// or a header longer than `max_token_bytes` (checked before anything else
/// is looked at) are rejected. `Ok(None)` means no credential at all, which
/// only an `allUsers` binding admits. Query strings and cookies are never
/// read.
pub fn extract(
    headers: &HeaderMap,
    max_token_bytes: usize,
) -> Result<Option<Credential<'_>>, Rejection> {
    let found = find(headers, max_token_bytes)?;
    if let Some(cred) = &found
        && !is_jws_text(cred.token.as_bytes())
    {
        return Err(Rejection::new(
            Reason::MalformedToken,
            "token has characters outside the base64url alphabet",
        ));
    }
    Ok(found)
}

/// [`extract`] without the alphabet check, for a token looked up in the
/// verified-token cache before anything else: a hit is a token that
/// verified, so its alphabet passed then, and the check reads every byte
/// of the token on every request (BENCHMARKS.md, "Stop 46"). The gate
/// checks the alphabet of a token the cache does not hold, with
/// [`extract`], before verifying it.
pub(crate) fn find(
    headers: &HeaderMap,
    max_token_bytes: usize,
) -> Result<Option<Credential<'_>>, Rejection> {
    let header = if headers.contains_key(X_SERVERLESS_AUTHORIZATION_NAME) {
        CredentialHeader::XServerlessAuthorization
    } else if headers.contains_key(AUTHORIZATION) {
        CredentialHeader::Authorization
    } else {
        return Ok(None);
    };
    let name = header.name();
    let mut values = headers.get_all(header.header_name()).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::new(
            Reason::MultipleTokens,
            format!("{name} appears more than once"),
        ));
    }
    // Leave room for "Bearer " and some whitespace; the token itself is
    // checked against the limit exactly below.
    if value.len() > max_token_bytes.saturating_add(64) {
        return Err(too_large(value.len(), max_token_bytes));
    }
    // UTF-8 validation gives the `&str` in one fast scan on ASCII (http
    // 1.5's `to_str` is a vectorized scan too, so either would do). The
    // token's alphabet is checked exactly below.
    let value = std::str::from_utf8(value.as_bytes())
        .map_err(|_| {
            Rejection::new(
                Reason::MalformedToken,
                format!("{name} is not visible ASCII"),
            )
        })?
        .trim_matches([' ', '\t']);
    let token = bearer_token(value).ok_or_else(|| {
        Rejection::new(
            Reason::MalformedToken,
            format!("{name} does not hold a Bearer token"),
        )
    })?;
    if token.len() > max_token_bytes {
        return Err(too_large(token.len(), max_token_bytes));
    }
    if token.is_empty() {
        return Err(Rejection::new(
            Reason::MalformedToken,
            format!("{name} has an empty token"),
        ));
    }
    Ok(Some(Credential { token, header }))
}

fn too_large(len: usize, max: usize) -> Rejection {
    Rejection::new(
        Reason::TokenTooLarge,
        format!("credential is {len} bytes, over the limit of {max}"),
    )
}

/// Whether every byte is base64url or `.`. No early exit inside a chunk,
/// so the compiler vectorizes it: about 10x faster than `all()` with
/// short-circuiting `||` on a 1 KB token.
fn is_jws_text(bytes: &[u8]) -> bool {
    fn ok(b: u8) -> bool {
        (b.wrapping_sub(b'0') < 10)
            | ((b | 0x20).wrapping_sub(b'a') < 26)
            | (b == b'-')
            | (b == b'_')
            | (b == b'.')
    }
    bytes
        .chunks(64)
        .all(|chunk| chunk.iter().fold(true, |all, &b| all & ok(b)))
}

/// `Bearer <token>` with a case-insensitive scheme and one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn reason(r: Result<Option<Credential<'_>>, Rejection>) -> Reason {
        r.unwrap_err().reason
    }

    #[test]
    fn debug_never_shows_the_token() {
        let h = headers(&[("authorization", "Bearer abc.def.ghi")]);
        let c = extract(&h, 1024).unwrap().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("abc.def.ghi"), "{debug}");
        assert!(debug.contains("token_bytes: 11"), "{debug}");
    }

    #[test]
    fn bearer_parsing_follows_rfc7235() {
        for v in [
            "Bearer a.b.c",
            "bearer a.b.c",
            "BEARER   a.b.c",
            "  Bearer a.b.c \t",
        ] {
            let h = headers(&[("authorization", v)]);
            let c = extract(&h, 100).unwrap().unwrap();
            assert_eq!(c.token, "a.b.c", "{v:?}");
            assert_eq!(c.header, CredentialHeader::Authorization);
        }
        for v in [
            "Basic a.b.c",
            "Bearera.b.c",
            "Bearer",
            "a.b.c",
            "Bearer\ta.b.c",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(reason(extract(&h, 100)), Reason::MalformedToken, "{v:?}");
        }
        let h = headers(&[("authorization", "Bearer    ")]);
        assert_eq!(reason(extract(&h, 100)), Reason::MalformedToken);
        let h = headers(&[("authorization", "Bearer a.b c")]);
        assert_eq!(reason(extract(&h, 100)), Reason::MalformedToken);
    }

    #[test]
    fn jws_alphabet() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
            assert_eq!(is_jws_text(&[b]), want, "{b}");
        }
    }

    #[test]
    fn serverless_header_wins() {
        let h = headers(&[
            ("authorization", "Bearer app.own.token"),
            ("x-serverless-authorization", "Bearer x.y.z"),
        ]);
        let c = extract(&h, 100).unwrap().unwrap();
        assert_eq!(c.token, "x.y.z");
        assert_eq!(c.header, CredentialHeader::XServerlessAuthorization);
    }

    #[test]
    fn duplicates_size_and_absence() {
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        assert_eq!(reason(extract(&h, 100)), Reason::MultipleTokens);
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer a.b.c"),
        ]);
        assert_eq!(reason(extract(&h, 100)), Reason::MultipleTokens);
        let h = headers(&[("authorization", &format!("Bearer {}", "a".repeat(101)))]);
        assert_eq!(reason(extract(&h, 100)), Reason::TokenTooLarge);
        let h = headers(&[("authorization", &format!("Bearer {}", "a".repeat(100)))]);
        assert!(extract(&h, 100).unwrap().is_some());
        assert_eq!(extract(&HeaderMap::new(), 100).unwrap(), None);
    }
}
