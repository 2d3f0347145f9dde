//! Minting dev tokens, shared by `dev-issuer`, `token`, `proxy` (its `dev:`
//! source) and `demo`: the dev issuer's defaults, its mint endpoint as a
//! client sees it, and minting locally from a keys directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Env;

/// Where `idgate dev-issuer` listens unless told otherwise.
pub const DEV_ISSUER_LISTEN: &str = "127.0.0.1:8900";

/// The dev issuer's URL when it runs with its defaults: the `iss` of tokens
/// that `idgate token --keys-dir` mints without `--issuer-url`, and where
/// `idgate token` asks when given neither.
pub const DEV_ISSUER_URL: &str = "http://127.0.0.1:8900";

/// The longest lifetime a dev token may ask for (the testkit's mint
/// endpoint refuses more).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Where the dev issuer keeps its keys without `--keys-dir`: the user's
/// cache directory (`$XDG_CACHE_HOME`, else `~/Library/Caches` on macOS or
/// `~/.cache`), under `idgate/dev-issuer-keys`; without a home, the temp
/// directory's `idgate-dev-issuer-keys`.
pub fn default_keys_dir(env: &dyn Env) -> PathBuf {
    let set = |k: &str| env.var(k).filter(|v| !v.trim().is_empty());
    let cache = set("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| {
        set("HOME").map(|home| {
            let home = PathBuf::from(home);
            if cfg!(target_os = "macos") {
                home.join("Library").join("Caches")
            } else {
                home.join(".cache")
            }
        })
    });
    match cache {
        Some(dir) => dir.join("idgate").join("dev-issuer-keys"),
        None => std::env::temp_dir().join("idgate-dev-issuer-keys"),
    }
}

/// What to mint: the fields of the dev issuer's `POST /token`.
#[derive(Debug, Clone, Serialize)]
pub struct MintRequest {
    /// The `email` claim.
    pub email: String,
    /// The `aud` claim.
    pub audience: String,
    /// The `hd` claim (a Workspace domain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
    /// Lifetime in seconds (default one hour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// `email_verified`, `true` unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Claims merged over the defaults, last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
}

impl MintRequest {
    /// A plain request: verified email, default lifetime, no extras.
    pub fn new(email: impl Into<String>, audience: impl Into<String>) -> Self {
        MintRequest {
            email: email.into(),
            audience: audience.into(),
            hd: None,
            ttl: None,
            email_verified: None,
            claims: None,
        }
    }
}

/// The mint endpoint of a dev issuer given by its URL: the URL itself when
/// it already ends in `/token`, else `URL/token`.
pub fn mint_url(issuer_or_mint_url: &str) -> String {
    let url = issuer_or_mint_url.trim_end_matches('/');
    if url.ends_with("/token") {
        url.to_owned()
    } else {
        format!("{url}/token")
    }
}

/// Asks a running dev issuer to mint a token.
pub async fn mint_remote(
    client: &reqwest::Client,
    issuer_or_mint_url: &str,
    request: &MintRequest,
) -> anyhow::Result<String> {
    let url = mint_url(issuer_or_mint_url);
    let response = client
        .post(&url)
        .json(request)
        .send()
        .await
        .with_context(|| format!("cannot reach the dev issuer at {url}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", short_body(&body));
    }
    let token = body.trim();
    if token.split('.').count() != 3 {
        anyhow::bail!("{url} answered something that is not a token");
    }
    Ok(token.to_owned())
}

/// Mints with the active key of `keys_dir` (creating a key there when it
/// has none, as the dev issuer would), with `iss` = `issuer_url`.
pub fn mint_local(
    keys_dir: &Path,
    issuer_url: &str,
    request: &MintRequest,
) -> anyhow::Result<String> {
    let keys = idgate_testkit::load_or_create_keys(keys_dir)
        .with_context(|| format!("cannot load the keys in {}", keys_dir.display()))?;
    let key = keys
        .first()
        .with_context(|| format!("no key in {}", keys_dir.display()))?;
    let claims = local_claims(issuer_url.trim_end_matches('/'), request)?;
    Ok(idgate_testkit::mint(
        key,
        &idgate_testkit::default_header(key),
        &claims,
    ))
}

/// The claims the dev issuer's mint endpoint would sign for `request`.
fn local_claims(iss: &str, request: &MintRequest) -> anyhow::Result<Value> {
    if request.email.trim().is_empty() {
        anyhow::bail!("the email must not be empty");
    }
    if request.audience.trim().is_empty() {
        anyhow::bail!("the audience must not be empty");
    }
    let now = idgate_testkit::now_unix();
    let mut claims = idgate_testkit::google_claims(iss, &request.email, &request.audience, now);
    let Value::Object(map) = &mut claims else {
        anyhow::bail!("internal error: the claims are not an object");
    };
    if let Some(ttl) = request.ttl {
        map.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    }
    if let Some(verified) = request.email_verified {
        map.insert("email_verified".into(), Value::Bool(verified));
    }
    if let Some(hd) = &request.hd {
        map.insert("hd".into(), Value::String(hd.clone()));
    }
    if let Some(extra) = &request.claims {
        map.extend(extra.clone());
    }
    Ok(claims)
}

/// `K=V` for `--claim`: the value as JSON when it parses (`3`, `true`,
/// `["a","b"]`, `"quoted"`), else as the string it is.
pub fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("the claim name is empty in {s:?}"));
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

/// A token lifetime such as `1h`, `30m` or `90s`, at most ten years.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: expected a duration such as 1h, 30m or 90s"))?;
    if d > MAX_TTL {
        return Err("at most ten years".into());
    }
    Ok(d)
}

/// A response body fit for one line of an error message.
pub(crate) fn short_body(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 300 {
        let mut end = 300;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &one_line[..end])
    } else if one_line.is_empty() {
        "(empty body)".into()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_as_json_when_they_can() {
        assert_eq!(parse_claim("n=3").unwrap(), ("n".into(), Value::from(3)));
        assert_eq!(
            parse_claim("role=admin").unwrap(),
            ("role".into(), Value::from("admin"))
        );
        assert_eq!(
            parse_claim("g=[\"a\",\"b\"]").unwrap().1,
            serde_json::json!(["a", "b"])
        );
        assert_eq!(parse_claim("s=\"3\"").unwrap().1, Value::from("3"));
        assert_eq!(parse_claim("e=").unwrap().1, Value::from(""));
        assert_eq!(parse_claim("x=a=b").unwrap().1, Value::from("a=b"));
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=v").is_err());
    }

    #[test]
    fn mint_urls() {
        assert_eq!(mint_url("http://h:1"), "http://h:1/token");
        assert_eq!(mint_url("http://h:1/"), "http://h:1/token");
        assert_eq!(mint_url("http://h:1/token"), "http://h:1/token");
    }

    #[test]
    fn keys_dir_follows_the_cache_dir() {
        let env = [("XDG_CACHE_HOME", "/c"), ("HOME", "/h")];
        assert_eq!(
            default_keys_dir(&env),
            PathBuf::from("/c/idgate/dev-issuer-keys")
        );
        let none: [(&str, &str); 0] = [];
        assert!(default_keys_dir(&none).starts_with(std::env::temp_dir()));
    }
}
