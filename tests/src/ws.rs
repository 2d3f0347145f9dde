//! WebSocket clients through the sidecar (the upstream's `/ws` says which
//! principal it saw, then echoes).

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::bearer;

/// A WebSocket client connection.
pub type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://addr/ws` with `token` as a bearer token, and reads the
/// upstream's greeting: returns the connection and the greeting.
pub async fn open_websocket(addr: std::net::SocketAddr, token: &str) -> (WebSocket, Message) {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("a request");
    req.headers_mut().insert(
        "authorization",
        bearer(token).parse().expect("a header value"),
    );
    let (mut ws, res) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("a handshake in time")
    .expect("the WebSocket handshake through idgate");
    assert_eq!(res.status(), 101);
    let hello = next_message(&mut ws).await;
    (ws, hello)
}

/// The next message, within 10 s; panics if the connection breaks or
/// closes first.
pub async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(msg))) => msg,
        Ok(Some(Err(e))) => panic!("the WebSocket broke: {e}"),
        Ok(None) => panic!("the WebSocket closed"),
        Err(_) => panic!("no WebSocket message within 10 s"),
    }
}
