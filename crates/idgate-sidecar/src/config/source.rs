//! The three sources of settings (flags, environment, file) as raw values,
//! and the lookup that picks the highest-precedence one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::SettingsArgs;
use super::env::Env;
use super::error::{ConfigError, Origin};

/// Every setting, by flag, and whether it takes a list. The TOML key is the
/// flag without dashes and with `_`; the variable is `IDGATE_` + that, upper
/// case.
pub(crate) const KEYS: &[(&str, bool)] = &[
    ("--listen", false),
    ("--upstream", false),
    ("--audience", true),
    ("--policy", true),
    ("--member", true),
    ("--groups", false),
    ("--issuer", true),
    ("--jwks-url", true),
    ("--google-issuer", false),
    ("--issuer-pool", true),
    ("--issuer-trust-emails", false),
    ("--invoker-role", true),
    ("--clock-skew", false),
    ("--max-token-bytes", false),
    ("--token-cache-capacity", false),
    ("--jwks-min-ttl", false),
    ("--jwks-max-ttl", false),
    ("--jwks-refresh-interval", false),
    ("--jwks-stale-if-error", false),
    ("--forward-token", false),
    ("--status-codes", false),
    ("--mode", false),
    ("--admin-listen", false),
    ("--log-format", false),
    ("--request-timeout", false),
    ("--shutdown-grace", false),
    ("--max-connections", false),
    ("--public-path", true),
    ("--strip-header", true),
];

/// Variables read besides the settings themselves.
pub(crate) const OTHER_VARS: &[&str] = &["IDGATE_CONFIG"];

pub(crate) fn toml_key(flag: &str) -> String {
    flag.trim_start_matches('-').replace('-', "_")
}

pub(crate) fn env_name(flag: &str) -> String {
    format!("IDGATE_{}", toml_key(flag).to_ascii_uppercase())
}

/// A value before parsing.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    One(String),
    Many(Vec<String>),
    /// A TOML integer.
    Int(i64),
    /// A TOML value of another type; reported when the key is read.
    Other,
}

#[derive(Debug, Default)]
pub(crate) struct Layer {
    values: BTreeMap<&'static str, (Raw, Origin)>,
    /// The config file's directory: relative paths in the file are relative to it.
    pub(crate) base_dir: Option<PathBuf>,
}

impl Layer {
    pub(crate) fn from_args(args: &SettingsArgs) -> Layer {
        let mut layer = Layer::default();
        let mut one = |name: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                layer
                    .values
                    .insert(name, (Raw::One(v.clone()), Origin::Flag(name)));
            }
        };
        one("--listen", &args.listen);
        one("--upstream", &args.upstream);
        one(
            "--groups",
            &args.groups.as_ref().map(|p| p.display().to_string()),
        );
        one("--clock-skew", &args.clock_skew);
        one("--max-token-bytes", &args.max_token_bytes);
        one("--token-cache-capacity", &args.token_cache_capacity);
        one("--jwks-min-ttl", &args.jwks_min_ttl);
        one("--jwks-max-ttl", &args.jwks_max_ttl);
        one("--jwks-refresh-interval", &args.jwks_refresh_interval);
        one("--jwks-stale-if-error", &args.jwks_stale_if_error);
        one("--forward-token", &args.forward_token);
        one("--status-codes", &args.status_codes);
        one("--mode", &args.mode);
        one("--admin-listen", &args.admin_listen);
        one("--log-format", &args.log_format);
        one("--request-timeout", &args.request_timeout);
        one("--max-connections", &args.max_connections);
        one("--shutdown-grace", &args.shutdown_grace);
        one("--issuer-trust-emails", &args.issuer_trust_emails);
        one("--google-issuer", &args.google_issuer);
        let mut many = |name: &'static str, v: Vec<String>| {
            if !v.is_empty() {
                layer
                    .values
                    .insert(name, (Raw::Many(v), Origin::Flag(name)));
            }
        };
        many("--audience", args.audience.clone());
        many(
            "--policy",
            args.policy
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        );
        many("--member", args.member.clone());
        many("--issuer", args.issuer.clone());
        many("--jwks-url", args.jwks_url.clone());
        many("--issuer-pool", args.issuer_pool.clone());
        many("--invoker-role", args.invoker_role.clone());
        many("--public-path", args.public_path.clone());
        many("--strip-header", args.strip_header.clone());
        layer
    }

    /// `IDGATE_*` variables. Empty values count as unset (templated manifests
    /// often set `FOO=""`); lists are comma-separated.
    pub(crate) fn from_env(env: &dyn Env) -> Layer {
        let mut layer = Layer::default();
        for &(name, list) in KEYS {
            let var = env_name(name);
            let Some(value) = env.var(&var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let raw = if list {
                Raw::Many(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            } else {
                Raw::One(value.trim().to_owned())
            };
            layer.values.insert(name, (raw, Origin::Env(var)));
        }
        layer
    }

    /// The config file, read from disk and then parsed by [`Layer::from_toml`].
    pub(crate) fn from_file(path: &Path, errors: &mut Vec<ConfigError>) -> Layer {
        match std::fs::read_to_string(path) {
            Ok(text) => Layer::from_toml(path, &text, errors),
            Err(source) => {
                errors.push(ConfigError::ReadConfigFile {
                    path: path.to_path_buf(),
                    source,
                });
                Layer::default()
            }
        }
    }

    /// The config file's text; `path` names it in errors and is where its
    /// relative paths start. Unknown keys are errors, all of them reported;
    /// the values are type-checked when read so every bad key is reported
    /// too.
    pub(crate) fn from_toml(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Layer {
        let mut layer = Layer {
            base_dir: Some(path.parent().map(Path::to_path_buf).unwrap_or_default()),
            ..Layer::default()
        };
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(source) => {
                errors.push(ConfigError::ConfigSyntax {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                });
                return layer;
            }
        };
        for (key, value) in table {
            let Some(&(name, _)) = KEYS.iter().find(|(n, _)| toml_key(n) == key) else {
                errors.push(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key,
                });
                continue;
            };
            let raw = match value {
                toml::Value::String(s) => Raw::One(s),
                toml::Value::Integer(i) => Raw::Int(i),
                toml::Value::Boolean(b) => Raw::One(b.to_string()),
                toml::Value::Array(items) => {
                    let strings: Option<Vec<String>> = items
                        .into_iter()
                        .map(|v| match v {
                            toml::Value::String(s) => Some(s),
                            _ => None,
                        })
                        .collect();
                    strings.map_or(Raw::Other, Raw::Many)
                }
                _ => Raw::Other,
            };
            let origin = Origin::File {
                path: path.to_path_buf(),
                key,
            };
            layer.values.insert(name, (raw, origin));
        }
        layer
    }
}

