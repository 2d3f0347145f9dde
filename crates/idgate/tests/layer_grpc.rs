//! The tower layer in front of a real tonic server (the gRPC health
//! service), called by a real tonic client: refusals arrive as gRPC
//! statuses whose message is the reason code.
//!
//! `cargo test -p idgate --test layer_grpc`

use std::net::SocketAddr;
use std::sync::Arc;

use idgate::auth::{AuthLayer, Gate};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{IssuerConfig, Verifier};
use idgate_testkit::{Failure, Issuer};
use serde_json::json;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const AUD: &str = "https://grpc.example.com";
const ALICE: &str = "alice@example.com";

fn google_token(kit: &Issuer, email: &str, audience: &str) -> String {
    let mut claims = kit.claims(email, audience);
    claims["iss"] = json!("https://accounts.google.com");
    kit.mint(&claims)
}

/// The health service behind the gate on `127.0.0.1:0`. The listener is
/// bound before the server task starts, so clients can connect at once.
async fn serve(kit: &Issuer, members: &[&str]) -> SocketAddr {
    let sources = PolicySources {
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..Default::default()
    };
    serve_with_policy(kit, |_| sources).await
}

/// As [`serve`], with policy sources made once the address is known.
async fn serve_with_policy(
    kit: &Issuer,
    sources: impl FnOnce(SocketAddr) -> PolicySources,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Verifier::builder()
        .issuer(IssuerConfig::google().with_jwks_url(kit.jwks_url()))
        .audience(AUD)
        .build()
        .unwrap();
    let (policy, _warnings) = PolicyHandle::new(sources(addr)).unwrap();
    let gate = Gate::builder(Arc::new(verifier), Arc::new(policy))
        .build()
        .unwrap();

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("idgate.Test", ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _reporter = reporter;
        Server::builder()
            .layer(AuthLayer::new(Arc::new(gate)))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A health check carrying `token` (if any) in `header`, as a client's
/// interceptor would attach it.
async fn check(
    addr: SocketAddr,
    header: &'static str,
    token: Option<String>,
) -> Result<HealthCheckResponse, Status> {
    let bearer = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let mut client =
        HealthClient::with_interceptor(channel(addr).await, move |mut req: Request<()>| {
            if let Some(v) = &bearer {
                req.metadata_mut().insert(header, Clone::clone(v));
            }
            Ok(req)
        });
    client
        .check(HealthCheckRequest {
            service: "idgate.Test".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_status(result: Result<HealthCheckResponse, Status>, code: Code, reason: &str) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), reason, "{status:?}");
}

#[tokio::test]
async fn an_allowed_caller_gets_its_answer() {
    let kit = Issuer::start().await;
    let addr = serve(&kit, &["user:alice@example.com"]).await;
    for header in ["authorization", "x-serverless-authorization"] {
        let resp = check(addr, header, Some(google_token(&kit, ALICE, AUD)))
            .await
            .unwrap();
        assert_eq!(resp.status(), Wire::Serving, "{header}");
    }
    assert_eq!(kit.jwks_fetches(), 1);
}

#[tokio::test]
async fn refusals_are_grpc_statuses_naming_the_reason() {
    let kit = Issuer::start().await;
    let addr = serve(&kit, &["user:alice@example.com"]).await;
    assert_status(
        check(addr, "authorization", None).await,
        Code::Unauthenticated,
        "missing_token",
    );
    assert_status(
        check(
            addr,
            "authorization",
            Some(google_token(&kit, ALICE, "https://other.example.com")),
        )
        .await,
        Code::Unauthenticated,
        "audience_mismatch",
    );
    assert_status(
        check(
            addr,
            "authorization",
            Some(google_token(&kit, "bob@example.com", AUD)),
        )
        .await,
        Code::PermissionDenied,
        "not_allowed",
    );
}

#[tokio::test]
async fn no_keys_is_unavailable_so_clients_retry() {
    let kit = Issuer::start().await;
    kit.set_failure(Failure::Status(500));
    let addr = serve(&kit, &["user:alice@example.com"]).await;
    assert_status(
        check(addr, "authorization", Some(google_token(&kit, ALICE, AUD))).await,
        Code::Unavailable,
        "keys_unavailable",
    );
}

#[tokio::test]
async fn all_users_needs_no_token() {
    let kit = Issuer::start().await;
    let addr = serve(&kit, &["allUsers"]).await;
    let resp = check(addr, "authorization", None).await.unwrap();
    assert_eq!(resp.status(), Wire::Serving);
}

/// Over HTTP/2 there is no `Host` header: conditions get the authority.
#[tokio::test]
async fn conditions_see_the_authority_and_the_grpc_method_path() {
    let kit = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    let addr = serve_with_policy(&kit, |addr| {
        let condition = format!(
            r#"request.host == "{addr}" && request.path == "/grpc.health.v1.Health/Check" && request.method == "POST""#
        );
        let policy = json!({
            "bindings": [
                {
                    "condition": {"title": "health-checks-here", "expression": condition},
                    "members": ["user:alice@example.com"],
                    "role": "roles/run.invoker",
                },
                {
                    "condition": {"title": "elsewhere", "expression": r#"request.host == "elsewhere.example.com""#},
                    "members": ["user:bob@example.com"],
                    "role": "roles/run.invoker",
                },
            ],
            "version": 3,
        });
        std::fs::write(&file, policy.to_string()).unwrap();
        PolicySources {
            files: vec![file.clone()],
            ..Default::default()
        }
    })
    .await;
    let resp = check(addr, "authorization", Some(google_token(&kit, ALICE, AUD)))
        .await
        .unwrap();
    assert_eq!(resp.status(), Wire::Serving);
    assert_status(
        check(
            addr,
            "authorization",
            Some(google_token(&kit, "bob@example.com", AUD)),
        )
        .await,
        Code::PermissionDenied,
        "not_allowed",
    );
}
