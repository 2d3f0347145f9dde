//! The dev issuer's mint endpoint, `GET`/`POST /token`.

mod common;

use common::{claims_of, client, get_json, header_of, verify};
use idgate_testkit::{Issuer, TestKey, now_unix, stable_sub};
use serde_json::json;

#[tokio::test]
async fn get_mints_a_verifiable_token() {
    let issuer = Issuer::start().await;
    let client = client();
    let url = format!(
        "{}?email=svc@proj.iam.gserviceaccount.com&audience=https://svc.example",
        issuer.token_url()
    );
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let token = response.text().await.unwrap();
    assert_eq!(token.trim(), token, "no surrounding whitespace");

    let jwks = get_json(&client, &issuer.jwks_url()).await;
    verify(&token, &jwks).unwrap();
    assert_eq!(header_of(&token)["kid"], "key-1");
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], issuer.url().as_str());
    assert_eq!(claims["aud"], "https://svc.example");
    assert_eq!(claims["email"], "svc@proj.iam.gserviceaccount.com");
    assert_eq!(
        claims["sub"],
        stable_sub("svc@proj.iam.gserviceaccount.com").as_str()
    );
    assert_eq!(claims["email_verified"], true);
    assert!(claims.get("hd").is_none());
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now_unix()) < 60);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
}

#[tokio::test]
async fn get_options_shape_the_claims() {
    let issuer = Issuer::start().await;
    let url = format!(
        "{}?email=bob%40corp.example&audience=aud&hd=corp.example&ttl=90000&email_verified=false",
        issuer.token_url()
    );
    let token = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let claims = claims_of(&token);
    assert_eq!(claims["email"], "bob@corp.example");
    assert_eq!(claims["hd"], "corp.example");
    assert_eq!(claims["email_verified"], false);
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 90000);
}

#[tokio::test]
async fn mints_with_the_active_key() {
    let issuer = Issuer::start().await;
    issuer.publish(TestKey::generate("key-2"));
    issuer.activate("key-2");
    let url = format!("{}?email=a@b.c&audience=aud", issuer.token_url());
    let token = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(header_of(&token)["kid"], "key-2");
}

#[tokio::test]
async fn post_takes_json_and_extra_claims() {
    let issuer = Issuer::start().await;
    let client = client();
    let response = client
        .post(issuer.token_url())
        .json(&json!({
            "email": "carol@example.com",
            "audience": "aud-1",
            "hd": "example.com",
            "ttl": 60,
            "claims": {"exp": 12345, "custom": {"x": [1, 2]}, "aud": ["aud-1", "aud-2"]},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.text().await.unwrap();
    let jwks = get_json(&client, &issuer.jwks_url()).await;
    verify(&token, &jwks).unwrap();
    let claims = claims_of(&token);
    assert_eq!(claims["email"], "carol@example.com");
    assert_eq!(claims["hd"], "example.com");
    assert_eq!(claims["exp"], 12345);
    assert_eq!(claims["custom"], json!({"x": [1, 2]}));
    assert_eq!(claims["aud"], json!(["aud-1", "aud-2"]));
    assert_eq!(claims["iss"], issuer.url().as_str());
}

#[tokio::test]
async fn bad_get_requests_are_400() {
    let issuer = Issuer::start().await;
    let client = client();
    let long_ttl = format!("ttl={}", 20 * 366 * 24 * 3600);
    let cases = [
        "",
        "?email=a@b.c",
        "?audience=aud",
        "?email=&audience=aud",
        "?email=a@b.c&audience=",
        "?email=a@b.c&audience=aud&ttl=abc",
        "?email=a@b.c&audience=aud&ttl=-5",
        "?email=a@b.c&audience=aud&ttl=99999999999999999999999",
        &format!("?email=a@b.c&audience=aud&{long_ttl}"),
        "?email=a@b.c&audience=aud&email_verified=maybe",
        "?email=a@b.c&audience=aud&hd=",
        "?email=a@b.c&audience=aud&aud=typo",
        "?email=a@b.c&audience=aud&claims=x",
        "?email=a@b.c&email=b@b.c&audience=aud",
    ];
    for query in cases {
        let response = client
            .get(format!("{}{query}", issuer.token_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "query {query:?}");
        let message = response.text().await.unwrap();
        assert!(!message.trim().is_empty(), "query {query:?}");
    }
}

#[tokio::test]
async fn bad_post_requests_are_400() {
    let issuer = Issuer::start().await;
    let client = client();
    let bodies = [
        "",
        "not json",
        "[]",
        r#"{"email":"a@b.c"}"#,
        r#"{"email":"a@b.c","audience":"aud","claims":"x"}"#,
        r#"{"email":"a@b.c","audience":"aud","claims":[1]}"#,
        r#"{"email":"a@b.c","audience":"aud","ttl":-1}"#,
        r#"{"email":"a@b.c","audience":"aud","ttl":1.5}"#,
        r#"{"email":"a@b.c","audience":"aud","email_verified":"false"}"#,
        r#"{"email":"a@b.c","audience":"aud","unknown":1}"#,
        r#"{"email":" ","audience":"aud"}"#,
        r#"{"email":"a@b.c","audience":"aud""#,
    ];
    for body in bodies {
        let response = client
            .post(issuer.token_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "body {body:?}");
        assert!(!response.text().await.unwrap().trim().is_empty());
    }
    // The issuer is still fine after all that.
    let url = format!("{}?email=a@b.c&audience=aud", issuer.token_url());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

/// A web page that rebinds its own name to 127.0.0.1 sends its own name in
/// `Host`: the mint endpoint refuses it, and answers any name no page can
/// point elsewhere (an IP address, localhost, the issuer URL's host).
#[tokio::test]
async fn mints_only_for_a_host_no_web_page_can_rebind() {
    let issuer = Issuer::start_with(idgate_testkit::IssuerOptions {
        issuer_url: Some("http://dev-issuer.internal:8900".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let port = issuer.addr().port();
    let url = format!("http://{}/token?email=a@b.c&audience=aud", issuer.addr());
    let client = client();
    let status = |host: String| {
        let request = client.get(&url).header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("idgate.localhost:{port}"),
        format!("localhost.:{port}"),
        "dev-issuer.internal:8900".to_string(),
        "Dev-Issuer.Internal.".to_string(),
        "192.0.2.7".to_string(),
    ] {
        assert_eq!(status(host.clone()).await, 200, "Host: {host}");
    }
    for host in [
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        "dev-issuer.internal.attacker.example:8900".to_string(),
    ] {
        assert_eq!(status(host.clone()).await, 403, "Host: {host}");
    }
    // POST too; discovery and the JWKS are public, whatever the Host.
    let refused = client
        .post(format!("http://{}/token", issuer.addr()))
        .header("host", "attacker.example")
        .header("content-type", "application/json")
        .body(r#"{"email":"a@b.c","audience":"aud"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body = refused.text().await.unwrap();
    assert!(body.contains("\"attacker.example\""), "{body}");
    assert!(!body.contains("eyJ"), "{body}");
    let jwks = client
        .get(format!("http://{}/jwks", issuer.addr()))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
}
