//! The verified caller: what a good token says about who is calling.

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::segment::{Field, Text};
use crate::token::{Json, Segment};

/// A verified identity. Cheap to clone (one `Arc`).
///
/// Built only by the [`Verifier`](crate::Verifier) from a token whose
/// signature, issuer, audience and times all checked out (or by
/// [`Identity::from_verified_claims`] in tests and tools that verified by
/// other means).
#[derive(Clone)]
pub struct Identity(Arc<Inner>);

struct Inner {
    issuer_name: Arc<str>,
    pool: Option<Arc<str>>,
    google: bool,
    email_verified: bool,
    issued_at: u64,
    expires_at: u64,
    /// The token's payload as JSON text, then the claim strings it does not
    /// spell byte for byte (those with escapes; all of them, for an identity
    /// from [`Identity::from_verified_claims`]), in one buffer: the
    /// verified-token cache holds thousands of identities, and the claims
    /// the headers and the policy read are slices of the payload rather
    /// than copies. A `str`, so a claim is a slice with no UTF-8 check on
    /// each read, and one allocation (a `Bytes` of it took a second, for
    /// its reference count, the first time a header shared it).
    text: Box<str>,
    /// The payload's length: it is `text[..json_len]`.
    json_len: u32,
    issuer: Span,
    subject: Span,
    email: Option<Span>,
    hosted_domain: Option<Span>,
    audience: Span,
    // The claims map costs more memory than the rest of an identity, and
    // the verified-token cache holds thousands; most requests never look
    // at it, so it is parsed again from the payload on first use.
    claims: OnceLock<Map<String, Value>>,
}

/// Where one string sits in `Inner::text`.
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// The places of an identity's strings in its text.
struct Strings {
    issuer: Span,
    subject: Span,
    email: Option<Span>,
    hosted_domain: Option<Span>,
    audience: Span,
}

/// Builds `Inner::text`: the payload's JSON first, then the strings copied
/// after it.
struct TextBuilder {
    text: Vec<u8>,
    json_len: usize,
}

/// Tokens are capped far below 4 GiB; saturate rather than wrap.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl TextBuilder {
    /// A claim string of the payload: its place in the text when the
    /// payload spells it byte for byte, else a copy at the end; empty when
    /// the payload has no such string.
    fn place(&mut self, value: Option<&Text>) -> Span {
        match value {
            Some(Text::At { start, end }) => Span {
                start: *start,
                end: *end,
            },
            Some(Text::Copy(s)) => self.copy(s),
            None => self.copy(""),
        }
    }

    /// A copy of `value` at the end of the text.
    fn copy(&mut self, value: &str) -> Span {
        let start = self.text.len();
        self.text.extend_from_slice(value.as_bytes());
        Span {
            start: offset(start),
            end: offset(self.text.len()),
        }
    }
}

/// The issuer facts an identity carries: which configured issuer vouched for
/// it, and how its subjects are named in IAM.
#[derive(Debug, Clone)]
pub struct IssuerTag {
    /// The configured issuer's name (`google` for the Google preset).
    pub name: Arc<str>,
    /// Whether the issuer is Google (emails become `user:`/`serviceAccount:`).
    pub google: bool,
    /// For non-Google issuers, the workload identity pool path that
    /// `principal://` and `principalSet://` members name, without the scheme:
    /// `iam.googleapis.com/projects/P/locations/global/workloadIdentityPools/POOL`.
    pub pool: Option<Arc<str>>,
}

/// How IAM names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `user:EMAIL`.
    User(String),
    /// `serviceAccount:EMAIL`.
    ServiceAccount(String),
    /// `principal://POOL/subject/SUB` for a pool issuer, or `subject:SUB`
    /// when the token has no verified email and no pool.
    Subject {
        /// The issuer's pool path, when configured.
        pool: Option<Arc<str>>,
        /// The `sub` claim.
        subject: String,
    },
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let borrowed = match self {
            Principal::User(e) => PrincipalRef::User(e),
            Principal::ServiceAccount(e) => PrincipalRef::ServiceAccount(e),
            Principal::Subject { pool, subject } => PrincipalRef::Subject(pool.as_ref(), subject),
        };
        borrowed.parts().iter().try_for_each(|p| f.write_str(p))
    }
}

