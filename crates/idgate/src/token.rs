//! Step 2: take a compact JWS apart strictly, without trusting any of it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Reason;
use crate::segment::SegmentError;
pub use crate::segment::{Items, Json, Segment};
use crate::verifier::Rejection;

/// A token whose segments decode and whose header and claims are JSON
/// objects without duplicate members. Nothing in it is verified yet. Its
/// `Debug` shows the header and the claims' names, never the segments
/// (together they are the token).
#[derive(Clone)]
pub struct UnverifiedToken<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The payload segment as sent (base64url).
    pub payload_b64: &'a str,
    /// The signature segment as sent (base64url).
    pub signature_b64: &'a str,
    /// The signature segment decoded: the bytes the key checks.
    pub signature: Vec<u8>,
    /// The decoded header.
    pub header: Segment,
    /// The decoded claims (the payload).
    pub claims: Segment,
}

impl std::fmt::Debug for UnverifiedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header: Vec<_> = self.header.members().collect();
        f.debug_struct("UnverifiedToken")
            .field("header", &header)
            .field("claim_names", &self.claims.names().collect::<Vec<_>>())
            .field("signature_b64_bytes", &self.signature_b64.len())
            .finish_non_exhaustive()
    }
}

impl<'a> UnverifiedToken<'a> {
    /// Split and decode `token`. Rejects anything but three segments of
    /// canonical unpadded base64url whose first two are duplicate-free JSON
    /// objects.
    pub fn parse(token: &'a str) -> Result<Self, Rejection> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a JWS has three segments"));
        };
        let header = json_object(b64(h, "header")?, "header")?;
        let claims = json_object(b64(p, "payload")?, "payload")?;
        // The signature must decode too; its emptiness is judged after the
        // algorithm, so that `alg: none` reports as what it is.
        let signature = b64(s, "signature")?;
        Ok(UnverifiedToken {
            signing_input: &token[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature_b64: s,
            signature,
            header,
            claims,
        })
    }

    /// A string header field.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.str(name)
    }

    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.str(name)
    }
}

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Rejection {
    Rejection::new(Reason::MalformedToken, detail)
}

/// Canonical unpadded base64url: the engine refuses padding and non-zero
/// trailing bits, so each byte string has exactly one accepted encoding.
fn b64(segment: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(format!("{what} is not canonical unpadded base64url")))
}

fn json_object(bytes: Vec<u8>, what: &str) -> Result<Segment, Rejection> {
    Segment::parse(bytes).map_err(|e| {
        malformed(match e {
            SegmentError::NotObject => format!("{what} is not a JSON object"),
            SegmentError::Duplicate => format!("{what} has a duplicate member"),
            SegmentError::Invalid => format!("{what} is not valid JSON"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"a":[1,{"b":2}]}"#),
            enc("sig")
        );
        let u = UnverifiedToken::parse(&t).unwrap();
        assert_eq!(u.header_str("alg"), Some("RS256"));
        assert_eq!(u.signing_input, &t[..t.rfind('.').unwrap()]);
        assert_eq!(u.signature, b"sig");
        // No segment of the token in its Debug, so none in a log line.
        let debug = format!("{u:?}");
        for segment in t.split('.') {
            assert!(!debug.contains(segment), "{debug}");
        }
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        for claims in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"b":1,"b":1}}"#,
            r#"{"x":[{"c":1,"c":2}]}"#,
        ] {
            let t = format!("{}.{}.{}", enc(r#"{"alg":"RS256"}"#), enc(claims), enc("s"));
            let r = UnverifiedToken::parse(&t).unwrap_err();
            assert_eq!(r.reason, Reason::MalformedToken);
            assert!(r.detail.contains("duplicate"), "{claims}: {}", r.detail);
        }
        let t = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","alg":"none"}"#),
            enc("{}"),
            enc("s")
        );
        assert!(
            UnverifiedToken::parse(&t)
                .unwrap_err()
                .detail
                .contains("duplicate")
        );
    }

    #[test]
    fn rejects_non_canonical_base64_and_shapes() {
        let h = enc(r#"{"alg":"RS256"}"#);
        let c = enc("{}");
        let bad = [
            format!("{h}.{c}"),
            format!("{h}.{c}.s.x"),
            format!("{h}=.{c}.c2ln"),
            format!("{h}.{c}.c2ln="),
            format!("{h}.{c}.ab+c"),
            format!("{h}.{c}.ab/c"),
            // "e30" is "{}"; "e31" differs only in trailing bits.
            format!("{h}.e31.c2ln"),
            format!("{h}.{}.c2ln", enc("[]")),
            format!("{h}.{}.c2ln", enc("{")),
        ];
        for t in bad {
            assert_eq!(
                UnverifiedToken::parse(&t).unwrap_err().reason,
                Reason::MalformedToken,
                "{t}"
            );
        }
        assert!(UnverifiedToken::parse(&format!("{h}.e30.c2ln")).is_ok());
    }
}
