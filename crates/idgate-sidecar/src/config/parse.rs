//! Parsers for single values. Each returns a [`ValueError`]; the caller adds
//! the origin.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme, Uri};

use super::error::ValueError;
use super::{HeaderPattern, Upstream};

pub(crate) fn duration(s: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(s).map_err(ValueError::Duration)
}

pub(crate) fn address(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(ValueError::Address)
}

/// A whole number, zero included (`--token-cache-capacity 0` turns the
/// cache off).
pub(crate) fn count(s: &str) -> Result<u64, ValueError> {
    s.parse().map_err(ValueError::Number)
}

pub(crate) fn positive(s: &str) -> Result<u64, ValueError> {
    let n: u64 = s.parse().map_err(ValueError::Number)?;
    if n == 0 {
        return Err(ValueError::Zero);
    }
    Ok(n)
}

/// `http://host:port[/base]`. Only plain HTTP: the sidecar talks to an
/// upstream beside it (same pod, same instance), never across a network.
pub(crate) fn upstream(s: &str) -> Result<Upstream, ValueError> {
    // What `Uri` lets through: a port that is no port (`:80811`, `:8o81`,
    // which requests then sent to port 80), no host, a fragment.
    let url = url_with_host(s)?;
    if url.port() == Some(0) {
        return Err(ValueError::Url("port 0 is no port to connect to".into()));
    }
    let uri: Uri = s
        .parse()
        .map_err(|e| ValueError::Url(format!("not a URL: {e}")))?;
    match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP => {}
        Some(scheme) if *scheme == Scheme::HTTPS => {
            return Err(ValueError::Url(
                "https upstreams are not supported; the upstream runs beside the sidecar, use http://"
                    .into(),
            ));
        }
        _ => return Err(ValueError::Url("must start with http://".into())),
    }
    let authority: Authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ValueError::Url("has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(ValueError::Url("must not contain user info".into()));
    }
    if uri.query().is_some() {
        return Err(ValueError::Url("must not have a query".into()));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        authority,
        base_path,
    })
}

/// An absolute URL with a host and no fragment, the first check of the
/// upstream and of key URLs.
fn url_with_host(s: &str) -> Result<reqwest::Url, ValueError> {
    let url = reqwest::Url::parse(s).map_err(|e| ValueError::Url(format!("not a URL: {e}")))?;
    if url.fragment().is_some() {
        return Err(ValueError::Url("must not have a #fragment".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ValueError::Url("has no host".into()));
    }
    Ok(url)
}

/// An issuer or JWKS URL: absolute http(s) with a host, no fragment. Plain
/// http is accepted (dev issuers on loopback or in a compose network) but
/// earns a warning when the host is not loopback.
pub(crate) fn key_url(s: &str, warnings: &mut Vec<String>, what: &str) -> Result<(), ValueError> {
    let url = url_with_host(s)?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            if !idgate::verifier::is_loopback_host(host) {
                warnings.push(format!(
                    "{what} {s} is plain http on a non-loopback host: keys fetched over it can be forged in transit"
                ));
            }
            Ok(())
        }
        _ => Err(ValueError::Url("must be http:// or https://".into())),
    }
}

/// The shape of an IAM member. The policy module checks members fully when
/// it loads them; this catches typos early and cheaply.
pub(crate) fn member(s: &str) -> Result<(), ValueError> {
    let bad = |m: &str| Err(ValueError::Member(m.to_owned()));
    if s == "allUsers" || s == "allAuthenticatedUsers" {
        return Ok(());
    }
    if let Some(rest) = s
        .strip_prefix("principal://")
        .or_else(|| s.strip_prefix("principalSet://"))
    {
        return if rest.is_empty() {
            bad("names no principal")
        } else {
            Ok(())
        };
    }
    let Some((kind, value)) = s.split_once(':') else {
        return bad(
            "expected user:, serviceAccount:, group:, domain:, deleted:, principal://, principalSet://, allUsers or allAuthenticatedUsers",
        );
    };
    match kind {
        "user" | "serviceAccount" | "group" => match value.split_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
            _ => bad("expected an email after the colon"),
        },
        "domain" if !value.is_empty() && !value.contains('@') => Ok(()),
        "domain" => bad("expected a domain such as example.com"),
        "deleted" => Ok(()),
        _ => bad(
            "unknown member type; expected user:, serviceAccount:, group:, domain:, deleted:, principal://, principalSet://, allUsers or allAuthenticatedUsers",
        ),
    }
}

