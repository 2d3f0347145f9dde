//! The accept loop's idle limits, with short timeouts over real loopback
//! connections: an h2c connection with no stream open is closed (GOAWAY),
//! one with a stream open is not, and HTTP/1.1 keep-alive connections are
//! left to the header read timeout; a client that stops reading its
//! response loses its connection, one that keeps reading does not; at the
//! connection cap, connections between requests make room.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idgate_sidecar::Body;
use idgate_sidecar::app::HttpService;
use idgate_sidecar::server::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::util::BoxCloneSyncService;

const IDLE: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(10);

/// `/held` answers with a body that streams whatever the test sends on the
/// channel, and ends when the sender is dropped; anything else is `ok`.
async fn start(held: mpsc::Receiver<Bytes>) -> (std::net::SocketAddr, watch::Sender<bool>) {
    start_with(held, LIMITS).await
}

/// Both idle limits at [`IDLE`], no connection cap.
const LIMITS: Limits = Limits {
    http2_idle: IDLE,
    write_stall: IDLE,
    max_connections: None,
};

/// [`start`] with other limits.
async fn start_with(
    held: mpsc::Receiver<Bytes>,
    limits: Limits,
) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Some(held)));
    let service: HttpService =
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            let held = held.clone();
            async move {
                if req.uri().path() == "/held"
                    && let Some(rx) = held.lock().await.take()
                {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                    });
                    return Ok::<_, Infallible>(Response::new(Body::from_stream(stream)));
                }
                Ok(Response::new(Body::from("ok")))
            }
        }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(idgate_sidecar::server::serve(
        "test",
        listener,
        service,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        Duration::from_secs(1),
        limits,
    ));
    (addr, stop)
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(format!("http://test{path}"))
        .header("host", "test")
        .body(Body::empty())
        .unwrap()
}

/// `/held`'s stream ends, cleanly, once the test stops feeding it.
async fn ends_cleanly(tx: mpsc::Sender<Bytes>, body: hyper::body::Incoming) {
    drop(tx);
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the stream ends in time")
        .expect("and ends cleanly");
    assert!(rest.to_bytes().is_empty());
}

/// `/held`'s stream still carries what the test sends.
async fn still_flows(tx: &mpsc::Sender<Bytes>, body: &mut hyper::body::Incoming) {
    tx.send(Bytes::from_static(b"still here")).await.unwrap();
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("a frame in time")
        .expect("the stream is open")
        .expect("no error");
    assert_eq!(frame.into_data().unwrap(), "still here");
}

type H2Connection = tokio::task::JoinHandle<Result<(), hyper::Error>>;

/// An h2c (prior knowledge) connection to `addr`, driven by a task of its
/// own.
async fn h2c(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Body>, H2Connection) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

/// The server closes `conn` cleanly (GOAWAY) within the deadline.
async fn closes_cleanly(conn: H2Connection, what: &str) {
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "{what} is closed cleanly (GOAWAY): {ended:?}"
    );
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_and_a_busy_one_is_not() {
    let (tx, rx) = mpsc::channel(1);
    let (addr, _stop) = start(rx).await;
    let (mut send, conn) = h2c(addr).await;

    // A stream open well past the idle timeout keeps the connection.
    let res = send.send_request(get("/held")).await.unwrap();
    let mut body = res.into_body();
    tokio::time::sleep(IDLE * 4).await;
    still_flows(&tx, &mut body).await;
    assert!(!conn.is_finished(), "closed with a stream open");

    // Once it ends and nothing else is open, the connection goes.
    ends_cleanly(tx, body).await;
    let res = send.send_request(get("/quick")).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    closes_cleanly(conn, "an idle connection").await;
}

#[tokio::test]
async fn http1_keep_alive_is_not_cut_by_the_http2_idle_timeout() {
    let (_tx, rx) = mpsc::channel(1);
    let (addr, _stop) = start(rx).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let res = send.send_request(get("/quick")).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    tokio::time::sleep(IDLE * 4).await;
    assert!(
        !conn.is_finished(),
        "an idle HTTP/1.1 connection was closed"
    );
    let res = send.send_request(get("/quick")).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
}

