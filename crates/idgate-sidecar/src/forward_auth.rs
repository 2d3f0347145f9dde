//! Forward-auth mode: every request is an auth subrequest from a proxy in
//! front (nginx `auth_request`, Traefik `forwardAuth`, Envoy `ext_authz`
//! over HTTP). The answer is 200 with the identity headers, or the gate's
//! denial; there is no upstream.
//!
//! The gate must judge the *original* request (public paths, IAM
//! conditions on `request.path` and `request.host`), so before it runs the
//! subrequest is rewritten from what the front proxy says:
//!
//! | what   | read from                                                 |
//! |--------|-----------------------------------------------------------|
//! | method | `X-Forwarded-Method` or `X-Original-Method`, else the request's |
//! | URI    | `X-Forwarded-Uri` or `X-Original-URI`, else the request's  |
//! | host   | `X-Forwarded-Host`, else the request's `Host`              |
//!
//! Traefik sets the `X-Forwarded-*` ones itself. With nginx, set them in the
//! auth location (`proxy_set_header X-Original-URI $request_uri;`,
//! `proxy_set_header X-Original-Method $request_method;`,
//! `proxy_set_header X-Forwarded-Host $host;`: the host has no second
//! header to disagree with, so a client's own would be judged). A front proxy
//! passes on the client's other headers, so a client could add the pair the
//! proxy does not set (`X-Forwarded-Uri: /public/x` through nginx) to have
//! another request judged: when both of a pair are present and differ, the
//! subrequest is refused (400 `conflicting_forwarded_headers`).

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

use crate::Body;
use crate::proxy::json_error;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers the original request is read from: `--strip-header` must not
/// remove them in forward-auth mode, or the subrequest itself is judged.
pub const REQUEST_HEADERS: [HeaderName; 5] = [
    X_FORWARDED_METHOD,
    X_ORIGINAL_METHOD,
    X_FORWARDED_URI,
    X_ORIGINAL_URI,
    X_FORWARDED_HOST,
];

/// The request the front proxy is asking about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRequest {
    /// Its method.
    pub method: Method,
    /// Its path and query (origin form).
    pub uri: Uri,
    /// Its host, when known.
    pub host: Option<HeaderValue>,
}

