//! An answer to an HTTP/2 caller goes out in frames as large as the
//! protocol lets every peer take, not in the upstream's.
//!
//! hyper's HTTP/2 server sends each chunk of a response body as its own
//! DATA frame, and the h2 crate writes each DATA frame with its own
//! `writev`: an upstream that sends 8 KiB frames (nginx's) cost 128 writes
//! a MiB, each one a trip through the kernel's TCP stack and a wake-up of
//! the reader (BENCHMARKS.md, "Stop 48"). [`Coalesce`] joins the
//! chunks that are already there, up to [`FRAME`], into one.
//!
//! It never waits for a chunk: what the upstream has not sent yet is not
//! waited for, so a stream of small messages (gRPC) goes out as soon as it
//! did before, only in fewer frames when several were ready at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The largest DATA frame every HTTP/2 peer accepts (RFC 9113, 4.2: the
/// smallest `SETTINGS_MAX_FRAME_SIZE` a peer may set). A larger chunk
/// would be split into frames of this size anyway.
pub const FRAME: usize = 16 << 10;

/// A body whose data chunks, when several are ready, come out joined, up
/// to [`FRAME`] bytes. Trailers, errors and the end come out in order,
/// after the data before them.
#[derive(Debug)]
pub struct Coalesce<B: Body> {
    body: B,
    /// A frame taken from `body` that did not fit in the last chunk: the
    /// next one starts with it.
    held: Option<Frame<Bytes>>,
    /// An error met while joining: given after the data before it.
    error: Option<B::Error>,
    /// `body` has ended (it said so while chunks were being joined).
    ended: bool,
}

impl<B: Body> Coalesce<B> {
    pub fn new(body: B) -> Self {
        Coalesce {
            body,
            held: None,
            error: None,
            ended: false,
        }
    }
}

impl<B> Body for Coalesce<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let first = match this.held.take() {
            Some(frame) => frame,
            None => {
                if let Some(e) = this.error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                if this.ended {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut this.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    other => return other,
                }
            }
        };
        let first = match first.into_data() {
            Ok(data) if data.len() < FRAME => data,
            Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
        };
        // Join what is ready behind it; the first chunk is copied only
        // when a second one comes.
        let mut joined: Option<BytesMut> = None;
        let mut len = first.len();
        while !this.ended && this.error.is_none() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => this.error = Some(e),
                Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                    Some(data) if len + data.len() <= FRAME => {
                        let buf = joined.get_or_insert_with(|| {
                            let mut buf = BytesMut::with_capacity(FRAME);
                            buf.extend_from_slice(&first);
                            buf
                        });
                        buf.extend_from_slice(data);
                        len += data.len();
                    }
                    _ => {
                        this.held = Some(frame);
                        break;
                    }
                },
            }
        }
        let data = joined.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.error.is_none() && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        if self.ended {
            return SizeHint::with_exact(held);
        }
        let inner = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Waker;

    use super::*;

    /// A body that gives its script's steps in order: a frame, an error,
    /// or `Pending` (one poll's worth: nothing ready yet).
    struct Scripted(VecDeque<Step>);

    enum Step {
        Data(usize, u8),
        Trailers,
        Error,
        Pending,
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(match self.0.pop_front() {
                None => None,
                Some(Step::Pending) => return Poll::Pending,
                Some(Step::Data(len, byte)) => Some(Ok(Frame::data(Bytes::from(vec![byte; len])))),
                Some(Step::Trailers) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Some(Ok(Frame::trailers(trailers)))
                }
                Some(Step::Error) => Some(Err("broken")),
            })
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// What each poll of the joined body gave: data as (length, its
    /// bytes' values in order, deduplicated), `T` for trailers, `E` for an
    /// error, `P` for pending, and `end`.
    fn polls(script: Vec<Step>) -> Vec<String> {
        let mut body = Coalesce::new(Scripted(script.into()));
        let mut cx = Context::from_waker(Waker::noop());
        let mut seen = Vec::new();
        loop {
            let poll = Pin::new(&mut body).poll_frame(&mut cx);
            seen.push(match poll {
                Poll::Pending => "P".to_owned(),
                Poll::Ready(None) => {
                    assert!(body.is_end_stream(), "ended, and says so");
                    "end".to_owned()
                }
                Poll::Ready(Some(Err(_))) => "E".to_owned(),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let mut values: Vec<u8> = data.to_vec();
                        values.dedup();
                        format!("{}{values:?}", data.len())
                    }
                    Err(_) => "T".to_owned(),
                },
            });
            if seen.last().is_some_and(|s| s == "end") {
                return seen;
            }
        }
    }

    #[test]
    fn ready_chunks_are_joined_in_order_up_to_a_frame() {
        use Step::*;
        assert_eq!(
            polls(vec![
                Data(8192, 1),
                Data(8192, 2),
                Data(8192, 3),
                Data(100, 4)
            ]),
            ["16384[1, 2]", "8292[3, 4]", "end"]
        );
    }

    #[test]
    fn a_chunk_is_not_waited_for() {
        use Step::*;
        assert_eq!(
            polls(vec![
                Data(10, 1),
                Pending,
                Pending,
                Data(20, 2),
                Data(30, 3),
                Pending
            ]),
            ["10[1]", "P", "50[2, 3]", "end"]
        );
    }

    #[test]
    fn a_chunk_that_does_not_fit_starts_the_next() {
        use Step::*;
        assert_eq!(
            polls(vec![
                Data(10_000, 1),
                Data(10_000, 2),
                Data(FRAME, 3),
                Data(1, 4)
            ]),
            ["10000[1]", "10000[2]", "16384[3]", "1[4]", "end"]
        );
    }

    #[test]
    fn trailers_and_errors_come_after_the_data_before_them() {
        use Step::*;
        assert_eq!(
            polls(vec![Data(5, 1), Data(5, 2), Trailers]),
            ["10[1, 2]", "T", "end"]
        );
        assert_eq!(
            polls(vec![Data(5, 1), Data(5, 2), Error]),
            ["10[1, 2]", "E", "end"]
        );
    }

    #[test]
    fn the_length_known_is_kept() {
        let mut body = Coalesce::new(http_body_util::Full::new(Bytes::from(vec![0; 100])));
        assert_eq!(body.size_hint().exact(), Some(100));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("the data is ready");
        };
        assert_eq!(frame.into_data().unwrap().len(), 100);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));

        // A chunk held back still counts.
        let mut body = Coalesce::new(Scripted(
            [Step::Data(FRAME - 1, 1), Step::Data(2, 2)].into(),
        ));
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(!body.is_end_stream(), "a chunk is held");
        assert_eq!(body.size_hint().lower(), 2);
    }
}
