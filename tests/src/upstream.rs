//! A real upstream: axum on a loopback port.
//!
//! | route       | what it does                                                  |
//! |-------------|---------------------------------------------------------------|
//! | `/sse`      | server-sent events: event 1, then the rest once the test says |
//! | `/slow`     | answers only when the test releases it                        |
//! | `/download` | `?bytes=N`: N bytes, streamed in 64 KiB chunks                 |
//! | `/ws`       | WebSocket: says which principal it saw, then echoes           |
//! | `/too-large`| 413 at once, the body unread (hyper then closes, as many do)  |
//! | anything    | echoes method, path, query, headers and the body's length     |
//!
//! Request bodies are counted as they stream in, never held whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How many events `/sse` sends.
pub const SSE_EVENTS: usize = 5;

#[derive(Default)]
struct Shared {
    hits: AtomicUsize,
    /// Requests whose handler ended without answering normally: the body
    /// broke, or the connection went away and the handler was dropped.
    cancelled: AtomicUsize,
    slow_arrived: Notify,
    slow_release: Notify,
    sse_go_on: Notify,
    sse_last_sent: AtomicBool,
}

/// A running upstream. Stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts on `127.0.0.1:0`, HTTP/1.1 and h2c.
    pub async fn start() -> Upstream {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/sse", get(sse))
            .route("/slow", get(slow))
            .route("/download", get(download))
            .route("/ws", get(ws))
            .route("/too-large", axum::routing::any(too_large))
            .fallback(echo)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("the upstream's address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, shared, task }
    }

    /// `http://ADDR`, for `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests that reached it so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Requests that reached it but did not finish normally: the request
    /// body broke off, or the connection closed under the handler (`/slow`
    /// and the echo count this).
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until a `/slow` request has arrived (one per call).
    pub async fn slow_arrived(&self) {
        self.shared.slow_arrived.notified().await;
    }

    /// Lets one `/slow` request answer (now, or when it arrives).
    pub fn release_slow(&self) {
        self.shared.slow_release.notify_one();
    }

    /// Lets `/sse` send the events after the first.
    pub fn sse_go_on(&self) {
        self.shared.sse_go_on.notify_one();
    }

    /// Whether `/sse` has sent its last event.
    pub fn sse_last_sent(&self) -> bool {
        self.shared.sse_last_sent.load(Ordering::SeqCst)
    }
}

/// Every value of header `name` in an echo.
pub fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let entry = map
            .entry(name.as_str().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into());
        }
    }
    Value::Object(map)
}

/// Counts a handler as cancelled unless [`Finish::done`] runs first: a
/// handler future dropped mid-way (its connection closed) drops this too.
struct Finish(Option<Arc<Shared>>);

impl Finish {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn echo(State(s): State<Arc<Shared>>, req: Request<Body>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let finish = Finish(Some(s.clone()));
    let (parts, body) = req.into_parts();
    let mut body_bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => body_bytes += c.len() as u64,
            Err(e) => {
                // `finish` counts it as cancelled.
                return (StatusCode::BAD_REQUEST, format!("body broke: {e}")).into_response();
            }
        }
    }
    finish.done();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body_bytes": body_bytes,
    }))
    .into_response()
}

/// A body limit that answers on the head alone: the body is never read, so
/// hyper closes the connection after the answer with the body still coming.
async fn too_large() -> (StatusCode, &'static str) {
    (StatusCode::PAYLOAD_TOO_LARGE, "too large")
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }))
}

async fn sse(State(s): State<Arc<Shared>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let event = |n: usize| Bytes::from(format!("id: {n}\ndata: event {n}\n\n"));
        if tx.send(event(1)).await.is_err() {
            return;
        }
        s.sse_go_on.notified().await;
        for n in 2..=SSE_EVENTS {
            if n == SSE_EVENTS {
                s.sse_last_sent.store(true, Ordering::SeqCst);
            }
            if tx.send(event(n)).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        channel_body(rx),
    )
        .into_response()
}

async fn slow(State(s): State<Arc<Shared>>) -> &'static str {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let finish = Finish(Some(s.clone()));
    s.slow_arrived.notify_one();
    s.slow_release.notified().await;
    finish.done();
    "slow answer\n"
}

async fn download(State(s): State<Arc<Shared>>, req: Request<Body>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let total: u64 = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let body = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK);
            Some((Ok::<_, Infallible>(chunk.slice(..n as usize)), left - n))
        }
    });
    (
        [(header::CONTENT_LENGTH, total.to_string())],
        Body::from_stream(body),
    )
        .into_response()
}

async fn ws(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let principal = headers
        .get("x-idgate-principal")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    upgrade.on_upgrade(move |mut socket| async move {
        if socket
            .send(Message::Text(format!("principal={principal}").into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if socket.send(msg).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    })
}
