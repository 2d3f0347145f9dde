//! Verification cost: a verified-token cache hit (the same token again,
//! from its token slot; and one of 1,000 tokens in rotation, from its key
//! slot or the map), a miss (full parse + RS256 signature + claims) and its parse
//! alone, and beside them
//! the bare RS256 verify of the crypto backend, which a miss can only add
//! to; the per-request encoding of the identity's payload for
//! `x-idgate-claims`; and the cache key's primitive against SHA-256.
//!
//! `cargo bench -p idgate --bench verify`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use idgate::token::UnverifiedToken;
use idgate::{IssuerConfig, Verifier};
use idgate_testkit::Issuer;

const AUD: &str = "https://svc.example.com";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kit = rt.block_on(Issuer::start());
    let make = |capacity| {
        Arc::new(
            Verifier::builder()
                .issuer(IssuerConfig::new("bench", kit.url(), kit.jwks_url()))
                .audience(AUD)
                .token_cache_capacity(capacity)
                .build()
                .unwrap(),
        )
    };
    let cached = make(10_000);
    let uncached = make(0);
    let token = kit.token("alice@example.com", AUD);
    rt.block_on(async {
        cached.verify(&token).await.unwrap();
        uncached.verify(&token).await.unwrap();
    });

    let mut g = c.benchmark_group("verify");
    g.bench_function("token_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cached.verify(black_box(&token)).await.unwrap()) })
    });
    // 1,000 callers' tokens in turn: few keep a token slot, so most hits
    // compute the key and find it in a key slot.
    let rotation: Vec<String> = (0..1000)
        .map(|i| kit.token(&format!("caller-{i}@example.com"), AUD))
        .collect();
    rt.block_on(async {
        for t in &rotation {
            cached.verify(t).await.unwrap();
        }
    });
    let mut next = rotation.iter().cycle();
    g.bench_function("token_cache_hit_rotating", |b| {
        let verifier = &cached;
        b.to_async(&rt).iter(|| {
            let t = next.next().unwrap();
            async move { black_box(verifier.verify(black_box(t)).await.unwrap()) }
        })
    });
    g.bench_function("token_cache_miss", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(uncached.verify(black_box(&token)).await.unwrap()) })
    });

    // The miss's first step: the token taken apart, its three segments
    // decoded and its header and claims read strictly (no key, no
    // signature yet), then dropped.
    g.bench_function("token_parse", |b| {
        b.iter(|| black_box(UnverifiedToken::parse(black_box(&token)).is_ok()))
    });

    // What the sidecar pays per request for `x-idgate-claims`: the identity
    // keeps the payload as JSON, and the header is its base64url.
    let identity = rt.block_on(cached.verify(&token)).unwrap();
    eprintln!("payload: {} bytes of JSON", identity.claims_json().len());
    g.bench_function("claims_b64_header", |b| {
        b.iter(|| black_box(black_box(&identity).claims_b64_bytes()))
    });

    // The backend alone: the same signature over the same bytes.
    let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
    let jwk = kit.active_key().jwk();
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    g.bench_function("bare_rs256_jsonwebtoken", |b| {
        b.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(
                    black_box(sig_b64),
                    black_box(signing_input.as_bytes()),
                    &key,
                    jsonwebtoken::Algorithm::RS256
                )
                .unwrap()
            )
        })
    });
    let sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig_b64).unwrap();
    let k = kit.active_key();
    let components = aws_lc_rs::signature::RsaPublicKeyComponents {
        n: k.modulus(),
        e: k.exponent(),
    };
    g.bench_function("bare_rs256_aws_lc_rs", |b| {
        b.iter(|| {
            components
                .verify(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                    black_box(signing_input.as_bytes()),
                    black_box(&sig),
                )
                .unwrap()
        })
    });
    // The cache key's primitive (`token_key.rs`: AES-128-GCM-SIV's tag over
    // the token, fixed nonce, nothing encrypted) against the SHA-256 it
    // replaced in stop 42, over the same token.
    g.bench_function("cache_key_gcm_siv_tag", |b| {
        use aws_lc_rs::aead::{AES_128_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM_SIV, &[7; 16]).unwrap());
        b.iter(|| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(black_box(token.as_bytes())),
                &mut [],
            )
            .unwrap()
        })
    });
    g.bench_function("cache_key_sha256", |b| {
        b.iter(|| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(token.as_bytes()))
        })
    });
    // What idgate's miss does for the signature: a key parsed once (its
    // Montgomery set-up kept), the signature already decoded.
    let parsed = components
        .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
        .unwrap();
    g.bench_function("bare_rs256_parsed_key", |b| {
        b.iter(|| {
            parsed
                .verify_sig(black_box(signing_input.as_bytes()), black_box(&sig))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
