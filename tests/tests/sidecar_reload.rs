//! Policy hot reload in the real binary, under steady load: 50 rewrites of
//! the policy file, each in force within 2 s, not one request failed; then
//! an invalid rewrite that is refused, keeps the old policy and shows in
//! `/metrics`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idgate_e2e::*;
use idgate_testkit::Issuer;
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const REWRITES: u64 = 50;
/// The rewrite done in place (truncate, then write) rather than by rename.
const IN_PLACE: u64 = 25;
/// The issue's bound on how soon a rewritten policy is in force.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(2);
const CLIENTS: usize = 4;

/// Generation `g` of the policy lets in Alice when even, Bob when odd.
fn allowed(email: &str, generation: u64) -> bool {
    (email == ALICE) == generation.is_multiple_of(2)
}

fn members(generation: u64) -> [&'static str; 1] {
    if generation.is_multiple_of(2) {
        ["user:alice@example.com"]
    } else {
        ["user:bob@example.com"]
    }
}

/// What the load clients and the writer share.
#[derive(Default)]
struct Load {
    /// The newest generation written to the file (bumped before writing).
    written: AtomicU64,
    /// The newest generation seen in force (set after it was seen).
    in_force: AtomicU64,
    stop: AtomicBool,
    requests: AtomicU64,
    /// Requests whose answer was checked against one known policy.
    exact: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// Sends requests as Alice and Bob in turn until told to stop. Every answer
/// must be 200 or 403, never an error; when no rewrite happened between
/// the moment the current policy was seen in force and the answer, it must
/// be exactly what that policy says.
async fn client_loop(load: Arc<Load>, url: String, tokens: Arc<[(String, String); 2]>) {
    let c = client();
    let mut turn = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let (email, token) = &tokens[turn % 2];
        turn += 1;
        let in_force = load.in_force.load(Ordering::SeqCst);
        let res = c
            .get(&url)
            .header("authorization", bearer(token))
            .send()
            .await;
        let written = load.written.load(Ordering::SeqCst);
        load.requests.fetch_add(1, Ordering::SeqCst);
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                load.fail(format!("{email}: request failed: {e:?}"));
                continue;
            }
        };
        let status = res.status().as_u16();
        let body = match res.text().await {
            Ok(b) => b,
            Err(e) => {
                load.fail(format!("{email}: reading the body failed: {e:?}"));
                continue;
            }
        };
        match status {
            200 => {
                let echo: Value = serde_json::from_str(&body).unwrap_or_default();
                let principal = header_values(&echo, "x-idgate-principal");
                if principal != [format!("user:{email}")] {
                    load.fail(format!("{email}: the upstream saw {principal:?}"));
                }
            }
            403 => {}
            other => {
                load.fail(format!("{email}: {other} {body}"));
                continue;
            }
        }
        if in_force == written {
            load.exact.fetch_add(1, Ordering::SeqCst);
            let want = if allowed(email, in_force) { 200 } else { 403 };
            if status != want {
                load.fail(format!(
                    "{email}: {status} under policy generation {in_force}, which says {want}"
                ));
            }
        }
    }
}

/// Alice's and Bob's answers now.
async fn statuses(c: &reqwest::Client, url: &str, tokens: &[(String, String); 2]) -> [u16; 2] {
    let mut out = [0u16; 2];
    for (slot, (email, token)) in out.iter_mut().zip(tokens.iter()) {
        let res = c
            .get(url)
            .header("authorization", bearer(token))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{email}: {e}"));
        *slot = res.status().as_u16();
    }
    out
}

fn expected(generation: u64) -> [u16; 2] {
    [ALICE, BOB].map(|e| if allowed(e, generation) { 200 } else { 403 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rewritten_under_load_takes_effect_without_a_failed_request() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let serve = Serve::proxy(&up.url(), &kit).args(["--policy", "policy.json"]);
    let policy = serve.dir().join("policy.json");
    write_policy(&policy, &members(0));
    let sidecar = serve.start().await;
    let url = sidecar.url("/load");
    let tokens = Arc::new([
        (ALICE.to_owned(), google_token(&kit, ALICE)),
        (BOB.to_owned(), google_token(&kit, BOB)),
    ]);
    let c = client();
    assert_eq!(statuses(&c, &url, &tokens).await, expected(0));

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client_loop(load.clone(), url.clone(), tokens.clone())))
        .collect();

    let mut slowest = Duration::ZERO;
    for generation in 1..=REWRITES {
        load.written.store(generation, Ordering::SeqCst);
        if generation == IN_PLACE {
            write_policy_in_place(&policy, &members(generation));
        } else {
            write_policy(&policy, &members(generation));
        }
        let written_at = Instant::now();
        loop {
            if statuses(&c, &url, &tokens).await == expected(generation) {
                break;
            }
            assert!(
                written_at.elapsed() < IN_FORCE_WITHIN,
                "policy generation {generation} ({}) not in force {IN_FORCE_WITHIN:?} after it \
                 was written",
                if generation == IN_PLACE {
                    "written in place"
                } else {
                    "renamed into place"
                }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(written_at.elapsed());
        load.in_force.store(generation, Ordering::SeqCst);
        // Let the clients check a few answers against the settled policy
        // before the next rewrite.
        let exact = load.exact.load(Ordering::SeqCst);
        eventually(
            "answers under a settled policy",
            Duration::from_secs(10),
            || async {
                (load.exact.load(Ordering::SeqCst) >= exact + 2 * CLIENTS as u64).then_some(())
            },
        )
        .await;
    }
    let reloads_ok = "idgate_policy_reloads_total{result=\"ok\"}";
    let reloads_error = "idgate_policy_reloads_total{result=\"error\"}";
    assert_eq!(sidecar.metric(reloads_ok).await, Some(REWRITES as f64));
    assert_eq!(sidecar.metric(reloads_error).await, Some(0.0));

    // An invalid policy: refused, and the last good one stays in force
    // (the clients keep checking each answer against it).
    let before_invalid = load.requests.load(Ordering::SeqCst);
    let tmp = policy.with_extension("tmp");
    std::fs::write(
        &tmp,
        r#"{"bindings":[{"role":"roles/run.invoker","members":["alice@example.com"]}]}"#,
    )
    .expect("write the invalid policy");
    std::fs::rename(&tmp, &policy).expect("rename it into place");
    eventually(
        "the invalid policy to be refused in /metrics",
        Duration::from_secs(10),
        || async { (sidecar.metric(reloads_error).await == Some(1.0)).then_some(()) },
    )
    .await;
    sidecar
        .wait_for_log(
            "policy reload refused; the previous policy stays in force",
            Duration::from_secs(5),
        )
        .await;
    eventually(
        "more requests under the refused rewrite",
        Duration::from_secs(20),
        || async { (load.requests.load(Ordering::SeqCst) > before_invalid + 100).then_some(()) },
    )
    .await;
    assert_eq!(statuses(&c, &url, &tokens).await, expected(REWRITES));

    load.stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.expect("a load client panicked");
    }
    let failures = load.failures.lock().unwrap_or_else(|e| e.into_inner());
    let requests = load.requests.load(Ordering::SeqCst);
    let exact = load.exact.load(Ordering::SeqCst);
    eprintln!(
        "{requests} requests ({exact} checked against a settled policy), {REWRITES} rewrites, \
         slowest in force after {slowest:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed under reload, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        requests >= 10 * REWRITES,
        "only {requests} requests: not steady load"
    );
    assert!(exact > 0, "no answer was checked against a settled policy");
}
