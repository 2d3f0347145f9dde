//! The tower layer: one line puts an app behind the gate.
//!
//! ```no_run
//! use std::sync::Arc;
//! use idgate::auth::{AuthLayer, Gate};
//! use idgate::policy::{PolicyHandle, PolicySources};
//! use idgate::Verifier;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Arc::new(Verifier::builder().audience("https://my-service.example.com").build()?);
//! let (policy, _warnings) = PolicyHandle::new(PolicySources {
//!     members: vec!["serviceAccount:caller@my-project.iam.gserviceaccount.com".into()],
//!     ..Default::default()
//! })?;
//! let gate = Arc::new(Gate::builder(verifier, Arc::new(policy)).public_path("/healthz").build()?);
//! let layer = AuthLayer::new(gate);
//! // axum: Router::new().route(...).layer(layer)
//! // tonic: Server::builder().layer(layer)
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! An allowed request goes on with the [`Identity`](crate::Identity) and an
//! [`Admission`] in its extensions. A refused one gets the design's answer
//! (401 + `WWW-Authenticate`, 403, or 503, with a JSON body; a gRPC status
//! for gRPC requests) and carries its [`Refusal`] and
//! [`Reason`](crate::Reason) in the response extensions, so outer layers can
//! tell reasons apart.

mod body;
mod future;
mod gate;
mod layer;
mod response;
mod service;

pub use body::AuthBody;
pub use future::ResponseFuture;
pub use gate::{
    Admission, DecisionEvent, Gate, GateBuilder, GateConfigError, Outcome, Refusal, RequestFacts,
    StatusCodes,
};
pub use layer::AuthLayer;
pub use response::{denial_response, grpc_status_for, is_grpc, status_for};
pub use service::Auth;
#[cfg(feature = "axum")]
pub(crate) use service::GateRan;
