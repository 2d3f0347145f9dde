//! The `config` target's harness: the sidecar's settings from a TOML file's
//! text, a few flags and a few environment variables, through
//! `idgate_sidecar::config::load_toml` (what `load` runs after reading the
//! file).
//!
//! An input is `TOML \0 FLAGS \0 ENV`: the config file's text; then flags,
//! one argument per line, parsed by clap as `idgate serve` parses them; then
//! variables, one `NAME=VALUE` per line. Missing parts are empty.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{CommandFactory, Parser};
use idgate::policy::{MEMBER_FLAG_SOURCE, PolicyError};
use idgate_sidecar::config::{self, ConfigError, ConfigErrors, Origin, SettingsArgs, defaults};

/// The path the config file is said to have (it is never read): the
/// directory of the policy tests' fixtures, so that `policy =
/// "project.json"` or `groups = "groups.yaml"` in the file load real
/// policies.
pub const CONFIG_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/idgate/tests/fixtures/policy/idgate.toml"
);

/// At most this many flag arguments and variables are used; the rest of
/// their lines are ignored.
pub const MAX_ITEMS: usize = 16;

/// One decoded input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigInput {
    /// The config file's text.
    pub toml: String,
    /// Command-line arguments, as after `idgate serve`.
    pub flags: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

impl ConfigInput {
    /// Decodes an input; `None` when it is not UTF-8 (the real loader
    /// refuses such a file before parsing it) or names special files.
    pub fn decode(data: &[u8]) -> Option<ConfigInput> {
        let text = std::str::from_utf8(data).ok()?;
        // Policy and groups paths are read: keep the fuzzer away from
        // devices and kernel files that never end or block (/dev/zero,
        // /dev/stdin, /proc/self/fd/0), which would be hangs of the harness,
        // not of the code under test.
        if ["dev/", "proc/", "sys/"].iter().any(|d| text.contains(d)) {
            return None;
        }
        let mut parts = text.splitn(3, '\0');
        let toml = parts.next().unwrap_or_default().to_owned();
        let flags = lines(parts.next()).map(str::to_owned).collect();
        let env = lines(parts.next())
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (l.to_owned(), String::new()),
            })
            .collect();
        Some(ConfigInput { toml, flags, env })
    }

    /// The bytes [`ConfigInput::decode`] reads back as this input.
    pub fn encode(&self) -> Vec<u8> {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{}\0{}\0{}",
            self.toml,
            self.flags.join("\n"),
            env.join("\n")
        )
        .into_bytes()
    }
}

/// The first [`MAX_ITEMS`] lines of a part; none when it is missing or empty.
fn lines(part: Option<&str>) -> impl Iterator<Item = &str> {
    part.filter(|p| !p.is_empty())
        .into_iter()
        .flat_map(|p| p.split('\n'))
        .take(MAX_ITEMS)
}

