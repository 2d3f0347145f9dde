use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::AuthBody;
use super::gate::{Admission, Outcome, Refusal, StatusCodes};
use super::response::{denial_response, is_grpc};

type Check<B> = BoxFuture<'static, (Outcome, Request<B>)>;

pin_project! {
    /// The response future of [`Auth`](super::Auth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future, B>,
        service: Option<S>,
        codes: StatusCodes,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Checking { check: Check<B> },
        Calling { #[pin] future: F },
        // Decided in `call`: `None` once answered.
        Refused { refusal: Option<Box<(Refusal, bool)>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// The gate has to wait (a token to verify): `check` decides, then
    /// `service` is called.
    pub(crate) fn checking(check: Check<B>, service: S, codes: StatusCodes) -> Self {
        ResponseFuture {
            state: State::Checking { check },
            service: Some(service),
            codes,
        }
    }

    /// The gate let the request through in `call`, which called the inner
    /// service.
    pub(crate) fn calling(future: S::Future, codes: StatusCodes) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service: None,
            codes,
        }
    }

    /// The gate refused the request in `call`; `grpc` says how to answer.
    pub(crate) fn refused(refusal: Refusal, grpc: bool, codes: StatusCodes) -> Self {
        ResponseFuture {
            state: State::Refused {
                refusal: Some(Box::new((refusal, grpc))),
            },
            service: None,
            codes,
        }
    }
}

/// What an allowed request carries on: the identity, and the admission
/// (which also tells the extractor that the gate ran). Two entries, not
/// three: with one more already there (the sidecar puts the client's
/// address), a fourth makes the extensions' table grow, a reallocation per
/// request.
pub(crate) fn admit<B>(req: &mut Request<B>, admission: Admission) {
    let ext = req.extensions_mut();
    match &admission.identity {
        Some(id) => {
            ext.insert(id.clone());
        }
        // Let in without a caller: no `Identity` an earlier layer put in
        // the extensions may pass for one this gate verified.
        None => {
            ext.remove::<crate::Identity>();
        }
    }
    ext.insert(admission);
}

/// The answer to a refused request, with the refusal in its extensions.
fn refusal_response<ResBody>(
    refusal: Refusal,
    grpc: bool,
    codes: StatusCodes,
) -> Response<AuthBody<ResBody>> {
    let resp = denial_response(refusal.rejection.reason, grpc, codes);
    let (mut parts, body) = resp.into_parts();
    parts.extensions.insert(refusal);
    Response::from_parts(parts, AuthBody::denied(body))
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<AuthBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check } => {
                    let (outcome, mut req) = ready!(check.as_mut().poll(cx));
                    match outcome {
                        Outcome::Allowed(admission) => {
                            admit(&mut req, admission);
                            let Some(mut service) = this.service.take() else {
                                unreachable!("the service is taken once, when the check completes")
                            };
                            let future = service.call(req);
                            this.state.set(State::Calling { future });
                        }
                        Outcome::Denied(refusal) => {
                            let grpc = is_grpc(req.headers());
                            return Poll::Ready(Ok(refusal_response(refusal, grpc, *this.codes)));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let resp = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(resp.map(AuthBody::inner)));
                }
                StateProj::Refused { refusal } => {
                    let Some(answer) = refusal.take() else {
                        panic!("ResponseFuture polled after it completed");
                    };
                    let (refusal, grpc) = *answer;
                    return Poll::Ready(Ok(refusal_response(refusal, grpc, *this.codes)));
                }
            }
        }
    }
}