/// A NumericDate (RFC 7519 §2) in whole seconds: a non-negative number,
/// its fraction truncated. The verifier and [`Identity`] must read `exp`
/// and `iat` alike, or an accepted `"exp": 1.5e9` would read as 0 here;
/// `idgate check` reads them with it too, so its report says what the
/// verifier read.
pub fn numeric_date(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Some(f as u64),
        _ => None,
    }
}

/// Whether an email names a Google service account.
pub fn is_service_account_email(email: &str) -> bool {
    let suffix = ".gserviceaccount.com";
    email.len() > suffix.len()
        && email.as_bytes()[email.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

impl Identity {
    /// Build an identity from claims that were already verified. The claims
    /// must include string `iss`, `sub` and `aud` and numeric `iat`/`exp`;
    /// missing ones read as empty or zero. `payload_b64` is the token's
    /// payload segment, which must decode to `claims`; when empty (or not
    /// canonical unpadded base64url), the claims are encoded in its place.
    /// The identity's strings are the claims', copied (the verifier's
    /// identities point into the payload instead).
    pub fn from_verified_claims(
        tag: &IssuerTag,
        audience: String,
        claims: Map<String, Value>,
        payload_b64: String,
    ) -> Identity {
        let json = URL_SAFE_NO_PAD
            .decode(&payload_b64)
            .ok()
            .filter(|j| !j.is_empty() && std::str::from_utf8(j).is_ok())
            .unwrap_or_else(|| Value::Object(claims.clone()).to_string().into_bytes());
        let str_claim = |k: &str| claims.get(k).and_then(Value::as_str);
        let num_claim = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_number)
                .and_then(numeric_date)
                .unwrap_or(0)
        };
        let mut text = TextBuilder {
            json_len: json.len(),
            text: json,
        };
        let strings = Strings {
            issuer: text.copy(str_claim("iss").unwrap_or_default()),
            subject: text.copy(str_claim("sub").unwrap_or_default()),
            email: str_claim("email").map(|e| text.copy(e)),
            hosted_domain: str_claim("hd").map(|h| text.copy(h)),
            audience: text.copy(&audience),
        };
        Identity::build(
            tag,
            claims.get("email_verified") == Some(&Value::Bool(true)),
            (num_claim("iat"), num_claim("exp")),
            text,
            strings,
        )
    }

    /// The verifier's constructor, from the payload it verified: its
    /// strings are places in the payload's text, which the identity keeps.
    pub(crate) fn from_claims(tag: &IssuerTag, claims: Segment) -> Identity {
        let string = |k: &str| match claims.field(k) {
            Some(Field::String(t)) => Some(t.clone()),
            _ => None,
        };
        let num_claim = |k: &str| match claims.get(k) {
            Some(Json::Number(n)) => numeric_date(n).unwrap_or(0),
            _ => 0,
        };
        let (iss, sub, aud) = (string("iss"), string("sub"), string("aud"));
        let (email, hd) = (string("email"), string("hd"));
        // Only the JSON boolean `true` counts; the string "true" does not.
        let email_verified = matches!(claims.get("email_verified"), Some(Json::Bool(true)));
        let times = (num_claim("iat"), num_claim("exp"));
        let json = claims.into_json();
        let mut text = TextBuilder {
            json_len: json.len(),
            text: json,
        };
        let strings = Strings {
            issuer: text.place(iss.as_ref()),
            subject: text.place(sub.as_ref()),
            email: email.map(|e| text.place(Some(&e))),
            hosted_domain: hd.map(|h| text.place(Some(&h))),
            audience: text.place(aud.as_ref()),
        };
        Identity::build(tag, email_verified, times, text, strings)
    }

    fn build(
        tag: &IssuerTag,
        email_verified: bool,
        (issued_at, expires_at): (u64, u64),
        text: TextBuilder,
        s: Strings,
    ) -> Identity {
        Identity(Arc::new(Inner {
            issuer_name: tag.name.clone(),
            pool: tag.pool.clone(),
            google: tag.google,
            email_verified,
            issued_at,
            expires_at,
            json_len: offset(text.json_len),
            // The strict JSON parser refuses a payload with any byte that
            // is not UTF-8 (`a_payload_that_is_not_utf8_makes_no_identity`)
            // and the copies are `&str`s, so this never falls back; if it
            // did, every claim would read as empty and name no member.
            text: String::from_utf8(text.text)
                .map(String::into_boxed_str)
                .unwrap_or_default(),
            issuer: s.issuer,
            subject: s.subject,
            email: s.email,
            hosted_domain: s.hosted_domain,
            audience: s.audience,
            claims: OnceLock::new(),
        }))
    }

    /// One of the identity's strings. Every span was cut from a `&str` at
    /// its boundaries, so the lookup never fails.
    fn text(&self, span: Span) -> &str {
        self.0
            .text
            .get(span.start as usize..span.end as usize)
            .unwrap_or_default()
    }

    /// The `iss` claim as the token spelled it.
    pub fn issuer(&self) -> &str {
        self.text(self.0.issuer)
    }
    /// The name of the configured issuer that verified the token.
    pub fn issuer_name(&self) -> &str {
        &self.0.issuer_name
    }
    /// Whether the issuer's verified emails name IAM members: the Google
    /// issuer, or an extra issuer trusted for emails.
    pub fn is_google(&self) -> bool {
        self.0.google
    }
    /// The workload identity pool path of a non-Google issuer, if configured.
    pub fn pool(&self) -> Option<&str> {
        self.0.pool.as_deref()
    }
    /// The `sub` claim.
    pub fn subject(&self) -> &str {
        self.text(self.0.subject)
    }
    /// The `email` claim, verified or not.
    pub fn email(&self) -> Option<&str> {
        self.0.email.map(|e| self.text(e))
    }
    /// Whether `email_verified` is the JSON boolean `true`.
    pub fn email_verified(&self) -> bool {
        self.0.email_verified
    }
    /// The email, only when verified: the issuer's say-so. For an issuer
    /// whose emails do not name IAM members (an extra issuer without
    /// `trust_emails`), it can speak for any address: to learn who the
    /// caller is, use [`Identity::principal_email`] or
    /// [`Identity::principal`].
    pub fn verified_email(&self) -> Option<&str> {
        self.email().filter(|_| self.email_verified())
    }
    /// The email that names the caller in IAM (`user:` or
    /// `serviceAccount:`): verified, from Google or an issuer trusted for
    /// emails. `None` for callers named by subject.
    pub fn principal_email(&self) -> Option<&str> {
        match self.principal_ref() {
            PrincipalRef::ServiceAccount(e) | PrincipalRef::User(e) => Some(e),
            PrincipalRef::Subject(..) => None,
        }
    }
    /// The `hd` claim (the Workspace domain), if present.
    pub fn hosted_domain(&self) -> Option<&str> {
        self.0.hosted_domain.map(|h| self.text(h))
    }
    /// The audience that matched.
    pub fn audience(&self) -> &str {
        self.text(self.0.audience)
    }
    /// `iat`, seconds since the epoch.
    pub fn issued_at(&self) -> u64 {
        self.0.issued_at
    }
    /// `exp`, seconds since the epoch.
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }
    /// Every claim of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        self.0
            .claims
            .get_or_init(|| serde_json::from_str(self.claims_json()).unwrap_or_default())
    }
    /// The token's payload: its claims as the issuer wrote them, JSON text.
    pub fn claims_json(&self) -> &str {
        self.text(Span {
            start: 0,
            end: self.0.json_len,
        })
    }
    /// The token's payload segment (base64url JSON), as sent upstream in
    /// `x-idgate-claims`: encoded from [`Identity::claims_json`] on each
    /// call, since the verifier accepts only canonical base64url and so
    /// the encoding is the segment the token carried.
    ///
    /// Encoded with `base64-simd` (AVX2 or SSSE3 where the CPU has them,
    /// found at run time): every admitted request sends this header, and
    /// `verify/claims_b64_header` (a 208-byte payload) takes 34 ns with it
    /// against 133-144 ns with the `base64` crate (BENCHMARKS.md, "Stop
    /// 45"). The tests check the two agree.
    pub fn claims_b64(&self) -> String {
        base64_simd::URL_SAFE_NO_PAD.encode_to_string(self.claims_json())
    }

    /// [`Identity::claims_b64`] as bytes for a header value (no further copy).
    pub fn claims_b64_bytes(&self) -> Bytes {
        Bytes::from(self.claims_b64())
    }

    /// [`Identity::subject`] as bytes for a header value: a copy of a few
    /// bytes, cheaper than a shared slice's reference count on a line of
    /// its own, cold for an identity the cache has not served lately.
    pub fn subject_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.subject().as_bytes())
    }

    /// [`Identity::principal_email`] as bytes for a header value (a copy,
    /// as for [`Identity::subject_bytes`]).
    pub fn principal_email_bytes(&self) -> Option<Bytes> {
        self.principal_email()
            .map(|e| Bytes::copy_from_slice(e.as_bytes()))
    }

    /// How IAM names this caller.
    pub fn principal(&self) -> Principal {
        match self.principal_ref() {
            PrincipalRef::ServiceAccount(e) => Principal::ServiceAccount(e.into()),
            PrincipalRef::User(e) => Principal::User(e.into()),
            PrincipalRef::Subject(pool, subject) => Principal::Subject {
                pool: pool.cloned(),
                subject: subject.to_owned(),
            },
        }
    }

    /// [`Identity::principal`]'s text (`serviceAccount:…`, `user:…`,
    /// `principal://…/subject/…`, `subject:…`), built in one allocation.
    pub fn principal_string(&self) -> String {
        let parts = self.principal_ref().parts();
        let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| out.push_str(p));
        out
    }

    /// The one place that decides how IAM names the caller.
    pub(crate) fn principal_ref(&self) -> PrincipalRef<'_> {
        match (self.0.google, self.verified_email()) {
            (true, Some(e)) if is_service_account_email(e) => PrincipalRef::ServiceAccount(e),
            (true, Some(e)) => PrincipalRef::User(e),
            _ => PrincipalRef::Subject(self.0.pool.as_ref(), self.subject()),
        }
    }
}