/// Flags, then environment, then file.
pub(crate) struct Sources {
    pub(crate) layers: Vec<Layer>,
    pub(crate) errors: Vec<ConfigError>,
}

impl Sources {
    fn get(&self, name: &str) -> Option<(&Raw, &Origin, Option<&Path>)> {
        self.layers.iter().find_map(|l| {
            l.values
                .get(name)
                .map(|(raw, origin)| (raw, origin, l.base_dir.as_deref()))
        })
    }

    /// Where the setting comes from, if anywhere (no type check).
    pub(crate) fn origin(&self, name: &str) -> Option<Origin> {
        self.get(name).map(|(_, origin, _)| origin.clone())
    }

    /// A single value: a string (or a TOML integer, as text).
    pub(crate) fn single(&mut self, name: &str) -> Option<(String, Origin)> {
        let (raw, origin, _) = self.get(name)?;
        let origin = origin.clone();
        match raw {
            Raw::One(s) => Some((s.clone(), origin)),
            Raw::Int(i) => Some((i.to_string(), origin)),
            Raw::Many(_) | Raw::Other => {
                self.errors.push(ConfigError::WrongType {
                    origin,
                    expected: "a single value",
                });
                None
            }
        }
    }

    /// A list; a single TOML string counts as a list of one.
    pub(crate) fn list(&mut self, name: &str) -> Option<(Vec<String>, Origin)> {
        let (raw, origin, _) = self.get(name)?;
        let origin = origin.clone();
        match raw {
            Raw::Many(v) => Some((v.clone(), origin)),
            Raw::One(s) => Some((vec![s.clone()], origin)),
            Raw::Int(_) | Raw::Other => {
                self.errors.push(ConfigError::WrongType {
                    origin,
                    expected: "a string or an array of strings",
                });
                None
            }
        }
    }

    /// Paths: relative ones from the config file are taken from its directory.
    pub(crate) fn paths(&mut self, name: &str) -> Option<(Vec<PathBuf>, Origin)> {
        let base = self
            .get(name)
            .and_then(|(_, _, base)| base.map(Path::to_path_buf));
        let (values, origin) = self.list(name)?;
        let paths = values
            .into_iter()
            .map(|v| match &base {
                Some(dir) => dir.join(v),
                None => PathBuf::from(v),
            })
            .collect();
        Some((paths, origin))
    }
}
