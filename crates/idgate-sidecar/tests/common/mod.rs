//! Shared by the in-process tests: a real upstream on loopback, the sidecar
//! on port 0, a client, and polling with a deadline (never a sleep).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State, WebSocketUpgrade, ws::Message};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idgate_sidecar::Body;
use idgate_sidecar::config::{self, Settings, SettingsArgs};
use idgate_sidecar::metrics::Metrics;
use idgate_sidecar::serve::{Running, Wiring, start};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, mpsc};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` until it yields `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// What the upstream's handlers share with the test.
#[derive(Default)]
pub struct UpstreamState {
    /// `/stream-down` sends its second chunk after this.
    pub release_down: Notify,
    /// `/stream-up` reports each request body frame here.
    pub up_frames: std::sync::Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// `/hold` and `/slow` say they started.
    pub started: Notify,
    /// `/hold` answers after this.
    pub release_hold: Notify,
    /// `/slow`'s handler was dropped (its request cancelled).
    pub dropped: Notify,
    /// `/endless` bodies dropped.
    pub endless_dropped: std::sync::atomic::AtomicUsize,
}

/// A real axum upstream on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Echoes what arrived: method, URI, version and every header.
async fn echo_headers(req: Request) -> impl IntoResponse {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    axum::Json(serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    }))
}

async fn stream_down(State(s): State<Arc<UpstreamState>>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from_static(b"first;"))).await;
        s.release_down.notified().await;
        let _ = tx.send(Ok(Bytes::from_static(b"second"))).await;
    });
    Body::from_stream(tokio_stream(rx)).into_response()
}

fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn stream_up(State(s): State<Arc<UpstreamState>>, req: Request) -> impl IntoResponse {
    let tx = s.up_frames.lock().unwrap().clone();
    let mut body = req.into_body().into_data_stream();
    let mut total = 0;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        total += chunk.len();
        if let Some(tx) = &tx {
            let _ = tx.send(chunk);
        }
    }
    total.to_string()
}

/// The names of the request's trailers, as a JSON list.
async fn trailers(req: Request) -> String {
    let collected = req.into_body().collect().await.unwrap();
    let names: Vec<String> = collected
        .trailers()
        .map(|t| t.keys().map(|k| k.as_str().to_owned()).collect())
        .unwrap_or_default();
    serde_json::to_string(&names).unwrap()
}

async fn hold(State(s): State<Arc<UpstreamState>>) -> &'static str {
    s.started.notify_one();
    s.release_hold.notified().await;
    "done"
}

struct DropSignal(Arc<UpstreamState>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.dropped.notify_one();
    }
}

async fn slow(State(s): State<Arc<UpstreamState>>) -> &'static str {
    let _guard = DropSignal(s.clone());
    s.started.notify_one();
    std::future::pending::<()>().await;
    "never"
}

/// 16 KiB chunks of `x` for ever; counts in `endless_dropped` when the
/// body is dropped, as when its stream is reset.
async fn endless(State(s): State<Arc<UpstreamState>>) -> Body {
    struct Counted(Arc<UpstreamState>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0
                .endless_dropped
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let counted = Counted(s);
    Body::from_stream(futures_util::stream::unfold(counted, |c| async move {
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 16 << 10])),
            c,
        ))
    }))
}

/// `n` chunks of `size` bytes, chunk `i` all of byte `i % 251`, then a
/// trailer naming `n`: what a streamed answer looks like, frame by frame.
async fn chunks(Path((n, size)): Path<(usize, usize)>) -> Body {
    let frames = (0..n)
        .map(move |i| http_body::Frame::data(Bytes::from(vec![(i % 251) as u8; size])))
        .chain(std::iter::once_with(move || {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-chunks", n.into());
            http_body::Frame::trailers(trailers)
        }))
        .map(Ok::<_, std::convert::Infallible>);
    Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

/// Answers at once without reading the request's body: hyper then closes
/// the connection with the body unread, as many servers do.
async fn early() -> &'static str {
    "early"
}