/// `x-user` (exact) or `x-user-*` (prefix), case-insensitive. A pattern that
/// would remove the credential is refused: stripping runs before the gate,
/// so every request would look unauthenticated. Kept with `-` for `_`, the
/// form the strip compares names in (`x_user` also removes `x-user`, and
/// the other way round).
pub(crate) fn header_pattern(s: &str) -> Result<HeaderPattern, ValueError> {
    let lower = s.trim().to_ascii_lowercase().replace('_', "-");
    let (stem, prefix) = match lower.strip_suffix('*') {
        Some(stem) => (stem.to_owned(), true),
        None => (lower, false),
    };
    if stem.is_empty() {
        return Err(ValueError::Header("matches every header".into()));
    }
    let name = HeaderName::from_bytes(stem.as_bytes()).map_err(|_| {
        ValueError::Header("not a header name (a trailing * makes a prefix)".into())
    })?;
    let pattern = if prefix {
        HeaderPattern::Prefix(stem)
    } else {
        HeaderPattern::Exact(name)
    };
    for protected in ["authorization", "x-serverless-authorization", "host"] {
        if pattern.matches(protected) {
            return Err(ValueError::Header(format!(
                "would remove {protected}, which the gate needs"
            )));
        }
    }
    Ok(pattern)
}

/// A public path prefix: absolute, and with nothing a server might
/// normalise differently from us (dot segments, escapes, backslashes).
pub(crate) fn public_path(s: &str) -> Result<String, ValueError> {
    match idgate::auth::public_path_problem(s) {
        Some(problem) => Err(ValueError::PublicPath(problem)),
        None => Ok(s.to_owned()),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`), as flags, variables and TOML
/// booleans spell them.
pub(crate) fn boolean(s: &str) -> Result<bool, ValueError> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ValueError::Choice {
            expected: "true, false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_humans_write_them() {
        assert_eq!(duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("30").is_err(), "a bare number has no unit");
        assert!(duration("5x").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn upstream_shapes() {
        let u = upstream("http://127.0.0.1:8081").unwrap();
        assert_eq!(u.authority.as_str(), "127.0.0.1:8081");
        assert_eq!(u.base_path, "");
        let u = upstream("http://app:8081/base/").unwrap();
        assert_eq!(u.base_path, "/base");
        assert!(upstream("https://app").is_err());
        assert!(upstream("app:8081").is_err());
        assert!(upstream("http://u:p@app").is_err());
        assert!(upstream("http://app/?q=1").is_err());
        // No port that is not one (requests would go to port 80), no empty
        // host, no fragment.
        for bad in [
            "http://127.0.0.1:80811",
            "http://127.0.0.1:8o81",
            "http://127.0.0.1:0",
            "http://:8081",
            "http://app:8081/#x",
        ] {
            assert!(upstream(bad).is_err(), "{bad}");
        }
        assert_eq!(
            upstream("http://[::1]:65535").unwrap().authority.as_str(),
            "[::1]:65535"
        );
        assert_eq!(
            upstream("http://app:80").unwrap().authority.as_str(),
            "app:80"
        );
    }

    #[test]
    fn members() {
        for ok in [
            "user:a@b.com",
            "serviceAccount:sa@p.iam.gserviceaccount.com",
            "group:g@b.com",
            "domain:b.com",
            "allUsers",
            "allAuthenticatedUsers",
            "deleted:user:a@b.com?uid=1",
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/s",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/*",
        ] {
            assert!(member(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a@b.com",
            "user:",
            "user:nobody",
            "users:a@b.com",
            "domain:a@b.com",
            "allusers",
            "principal://",
        ] {
            assert!(member(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_patterns() {
        assert!(matches!(header_pattern("X-User"), Ok(HeaderPattern::Exact(h)) if h == "x-user"));
        assert!(matches!(header_pattern("x-my-*"), Ok(HeaderPattern::Prefix(p)) if p == "x-my-"));
        assert!(header_pattern("*").is_err());
        assert!(header_pattern("bad header").is_err());
        assert!(header_pattern("authorization").is_err());
        assert!(header_pattern("x-serverless-*").is_err());
        assert!(header_pattern("Auth*").is_err());
    }

    #[test]
    fn public_paths() {
        assert!(public_path("/healthz").is_ok());
        assert!(public_path("/static/").is_ok());
        for bad in [
            "healthz", "/a/../b", "/a/./b", "/a%2f", "/a//b", "/a\\b", "/a?x",
        ] {
            assert!(public_path(bad).is_err(), "{bad}");
        }
    }
}
