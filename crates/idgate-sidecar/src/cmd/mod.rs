//! One module per subcommand, plus what the local tools share.

pub mod check;
pub mod demo;
pub mod dev_issuer;
pub mod mint;
pub mod proxy;
pub mod serve;
pub mod token;
pub mod token_source;
pub mod when;

/// Exit code for bad settings or usage (as clap uses for usage errors).
pub const EXIT_USAGE: u8 = 2;