/// [`Principal`], borrowed.
pub(crate) enum PrincipalRef<'a> {
    User(&'a str),
    ServiceAccount(&'a str),
    Subject(Option<&'a Arc<str>>, &'a str),
}

impl<'a> PrincipalRef<'a> {
    /// The principal's text in pieces: the one place it is spelled, for
    /// both `Display` and [`Identity::principal_string`].
    fn parts(&self) -> [&'a str; 4] {
        match *self {
            PrincipalRef::User(e) => ["user:", e, "", ""],
            PrincipalRef::ServiceAccount(e) => ["serviceAccount:", e, "", ""],
            PrincipalRef::Subject(Some(pool), subject) => {
                ["principal://", pool, "/subject/", subject]
            }
            PrincipalRef::Subject(None, subject) => ["subject:", subject, "", ""],
        }
    }
}

impl fmt::Debug for Identity {
    // Claims are left out on purpose: they may hold personal data, and a
    // Debug print ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("principal", &self.principal().to_string())
            .field("issuer", &self.issuer())
            .field("audience", &self.audience())
            .field("expires_at", &self.0.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn google() -> IssuerTag {
        IssuerTag {
            name: "google".into(),
            google: true,
            pool: None,
        }
    }

    fn ident(tag: &IssuerTag, claims: Value) -> Identity {
        let Value::Object(m) = claims else {
            unreachable!()
        };
        Identity::from_verified_claims(tag, "aud".into(), m, String::new())
    }

    #[test]
    fn principal_kinds() {
        let g = google();
        let sa = ident(
            &g,
            json!({"sub":"1","email":"a@p.iam.GServiceAccount.com","email_verified":true}),
        );
        assert_eq!(
            sa.principal().to_string(),
            "serviceAccount:a@p.iam.GServiceAccount.com"
        );
        let u = ident(
            &g,
            json!({"sub":"2","email":"b@x.com","email_verified":true}),
        );
        assert_eq!(u.principal().to_string(), "user:b@x.com");
        let unverified = ident(
            &g,
            json!({"sub":"3","email":"b@x.com","email_verified":"true"}),
        );
        assert!(!unverified.email_verified());
        assert_eq!(unverified.principal().to_string(), "subject:3");
        let pool = IssuerTag {
            name: "gh".into(),
            google: false,
            pool: Some(
                "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p".into(),
            ),
        };
        let p = ident(
            &pool,
            json!({"sub":"repo:x","email":"c@x.com","email_verified":true}),
        );
        assert_eq!(
            p.principal().to_string(),
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/repo:x"
        );
        // The one-allocation text the sidecar sends upstream says the same.
        for id in [&sa, &u, &unverified, &p] {
            assert_eq!(id.principal_string(), id.principal().to_string());
        }
    }

    #[test]
    fn shared_bytes_are_the_strings() {
        let g = google();
        let verified = ident(
            &g,
            json!({"sub":"7","email":"b@x.com","email_verified":true}),
        );
        assert_eq!(verified.subject_bytes(), "7");
        assert_eq!(
            verified.principal_email_bytes().as_deref(),
            Some(&b"b@x.com"[..])
        );
        let unverified = ident(&g, json!({"sub":"8","email":"b@x.com"}));
        assert_eq!(unverified.email(), Some("b@x.com"));
        assert_eq!(unverified.principal_email_bytes(), None);
        assert_eq!(unverified.claims_b64_bytes(), unverified.claims_b64());
    }

    /// The identity the verifier builds from this payload.
    fn from_payload(claims: &str) -> Identity {
        let segment = Segment::parse(claims.as_bytes().to_vec()).expect("a JSON object");
        Identity::from_claims(&google(), segment)
    }

    #[test]
    fn kept_claims_are_slices_of_the_payload() {
        let json = r#"{"aud":"https://svc","email":"a@p.iam.gserviceaccount.com","email_verified":true,"hd":"p.com","iss":"https://accounts.google.com","sub":"1","iat":1,"exp":2}"#;
        let id = from_payload(json);
        assert_eq!(id.claims_json(), json);
        assert_eq!(id.claims_b64(), URL_SAFE_NO_PAD.encode(json));
        assert_eq!(id.claims_b64_bytes(), id.claims_b64());
        assert_eq!(id.issuer(), "https://accounts.google.com");
        assert_eq!(id.subject(), "1");
        assert_eq!(id.email(), Some("a@p.iam.gserviceaccount.com"));
        assert_eq!(id.hosted_domain(), Some("p.com"));
        assert_eq!(id.audience(), "https://svc");
        assert!(id.email_verified());
        assert_eq!((id.issued_at(), id.expires_at()), (1, 2));
        assert_eq!(id.claims()["email_verified"], true);
        // Nothing was copied: every string is a slice of the payload.
        assert_eq!(id.0.text.len(), json.len());
    }

    #[test]
    fn a_claim_is_its_own_value_wherever_its_bytes_repeat() {
        // The subject's "1" is also the issuer's, earlier in the payload,
        // and an escape spells it in "x": the subject is its own value's
        // bytes all the same.
        let json = r#"{"iss":"1","x":"\u0031","sub":"1","aud":"https://svc"}"#;
        let id = from_payload(json);
        assert_eq!((id.issuer(), id.subject()), ("1", "1"));
        assert_eq!(
            id.0.subject.start as usize,
            json.rfind(r#""1""#).unwrap() + 1
        );
        assert_eq!(id.0.text.len(), json.len());
        // An empty string is an empty slice.
        let id = from_payload(r#"{"sub":"","iss":"","aud":"https://svc"}"#);
        assert_eq!((id.subject(), id.issuer()), ("", ""));
        // Missing strings read as empty (the verifier requires them first).
        let id = from_payload("{}");
        assert_eq!((id.subject(), id.issuer(), id.audience()), ("", "", ""));
        assert_eq!(id.email(), None);
    }

    proptest::proptest! {
        /// Whatever the payload, the verifier's identity says what its
        /// claims say (as the strict tree reads them).
        #[test]
        fn says_what_the_claims_say(json in crate::segment::tests::json_text()) {
            let Ok(crate::strict_json::StrictValue(Value::Object(m))) = serde_json::from_str(&json) else {
                return Ok(());
            };
            let id = from_payload(&json);
            let s = |k: &str| m.get(k).and_then(Value::as_str);
            let n = |k: &str| m.get(k).and_then(Value::as_number).and_then(numeric_date).unwrap_or(0);
            proptest::prop_assert_eq!(id.issuer(), s("iss").unwrap_or_default());
            proptest::prop_assert_eq!(id.subject(), s("sub").unwrap_or_default());
            proptest::prop_assert_eq!(id.audience(), s("aud").unwrap_or_default());
            proptest::prop_assert_eq!(id.email(), s("email"));
            proptest::prop_assert_eq!(id.hosted_domain(), s("hd"));
            proptest::prop_assert_eq!(id.email_verified(), m.get("email_verified") == Some(&Value::Bool(true)));
            proptest::prop_assert_eq!((id.issued_at(), id.expires_at()), (n("iat"), n("exp")));
            proptest::prop_assert_eq!(id.claims_json(), json.as_str());
            proptest::prop_assert_eq!(id.claims_b64(), URL_SAFE_NO_PAD.encode(&json));
        }
    }

    /// The identity's text is a `str` built from the payload's bytes: the
    /// parser must refuse any byte that is not UTF-8, in a claim the
    /// identity keeps or anywhere else.
    #[test]
    fn a_payload_that_is_not_utf8_makes_no_identity() {
        for json in [
            &b"{\"sub\":\"a\xff\"}"[..],
            b"{\"sub\":\"a\",\"x\":\"\xff\"}",
            b"{\"y\":[\"\xfe\"]}",
            b"{\"z\":{\"\xfd\":1}}",
            b"{\"\xc3\":1}",
        ] {
            assert!(Segment::parse(json.to_vec()).is_err(), "{json:?}");
        }
        assert!(Segment::parse(b"{\"sub\":\"\xc3\xa9\"}".to_vec()).is_ok());
    }

    proptest::proptest! {
        /// `x-idgate-claims` is the payload's base64url, at every length
        /// (the SIMD encoder's blocks and its tail), byte for byte as the
        /// `base64` crate writes it.
        #[test]
        fn the_claims_header_is_the_payloads_base64url(x in "[ -~\u{e9}\u{1f600}]{0,1500}") {
            let json = json!({"x": x}).to_string();
            let id = from_payload(&json);
            proptest::prop_assert_eq!(id.claims_b64(), URL_SAFE_NO_PAD.encode(&json));
        }
    }

    #[test]
    fn escaped_or_mismatched_claims_are_copied_as_decoded() {
        // `\u00e9` is "é" and the email's and audience's `/` are escaped:
        // their bytes are not in the payload, so they are copies.
        let json = r#"{"sub":"\u00e9x","email":"e\/f@x.com","iss":"i","aud":"https:\/\/svc"}"#;
        let id = from_payload(json);
        assert_eq!(id.subject(), "éx");
        assert_eq!(id.email(), Some("e/f@x.com"));
        assert_eq!(id.issuer(), "i");
        assert_eq!(id.audience(), "https://svc");
        assert_eq!(id.claims_json(), json);
        assert_eq!(id.0.text.len(), json.len() + "éxe/f@x.comhttps://svc".len());
        // From claims given apart from their payload: the claims win (the
        // payload is only the text `x-idgate-claims` carries).
        let Value::Object(m) = json!({"sub":"2","iss":"j"}) else {
            unreachable!()
        };
        let payload = r#"{"sub":"3","iss":"j"}"#;
        let id = Identity::from_verified_claims(
            &google(),
            "aud".into(),
            m,
            URL_SAFE_NO_PAD.encode(payload),
        );
        assert_eq!(
            (id.subject(), id.issuer(), id.audience()),
            ("2", "j", "aud")
        );
        assert_eq!(id.claims_json(), payload);
        // A segment that is not canonical base64url: the claims are encoded.
        let Value::Object(m) = json!({"sub":"4"}) else {
            unreachable!()
        };
        let id = Identity::from_verified_claims(&google(), "aud".into(), m, "%%".into());
        assert_eq!(id.claims_json(), r#"{"sub":"4"}"#);
    }

    #[test]
    fn fractional_times_read_as_the_verifier_reads_them() {
        // Found by the `token` fuzz target: the verifier accepted a
        // fractional `exp`, and the identity then said it expired at 0.
        let id = ident(
            &google(),
            json!({"sub":"1","iat":1_750_000_000.75,"exp":1.7500036e9}),
        );
        assert_eq!(id.issued_at(), 1_750_000_000);
        assert_eq!(id.expires_at(), 1_750_003_600);
        let id = ident(&google(), json!({"sub":"1","iat":-1,"exp":"1"}));
        assert_eq!((id.issued_at(), id.expires_at()), (0, 0));
    }

    #[test]
    fn service_account_suffix_is_exact() {
        assert!(is_service_account_email("x@y.iam.gserviceaccount.com"));
        assert!(!is_service_account_email(".gserviceaccount.com"));
        assert!(!is_service_account_email("x@gserviceaccount.com.evil.com"));
        assert!(!is_service_account_email("x@evilgserviceaccount.co"));
    }
}
