//! The sidecar's own error answers: short JSON bodies, or a gRPC status for
//! gRPC callers (who cannot read a JSON body).

use http::{HeaderValue, Response, StatusCode, header};

use crate::Body;

/// Why the proxy could not get an answer from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFailure {
    /// Connection refused, DNS failure, connect timeout: 502.
    Unreachable,
    /// The upstream closed or broke the exchange: 502.
    Broken,
    /// No response headers within `--request-timeout`: 504.
    Timeout,
    /// No response headers within `--request-timeout` while the upstream
    /// connection was waiting on the client for more of the request's
    /// body: 408. The client stalled, not the upstream.
    BodyTimeout,
}

impl ProxyFailure {
    /// The bounded label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyFailure::Unreachable => "upstream_unreachable",
            ProxyFailure::Broken => "upstream_error",
            ProxyFailure::Timeout => "upstream_timeout",
            ProxyFailure::BodyTimeout => "request_body_timeout",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ProxyFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyFailure::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyFailure::Unreachable | ProxyFailure::Broken => StatusCode::BAD_GATEWAY,
        }
    }

    /// gRPC 14 UNAVAILABLE or 4 DEADLINE_EXCEEDED (for a stalled request
    /// stream too; the message tells the two timeouts apart).
    fn grpc_status(self) -> &'static str {
        match self {
            ProxyFailure::Timeout | ProxyFailure::BodyTimeout => "4",
            ProxyFailure::Unreachable | ProxyFailure::Broken => "14",
        }
    }

    /// The answer to the client.
    pub fn response(self, grpc: bool) -> Response<Body> {
        if grpc {
            return grpc_error(self.grpc_status(), self.as_str());
        }
        let error = match self.status() {
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            _ => "bad_gateway",
        };
        json_error(self.status(), error, self.as_str())
    }
}

/// `{"error": error, "reason": reason}` with `status`.
pub fn json_error(status: StatusCode, error: &str, reason: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A trailers-only gRPC answer: HTTP 200 with `grpc-status` in the headers.
pub fn grpc_error(code: &'static str, message: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    res
}

/// Whether the request is gRPC: the gate's own test (media types compare
/// case-insensitively), so that the gate and the proxy answer a request in
/// the same shape.
pub use idgate::auth::is_grpc;
