//! The stable reason codes for every decision idgate makes.

use std::fmt;

/// Why a request was refused. Each variant has one stable code (see
/// [`Reason::as_str`]) used alike in logs, metrics, `idgate check` and
/// response bodies; users' dashboards and scripts depend on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// No credential in the request and the policy does not admit `allUsers`.
    MissingToken,
    /// The chosen credential header appears more than once.
    MultipleTokens,
    /// The credential is not a well-formed `Bearer` JWT (scheme, base64url,
    /// JSON, duplicate members, missing or mistyped claims or header fields).
    MalformedToken,
    /// The token is longer than the configured limit.
    TokenTooLarge,
    /// The `alg` is not allowed for the issuer, or `crit` names an extension
    /// we do not understand.
    UnsupportedAlgorithm,
    /// The `iss` claim names no configured issuer.
    UnknownIssuer,
    /// No key with the token's `kid`, even after a refresh.
    UnknownKey,
    /// The signature does not verify with the issuer's key.
    BadSignature,
    /// `exp` is in the past (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `iat` is in the future (beyond the clock skew).
    IssuedInFuture,
    /// `exp - iat` exceeds the configured maximum lifetime.
    LifetimeTooLong,
    /// `aud` is not one of the configured audiences.
    AudienceMismatch,
    /// The token's email is not verified, and nothing else admitted it.
    EmailUnverified,
    /// No keys have ever been loaded for the token's issuer.
    KeysUnavailable,
    /// The token is valid but the policy does not allow its principal.
    NotAllowed,
}

impl Reason {
    /// Every reason, in a stable order (for metrics pre-registration and docs).
    pub const ALL: &'static [Reason] = &[
        Reason::MissingToken,
        Reason::MultipleTokens,
        Reason::MalformedToken,
        Reason::TokenTooLarge,
        Reason::UnsupportedAlgorithm,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::AudienceMismatch,
        Reason::EmailUnverified,
        Reason::KeysUnavailable,
        Reason::NotAllowed,
    ];

    /// The stable snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MultipleTokens => "multiple_tokens",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::EmailUnverified => "email_unverified",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::NotAllowed => "not_allowed",
        }
    }

    /// Parse a code produced by [`Reason::as_str`].
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == code)
    }

    /// What kind of refusal this is, which decides the response status.
    pub const fn class(self) -> DenialClass {
        match self {
            Reason::KeysUnavailable => DenialClass::Unavailable,
            Reason::NotAllowed | Reason::EmailUnverified => DenialClass::Forbidden,
            _ => DenialClass::Unauthenticated,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three kinds of refusal, each with its own status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialClass {
    /// No valid credential: 401 (gRPC 16 UNAUTHENTICATED).
    Unauthenticated,
    /// A valid credential whose principal is not allowed: 403 (gRPC 7).
    Forbidden,
    /// We cannot decide because no keys were ever loaded: 503 (gRPC 14).
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {r}");
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }
}
