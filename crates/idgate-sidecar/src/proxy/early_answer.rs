//! An upstream's answer sent before it read the whole request body is read
//! before the failed write is reported.
//!
//! Many servers answer a request early (a 413 for a body too large, a 401,
//! or an upload endpoint that wants none of it), then close the connection
//! with the body still coming. The proxy's next write of that body then
//! fails (`EPIPE` or `ECONNRESET`), while the answer sits unread in the
//! socket's receive queue: Linux hands queued bytes out before the error.
//! hyper's client stops at the first error, read or write, so the client
//! got a 502 for an answer the upstream had given. RFC 9112, 9.6, asks a
//! client sending a body to watch for such an answer.
//!
//! [`EarlyAnswer`] holds a write that failed because the peer closed or
//! reset the connection: the write waits, and the reads go on. If an answer
//! was sent, hyper reads it whole and passes it on. Once the reads end (the
//! end of stream, or an error), the held write fails as it would have: the
//! exchange ends, and the rest of the client's body is not read on. When no
//! answer was sent, the read side ends at once, and the request fails
//! (502) as before.
//!
//! Only a peer's close is held. Any other write error goes to hyper at
//! once, since the read side is not known to end soon.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose write, refused by a peer that closed, waits until the
/// reads have ended.
#[derive(Debug)]
pub struct EarlyAnswer<T> {
    inner: T,
    /// The held write error, once a write has failed so.
    held: Option<Held>,
    /// A read returned the end of stream or an error.
    read_ended: bool,
}

#[derive(Debug)]
struct Held {
    kind: io::ErrorKind,
    /// The first error itself, given back to the first write after the
    /// reads end (later ones get one of the same kind).
    error: Option<io::Error>,
    /// The task waiting to write, woken when the reads end.
    writer: Option<Waker>,
}

impl<T> EarlyAnswer<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: None,
            read_ended: false,
        }
    }

    /// Whether a failed write is being held.
    #[cfg(test)]
    fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Before a write: `Some` to answer it without writing (the held
    /// error, or wait), `None` to write.
    fn held_write<R>(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<R>>> {
        let held = self.held.as_mut()?;
        if self.read_ended {
            let error = held.error.take().unwrap_or_else(|| held.kind.into());
            return Some(Poll::Ready(Err(error)));
        }
        held.writer = Some(cx.waker().clone());
        Some(Poll::Pending)
    }

    /// After a write: a failure because the peer closed is held while the
    /// reads go on.
    fn wrote<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(Err(e)) if !self.read_ended && peer_closed(e.kind()) => {
                self.held = Some(Held {
                    kind: e.kind(),
                    error: Some(e),
                    writer: Some(cx.waker().clone()),
                });
                // hyper looks at the read side again on its next poll.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            poll => poll,
        }
    }
}

/// Whether an I/O error says the peer closed or reset the connection.
pub(super) fn peer_closed(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for EarlyAnswer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let ended = match &poll {
            Poll::Ready(Ok(())) => buf.filled().len() == before && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended && !self.read_ended {
            self.read_ended = true;
            if let Some(writer) = self.held.as_mut().and_then(|h| h.writer.take()) {
                writer.wake();
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EarlyAnswer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(answer) = self.held_write(cx) {
            return answer;
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(answer) = self.held_write(cx) {
            return answer;
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(answer) = self.held_write(cx) {
            return answer;
        }
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::counted_waker::CountedWaker;
    use super::*;

    /// A connection to a peer that writes `answer`, closes its side if
    /// `shut` (as hyper's server does), and closes the socket with what it
    /// was sent unread, so that the kernel resets the connection. Returns
    /// once the peer has closed.
    async fn peer_that_answers_and_closes(answer: &'static [u8], shut: bool) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut theirs, _) = listener.accept().await.unwrap();
        // Unread when the peer closes: the close resets the connection.
        ours.write_all(b"a request head").await.unwrap();
        let mut probe = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), async {
            while theirs.peek(&mut probe).await.unwrap() == 0 {}
        })
        .await
        .expect("the request reaches the peer");
        theirs.write_all(answer).await.unwrap();
        if shut {
            theirs.shutdown().await.unwrap();
        }
        drop(theirs);
        ours
    }

    /// Writes until a write does not go through; returns that poll.
    async fn write_until_stopped(stream: &mut EarlyAnswer<TcpStream>) -> Poll<io::Result<usize>> {
        let chunk = [b'x'; 16 << 10];
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                // A write that finds the socket full waits for room; the
                // peer's reset comes within the deadline.
                let poll =
                    poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_write(cx, &chunk))).await;
                match poll {
                    Poll::Ready(Ok(_)) => tokio::task::yield_now().await,
                    Poll::Pending if !stream.holds() => tokio::task::yield_now().await,
                    stopped => return stopped,
                }
            }
        })
        .await
        .expect("a write fails within the deadline")
    }

    /// Reads until the end of stream or an error; returns what came first.
    async fn read_to_the_end(stream: &mut EarlyAnswer<TcpStream>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn a_write_the_peer_refused_waits_until_its_answer_is_read(shut: bool) {
        let ours = peer_that_answers_and_closes(b"HTTP/1.1 413 \r\n\r\n", shut).await;
        let mut stream = EarlyAnswer::new(ours);

        let stopped = write_until_stopped(&mut stream).await;
        assert!(stopped.is_pending(), "held, not failed: {stopped:?}");
        assert!(stream.holds());

        // The writer is woken when the reads end, not before.
        let woken = CountedWaker::new();
        let mut cx = woken.cx();
        assert!(
            Pin::new(&mut stream)
                .poll_write(&mut cx, b"more")
                .is_pending()
        );
        assert!(Pin::new(&mut stream).poll_flush(&mut cx).is_pending());

        let answer = read_to_the_end(&mut stream).await;
        assert_eq!(answer, b"HTTP/1.1 413 \r\n\r\n");
        assert_eq!(woken.wakes(), 1);

        // Now the write fails as it did at first.
        let Poll::Ready(Err(e)) = Pin::new(&mut stream).poll_write(&mut cx, b"more") else {
            panic!("the held write fails once the reads end");
        };
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
        assert!(e.raw_os_error().is_some(), "the first error itself: {e}");
        let again = Pin::new(&mut stream).poll_write(&mut cx, b"more");
        assert!(matches!(again, Poll::Ready(Err(_))), "{again:?}");
    }

    #[tokio::test]
    async fn an_answer_then_a_close_is_read_before_the_write_fails() {
        a_write_the_peer_refused_waits_until_its_answer_is_read(true).await;
    }

    #[tokio::test]
    async fn an_answer_then_a_reset_is_read_before_the_write_fails() {
        a_write_the_peer_refused_waits_until_its_answer_is_read(false).await;
    }

    #[tokio::test]
    async fn a_peer_that_closed_without_answering_fails_the_write_after_the_end() {
        let ours = peer_that_answers_and_closes(b"", true).await;
        let mut stream = EarlyAnswer::new(ours);
        // The end of stream comes first: a later write is not held.
        assert!(read_to_the_end(&mut stream).await.is_empty());
        let stopped = write_until_stopped(&mut stream).await;
        assert!(matches!(stopped, Poll::Ready(Err(_))), "{stopped:?}");
        assert!(!stream.holds());
    }
}
