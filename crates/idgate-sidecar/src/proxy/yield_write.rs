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
//! of the run queue, behind every task that the same poll of the I/O driver
//! woke. Those read and gate their requests first, and the upstream, when
//! it wakes, finds more than one request waiting. The cost is one more poll
//! of the connection's task per write (about 2,500 instructions, 5 % of a
//! cached request). A write that found the socket full does not yield
//! again when the socket has room: the turn it waited for the room is its
//! turn.
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

    /// After a write attempt: one that went through ends this write's turn;
    /// one that found the socket full keeps it.
    fn wrote<R>(&mut self, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.yielded = false;
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
        self.wrote(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.turn(cx));
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(poll)
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(
        stream: &mut YieldBeforeWrite<tokio::io::DuplexStream>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(stream).poll_write(cx, bytes)
    }

    #[tokio::test]
    async fn each_write_waits_one_turn_and_a_full_socket_is_its_turn() {
        let (ours, mut theirs) = tokio::io::duplex(4);
        let mut stream = YieldBeforeWrite::for_this_runtime(ours);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        // First attempt: nothing written, the task woken to come back.
        assert!(write(&mut stream, &mut cx, b"ab").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Its turn: the bytes go out.
        assert!(matches!(
            write(&mut stream, &mut cx, b"ab"),
            Poll::Ready(Ok(2))
        ));
        // The next write waits a turn of its own.
        assert!(write(&mut stream, &mut cx, b"cd").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            write(&mut stream, &mut cx, b"cd"),
            Poll::Ready(Ok(2))
        ));

        // The pipe (4 bytes) is full: after its turn the write waits for
        // room, and once there is room it goes out without another turn.
        assert!(write(&mut stream, &mut cx, b"e").is_pending());
        assert!(write(&mut stream, &mut cx, b"e").is_pending());
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abcd");
        assert!(matches!(
            write(&mut stream, &mut cx, b"e"),
            Poll::Ready(Ok(1))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_multi_threaded_runtime_writes_do_not_yield() {
        let (ours, _theirs) = tokio::io::duplex(4);
        let mut stream = YieldBeforeWrite::for_this_runtime(ours);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            write(&mut stream, &mut cx, b"ab"),
            Poll::Ready(Ok(2))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }
}
