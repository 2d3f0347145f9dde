//! The axum extractor for the caller's [`Identity`].
//!
//! `Identity` as a handler argument requires a verified caller;
//! `Option<Identity>` also accepts requests the gate let through without
//! one (public paths, `allUsers`). Using either on a route that the
//! [`AuthLayer`](crate::auth::AuthLayer) does not cover is a server bug and
//! answers 500 saying so: never a 401 that would hide the missing layer.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::auth::{Admission, denial_response, is_grpc};
use crate::{Identity, Reason};

fn missing_layer() -> Response {
    tracing::error!("Identity extractor used on a route without idgate's AuthLayer");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "idgate: the Identity extractor needs idgate::auth::AuthLayer on this route, and it is not there",
    )
        .into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(admission) = parts.extensions.get::<Admission>() else {
            return Err(missing_layer());
        };
        // The gate's own admission says who the caller is, not whatever
        // `Identity` another layer may have put in the extensions.
        match &admission.identity {
            Some(id) => Ok(id.clone()),
            // Let in without an identity (`allUsers`, a public path): refused
            // here as the gate refuses, with the reason its token got.
            None => Err(denial_response(
                admission.anonymous_reason.unwrap_or(Reason::MissingToken),
                is_grpc(&parts.headers),
                admission.status_codes,
            )
            .map(axum::body::Body::from)),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match parts.extensions.get::<Admission>() {
            Some(admission) => Ok(admission.identity.clone()),
            None => Err(missing_layer()),
        }
    }
}
