//! A gRPC upstream (the standard health service, tonic) and a client for it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::service::InterceptorLayer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// `grpc.health.v1.Health` on `127.0.0.1:0` (h2c), recording the
/// `x-idgate-principal` of every call. Stops when dropped.
pub struct GrpcUpstream {
    addr: SocketAddr,
    principals: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    /// Starts serving; the overall health (`""`) is `SERVING`.
    pub async fn start() -> GrpcUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gRPC upstream");
        let addr = listener.local_addr().expect("the gRPC upstream's address");
        let principals = Arc::new(Mutex::new(Vec::new()));
        let seen = principals.clone();
        let record = move |req: tonic::Request<()>| {
            let principal = req
                .metadata()
                .get("x-idgate-principal")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(principal);
            Ok(req)
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .layer(InterceptorLayer::new(record))
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        GrpcUpstream {
            addr,
            principals,
            task,
        }
    }

    /// `http://ADDR`, for `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `x-idgate-principal` of every call so far (empty when absent).
    pub fn principals(&self) -> Vec<String> {
        self.principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One `Health/Check` call to `url` (h2c), with `token` as a bearer token.
pub async fn health_check(url: &str, token: Option<&str>) -> Result<ServingStatus, tonic::Status> {
    let bearer: Option<MetadataValue<_>> = token.map(|t| {
        format!("Bearer {t}")
            .parse()
            .expect("a token is a valid header value")
    });
    let channel = Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let mut client = HealthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(v) = &bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    });
    let res = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(match res.into_inner().status {
        1 => ServingStatus::Serving,
        2 => ServingStatus::NotServing,
        _ => ServingStatus::Unknown,
    })
}
