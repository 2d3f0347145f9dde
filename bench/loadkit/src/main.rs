//! `loadkit`: the Rust half of `bench/sidecar.sh`.
//!
//! - `loadkit mint --out DIR --count N --audience AUD --email EMAIL`: a fresh
//!   RSA-2048 key (the testkit's), `DIR/jwks.json` publishing it, and
//!   `DIR/tokens.txt` holding N distinct valid Google-shaped ID tokens (iss
//!   `https://accounts.google.com`, one hour left), one a line. Tokens differ
//!   only in their `nonce` claim, so each is a distinct cache key at the
//!   same size.
//! - `loadkit cache-cost --count N`: verifies N distinct tokens through a
//!   real `idgate::Verifier` (keys from a testkit issuer on loopback) and
//!   prints the heap bytes and allocations the verified-token cache holds
//!   per entry, counted by a global allocator wrapper; then verifies them
//!   all twice more (cache hits) and prints what that added: the hot slots,
//!   full (key slots after the first round, token slots and their copies
//!   of tokens after the second), and moka's frequency sketch (sized for
//!   the capacity, twice N here); `per_entry_in_use` is the first figure
//!   with malloc's headers plus that, per entry: what is held against
//!   1 KiB.
//!
//! Run `cargo run --release -p idgate-loadkit -- help`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use idgate_testkit::{TestKey, default_header, google_claims, mint, now_unix};
use serde_json::{Value, json};

/// The system allocator, counting live bytes and live allocations.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
static TOTAL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only
// updates counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
            TOTAL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            TOTAL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GOOGLE_ISS: &str = "https://accounts.google.com";

const USAGE: &str = "\
usage:
  loadkit mint --out DIR [--count N] [--audience AUD] [--email EMAIL]
  loadkit cache-cost [--count N]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let mut out: Option<PathBuf> = None;
    let mut count: usize = 1000;
    let mut audience = "https://bench.idgate.test".to_owned();
    let mut email = "invoker@bench-project.iam.gserviceaccount.com".to_owned();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(value()?.into()),
            "--count" => count = value()?.parse().context("--count")?,
            "--audience" => audience = value()?,
            "--email" => email = value()?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    match cmd.as_str() {
        "mint" => {
            let out = out.context("--out is required")?;
            mint_files(&out, count, &audience, &email)
        }
        "cache-cost" => cache_cost(count, &audience, &email),
        _ => {
            println!("{USAGE}");
            Ok(())
        }
    }
}

/// Token `i` of a set: Google's claims plus a distinct `nonce`.
fn token(key: &TestKey, audience: &str, email: &str, now: u64, i: usize) -> String {
    let mut claims = google_claims(GOOGLE_ISS, email, audience, now);
    claims["nonce"] = Value::String(format!("bench-{i:06}"));
    mint(key, &default_header(key), &claims)
}

fn mint_files(
    out: &std::path::Path,
    count: usize,
    audience: &str,
    email: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let key = TestKey::try_generate("bench-key-1")?;
    let jwks = json!({ "keys": [key.jwk()] });
    std::fs::write(out.join("jwks.json"), jwks.to_string())?;
    let now = now_unix();
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&token(&key, audience, email, now, i));
        text.push('\n');
    }
    std::fs::write(out.join("tokens.txt"), text)?;
    eprintln!(
        "loadkit: {count} tokens ({} bytes each) and jwks.json in {}",
        token(&key, audience, email, now, 0).len(),
        out.display()
    );
    Ok(())
}

fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    )
}

/// What one verified-token cache entry costs on the heap.
fn cache_cost(count: usize, audience: &str, email: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let issuer = idgate_testkit::Issuer::start().await;
        let key = issuer.active_key();
        let now = now_unix();
        let tokens: Vec<String> = (0..count)
            .map(|i| token(&key, audience, email, now, i))
            .collect();
        let run = |capacity: u64| {
            let jwks_url = issuer.jwks_url();
            let tokens = &tokens;
            async move {
                let verifier = idgate::Verifier::builder()
                    .issuer(idgate::IssuerConfig::google().with_jwks_url(jwks_url))
                    .audience(audience)
                    .token_cache_capacity(capacity)
                    .build()?;
                verifier.refresh_keys().await;
                // One token first, so lazily built state (key parsing,
                // first cache segment) is not counted per entry.
                verifier.verify(&tokens[0]).await?;
                let before = live();
                for t in &tokens[1..] {
                    verifier.verify(t).await?;
                }
                let after = live();
                // Every token again, twice: each is a hit, offered a key
                // slot in the first round and, if it has one, a token slot
                // in the second, so every slot ends up full (the token
                // slots with copies of tokens), and moka sizes its
                // frequency sketch for the capacity: the rest of what a
                // cache in use holds.
                for _ in 0..2 {
                    for t in tokens {
                        verifier.verify(t).await?;
                    }
                }
                let in_use = live();
                let stats = verifier.stats();
                drop(verifier);
                anyhow::Ok((
                    after.0 - before.0,
                    after.1 - before.1,
                    in_use.0 - after.0,
                    stats,
                ))
            }
        };
        let (bytes_on, allocs_on, after_hits, stats) = run(count as u64 * 2).await?;
        // The same work with the cache off: whatever is still live then
        // (key-cache bookkeeping, runtime) is not the cache's.
        let (bytes_off, allocs_off, _, _) = run(0).await?;
        let n = (count - 1) as f64;
        let bytes = (bytes_on - bytes_off) as f64 / n;
        let allocs = (allocs_on - allocs_off) as f64 / n;
        // glibc: 8 bytes of header per chunk, sizes rounded up to 16.
        let with_overhead = bytes + allocs * 16.0;
        println!(
            "token_bytes={} entries={} misses={} heap_bytes_per_entry={bytes:.0} allocs_per_entry={allocs:.2} \
             heap_bytes_per_entry_with_malloc_overhead~{with_overhead:.0} after_hits_heap_bytes={after_hits} \
             per_entry_in_use~{:.0}",
            tokens[0].len(),
            stats.token_cache_entries,
            stats.token_cache_misses,
            with_overhead + after_hits as f64 / n,
        );
        Ok(())
    })
}
