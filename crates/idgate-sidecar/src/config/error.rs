//! What can be wrong with the settings, each problem naming where it came from.

use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;

/// Where a value came from, as the user wrote it: `--audience`,
/// `IDGATE_CLOCK_SKEW`, `config.toml: jwks_min_ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A command-line flag, with its dashes.
    Flag(&'static str),
    /// An environment variable.
    Env(String),
    /// A key in the config file.
    File {
        /// The config file as given.
        path: PathBuf,
        /// The TOML key.
        key: String,
    },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => f.write_str(name),
            Origin::Env(name) => f.write_str(name),
            Origin::File { path, key } => write!(f, "{}: {key}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One problem with the settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    ReadConfigFile {
        /// The file as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("{}: invalid TOML", path.display())]
    ConfigSyntax {
        /// The file as given.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The config file has a key that is no setting (often a typo).
    #[error("{}: unknown key `{key}`", path.display())]
    UnknownKey {
        /// The file as given.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of the wrong TOML type, or several values for a single setting.
    #[error("{origin}: expected {expected}")]
    WrongType {
        /// Where it came from.
        origin: Origin,
        /// What was expected.
        expected: &'static str,
    },
    /// A value that does not parse or is out of range.
    #[error("{origin}: invalid value {value:?}")]
    InvalidValue {
        /// Where it came from.
        origin: Origin,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        #[source]
        problem: ValueError,
    },
    /// A problem in the policy, groups file or members, found by loading
    /// them as the gate will: named by file, binding and member.
    #[error("policy: {0}")]
    Policy(idgate::policy::PolicyError),
    /// A policy or groups file that cannot be read.
    #[error("{origin}: cannot read {}", path.display())]
    UnreadableFile {
        /// Where the path came from.
        origin: Origin,
        /// The path, resolved.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No audience anywhere. There is no setting that skips the audience
    /// check: it is what stops a token minted for another service.
    #[error(
        "no audience: set --audience, IDGATE_AUDIENCE or `audience` in the config file \
         (the audience check cannot be turned off)"
    )]
    MissingAudience,
    /// Proxy mode without an upstream.
    #[error(
        "no upstream: proxy mode needs --upstream, IDGATE_UPSTREAM or `upstream` in the config file"
    )]
    MissingUpstream,
    /// Two settings that do not go together.
    #[error("{origin}: {message}")]
    Conflict {
        /// The setting at fault.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
}

/// Why a single value was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not a humantime duration.
    #[error("not a duration such as 30s, 5m or 12h")]
    Duration(#[source] humantime::DurationError),
    /// Not a socket address.
    #[error("not an address such as 0.0.0.0:8080")]
    Address(#[source] std::net::AddrParseError),
    /// Not a whole number.
    #[error("not a whole number")]
    Number(#[source] std::num::ParseIntError),
    /// Zero where zero makes no sense.
    #[error("must be greater than zero")]
    Zero,
    /// Not one of the allowed words.
    #[error("expected one of: {expected}")]
    Choice {
        /// The allowed words.
        expected: &'static str,
    },
    /// A URL that cannot be used here.
    #[error("{0}")]
    Url(String),
    /// An IAM member that is not well formed.
    #[error("{0}")]
    Member(String),
    /// A header name or pattern that cannot be used.
    #[error("{0}")]
    Header(String),
    /// A public path that cannot be used.
    #[error("{0}")]
    PublicPath(&'static str),
    /// A member, invoker role or pool that the policy refuses when it is
    /// loaded as the gate loads it.
    #[error("{0}")]
    Policy(String),
}

/// Every problem found, reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
            let mut cause = e.source();
            while let Some(c) = cause {
                // Multi-line causes (TOML snippets) stay readable indented.
                let text = c.to_string();
                write!(f, ": {}", text.trim_end().replace('\n', "\n    "))?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
