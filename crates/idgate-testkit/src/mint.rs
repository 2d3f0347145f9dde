use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::TestKey;

/// Lifetime of the tokens [`google_claims`] describes, as Google's own.
pub(crate) const DEFAULT_TTL_SECS: u64 = 3600;

/// Base64url without padding, the encoding of every JWS segment.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch, from the system clock (0 if it reads before
/// 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The header Google puts on its ID tokens: `{"alg":"RS256","kid":…,"typ":"JWT"}`.
pub fn default_header(key: &TestKey) -> Value {
    json!({ "alg": "RS256", "kid": key.kid(), "typ": "JWT" })
}

/// Signs `header.claims` with `key` (RS256), whatever the header says: it may
/// name another algorithm, another kid, or none.
pub fn mint(key: &TestKey, header: &Value, claims: &Value) -> String {
    mint_raw(key, &header.to_string(), &claims.to_string())
}

/// Signs raw JSON text, for tokens no [`Value`] can hold (duplicate members,
/// odd whitespace, invalid JSON).
pub fn mint_raw(key: &TestKey, header_json: &str, claims_json: &str) -> String {
    mint_segments(
        key,
        &b64url(header_json.as_bytes()),
        &b64url(claims_json.as_bytes()),
    )
}

/// Signs exactly these two segment strings, which need not be canonical
/// base64url (padding, `+`/`/`, non-zero trailing bits, …).
pub fn mint_segments(key: &TestKey, header_b64: &str, claims_b64: &str) -> String {
    let signing_input = format!("{header_b64}.{claims_b64}");
    let signature = key.sign_rs256(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&signature))
}

/// Signs with HMAC-SHA256 (HS256) under `secret`; with a public key's PEM as
/// the secret this is the classic RS256/HS256 key-confusion attack.
pub fn mint_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

/// A token with an empty signature segment: `header.claims.` (what
/// `"alg":"none"` tokens look like).
pub fn mint_unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A Google-style numeric subject for `email`: 21 digits, stable for an email
/// whatever its ASCII case, different between emails.
pub fn stable_sub(email: &str) -> String {
    let hash = digest::digest(&digest::SHA256, email.to_ascii_lowercase().as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_ref()[..16]);
    let digits = u128::from_be_bytes(first) % 10u128.pow(20);
    format!("1{digits:020}")
}

/// The claims of a Google ID token for `email`, minted for `audience` at
/// `now`: `iss`, `azp` (the numeric subject, as for a service account),
/// `aud`, `sub` ([`stable_sub`]), `email`, `email_verified: true`,
/// `iat = now`, `exp = now + 3600`.
pub fn google_claims(iss: &str, email: &str, audience: &str, now: u64) -> Value {
    let sub = stable_sub(email);
    json!({
        "iss": iss,
        "azp": sub,
        "aud": audience,
        "sub": sub,
        "email": email,
        "email_verified": true,
        "iat": now,
        "exp": now.saturating_add(DEFAULT_TTL_SECS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    #[test]
    fn mint_signs_the_given_header_verbatim() {
        let key = TestKey::generate("k");
        let header = json!({"alg": "none", "kid": "k"});
        let token = mint(&key, &header, &json!({"a": 1}));
        let parts = segments(&token);
        assert_eq!(parts.len(), 3);
        let decoded: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 256);
    }

    #[test]
    fn mint_raw_keeps_duplicate_members() {
        let key = TestKey::generate("k");
        let token = mint_raw(&key, r#"{"alg":"RS256","alg":"none"}"#, r#"{"a":1}"#);
        let header = URL_SAFE_NO_PAD.decode(segments(&token)[0]).unwrap();
        assert_eq!(header, br#"{"alg":"RS256","alg":"none"}"#);
    }

    #[test]
    fn mint_segments_keeps_the_segments() {
        let key = TestKey::generate("k");
        let token = mint_segments(&key, "e30=", "e30");
        assert!(token.starts_with("e30=.e30."));
    }

    #[test]
    fn unsigned_has_an_empty_signature() {
        let token = mint_unsigned(&json!({"alg": "none"}), &json!({}));
        assert!(token.ends_with('.'));
        assert_eq!(segments(&token).len(), 3);
        assert_eq!(segments(&token)[2], "");
    }

    #[test]
    fn hs256_matches_an_independent_hmac() {
        let token = mint_hs256(b"secret", &json!({"alg": "HS256"}), &json!({"x": 1}));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        hmac::verify(
            &key,
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn sub_is_stable_digits() {
        let a = stable_sub("Alice@Example.com");
        assert_eq!(a, stable_sub("alice@example.com"));
        assert_ne!(a, stable_sub("bob@example.com"));
        assert_eq!(a.len(), 21);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn google_claims_shape() {
        let c = google_claims("https://iss", "a@b.c", "aud", 1000);
        assert_eq!(c["iss"], "https://iss");
        assert_eq!(c["aud"], "aud");
        assert_eq!(c["email"], "a@b.c");
        assert_eq!(c["email_verified"], true);
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["exp"], 4600);
        assert_eq!(c["sub"], c["azp"]);
    }
}
