use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::AuthBody;
use super::gate::{Outcome, StatusCodes};
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
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(check: Check<B>, service: S, codes: StatusCodes) -> Self {
        ResponseFuture {
            state: State::Checking { check },
            service: Some(service),
            codes,
        }
    }
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
                            // The admission also tells the extractor that the
                            // gate ran. Two entries, not three: with one more
                            // already there (the sidecar puts the client's
                            // address), a fourth makes the extensions' table
                            // grow, a reallocation per request.
                            let ext = req.extensions_mut();
                            if let Some(id) = &admission.identity {
                                ext.insert(id.clone());
                            }
                            ext.insert(admission);
                            let Some(mut service) = this.service.take() else {
                                unreachable!("the service is taken once, when the check completes")
                            };
                            let future = service.call(req);
                            this.state.set(State::Calling { future });
                        }
                        Outcome::Denied(refusal) => {
                            let grpc = is_grpc(req.headers());
                            let resp = denial_response(refusal.rejection.reason, grpc, *this.codes);
                            let (mut parts, body) = resp.into_parts();
                            parts.extensions.insert(refusal);
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                AuthBody::denied(body),
                            )));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let resp = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(resp.map(AuthBody::inner)));
                }
            }
        }
    }
}
