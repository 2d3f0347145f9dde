//! The h2c upstream connection reads what the socket holds, not one frame.
//!
//! The h2 crate reads into a buffer sized for the frame it is decoding: a
//! large answer from an upstream that sends 8 KiB frames (nginx's) came in
//! three `recvfrom` calls for every two frames, 190 a MiB, where Envoy
//! makes 14 (BENCHMARKS.md, "Stop 48"). [`connector`] wraps the
//! upstream socket in a [`READ_AHEAD`] buffer: one read takes up to that
//! much, and h2's next reads are served from memory.
//!
//! All HTTP/2 callers share the one h2c connection, so the buffer is one
//! per upstream, not one per caller.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt as _;
use tower::util::MapResponse;

/// What one read from the h2c upstream may take.
const READ_AHEAD: usize = 64 << 10;

/// [`HttpConnector`], its connections wrapped in a [`ReadAhead`].
pub type Connector = MapResponse<HttpConnector, fn(TokioIo<TcpStream>) -> TokioIo<ReadAhead>>;

/// A connector for the h2c client: `connector`'s connections, read ahead.
pub fn connector(connector: HttpConnector) -> Connector {
    connector.map_response(|io| {
        TokioIo::new(ReadAhead(BufReader::with_capacity(
            READ_AHEAD,
            io.into_inner(),
        )))
    })
}

/// An upstream socket whose reads are buffered ([`READ_AHEAD`]); writes
/// go straight through.
#[derive(Debug)]
pub struct ReadAhead(BufReader<TcpStream>);

impl Connection for ReadAhead {
    fn connected(&self) -> Connected {
        self.0.get_ref().connected()
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