/// What the tests below feed `/held` with, per send.
const CHUNK: usize = 64 * 1024;

/// A connection with a small receive buffer that has asked for `/held`.
async fn held_on_a_small_socket(addr: std::net::SocketAddr) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    conn
}

/// A client that stops reading its response loses its connection once a
/// write has waited `write_stall`: otherwise it would hold it for ever,
/// since hyper reads no further request head (and arms no header timeout)
/// while a response waits to be written.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection() {
    let (tx, rx) = mpsc::channel(1);
    let (addr, _stop) = start(rx).await;
    let mut conn = held_on_a_small_socket(addr).await;
    // Feed the response until the server gives up on this client: the body
    // stream is dropped with the connection, and the send fails. The client
    // reads nothing, so the socket buffers fill after a few MiB at most.
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tokio::time::timeout(DEADLINE, async {
        while tx.send(chunk.clone()).await.is_ok() {}
    })
    .await
    .expect("the server dropped the response of a client that stopped reading");
    // And closed the connection: what was sent drains, then the end.
    assert!(
        closed_by_server(&mut conn).await,
        "the connection was not closed"
    );
}

/// A client that keeps taking its response, however slowly, keeps its
/// connection past several write-stall timeouts: progress clears the
/// deadline.
#[tokio::test]
async fn a_client_that_keeps_reading_keeps_its_connection() {
    let (tx, rx) = mpsc::channel(1);
    let (addr, _stop) = start(rx).await;
    let conn = held_on_a_small_socket(addr).await;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    // Ends only if the server drops the response (and the connection).
    let feeder = tokio::spawn(async move { while tx.send(chunk.clone()).await.is_ok() {} });
    let mut taken = 0usize;
    let mut buf = vec![0u8; CHUNK];
    let until = tokio::time::Instant::now() + IDLE * 5;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(IDLE / 4).await;
        loop {
            match conn.try_read(&mut buf) {
                Ok(0) => panic!("the server closed the connection of a client that reads"),
                Ok(n) => taken += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    assert!(taken > CHUNK, "the response flowed: {taken} bytes");
    assert!(!feeder.is_finished(), "the response was dropped");
}

/// The HTTP/2 counterpart: a client that keeps taking frames of a response
/// through a small flow-control window, one every fifth of the write-stall
/// limit, keeps its stream past it (each frame it takes restarts the
/// count), and gets the whole response. (A stream waiting on its source is
/// not cut either: `an_idle_h2c_connection_is_closed_and_a_busy_one_is_not`.)
#[tokio::test]
async fn an_h2_client_that_keeps_taking_frames_keeps_its_stream() {
    const FRAMES: usize = 8;
    const FRAME: usize = 1024;
    const STALL: Duration = Duration::from_secs(1);
    let (tx, rx) = mpsc::channel(1);
    let limits = Limits {
        write_stall: STALL,
        ..LIMITS
    };
    let (addr, _stop) = start_with(rx, limits).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(FRAME as u32)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let req = Request::get("http://test/held").body(()).unwrap();
    let (res, _) = client.send_request(req, true).unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..FRAMES {
            if tx.send(Bytes::from(vec![b'x'; FRAME])).await.is_err() {
                return false;
            }
        }
        true
    });
    let mut body = tokio::time::timeout(DEADLINE, res)
        .await
        .expect("response headers in time")
        .unwrap()
        .into_body();
    let mut taken = 0;
    loop {
        // The client's pace, not a wait for readiness.
        tokio::time::sleep(STALL / 5).await;
        match tokio::time::timeout(DEADLINE, body.data())
            .await
            .expect("a frame in time")
        {
            Some(Ok(chunk)) => {
                taken += chunk.len();
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
            Some(Err(e)) => panic!("the stream of a client that reads was cut: {e}"),
            None => break,
        }
    }
    assert_eq!(taken, FRAMES * FRAME);
    assert!(feeder.await.unwrap(), "the response was dropped");
}

/// One request on `conn`, answered `ok`: the whole response.
async fn exchange(conn: &mut TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /quick HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// Whether `conn` is closed (read returns 0) within [`DEADLINE`], reading
/// past anything still owed.
async fn closed_by_server(conn: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Whether `conn` is still open: nothing to read, and not the end.
fn still_open(conn: &TcpStream) -> bool {
    matches!(conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A client asking once on a new connection, in the background: its
/// answer, and the connection, kept open.
fn newcomer(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<(String, TcpStream)> {
    tokio::spawn(async move {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        (exchange(&mut conn).await, conn)
    })
}

/// A full cap with nobody waiting changes nothing: keep-alive goes on.
/// Once a connection waits for a place, connections between requests make
/// room: HTTP/1.1 ones kept alive are closed and the newcomer is served;
/// an h2c one with a stream open keeps it (and takes new streams), and
/// gets its GOAWAY only once no stream is open; one that has sent nothing
/// yet is left alone.
#[tokio::test]
async fn at_the_connection_cap_connections_between_requests_make_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = mpsc::channel(1);
    // No other limit comes into it.
    let limits = Limits {
        max_connections: Some(5),
        ..Limits::DEFAULT
    };
    let (addr, _stop) = start_with(rx, limits).await;
    let (mut h2, h2_conn) = h2c(addr).await;
    let mut body = h2.send_request(get("/held")).await.unwrap().into_body();
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(DEADLINE, exchange(&mut conn))
            .await
            .expect("served under the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        kept.push(conn);
    }
    // A connection that has sent nothing fills the cap; nobody waits.
    let silent = TcpStream::connect(addr).await.unwrap();
    // Time for a sweep, were there one (it would come within a few ms).
    tokio::time::sleep(IDLE).await;
    for conn in &mut kept {
        assert!(still_open(conn), "closed at a full cap with nobody waiting");
        let answer = tokio::time::timeout(DEADLINE, exchange(conn))
            .await
            .expect("kept alive at a full cap with nobody waiting");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    // One of them starts its next request.
    let mut asking = kept.pop().unwrap();
    asking
        .write_all(b"GET /quick HTTP/1.1\r\nHo")
        .await
        .unwrap();

    // A newcomer waits for a place: both idle kept-alive connections are
    // closed (not just one: a burst of newcomers needs the places), and it
    // is served. The one whose request has partly arrived is not (hyper
    // would drop the request): it gets its answer.
    let first = newcomer(addr);
    for conn in &mut kept {
        assert!(
            closed_by_server(conn).await,
            "a kept-alive connection between requests held its place"
        );
    }
    assert!(still_open(&asking), "closed with a request partly arrived");
    asking.write_all(b"st: test\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(DEADLINE, asking.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "a request that had partly arrived was dropped");
        got.extend_from_slice(&buf[..n]);
    }
    let (answer, first) = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("a waiting connection is served once one between requests closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Not the h2c connection with a stream open: no GOAWAY, it takes new
    // streams, and the open one still flows.
    let res = tokio::time::timeout(DEADLINE, h2.send_request(get("/quick")))
        .await
        .expect("an answer in time")
        .expect("a new stream on a connection with one open at the cap");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    still_flows(&tx, &mut body).await;
    assert!(!h2_conn.is_finished(), "closed with a stream open");

    // Once its stream ends, the h2c connection is between requests: with
    // the cap full again (h2c, silent, the one that asked, the first
    // newcomer, a second one), a third newcomer has it closed, and the
    // idle first newcomer too.
    ends_cleanly(tx, body).await;
    let (answer, _second) = tokio::time::timeout(DEADLINE, newcomer(addr))
        .await
        .expect("served under the cap")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let third = newcomer(addr);
    closes_cleanly(h2_conn, "an h2c connection between requests").await;
    let (answer, _third) = tokio::time::timeout(DEADLINE, third)
        .await
        .expect("the third newcomer is served")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut first = first;
    assert!(
        closed_by_server(&mut first).await,
        "an idle newcomer held its place"
    );
    // Through all of it, the connection yet to send a request kept its
    // place.
    assert!(
        still_open(&silent),
        "a connection that had sent nothing yet was closed at the cap"
    );
}
