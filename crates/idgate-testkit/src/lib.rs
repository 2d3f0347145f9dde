//! A local OIDC issuer for testing idgate.
//!
//! It plays Google's part: RSA-2048 signing keys ([`TestKey`]), ID tokens
//! shaped like Google's ([`google_claims`], [`mint`]) and a live HTTP server
//! ([`Issuer`]) that publishes discovery and a JWKS, rotates keys, and fails on
//! demand ([`Failure`]) so a JWKS cache can be tested against everything a real
//! key endpoint may do.
//!
//! The minting functions never check what they are asked to sign: a header that
//! says `"alg":"none"`, duplicate JSON members or non-canonical base64 are all
//! signed as given, because the verifier's tests need exactly those tokens.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use idgate_testkit::Issuer;
//!
//! let issuer = Issuer::start().await;
//! let token = issuer.token("alice@example.com", "https://my-service.run.app");
//! assert_eq!(token.split('.').count(), 3);
//!
//! // Rotation: publish a new key, sign with it, retire the old one.
//! issuer.publish(idgate_testkit::TestKey::generate("key-2"));
//! issuer.activate("key-2");
//! issuer.drop_key("key-1");
//! assert_eq!(issuer.active_key().kid(), "key-2");
//! # }
//! ```
//!
//! The server runs on the tokio runtime that called [`Issuer::start`] (any
//! flavour); [`Issuer::start_blocking`] gives it a thread of its own, for
//! tests that are not async or that share one issuer between runtimes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod issuer;
mod key;
mod keys_dir;
mod mint;
mod server;

use std::path::PathBuf;

pub use issuer::{Failure, Issuer, IssuerOptions};
pub use key::TestKey;
pub use keys_dir::{load_or_create_keys, save_active, save_key};
pub use mint::{
    b64url, default_header, google_claims, mint, mint_hs256, mint_raw, mint_segments,
    mint_unsigned, now_unix, stable_sub,
};

/// What can go wrong in the testkit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The crypto library could not generate an RSA key.
    #[error("rsa key generation failed")]
    KeyGeneration,
    /// Bytes that should hold a PKCS#8 RSA private key do not.
    #[error("invalid pkcs#8 rsa key for kid {kid:?}")]
    InvalidKey {
        /// The kid the key was loaded for.
        kid: String,
        /// Why the crypto library rejected it.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// The crypto library could not encode a key it holds (PKCS#8 or SPKI).
    #[error("cannot encode rsa key for kid {kid:?}")]
    KeyEncoding {
        /// The kid of the key.
        kid: String,
    },
    /// A kid that cannot name a file in a keys directory.
    #[error(
        "kid {kid:?} cannot be stored in a keys directory (use letters, digits, '.', '_', '-')"
    )]
    InvalidKid {
        /// The offending kid.
        kid: String,
    },
    /// Reading or writing the keys directory failed.
    #[error("keys directory {path}")]
    KeysDir {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The keys directory names an active kid that has no key file.
    #[error("keys directory {path}: active kid {kid:?} has no key file")]
    ActiveKeyMissing {
        /// The keys directory.
        path: PathBuf,
        /// The kid named in its `active` file.
        kid: String,
    },
    /// No published key has this kid.
    #[error("no published key has kid {kid:?}")]
    UnknownKid {
        /// The kid asked for.
        kid: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The background thread of [`Issuer::start_blocking_with`] could not run.
    #[error("issuer thread failed to start")]
    Thread(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn handles_can_be_shared_between_tasks() {
        assert_send_sync::<crate::Issuer>();
        assert_send_sync::<crate::TestKey>();
        assert_send_sync::<crate::Error>();
        assert_send_sync::<crate::Failure>();
    }
}
