//! Policy decisions against 10,000 members: a hit, a miss, and hits and
//! misses that evaluate a CEL condition; beside them the same hit against
//! 100 members, which should cost the same (lookups are indexed, not
//! scanned), and the cost of loading the 10,000-member file.
//!
//! `cargo bench -p idgate --bench policy`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use idgate::policy::{Policy, PolicySources, RequestContext};
use idgate::{Identity, IssuerTag, ManualClock};
use serde_json::{Value, json};

const MEMBERS: usize = 10_000;
/// Members per binding, as a large real policy spreads them.
const PER_BINDING: usize = 100;
/// One binding in ten is conditional.
const CONDITION: &str =
    r#"request.path.startsWith("/api/") && request.time < timestamp("2100-01-01T00:00:00Z")"#;

fn email(i: usize) -> String {
    if i.is_multiple_of(4) {
        format!("robot-{i}@my-project.iam.gserviceaccount.com")
    } else {
        format!("user-{i}@corp.example.net")
    }
}

/// A policy file of `members` users and service accounts, `PER_BINDING` to
/// a binding, every tenth binding conditional.
fn write_policy(dir: &Path, members: usize) -> PathBuf {
    let bindings: Vec<Value> = (0..members.div_ceil(PER_BINDING))
        .map(|b| {
            let list: Vec<String> = (b * PER_BINDING..((b + 1) * PER_BINDING).min(members))
                .map(|i| {
                    let e = email(i);
                    if e.ends_with(".gserviceaccount.com") {
                        format!("serviceAccount:{e}")
                    } else {
                        format!("user:{e}")
                    }
                })
                .collect();
            if b % 10 == 9 {
                json!({"condition": {"title": "api-only", "expression": CONDITION},
                       "members": list, "role": "roles/run.invoker"})
            } else {
                json!({"members": list, "role": "roles/run.invoker"})
            }
        })
        .collect();
    let path = dir.join(format!("policy-{members}.json"));
    let text = json!({"bindings": bindings, "etag": "BwYQ8b9r5sE=", "version": 3});
    std::fs::write(&path, text.to_string()).expect("write the bench policy");
    path
}

fn identity(email: &str) -> Identity {
    let tag = IssuerTag {
        name: "google".into(),
        google: true,
        pool: None,
    };
    let Value::Object(claims) = json!({"sub": "1", "email": email, "email_verified": true}) else {
        unreachable!()
    };
    Identity::from_verified_claims(&tag, "aud".into(), claims, String::new())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let big_path = write_policy(dir.path(), MEMBERS);
    let big_sources = PolicySources {
        files: vec![big_path],
        ..PolicySources::default()
    };
    let big = Policy::load(&big_sources).expect("load").policy;
    assert_eq!(big.member_count(), MEMBERS);
    let small = Policy::load(&PolicySources {
        files: vec![write_policy(dir.path(), 100)],
        ..PolicySources::default()
    })
    .expect("load")
    .policy;

    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let api = RequestContext::from_clock(&clock, "GET", "svc.example.com", "/api/items");
    let home = RequestContext::from_clock(&clock, "GET", "svc.example.com", "/");

    // 5_001 is in binding 50 (unconditional); 9_901 in binding 99
    // (conditional); 42 in binding 0 of both policies.
    let hit = identity(&email(5_001));
    let conditional = identity(&email(9_901));
    let miss = identity("stranger@corp.example.net");
    let small_hit = identity(&email(42));
    assert!(big.decide(Some(&hit), &home).is_allowed());
    assert!(big.decide(Some(&conditional), &api).is_allowed());
    assert!(!big.decide(Some(&conditional), &home).is_allowed());
    assert!(!big.decide(Some(&miss), &home).is_allowed());
    assert!(small.decide(Some(&small_hit), &home).is_allowed());

    let mut g = c.benchmark_group("policy_10k_members");
    g.bench_function("hit", |b| {
        b.iter(|| big.decide(black_box(Some(&hit)), black_box(&home)))
    });
    g.bench_function("miss", |b| {
        b.iter(|| big.decide(black_box(Some(&miss)), black_box(&home)))
    });
    g.bench_function("no_token", |b| {
        b.iter(|| big.decide(black_box(None), black_box(&home)))
    });
    g.bench_function("hit_with_condition", |b| {
        b.iter(|| big.decide(black_box(Some(&conditional)), black_box(&api)))
    });
    g.bench_function("condition_false", |b| {
        b.iter(|| big.decide(black_box(Some(&conditional)), black_box(&home)))
    });
    g.finish();

    let mut g = c.benchmark_group("policy_100_members");
    g.bench_function("hit", |b| {
        b.iter(|| small.decide(black_box(Some(&small_hit)), black_box(&home)))
    });
    g.finish();

    let mut g = c.benchmark_group("policy_load");
    g.sample_size(10);
    g.bench_function("10k_members", |b| {
        b.iter(|| Policy::load(black_box(&big_sources)).expect("load"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
