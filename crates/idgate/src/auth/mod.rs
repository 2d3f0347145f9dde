//! The tower layer: one line puts an app behind the gate.
//!
//! ```
//! use std::sync::Arc;
//! use idgate::auth::{AuthLayer, Gate};
//! use idgate::policy::{PolicyHandle, PolicySources};
//! use idgate::{Identity, Reason, Verifier};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Google ID tokens minted for this service...
//! let verifier = Arc::new(Verifier::builder().audience("https://my-service.example.com").build()?);
//! // ...from a caller the invoker policy allows.
//! let (policy, _warnings) = PolicyHandle::new(PolicySources {
//!     members: vec!["serviceAccount:caller@my-project.iam.gserviceaccount.com".into()],
//!     ..Default::default()
//! })?;
//! let gate = Arc::new(Gate::builder(verifier, Arc::new(policy)).public_path("/healthz").build()?);
//! let layer = AuthLayer::new(gate);
//!
//! // axum: Router::new().route(...).layer(layer)
//! // tonic: Server::builder().layer(layer)
//! // or any tower service of `http::Request`s:
//! let app = layer.layer(tower::service_fn(|req: http::Request<String>| async move {
//!     let caller = req.extensions().get::<Identity>().map(|id| id.principal().to_string());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(format!("hello {caller:?}")))
//! }));
//!
//! // No token: refused before the app sees it; the reason rides along.
//! let resp = app.clone().oneshot(http::Request::get("/").body(String::new())?).await?;
//! assert_eq!(resp.status(), 401);
//! assert_eq!(resp.extensions().get::<Reason>(), Some(&Reason::MissingToken));
//!
//! // A public path needs none.
//! let resp = app.oneshot(http::Request::get("/healthz").body(String::new())?).await?;
//! assert_eq!(resp.status(), 200);
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
//!
//! With the `axum` feature, [`Identity`](crate::Identity) is an axum
//! extractor: `Identity` in a handler's arguments requires a verified
//! caller, `Option<Identity>` also takes the anonymous requests the gate let
//! in (public paths, `allUsers`). On a route the layer does not cover, the
//! extractor answers 500, saying the layer is missing.

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
    StatusCodes, public_path_problem,
};
pub use layer::AuthLayer;
pub use response::{denial_response, grpc_status_for, grpc_status_with, is_grpc, status_for};
pub use service::Auth;
