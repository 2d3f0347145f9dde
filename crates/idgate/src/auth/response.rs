//! The one place where a refusal becomes a response.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use super::gate::StatusCodes;
use crate::{DenialClass, Reason};

/// Whether a request is gRPC (it then gets a gRPC status, not an HTTP one).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}

/// The class whose status a reason is answered with: its own, except a
/// missing token under [`StatusCodes::CloudRun`], which Cloud Run answers
/// as forbidden (HTTP 403, and so gRPC 7).
fn answered_as(reason: Reason, codes: StatusCodes) -> DenialClass {
    match (codes, reason) {
        (StatusCodes::CloudRun, Reason::MissingToken) => DenialClass::Forbidden,
        _ => reason.class(),
    }
}

/// The HTTP status a reason gets.
pub fn status_for(reason: Reason, codes: StatusCodes) -> StatusCode {
    match answered_as(reason, codes) {
        DenialClass::Unauthenticated => StatusCode::UNAUTHORIZED,
        DenialClass::Forbidden => StatusCode::FORBIDDEN,
        DenialClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The gRPC status code a reason gets: 16 UNAUTHENTICATED, 7
/// PERMISSION_DENIED, 14 UNAVAILABLE ([`grpc_status_with`] under
/// [`StatusCodes::Rfc6750`]).
pub fn grpc_status_for(reason: Reason) -> u8 {
    grpc_status_with(reason, StatusCodes::Rfc6750)
}

/// [`grpc_status_for`] under `codes`: with [`StatusCodes::CloudRun`] a
/// missing token is 7, as a gRPC client reads the HTTP 403 Cloud Run
/// answers it with.
pub fn grpc_status_with(reason: Reason, codes: StatusCodes) -> u8 {
    match answered_as(reason, codes) {
        DenialClass::Unauthenticated => 16,
        DenialClass::Forbidden => 7,
        DenialClass::Unavailable => 14,
    }
}

/// Build the refusal: status, `WWW-Authenticate`, and a short JSON body
/// `{"error":…,"reason":…}` that never holds the token or the expected
/// audience. gRPC requests get a trailers-only response instead, so
/// clients see a proper `Status`.
pub fn denial_response(reason: Reason, grpc: bool, codes: StatusCodes) -> Response<Bytes> {
    let mut resp = if grpc {
        let mut r = Response::new(Bytes::new());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(grpc_status_with(reason, codes))),
        );
        h.insert("grpc-message", HeaderValue::from_static(reason.as_str()));
        r
    } else {
        let status = status_for(reason, codes);
        // The reason's class, whatever the status: under Cloud Run's codes a
        // missing token is a 403 that still says what is missing.
        let error = match reason.class() {
            DenialClass::Unauthenticated => "unauthenticated",
            DenialClass::Forbidden => "forbidden",
            DenialClass::Unavailable => "unavailable",
        };
        let body = format!(r#"{{"error":"{error}","reason":"{}"}}"#, reason.as_str());
        let mut r = Response::new(Bytes::from(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        match (status, reason) {
            // RFC 6750 §3.1: no error code when the request had no credential.
            (StatusCode::UNAUTHORIZED, Reason::MissingToken) => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            (StatusCode::UNAUTHORIZED, _) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            (StatusCode::SERVICE_UNAVAILABLE, _) => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        r
    };
    resp.extensions_mut().insert(reason);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        use Reason::*;
        let rfc = StatusCodes::Rfc6750;
        let cr = StatusCodes::CloudRun;
        assert_eq!(status_for(MissingToken, rfc), StatusCode::UNAUTHORIZED);
        assert_eq!(status_for(MissingToken, cr), StatusCode::FORBIDDEN);
        assert_eq!(grpc_status_for(MissingToken), 16);
        assert_eq!(grpc_status_with(MissingToken, cr), 7);
        assert_eq!(grpc_status_with(Expired, cr), 16);
        assert_eq!(grpc_status_for(NotAllowed), 7);
        assert_eq!(grpc_status_with(KeysUnavailable, cr), 14);
        assert_eq!(status_for(Expired, cr), StatusCode::UNAUTHORIZED);
        assert_eq!(status_for(NotAllowed, rfc), StatusCode::FORBIDDEN);
        assert_eq!(status_for(EmailUnverified, rfc), StatusCode::FORBIDDEN);
        assert_eq!(
            status_for(KeysUnavailable, rfc),
            StatusCode::SERVICE_UNAVAILABLE
        );
        for codes in [rfc, cr] {
            for &r in Reason::ALL {
                let resp = denial_response(r, false, codes);
                let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
                assert_eq!(body["reason"], r.as_str());
                assert_eq!(resp.extensions().get::<Reason>(), Some(&r));
                // The error word is the reason's class, whatever the status.
                let error = match r.class() {
                    DenialClass::Unauthenticated => "unauthenticated",
                    DenialClass::Forbidden => "forbidden",
                    DenialClass::Unavailable => "unavailable",
                };
                assert_eq!(body["error"], error, "{r:?} under {codes:?}");
            }
        }
    }

    #[test]
    fn grpc_detection() {
        let mut h = http::HeaderMap::new();
        for (v, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC;x=y", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_grpc(&h), want, "{v}");
        }
        let r = denial_response(Reason::NotAllowed, true, StatusCodes::Rfc6750);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
    }
}