/// `n` bytes of `x`, in one chunk.
async fn bytes(Path(n): Path<usize>) -> Vec<u8> {
    vec![b'x'; n]
}

async fn hop() -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert("connection", "x-resp-hop".parse().unwrap());
    h.insert("x-resp-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-authenticate", "Basic".parse().unwrap());
    h.insert("x-kept", "1".parse().unwrap());
    (StatusCode::OK, h, "hop")
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && socket.send(msg).await.is_err()) {
                break;
            }
        }
    })
}

/// Starts the upstream on 127.0.0.1:0 (HTTP/1.1 and h2c).
pub async fn upstream() -> Upstream {
    let state = Arc::new(UpstreamState::default());
    let app = Router::new()
        .route("/", any(echo_headers))
        .route("/headers", any(echo_headers))
        .route("/base/headers", any(echo_headers))
        .route("/stream-down", get(stream_down))
        .route("/stream-up", any(stream_up))
        .route("/trailers", any(trailers))
        .route("/hold", get(hold))
        .route("/slow", any(slow))
        .route("/hop", get(hop))
        .route("/bytes/{n}", get(bytes))
        .route("/chunks/{n}/{size}", get(chunks))
        .route("/endless", get(endless))
        .route("/ws", get(ws))
        .route("/early", any(early))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream { addr, state }
}

/// Settings for tests: loopback, port 0 for both listeners, plus `extra`.
pub fn settings(upstream: Option<&str>, extra: impl FnOnce(&mut SettingsArgs)) -> Settings {
    let mut args = SettingsArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: upstream.map(str::to_owned),
        audience: vec!["https://svc.example".into()],
        member: vec!["allUsers".into()],
        log_format: Some("text".into()),
        ..SettingsArgs::default()
    };
    extra(&mut args);
    let env: BTreeMap<String, String> = BTreeMap::new();
    match config::load(&args, &env) {
        Ok(l) => l.settings,
        Err(e) => panic!("test settings are invalid:\n{e}"),
    }
}

/// Starts the sidecar in-process with `gate`, always ready.
pub async fn sidecar(
    settings: &Settings,
    gate: Arc<dyn idgate_sidecar::app::GateLayer>,
) -> (Running, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let running = start(
        settings,
        Wiring {
            gate,
            ready: Arc::new(|| true),
            reload: None,
            metrics: metrics.clone(),
        },
    )
    .await
    .unwrap();
    (running, metrics)
}

/// No gate at all: for tests of the proxy itself only.
pub fn no_gate() -> Arc<dyn idgate_sidecar::app::GateLayer> {
    Arc::new(tower::layer::util::Identity::new())
}

pub type TestClient = Client<HttpConnector, Body>;

/// An HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req`, returns status, headers and the whole body.
pub async fn send(client: &TestClient, req: http::Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = within("a response", client.request(req)).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// GET `url` with `headers`.
pub fn get_req(url: &str, headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// The upstream's `/headers` echo, parsed.
pub fn echoed(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "upstream echo is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

/// The values of `name` the upstream received.
pub fn header_values(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// An address nothing listens on.
pub async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Reads an HTTP/1.1 head off a raw connection (a response's, or a
/// request's for a raw upstream), byte by byte (so that nothing after it
/// is consumed), failing the test if the connection closes first or after
/// [`DEADLINE`].
pub async fn read_head(conn: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("the head", conn.read(&mut byte)).await.unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Fails the test unless the server closes `conn` (EOF or a reset) within
/// [`DEADLINE`]; returns whatever it still had to say before.
pub async fn assert_closes(conn: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    within("the connection's end", async {
        while let Ok(n @ 1..) = conn.read(&mut buf).await {
            said.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    said
}

/// Reads a whole HTTP/1.1 response with a `content-length` off a raw
/// connection: its head, lowercased, and its body.
pub async fn read_response(conn: &mut (impl AsyncRead + Unpin)) -> (String, Bytes) {
    let head = read_head(conn).await.to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    within("the body", conn.read_exact(&mut body))
        .await
        .unwrap();
    (head, Bytes::from(body))
}