/// The settings flags, parsed as the `serve` and `check` subcommands parse
/// them.
#[derive(Parser)]
#[command(name = "idgate")]
struct Flags {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Loads settings from `data` and checks what comes back: settings that
/// keep their documented limits, or errors each naming a source the input
/// really gave.
pub fn check(data: &[u8]) {
    let Some(input) = ConfigInput::decode(data) else {
        return;
    };
    let argv = std::iter::once("idgate").chain(input.flags.iter().map(String::as_str));
    // A usage error is clap's, reported before settings are loaded.
    let Ok(flags) = Flags::try_parse_from(argv) else {
        return;
    };
    let env: BTreeMap<String, String> = input.env.iter().cloned().collect();
    let path = Path::new(CONFIG_PATH);
    match config::load_toml(path, &input.toml, &flags.settings, &env) {
        Ok(loaded) => check_settings(&loaded.settings),
        Err(errors) => check_errors(&input, &env, &errors),
    }
}

fn check_settings(s: &config::Settings) {
    let v = &s.verifier;
    assert!(!v.audiences.is_empty(), "settings without an audience");
    assert!(
        v.audiences.iter().all(|a| !a.is_empty() && a.trim() == a),
        "an empty or padded audience: {:?}",
        v.audiences
    );
    assert!(
        v.google || !v.issuers.is_empty(),
        "settings that trust no issuer"
    );
    assert!(v.clock_skew <= defaults::MAX_CLOCK_SKEW, "{v:?}");
    assert!(v.max_token_bytes > 0, "{v:?}");
    assert!(v.jwks.min_ttl <= v.jwks.max_ttl, "{v:?}");
    assert!(!s.request_timeout.is_zero(), "a zero request timeout");
    assert!(
        s.listen != s.admin_listen || s.listen.port() == 0,
        "the gate and the admin listener on one address: {}",
        s.listen
    );
    let _ = s.summary();
}

/// Long flag names of the settings (`audience`, `jwks-min-ttl`, …),
/// `--config` aside.
fn setting_names() -> Vec<String> {
    Flags::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|&l| l != "config")
        .map(str::to_owned)
        .collect()
}

fn check_errors(input: &ConfigInput, env: &BTreeMap<String, String>, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "an error list with no error");
    let _ = errors.to_string();
    let names = setting_names();
    let is_setting = |key: &str| names.iter().any(|n| n.replace('-', "_") == key);
    let flag_given = |flag: &str| {
        input
            .flags
            .iter()
            .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
    };
    for e in &errors.0 {
        let text = e.to_string();
        let origin = match e {
            ConfigError::WrongType { origin, .. }
            | ConfigError::InvalidValue { origin, .. }
            | ConfigError::UnreadableFile { origin, .. }
            | ConfigError::Conflict { origin, .. } => Some(origin),
            _ => None,
        };
        if let Some(origin) = origin {
            assert!(
                text.starts_with(&format!("{origin}: ")),
                "{text:?} does not start with its origin"
            );
            match origin {
                Origin::Flag(flag) => assert!(flag_given(flag), "{text:?}: {flag} was not given"),
                Origin::Env(var) => assert!(
                    env.get(var).is_some_and(|v| !v.trim().is_empty()),
                    "{text:?}: {var} is not set"
                ),
                Origin::File { path, key } => {
                    assert_eq!(path, Path::new(CONFIG_PATH), "{text:?}");
                    assert!(is_setting(key), "{text:?}: {key} is no setting");
                }
                Origin::Default => assert!(
                    matches!(e, ConfigError::Conflict { .. })
                        && text != "default: incomplete settings",
                    "{text:?}: only a conflict can be with a default"
                ),
                other => panic!("an origin this harness does not know: {other:?}"),
            }
        }
        match e {
            ConfigError::ReadConfigFile { .. } => panic!("the config file was read: {text:?}"),
            ConfigError::ConfigSyntax { path, .. } => assert_eq!(path, Path::new(CONFIG_PATH)),
            ConfigError::UnknownKey { path, key } => {
                assert_eq!(path, Path::new(CONFIG_PATH));
                assert!(!is_setting(key), "{text:?}: {key} is a setting");
            }
            ConfigError::Policy(p) => check_policy_error(p, &text, &flag_given),
            _ => {}
        }
    }
}

/// A policy error names its file, or the `--member` flag when that was
/// given: a problem with members from `IDGATE_MEMBER` or the file's
/// `member` key must not blame a flag nobody passed.
fn check_policy_error(p: &PolicyError, text: &str, flag_given: &dyn Fn(&str) -> bool) {
    match p.file() {
        Some(MEMBER_FLAG_SOURCE) => assert!(
            flag_given(MEMBER_FLAG_SOURCE),
            "{text:?}: no --member flag was given"
        ),
        Some(file) => assert!(!file.is_empty(), "{text:?}: an empty file name"),
        None => panic!("{text:?} names no flag, variable or file"),
    }
}
