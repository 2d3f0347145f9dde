//! The upstream socket lets the rest of the ready work run before it writes.
//!
//! On a host where the upstream shares a core with the sidecar, each write
//! to the upstream wakes it, and the woken upstream preempts the sidecar:
//! it answers that one request and sleeps, and the sidecar picks up the
//! next. Each request then costs a switch each way, and the switches cost
//! more than the proxying (BENCHMARKS.md, "The scheduler").
//!
//! [`YieldBeforeWrite`] makes a write wait for one turn of the runtime: the
//! task that wants to write wakes itself and yields, so it goes to the back
//! of the run queue, behind the tasks already queued (those the same poll
//! of the I/O driver woke). Those read and gate their requests first, and
//! the upstream, when it wakes, finds more than one request waiting. The
//! cost is one more poll of the connection's task per write (about 2,500
//! instructions, 5 % of a cached request).
//!
//! - The turn is taken by a write's first attempt. A write that then finds
//!   the socket full, or goes out only in part, does not yield again: the
//!   wait for room is its turn. A write hyper retries within the same poll
//!   of the task (it flushes twice when a streamed body fills its buffer)
//!   goes out at once.
//! - Every write on the connection takes its turn: a request body's chunks
//!   and, after a `101`, the bytes copied to an upgraded connection, as
//!   well as a request's head.
//!
//! Only on the single-threaded runtime (the sidecar's when it has one CPU,
//! the case where the upstream shares it). On the multi-threaded one a
//! task that yields is put where idle workers can steal it, and tokio wakes
//! one to do so: a thread woken per request, the opposite of the point.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::{Handle, RuntimeFlavor};

/// A stream whose writes each wait for one turn of the runtime.
#[derive(Debug)]
pub struct YieldBeforeWrite<T> {
    inner: T,
    /// Writes yield at all (the runtime is single-threaded).
    yields: bool,
    /// This write has had its turn: the next attempt goes to the socket.
    yielded: bool,
}

impl<T> YieldBeforeWrite<T> {
    /// Writes yield if the current runtime is single-threaded.
    pub fn for_this_runtime(inner: T) -> Self {
        let yields = Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread);
        Self {
            inner,
            yields,
            yielded: false,
        }
    }

    /// Pending once per write, with the task woken to run again after the
    /// tasks already queued.
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded || !self.yields {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After a write attempt of `len` bytes: one that went through whole, or
    /// failed, ends this write's turn; one that found the socket full, or
    /// went out in part, keeps it for the rest.
    fn wrote(&mut self, poll: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(n)) if n < len => {}
            Poll::Ready(_) => self.yielded = false,
            Poll::Pending => {}
        }
        poll
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for YieldBeforeWrite<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for YieldBeforeWrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.turn(cx));
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(poll, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.turn(cx));
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(poll, bufs.iter().map(|b| b.len()).sum())
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::super::counted_waker::CountedWaker;
    use super::*;

    /// A write as hyper makes it (vectored, one slice per buffer) or plain.
    fn write(
        stream: &mut YieldBeforeWrite<tokio::io::DuplexStream>,
        cx: &mut Context<'_>,
        bytes: &[u8],
        vectored: bool,
    ) -> Poll<io::Result<usize>> {
        if vectored {
            Pin::new(stream).poll_write_vectored(cx, &[IoSlice::new(bytes)])
        } else {
            Pin::new(stream).poll_write(cx, bytes)
        }
    }

    async fn each_write_waits_one_turn(vectored: bool) {
        let (ours, mut theirs) = tokio::io::duplex(4);
        let mut stream = YieldBeforeWrite::for_this_runtime(ours);
        let woken = CountedWaker::new();
        let mut cx = woken.cx();
        let mut write = |bytes: &[u8]| write(&mut stream, &mut cx, bytes, vectored);

        // First attempt: nothing written, the task woken to come back.
        assert!(write(b"ab").is_pending());
        assert_eq!(woken.wakes(), 1);
        // Its turn: the bytes go out.
        assert!(matches!(write(b"ab"), Poll::Ready(Ok(2))));
        // The next write waits a turn of its own.
        assert!(write(b"cd").is_pending());
        assert_eq!(woken.wakes(), 2);
        assert!(matches!(write(b"cd"), Poll::Ready(Ok(2))));

        // The pipe (4 bytes) is full: after its turn the write waits for
        // room, and once there is room it goes out without another turn.
        assert!(write(b"e").is_pending());
        assert_eq!(woken.wakes(), 3);
        assert!(write(b"e").is_pending());
        assert_eq!(woken.wakes(), 3, "waits for room, not for a turn");
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abcd");
        assert!(matches!(write(b"e"), Poll::Ready(Ok(1))));

        // Six bytes into three of room: the first part goes after the turn,
        // the rest waits for room without another turn.
        assert!(write(b"fghijk").is_pending());
        let turns = woken.wakes();
        assert!(matches!(write(b"fghijk"), Poll::Ready(Ok(3))));
        assert!(write(b"ijk").is_pending());
        assert_eq!(
            woken.wakes(),
            turns,
            "the rest waits for room, not for a turn"
        );
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"efgh");
        assert!(matches!(write(b"ijk"), Poll::Ready(Ok(3))));
    }

    #[tokio::test]
    async fn each_write_waits_one_turn_and_a_full_socket_is_its_turn() {
        each_write_waits_one_turn(false).await;
    }

    #[tokio::test]
    async fn vectored_writes_wait_their_turn_alike() {
        each_write_waits_one_turn(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_multi_threaded_runtime_writes_do_not_yield() {
        let (ours, _theirs) = tokio::io::duplex(4);
        let mut stream = YieldBeforeWrite::for_this_runtime(ours);
        let woken = CountedWaker::new();
        let mut cx = woken.cx();
        assert!(matches!(
            write(&mut stream, &mut cx, b"ab", true),
            Poll::Ready(Ok(2))
        ));
        assert_eq!(woken.wakes(), 0);
    }
}
