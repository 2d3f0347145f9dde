//! Header rules: what a client may not send (forged identity, hop-by-hop
//! headers), what the upstream is told (identity, `X-Forwarded-*`), and what
//! it receives of the token.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{CONNECTION, Entry, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};
use idgate::{CredentialHeader, Identity};

use crate::config::{ForwardToken, HeaderPattern};

/// Identity headers set by idgate.
pub const PRINCIPAL: HeaderName = HeaderName::from_static("x-idgate-principal");
/// The verified email that names the caller (`user:`/`serviceAccount:`):
/// Google's, or a trusted issuer's; absent for callers named by subject.
pub const EMAIL: HeaderName = HeaderName::from_static("x-idgate-email");
/// The `sub` claim.
pub const SUB: HeaderName = HeaderName::from_static("x-idgate-sub");
/// The token's payload segment (base64url JSON), as the token carried it.
pub const CLAIMS: HeaderName = HeaderName::from_static("x-idgate-claims");

/// Header prefixes that gates set and apps trust; never taken from a client.
pub const STRIPPED_PREFIXES: &[&str] = &["x-idgate-", "x-goog-authenticated-", "x-auth-request-"];
/// Single headers that gates set and apps trust; never taken from a client.
pub const STRIPPED_NAMES: &[&str] = &[
    "x-goog-iap-jwt-assertion",
    "x-forwarded-user",
    "x-forwarded-email",
];

/// What replaces a forwarded token's signature. Cloud Run writes
/// `SIGNATURE_REMOVED_BY_GOOGLE`; this has the same length and alphabet
/// (valid unpadded base64url), so code that splits and decodes Cloud Run's
/// stripped tokens reads ours the same way, while no verifier accepts it.
pub const SIGNATURE_REMOVED: &str = "SIGNATURE_REMOVED_BY_IDGATE";

const X_SERVERLESS_AUTHORIZATION: HeaderName =
    HeaderName::from_static("x-serverless-authorization");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes identity headers a client may have forged: the built-in list plus
/// the configured extras. Runs on every request, public paths included,
/// before anything reads the headers.
#[derive(Debug, Clone, Default)]
pub struct IdentityStrip {
    extra: Vec<HeaderPattern>,
}

impl IdentityStrip {
    /// The built-in list plus `extra`.
    pub fn new(extra: Vec<HeaderPattern>) -> Self {
        IdentityStrip { extra }
    }

    /// Whether `name` (lower case) is an identity header to strip.
    ///
    /// A name with `_` is judged by its form with `-`: servers that turn
    /// header names into CGI-style variables (WSGI, Rack, PHP) read
    /// `x_idgate_email` as `X-Idgate-Email`, and some let it win. For the
    /// same reason `x_serverless_authorization` goes, so that the app reads
    /// the token header idgate handled, not a second one beside it.
    pub fn matches(&self, name: &str) -> bool {
        if name.contains('_') {
            let dashed = name.replace('_', "-");
            return self.matches_dashed(&dashed) || dashed == X_SERVERLESS_AUTHORIZATION.as_str();
        }
        self.matches_dashed(name)
    }

    fn matches_dashed(&self, name: &str) -> bool {
        STRIPPED_PREFIXES.iter().any(|p| name.starts_with(p))
            || STRIPPED_NAMES.contains(&name)
            || self.extra.iter().any(|p| p.matches(name))
    }

    /// Removes every matching header.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.matches(name.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
}

/// Whether a method may be judged as written: no lower-case letter. Methods
/// are case-sensitive, so a condition reads `delete` as something other
/// than `DELETE`, while frameworks that upper-case it (Werkzeug, Rack) run
/// it as `DELETE`. Extension methods (`M-SEARCH`, `VERSION-CONTROL`) pass.
pub fn method_is_canonical(method: &http::Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

/// `text` as a method, if it is one [`method_is_canonical`] accepts.
pub fn canonical_method(text: &[u8]) -> Option<http::Method> {
    http::Method::from_bytes(text)
        .ok()
        .filter(method_is_canonical)
}

/// Whether a request asks to switch to WebSocket, the one protocol the
/// proxy tunnels. Only HTTP/1.1 has `Upgrade`.
///
/// After a 101 the proxy copies bytes both ways and sees no more requests,
/// so any other protocol is refused by dropping `Upgrade` (the upstream
/// answers the request as it is): an upstream that accepted `h2c` would
/// otherwise take any number of HTTP/2 requests, with any headers, on a
/// connection the gate checked once.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let mut protocols = list_elements(req.headers(), UPGRADE).peekable();
    req.version() == Version::HTTP_11
        && protocols.peek().is_some()
        && protocols.all(|p| {
            p.split('/')
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("websocket"))
        })
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    list_elements(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
}