/// Why a subrequest's forwarded headers cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// Two values of one header: ambiguous, so refused.
    #[error("{0} appears more than once")]
    Repeated(&'static str),
    /// Both headers of a pair, saying different things: one of them came
    /// from the client.
    #[error("{0} and {1} disagree")]
    Conflict(&'static str, &'static str),
    /// Not a method.
    #[error("{0} is not an HTTP method")]
    Method(&'static str),
    /// Not a path (or absolute URL) we can read.
    #[error("{0} is not a path such as /a/b?c")]
    Uri(&'static str),
}

impl ForwardedError {
    /// 400 with a short JSON body.
    pub fn response(&self) -> Response<Body> {
        let reason = match self {
            ForwardedError::Repeated(_) => "repeated_forwarded_header",
            ForwardedError::Conflict(..) => "conflicting_forwarded_headers",
            ForwardedError::Method(_) => "invalid_forwarded_method",
            ForwardedError::Uri(_) => "invalid_forwarded_uri",
        };
        json_error(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    (label, name): (&'static str, &HeaderName),
) -> Result<Option<(&'static str, &'a HeaderValue)>, ForwardedError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(ForwardedError::Repeated(label)),
        (v, _) => Ok(v.map(|v| (label, v))),
    }
}

/// The value of one header of a pair; both may be present only when they
/// agree.
fn one_of<'a>(
    headers: &'a HeaderMap,
    a: (&'static str, &HeaderName),
    b: (&'static str, &HeaderName),
) -> Result<Option<(&'static str, &'a HeaderValue)>, ForwardedError> {
    match (single(headers, a)?, single(headers, b)?) {
        (Some((la, va)), Some((lb, vb))) if va != vb => Err(ForwardedError::Conflict(la, lb)),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

/// Reads the original request from a subrequest's headers, falling back to
/// the subrequest's own method, URI and host.
pub fn original_request<B>(req: &Request<B>) -> Result<OriginalRequest, ForwardedError> {
    let h = req.headers();
    let method = match one_of(
        h,
        ("X-Forwarded-Method", &X_FORWARDED_METHOD),
        ("X-Original-Method", &X_ORIGINAL_METHOD),
    )? {
        Some((label, v)) => {
            crate::headers::canonical_method(v.as_bytes()).ok_or(ForwardedError::Method(label))?
        }
        None => req.method().clone(),
    };
    let uri = match one_of(
        h,
        ("X-Forwarded-Uri", &X_FORWARDED_URI),
        ("X-Original-URI", &X_ORIGINAL_URI),
    )? {
        Some((label, v)) => origin_form(v.as_bytes()).ok_or(ForwardedError::Uri(label))?,
        None => req
            .uri()
            .path_and_query()
            .and_then(|pq| Uri::try_from(pq.as_str()).ok())
            .unwrap_or_else(|| Uri::from_static("/")),
    };
    let host = match single(h, ("X-Forwarded-Host", &X_FORWARDED_HOST))? {
        Some((_, v)) => Some(v.clone()),
        None => h.get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
    };
    Ok(OriginalRequest { method, uri, host })
}

/// `/path?query`, or the path and query of an absolute URL.
fn origin_form(bytes: &[u8]) -> Option<Uri> {
    let uri = Uri::try_from(bytes).ok()?;
    let pq = uri.path_and_query()?;
    if !pq.as_str().starts_with('/') {
        return None;
    }
    Uri::try_from(pq.as_str()).ok()
}

/// Makes the subrequest look like the original request, for the gate.
///
/// Its `Content-Type` goes: the answer is for the front proxy, which reads
/// only its HTTP status, and a client's `application/grpc` (passed on by
/// nginx and Traefik) would otherwise get refusals in gRPC's trailers-only
/// form, HTTP 200 with the error in `grpc-status`, which the proxy takes
/// for "allowed".
pub fn rewrite<B>(req: &mut Request<B>) -> Result<(), ForwardedError> {
    req.headers_mut().remove(CONTENT_TYPE);
    let original = original_request(req)?;
    *req.method_mut() = original.method;
    *req.uri_mut() = original.uri;
    if let Some(host) = original.host {
        req.headers_mut().insert(HOST, host);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(Method::GET)
            .uri("/auth")
            .header("host", "idgate:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn traefik_headers() {
        let r = req(&[
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/api/items?x=1"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let o = original_request(&r).unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(o.uri, "/api/items?x=1");
        assert_eq!(o.host.unwrap(), "app.example.com");
    }

    #[test]
    fn nginx_headers() {
        let r = req(&[
            ("x-original-uri", "/private/a"),
            ("x-original-method", "DELETE"),
        ]);
        let o = original_request(&r).unwrap();
        assert_eq!(o.method, Method::DELETE);
        assert_eq!(o.uri, "/private/a");
        assert_eq!(o.host.unwrap(), "idgate:8080", "the subrequest's own host");
    }

    #[test]
    fn the_two_families_must_agree_and_fall_back_to_the_request() {
        // Through nginx, a client adds the header nginx does not set.
        let r = req(&[
            ("x-original-uri", "/admin"),
            ("x-forwarded-uri", "/public/x"),
        ]);
        assert_eq!(
            original_request(&r).unwrap_err(),
            ForwardedError::Conflict("X-Forwarded-Uri", "X-Original-URI")
        );
        let r = req(&[
            ("x-original-method", "DELETE"),
            ("x-forwarded-method", "GET"),
        ]);
        assert!(matches!(
            original_request(&r),
            Err(ForwardedError::Conflict(..))
        ));
        let r = req(&[("x-original-uri", "/same"), ("x-forwarded-uri", "/same")]);
        assert_eq!(original_request(&r).unwrap().uri, "/same");
        let o = original_request(&req(&[])).unwrap();
        assert_eq!((o.method, o.uri), (Method::GET, Uri::from_static("/auth")));
        let r = req(&[("x-forwarded-uri", "https://app.example.com/p?q")]);
        assert_eq!(original_request(&r).unwrap().uri, "/p?q");
    }

    #[test]
    fn ambiguous_or_bad_headers_are_refused() {
        let r = req(&[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")]);
        assert_eq!(
            original_request(&r).unwrap_err(),
            ForwardedError::Repeated("X-Forwarded-Uri")
        );
        let r = req(&[("x-forwarded-uri", "relative")]);
        assert!(matches!(original_request(&r), Err(ForwardedError::Uri(_))));
        let r = req(&[("x-forwarded-method", "get")]);
        assert!(matches!(
            original_request(&r),
            Err(ForwardedError::Method(_))
        ));
        // The same rule as a direct request's: extension methods pass.
        let r = req(&[("x-forwarded-method", "VERSION-CONTROL")]);
        assert_eq!(original_request(&r).unwrap().method, "VERSION-CONTROL");
        assert_eq!(
            ForwardedError::Uri("x").response().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn rewrite_sets_method_uri_and_host() {
        let mut r = req(&[
            ("x-forwarded-method", "PUT"),
            ("x-forwarded-uri", "/x"),
            ("x-forwarded-host", "app"),
        ]);
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        rewrite(&mut r).unwrap();
        assert!(!r.headers().contains_key(CONTENT_TYPE));
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.uri(), "/x");
        assert_eq!(r.headers()["host"], "app");
    }
}
