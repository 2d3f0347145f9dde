//! What the layer adds to a request: a trivial echo service bare, and the
//! same service behind the layer with a token the verifier has already seen
//! (keys warm, verified-token cache hit). The difference is the layer's
//! overhead on the common path; the goal is at most 2 µs. Beside them, the
//! cheap paths (a public path, a refusal for a missing token) and the parts
//! of the decision alone, to see where the overhead goes: the gate's whole
//! check, finding the credential, and the verified-token cache hit.
//!
//! `cargo bench -p idgate --bench layer`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, StatusCode};
use idgate::auth::{AuthLayer, Gate, RequestFacts};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{IssuerConfig, Verifier};
use idgate_testkit::Issuer;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};

const AUD: &str = "https://svc.example.com";

fn request(path: &str, auth: Option<&HeaderValue>) -> Request<()> {
    let mut req = Request::get(path)
        .header(http::header::HOST, "svc.example.com")
        .body(())
        .unwrap();
    if let Some(v) = auth {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, v.clone());
    }
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kit = rt.block_on(Issuer::start());
    let verifier = Verifier::builder()
        .issuer(IssuerConfig::google().with_jwks_url(kit.jwks_url()))
        .audience(AUD)
        .build()
        .unwrap();
    let (policy, _) = PolicyHandle::new(PolicySources {
        members: vec!["user:alice@example.com".into()],
        ..Default::default()
    })
    .unwrap();
    let verifier = Arc::new(verifier);
    let gate = Arc::new(
        Gate::builder(verifier.clone(), Arc::new(policy))
            .public_path("/healthz")
            .build()
            .unwrap(),
    );

    let mut claims = kit.claims("alice@example.com", AUD);
    claims["iss"] = json!("https://accounts.google.com");
    let token = kit.mint(&claims);
    let bearer = HeaderValue::try_from(format!("Bearer {token}")).unwrap();

    // Echoes the request body, which is `()` here: the inner service
    // should cost next to nothing, so the difference is the layer.
    let echo = tower::service_fn(|req: Request<()>| async move {
        let (_, body) = req.into_parts();
        Ok::<_, Infallible>(Response::new(body))
    });
    let layered = AuthLayer::new(gate.clone()).layer(echo);

    // Warm the keys and the verified-token cache once.
    let warm = rt
        .block_on(layered.clone().oneshot(request("/", Some(&bearer))))
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);

    let mut g = c.benchmark_group("layer");
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = echo;
            let req = request("/", Some(&bearer));
            async move {
                let svc = svc.ready().await.unwrap();
                black_box(svc.call(req).await.unwrap())
            }
        })
    });
    g.bench_function("layered_cached_token", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            let req = request("/", Some(&bearer));
            async move {
                let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                debug_assert_eq!(resp.status(), StatusCode::OK);
                black_box(resp)
            }
        })
    });
    g.bench_function("layered_public_path", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            let req = request("/healthz", None);
            async move { black_box(svc.ready().await.unwrap().call(req).await.unwrap()) }
        })
    });
    g.bench_function("layered_missing_token", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            let req = request("/", None);
            async move {
                let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                debug_assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
                black_box(resp)
            }
        })
    });

    // The decision without the tower plumbing, and two of its parts.
    let authorized = request("/", Some(&bearer));
    g.bench_function("gate_check", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = gate
                .check(RequestFacts {
                    headers: authorized.headers(),
                    method: "GET",
                    host: "svc.example.com",
                    path: "/",
                })
                .await;
            debug_assert!(outcome.reason().is_none());
            black_box(outcome)
        })
    });
    g.bench_function("credential_extract", |b| {
        b.iter(|| {
            black_box(
                idgate::credential::extract(black_box(authorized.headers()), 16 * 1024)
                    .unwrap()
                    .unwrap(),
            );
        })
    });
    g.bench_function("verify_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(verifier.verify(black_box(&token)).await.unwrap()) })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
