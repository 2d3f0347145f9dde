//! One module per subcommand.

pub mod serve;

/// Exit code for bad settings or usage (as clap uses for usage errors).
pub const EXIT_USAGE: u8 = 2;
