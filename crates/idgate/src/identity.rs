//! The verified caller: what a good token says about who is calling.

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use serde_json::{Map, Value};

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
    /// Every string of the identity in one buffer (the verified-token cache
    /// holds thousands of identities: one allocation rather than six), the
    /// payload segment last, so that `x-idgate-claims` is a slice of it
    /// rather than a copy per request.
    text: Bytes,
    issuer: Span,
    subject: Span,
    email: Option<Span>,
    hosted_domain: Option<Span>,
    audience: Span,
    payload_b64: Span,
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

/// Builds `Inner::text`.
struct TextBuilder(Vec<u8>);

impl TextBuilder {
    fn push(&mut self, s: &str) -> Span {
        let start = self.0.len();
        self.0.extend_from_slice(s.as_bytes());
        // Tokens are capped far below 4 GiB; saturate rather than wrap.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            start: at(start),
            end: at(self.0.len()),
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
/// and `iat` alike, or an accepted `"exp": 1.5e9` would read as 0 here.
pub(crate) fn numeric_date(n: &serde_json::Number) -> Option<u64> {
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
    /// payload segment, which must decode to `claims`; when empty, the
    /// claims are encoded in its place.
    pub fn from_verified_claims(
        tag: &IssuerTag,
        audience: String,
        claims: Map<String, Value>,
        payload_b64: String,
    ) -> Identity {
        let str_claim = |k: &str| claims.get(k).and_then(Value::as_str);
        let num_claim = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_number)
                .and_then(numeric_date)
                .unwrap_or(0)
        };
        let payload_b64 = if payload_b64.is_empty() {
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
        } else {
            payload_b64
        };
        let (issuer, subject, email, hd) = (
            str_claim("iss").unwrap_or_default(),
            str_claim("sub").unwrap_or_default(),
            str_claim("email"),
            str_claim("hd"),
        );
        let mut text = TextBuilder(Vec::with_capacity(
            issuer.len()
                + subject.len()
                + email.map_or(0, str::len)
                + hd.map_or(0, str::len)
                + audience.len()
                + payload_b64.len(),
        ));
        let issuer = text.push(issuer);
        let subject = text.push(subject);
        let email = email.map(|e| text.push(e));
        let hosted_domain = hd.map(|h| text.push(h));
        let audience = text.push(&audience);
        let payload_b64 = text.push(&payload_b64);
        Identity(Arc::new(Inner {
            issuer_name: tag.name.clone(),
            pool: tag.pool.clone(),
            google: tag.google,
            // Only the JSON boolean `true` counts; the string "true" does not.
            email_verified: claims.get("email_verified") == Some(&Value::Bool(true)),
            issued_at: num_claim("iat"),
            expires_at: num_claim("exp"),
            text: Bytes::from(text.0),
            issuer,
            subject,
            email,
            hosted_domain,
            audience,
            payload_b64,
            claims: OnceLock::new(),
        }))
    }

    /// One of the identity's strings. Every span was cut from a `&str` at
    /// its boundaries, so the check never fails.
    fn text(&self, span: Span) -> &str {
        self.0
            .text
            .get(span.start as usize..span.end as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
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
    /// Whether the Google issuer verified the token.
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
    /// The email, only when verified.
    pub fn verified_email(&self) -> Option<&str> {
        self.email().filter(|_| self.email_verified())
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
        self.0.claims.get_or_init(|| {
            URL_SAFE_NO_PAD
                .decode(self.claims_b64())
                .ok()
                .and_then(|json| serde_json::from_slice(&json).ok())
                .unwrap_or_default()
        })
    }
    /// The token's payload segment (base64url JSON), as sent upstream in
    /// `x-idgate-claims`.
    pub fn claims_b64(&self) -> &str {
        self.text(self.0.payload_b64)
    }

    /// [`Identity::claims_b64`] as shared bytes: a header value made from
    /// it is not a copy.
    pub fn claims_b64_bytes(&self) -> Bytes {
        self.bytes(self.0.payload_b64)
    }

    /// [`Identity::subject`] as shared bytes (not a copy).
    pub fn subject_bytes(&self) -> Bytes {
        self.bytes(self.0.subject)
    }

    /// [`Identity::verified_email`] as shared bytes (not a copy).
    pub fn verified_email_bytes(&self) -> Option<Bytes> {
        self.verified_email()?;
        self.0.email.map(|e| self.bytes(e))
    }

    fn bytes(&self, Span { start, end }: Span) -> Bytes {
        self.0.text.slice(start as usize..end as usize)
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
    fn principal_ref(&self) -> PrincipalRef<'_> {
        match (self.0.google, self.verified_email()) {
            (true, Some(e)) if is_service_account_email(e) => PrincipalRef::ServiceAccount(e),
            (true, Some(e)) => PrincipalRef::User(e),
            _ => PrincipalRef::Subject(self.0.pool.as_ref(), self.subject()),
        }
    }
}

/// [`Principal`], borrowed.
enum PrincipalRef<'a> {
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
            verified.verified_email_bytes().as_deref(),
            Some(&b"b@x.com"[..])
        );
        let unverified = ident(&g, json!({"sub":"8","email":"b@x.com"}));
        assert_eq!(unverified.email(), Some("b@x.com"));
        assert_eq!(unverified.verified_email_bytes(), None);
        assert_eq!(unverified.claims_b64_bytes(), unverified.claims_b64());
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