/// The elements of a comma-separated list header, over all its lines,
/// trimmed; empty ones included. Lines that are not visible ASCII are
/// skipped.
fn list_elements(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every
/// header it names, `Keep-Alive`, `Proxy-*`, `Trailer`, `Transfer-Encoding`,
/// `TE` (except `trailers`, which gRPC needs), `HTTP2-Settings` (h2c's
/// upgrade), and `Upgrade` unless `keep_upgrade`, in which case
/// `Connection: upgrade` is kept too.
///
/// Idempotent. Run it before identity headers are added, so a client cannot
/// name `x-idgate-principal` in `Connection` to have it dropped.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Runs three times per proxied request. Most requests carry none of
    // these, and most responses only `Connection: keep-alive`: one pass over
    // the names says which are present, and only those are touched.
    let present = headers
        .keys()
        .fold(0u8, |mask, name| mask | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        // Only the named headers that are present: usually `Connection`
        // names just `keep-alive` or `close`, and there is nothing to remove.
        // Never `Host`: it is end to end, and the gate judges it
        // (`request.host`); a client naming it would have the gate judge no
        // host while its own `X-Forwarded-Host` went on.
        let named: Vec<HeaderName> = list_elements(headers, CONNECTION)
            .filter(|t| !(t.is_empty() || keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter(|t| !t.eq_ignore_ascii_case("host"))
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    // After the named removals: `Connection: te` takes `TE: trailers` too.
    let te_trailers = present & HOP_TE != 0
        && list_elements(headers, TE).any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim_end().eq_ignore_ascii_case("trailers"))
        });
    for (bit, name) in [
        (HOP_TE, TE),
        (HOP_TRAILER, TRAILER),
        (HOP_TRANSFER_ENCODING, TRANSFER_ENCODING),
        (HOP_KEEP_ALIVE, KEEP_ALIVE),
        (HOP_HTTP2_SETTINGS, HTTP2_SETTINGS),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if present & HOP_PROXY != 0 {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if present & HOP_UPGRADE != 0 {
        if keep_upgrade && headers.contains_key(UPGRADE) {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(UPGRADE);
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

const HOP_CONNECTION: u8 = 1;
const HOP_TE: u8 = 1 << 1;
const HOP_TRAILER: u8 = 1 << 2;
const HOP_TRANSFER_ENCODING: u8 = 1 << 3;
const HOP_UPGRADE: u8 = 1 << 4;
const HOP_KEEP_ALIVE: u8 = 1 << 5;
const HOP_PROXY: u8 = 1 << 6;
const HOP_HTTP2_SETTINGS: u8 = 1 << 7;

/// Which of `remove_hop_by_hop`'s cases a header of this name falls in;
/// 0 for the headers it leaves alone.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == CONNECTION {
        HOP_CONNECTION
    } else if name == TE {
        HOP_TE
    } else if name == TRAILER {
        HOP_TRAILER
    } else if name == TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == UPGRADE {
        HOP_UPGRADE
    } else if name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if name == HTTP2_SETTINGS {
        HOP_HTTP2_SETTINGS
    } else if name.as_str().starts_with("proxy-") {
        HOP_PROXY
    } else {
        0
    }
}

/// Appends the client's address to `X-Forwarded-For`, and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host` when absent. Present ones are
/// kept: in front of the sidecar there is usually a TLS-terminating front end
/// (Cloud Run's, an ingress) that already set them right, while the sidecar
/// itself only ever sees plain HTTP.
pub fn set_forwarded(headers: &mut HeaderMap, client: Option<IpAddr>, host: Option<&str>) {
    // One map lookup per header: an entry, not a look and then an insert.
    if let Some(ip) = client {
        let mut ip_buf = IpText::new();
        let ip = ip_buf.write(ip);
        match headers.entry(X_FORWARDED_FOR) {
            Entry::Vacant(slot) => {
                if let Ok(v) = HeaderValue::from_bytes(ip) {
                    slot.insert(v);
                }
            }
            Entry::Occupied(mut lines) => {
                let priors = || {
                    lines
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                };
                // Sized exactly: one allocation, which `Bytes` then takes as
                // is (a `Vec` with spare capacity would cost it a second one).
                let len = priors().map(|p| p.len() + 2).sum::<usize>() + ip.len();
                let mut value = Vec::with_capacity(len);
                for prior in priors() {
                    value.extend_from_slice(prior.as_bytes());
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(ip);
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                    lines.insert(v);
                }
            }
        }
    }
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert_with(|| HeaderValue::from_static("http"));
    if !headers.contains_key(&X_FORWARDED_HOST) {
        let host = headers
            .get(HOST)
            .cloned()
            .or_else(|| host.and_then(|h| HeaderValue::from_str(h).ok()));
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// An address as `Display` writes it, on the stack; IPv4, nearly every
/// request, without the formatting machinery.
struct IpText {
    buf: [u8; IpText::MAX],
    len: usize,
}

impl IpText {
    /// RFC 5952 text, which `Display` writes, is at most 39 bytes; 45 with
    /// an embedded IPv4 address (`INET6_ADDRSTRLEN` less its NUL).
    const MAX: usize = 45;

    fn new() -> IpText {
        IpText {
            buf: [0; IpText::MAX],
            len: 0,
        }
    }

    fn write(&mut self, ip: IpAddr) -> &[u8] {
        self.len = 0;
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut rest = &mut self.buf[..];
                // At most MAX bytes, so this cannot run out of room.
                let _ = write!(rest, "{v6}");
                self.len = IpText::MAX - rest.len();
            }
        }
        &self.buf[..self.len]
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
}

/// Sets the identity headers for a verified caller. A value that cannot be a
/// header value leaves its header out rather than being mangled; the
/// verifier already refuses a `sub` or email with a control character, so
/// this is a last guard.
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity) {
    let mut set = |name: HeaderName, value: Bytes| {
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            headers.insert(name, v);
        }
    };
    set(PRINCIPAL, Bytes::from(identity.principal_string()));
    // Only an email that names the caller: an extra issuer not trusted
    // for emails can sign for any address.
    if let Some(email) = identity.principal_email_bytes() {
        set(EMAIL, email);
    }
    set(SUB, identity.subject_bytes());
    set(CLAIMS, identity.claims_b64_bytes());
}

/// The header a token is read from, by Cloud Run's rule:
/// `X-Serverless-Authorization` when present, else `Authorization`.
/// The gate reports which one it used; this is for requests it did not
/// verify (public paths, `allUsers`).
pub fn credential_header_by_rule(headers: &HeaderMap) -> Option<CredentialHeader> {
    if headers.contains_key(&X_SERVERLESS_AUTHORIZATION) {
        Some(CredentialHeader::XServerlessAuthorization)
    } else if headers.contains_key(http::header::AUTHORIZATION) {
        Some(CredentialHeader::Authorization)
    } else {
        None
    }
}

/// Applies `--forward-token` to the header that carried (or would carry) the
/// token. The other credential header is left alone: with a token in
/// `X-Serverless-Authorization`, `Authorization` belongs to the app's own
/// scheme, which is why Cloud Run reads the former first.
///
/// `verified` says whether the gate verified the token in that header. Under
/// `stripped`, a bearer JWT it did not verify (a public path, `allUsers`) is
/// removed, not stripped: with its signature replaced it would look like a
/// token idgate verified, and an app that reads the caller from a stripped
/// token, as apps behind Cloud Run do, would believe it.
///
/// Whatever the mode, a credential in either header that ends in
/// [`SIGNATURE_REMOVED`] and that idgate did not strip itself is removed:
/// it can only be a client's forgery of a token idgate verified (say in
/// `Authorization`, beside a token of its own or a dummy in
/// `X-Serverless-Authorization`, which the gate reads first).
pub fn forward_token(
    headers: &mut HeaderMap,
    mode: ForwardToken,
    carrier: Option<CredentialHeader>,
    verified: bool,
) {
    apply_forward_token(headers, mode, carrier, verified);
    let ours = (mode == ForwardToken::Stripped && verified)
        .then_some(carrier)
        .flatten();
    // The carrier is named by Cloud Run's rule (the gate reads by it too):
    // `X-Serverless-Authorization` when present, else `Authorization`. So
    // with `Authorization` as the carrier the other is absent, and with no
    // carrier both are: only the headers that can be there are looked up.
    let present: &[CredentialHeader] = match carrier {
        None => &[],
        Some(CredentialHeader::Authorization) => &[CredentialHeader::Authorization],
        Some(CredentialHeader::XServerlessAuthorization) => &[
            CredentialHeader::XServerlessAuthorization,
            CredentialHeader::Authorization,
        ],
    };
    for &header in present {
        if Some(header) == ours {
            continue;
        }
        // A lookup, not an entry: an entry reserves room for an insert.
        let name = header.header_name();
        if headers.get_all(&name).iter().any(claims_idgate_stripped_it) {
            headers.remove(name);
        }
    }
}

/// A credential that says idgate removed its signature: it ends in
/// `.SIGNATURE_REMOVED_BY_IDGATE`, whatever its scheme.
fn claims_idgate_stripped_it(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes().trim_ascii();
    bytes
        .strip_suffix(SIGNATURE_REMOVED.as_bytes())
        .is_some_and(|rest| rest.ends_with(b"."))
}

fn apply_forward_token(
    headers: &mut HeaderMap,
    mode: ForwardToken,
    carrier: Option<CredentialHeader>,
    verified: bool,
) {
    let Some(carrier) = carrier else { return };
    let name = carrier.header_name();
    match mode {
        ForwardToken::Full => {}
        ForwardToken::None => {
            headers.remove(&name);
        }
        ForwardToken::Stripped => {
            let Entry::Occupied(mut values) = headers.entry(name) else {
                return;
            };
            if !verified {
                if values.iter().any(looks_like_a_jwt) {
                    values.remove();
                }
                return;
            }
            for v in values.iter_mut() {
                if let Some(stripped) = strip_header_value(v) {
                    *v = stripped;
                }
            }
        }
    }
}

/// The token of a `Bearer` credential (scheme in any case, then a space or
/// tab), trimmed; `None` for any other scheme.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes().trim_ascii();
    let space = memchr::memchr2(b' ', b'\t', bytes)?;
    bytes[..space]
        .eq_ignore_ascii_case(b"bearer")
        .then(|| bytes[space..].trim_ascii())
}

/// Whether a credential could be read as a JWT by someone: a bearer token
/// with a dot in it, judged on the bytes (a stray non-ASCII byte, or a
/// fourth segment, does not stop a lenient decoder from reading the claims).
fn looks_like_a_jwt(value: &HeaderValue) -> bool {
    bearer_token(value).is_some_and(|t| memchr::memchr(b'.', t).is_some())
}

/// `Bearer h.p.s` becomes `Bearer h.p.SIGNATURE_REMOVED_BY_IDGATE`; anything
/// that is not a bearer JWT gives `None`. Only for the credential that
/// verified, so the token's bytes are known to be the JWS alphabet: they
/// are copied as bytes, without a UTF-8 check of their own (the header
/// value's check is the one scan).
fn strip_header_value(value: &HeaderValue) -> Option<HeaderValue> {
    let token = bearer_token(value)?;
    let (first, second) = jws_dots(token)?;
    let (header, payload) = (&token[..first], &token[first + 1..second]);
    let mut out = Vec::with_capacity(
        "Bearer ".len() + header.len() + payload.len() + 2 + SIGNATURE_REMOVED.len(),
    );
    for part in [
        b"Bearer ",
        header,
        b".",
        payload,
        b".",
        SIGNATURE_REMOVED.as_bytes(),
    ] {
        out.extend_from_slice(part);
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// Where the two dots of a compact JWS are: three dot-separated parts, the
/// first two non-empty. Runs on every forwarded token: `memchr` finds the
/// dots of a 763-byte token in about 30 instructions, `str::splitn` took
/// about 1,250 (BENCHMARKS.md, "Two header passes made cheaper").
fn jws_dots(token: &[u8]) -> Option<(usize, usize)> {
    let mut dots = memchr::memchr_iter(b'.', token);
    let (first, second) = (dots.next()?, dots.next()?);
    if first == 0 || second == first + 1 || dots.next().is_some() {
        return None;
    }
    Some((first, second))
}

/// Replaces a compact JWS's signature with [`SIGNATURE_REMOVED`], keeping
/// header and payload. `None` when `token` is not three dot-separated parts.
pub fn strip_signature(token: &str) -> Option<String> {
    let (first, second) = jws_dots(token.as_bytes())?;
    let (header, payload) = (&token[..first], &token[first + 1..second]);
    Some(format!("{header}.{payload}.{SIGNATURE_REMOVED}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn forged_identity_headers_are_stripped() {
        let mut h = headers(&[
            ("x-idgate-principal", "user:boss@example.com"),
            ("X-Idgate-Anything", "x"),
            (
                "x-goog-authenticated-user-email",
                "accounts.google.com:boss@example.com",
            ),
            ("x-goog-iap-jwt-assertion", "e.y.j"),
            ("x-forwarded-user", "boss"),
            ("x-forwarded-email", "boss@example.com"),
            ("x-auth-request-user", "boss"),
            ("x-user", "boss"),
            ("x-my-role", "admin"),
            ("authorization", "Bearer t"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept", "*/*"),
            // What CGI-style servers read as the names above.
            ("x_idgate_email", "boss@example.com"),
            ("X_Goog_Authenticated_User_Email", "boss"),
            ("x-forwarded_user", "boss"),
            ("x_my_role", "admin"),
            ("x_serverless_authorization", "Bearer forged"),
            ("x_request_id", "kept"),
        ]);
        let extra = vec![
            HeaderPattern::Exact(HeaderName::from_static("x-user")),
            HeaderPattern::Prefix("x-my-".into()),
        ];
        IdentityStrip::new(extra).strip(&mut h);
        assert_eq!(
            names(&h),
            ["accept", "authorization", "x-forwarded-for", "x_request_id"]
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers;q=1"),
            ("trailer", "grpc-status"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "te"]);
        assert_eq!(h["te"], "trailers");

        let mut h = headers(&[("te", "gzip")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty());

        // Host is end to end, and what the gate judges: naming it does not
        // take it away.
        let mut h = headers(&[
            ("connection", "Host, x-other"),
            ("host", "a.example"),
            ("x-other", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host"]);
    }

    #[test]
    fn only_the_hop_by_hop_headers_present_are_touched() {
        let mut h = headers(&[("connection", "keep-alive"), ("content-length", "5")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-length"]);

        let mut h = headers(&[("connection", "te"), ("te", "trailers"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept"], "TE named in Connection goes whole");

        let mut h = headers(&[("upgrade", "websocket")]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "upgrade"]);

        let mut h = headers(&[("upgrade", "websocket"), ("keep-alive", "timeout=5")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-idgate-principal"),
            ("upgrade", "websocket"),
            ("x-idgate-principal", "user:forged"),
            ("sec-websocket-key", "k"),
        ]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        let before = h.clone();
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h, before, "idempotent");
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let req = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade_request(&req));
        let req = Request::builder()
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade_request(&req));
        let req = Request::builder()
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade_request(&req));
        // Only WebSocket is tunnelled: h2c would carry unchecked requests.
        for upgrade in ["h2c", "websocket, h2c", "TLS/1.2", ""] {
            let req = Request::builder()
                .header("connection", "Upgrade")
                .header("upgrade", upgrade)
                .body(())
                .unwrap();
            assert!(!is_upgrade_request(&req), "{upgrade:?}");
        }
        let req = Request::builder()
            .header("connection", "Upgrade")
            .header("upgrade", "WebSocket")
            .body(())
            .unwrap();
        assert!(is_upgrade_request(&req));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = headers(&[("host", "svc.example"), ("x-forwarded-for", "203.0.113.9")]);
        set_forwarded(&mut h, Some("10.0.0.1".parse().unwrap()), None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "svc.example");

        let mut h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.run.app"),
        ]);
        set_forwarded(&mut h, Some("::1".parse().unwrap()), Some("ignored"));
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.run.app");

        // Every prior line kept, in order; empty ones dropped.
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        set_forwarded(&mut h, Some("2001:db8::1".parse().unwrap()), None);
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["198.51.100.7, 203.0.113.9, 192.0.2.1, 2001:db8::1"]);

        let mut h = HeaderMap::new();
        set_forwarded(&mut h, None, Some("h2.example:8443"));
        assert_eq!(h["x-forwarded-host"], "h2.example:8443");
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn client_addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "203.0.113.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new().write(ip), ip.to_string().as_bytes());
        }
    }

    fn identity(claims: serde_json::Value) -> Identity {
        let serde_json::Value::Object(map) = claims else {
            unreachable!()
        };
        let tag = idgate::IssuerTag {
            name: "google".into(),
            google: true,
            pool: None,
        };
        Identity::from_verified_claims(&tag, "aud".into(), map, "eyJwYXlsb2FkIjp0cnVlfQ".into())
    }

    #[test]
    fn identity_headers() {
        let mut h = HeaderMap::new();
        let id = identity(json!({"sub": "42", "email": "a@b.com", "email_verified": true}));
        set_identity(&mut h, &id);
        assert_eq!(h[PRINCIPAL], "user:a@b.com");
        assert_eq!(h[EMAIL], "a@b.com");
        assert_eq!(h[SUB], "42");
        assert_eq!(h[CLAIMS], "eyJwYXlsb2FkIjp0cnVlfQ");

        let mut h = HeaderMap::new();
        let id = identity(json!({"sub": "43", "email": "a@b.com", "email_verified": false}));
        set_identity(&mut h, &id);
        assert!(
            !h.contains_key(EMAIL),
            "unverified emails are not forwarded"
        );
        assert_eq!(h[PRINCIPAL], "subject:43");

        let mut h = HeaderMap::new();
        let id = identity(json!({"sub": "a\r\nx-evil: 1"}));
        set_identity(&mut h, &id);
        assert!(!h.contains_key(SUB));
    }

    #[test]
    fn signatures_are_replaced() {
        assert_eq!(
            strip_signature("aGVhZA.cGF5.c2ln").as_deref(),
            Some("aGVhZA.cGF5.SIGNATURE_REMOVED_BY_IDGATE")
        );
        assert_eq!(SIGNATURE_REMOVED.len(), "SIGNATURE_REMOVED_BY_GOOGLE".len());
        assert!(strip_signature("a.b").is_none());
        assert!(strip_signature("a.b.c.d").is_none());
        assert!(strip_signature(".b.c").is_none());
        assert!(strip_signature("a..c").is_none());
        assert!(strip_signature("abc").is_none());
        assert!(strip_signature("").is_none());
        assert_eq!(
            strip_signature("a.b.").as_deref(),
            Some("a.b.SIGNATURE_REMOVED_BY_IDGATE"),
            "an empty signature is still three parts"
        );
    }

    #[test]
    fn forward_token_modes() {
        let both = || {
            headers(&[
                ("x-serverless-authorization", "bearer  aGVhZA.cGF5.c2ln "),
                ("authorization", "Basic dXNlcjpwYXNz"),
            ])
        };
        let carrier = credential_header_by_rule(&both());
        assert_eq!(carrier, Some(CredentialHeader::XServerlessAuthorization));

        let mut h = both();
        forward_token(&mut h, ForwardToken::Stripped, carrier, true);
        assert_eq!(
            h["x-serverless-authorization"],
            "Bearer aGVhZA.cGF5.SIGNATURE_REMOVED_BY_IDGATE"
        );
        assert_eq!(
            h["authorization"], "Basic dXNlcjpwYXNz",
            "the app's own scheme"
        );

        let mut h = both();
        forward_token(&mut h, ForwardToken::None, carrier, true);
        assert!(!h.contains_key("x-serverless-authorization"));
        assert!(h.contains_key("authorization"));

        let mut h = both();
        forward_token(&mut h, ForwardToken::Full, carrier, true);
        assert_eq!(h, both());

        let mut h = headers(&[("authorization", "Bearer aGVhZA.cGF5.c2ln")]);
        let carrier = credential_header_by_rule(&h);
        forward_token(&mut h, ForwardToken::Stripped, carrier, true);
        assert_eq!(
            h["authorization"],
            "Bearer aGVhZA.cGF5.SIGNATURE_REMOVED_BY_IDGATE"
        );

        let mut h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        forward_token(
            &mut h,
            ForwardToken::Stripped,
            Some(CredentialHeader::Authorization),
            false,
        );
        assert_eq!(
            h["authorization"], "Basic dXNlcjpwYXNz",
            "not a token: untouched"
        );
    }

    /// Only idgate writes its marker: one a client wrote, in either header
    /// and under every mode, goes; the one idgate wrote stays.
    #[test]
    fn a_forged_marker_goes_from_either_header() {
        let forged = "Bearer aGVhZA.cGF5.SIGNATURE_REMOVED_BY_IDGATE";
        let xsa = Some(CredentialHeader::XServerlessAuthorization);
        for mode in [
            ForwardToken::Stripped,
            ForwardToken::None,
            ForwardToken::Full,
        ] {
            for verified in [true, false] {
                let mut h = headers(&[
                    ("x-serverless-authorization", "Bearer aGVhZA.cGF5.c2ln"),
                    ("authorization", forged),
                ]);
                forward_token(&mut h, mode, xsa, verified);
                assert!(!h.contains_key("authorization"), "{mode:?} {verified}");
                let read = h.get("x-serverless-authorization");
                match (mode, verified) {
                    (ForwardToken::Stripped, true) => assert_eq!(read.unwrap(), forged),
                    (ForwardToken::Full, _) => assert_eq!(read.unwrap(), "Bearer aGVhZA.cGF5.c2ln"),
                    _ => assert!(read.is_none(), "{mode:?} {verified}"),
                }
            }
        }
        // Any scheme, spaces around, a second value: the header goes.
        for odd in [
            &b"aGVhZA.cGF5.SIGNATURE_REMOVED_BY_IDGATE"[..],
            b"bearer  a.b.SIGNATURE_REMOVED_BY_IDGATE  ",
            b"Basic x.SIGNATURE_REMOVED_BY_IDGATE",
        ] {
            let mut h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
            h.append("authorization", HeaderValue::from_bytes(odd).unwrap());
            forward_token(&mut h, ForwardToken::Full, xsa, true);
            assert!(h.is_empty(), "{odd:?} went on");
        }
        // The marker's name alone, or inside a value, is not one.
        for fine in [
            "Bearer SIGNATURE_REMOVED_BY_IDGATE",
            "Bearer a.SIGNATURE_REMOVED_BY_IDGATEx",
        ] {
            let mut h = headers(&[("authorization", fine)]);
            forward_token(&mut h, ForwardToken::Stripped, xsa, true);
            assert_eq!(h["authorization"], fine);
        }
    }

    /// A token the gate did not verify (public path, `allUsers`) must not
    /// come out looking like one it did.
    #[test]
    fn an_unverified_token_is_never_stripped() {
        let forged = || headers(&[("authorization", "Bearer aGVhZA.cGF5.c2ln")]);
        let carrier = credential_header_by_rule(&forged());

        let mut h = forged();
        forward_token(&mut h, ForwardToken::Stripped, carrier, false);
        assert!(h.is_empty(), "{h:?}");

        let mut h = forged();
        forward_token(&mut h, ForwardToken::None, carrier, false);
        assert!(h.is_empty(), "{h:?}");

        let mut h = forged();
        forward_token(&mut h, ForwardToken::Full, carrier, false);
        assert_eq!(h, forged(), "full: as the client sent it");

        // Not a JWT: the app's own credential, untouched.
        let mut h = headers(&[("authorization", "Bearer sk_live_123")]);
        forward_token(&mut h, ForwardToken::Stripped, carrier, false);
        assert_eq!(h["authorization"], "Bearer sk_live_123");

        // Nor a near-JWT a lenient decoder would still read.
        for odd in [
            &b"bearer aGVhZA.cGF5.c2ln\xff"[..],
            b"Bearer\ta.b.c.d",
            b"BEARER a.b",
        ] {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_bytes(odd).unwrap());
            forward_token(&mut h, ForwardToken::Stripped, carrier, false);
            assert!(h.is_empty(), "{odd:?} went on");
        }
    }
}
