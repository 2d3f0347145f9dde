//! WebSocket tunnels: once the upstream answers 101, bytes are copied both
//! ways between the two upgraded connections. hyper hands those over and
//! the client connection's task ends, so the server's drain no longer sees
//! them: [`Tunnels`] keeps count, so that a shutdown gives open tunnels the
//! same grace period as requests in flight, and cuts them when it is over.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The open tunnels of one proxy. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Tunnels {
    open: TaskTracker,
    cut: CancellationToken,
}

impl Tunnels {
    /// Opens a tunnel between the two sides once both upgrades complete, as
    /// a task of its own, counted until either side closes or it is cut.
    pub(super) fn open(&self, client: OnUpgrade, upstream: OnUpgrade) {
        let cut = self.cut.clone();
        self.open.spawn(async move {
            tokio::select! {
                () = copy(client, upstream) => {}
                () = cut.cancelled() => debug!("upgraded connection cut at the end of the grace period"),
            }
        });
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Waits up to `grace` for every open tunnel to close by itself, then
    /// cuts the rest (both of their connections close). Returns how many
    /// were cut. Call it once no tunnel can open any more (every client
    /// connection has ended): one opened after the wait is over is not
    /// waited for.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.open.close();
        if tokio::time::timeout(grace, self.open.wait()).await.is_ok() {
            return 0;
        }
        let open = self.open.len();
        self.cut.cancel();
        self.open.wait().await;
        open
    }
}

/// Copies bytes both ways until either side closes.
async fn copy(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(
            bytes.up = up,
            bytes.down = down,
            "upgraded connection closed"
        ),
        Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
    }
}
