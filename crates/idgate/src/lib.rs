//! idgate: Cloud Run's invoker check for any service.
//!
//! A request must carry a Google-signed ID token minted for *this* service
//! (its `aud`), and the caller in it must be allowed by an IAM invoker
//! policy. This crate holds the parts every form of idgate shares: the key
//! cache, the [`Verifier`], the [`policy`], and the tower layer with its axum
//! extractor.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod clock;
mod hot_tokens;
pub mod identity;
pub mod policy;
pub mod reason;
mod segment;
mod strict_json;
mod token_key;

pub use clock::{Clock, ManualClock, SystemClock};
pub use identity::{Identity, IssuerTag, Principal};
pub use reason::{DenialClass, Reason};

pub mod credential;
pub mod jwks;
pub mod token;
pub mod verifier;

pub use credential::{Credential, CredentialHeader};
pub use jsonwebtoken::Algorithm;
pub use jwks::{JwksSettings, KeyCacheStatus};
pub use verifier::{
    ConfigError, GCLOUD_AUDIENCE, GOOGLE_CERTS_URL, IssuerConfig, Rejection, Verifier,
    VerifierBuilder, VerifierStats,
};
#[cfg(feature = "axum")]
mod extract;
