use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

use crate::mint::{default_header, google_claims, mint, now_unix};
use crate::{Error, TestKey, keys_dir, server};

/// The `Cache-Control` a fresh issuer sends with its JWKS, as Google does.
const DEFAULT_CACHE_CONTROL: &str = "public, max-age=3600";

/// How an [`Issuer`] starts.
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    /// Where to listen; default `127.0.0.1:0` (a free loopback port).
    pub listen: SocketAddr,
    /// Load the keys from this directory, or create one key there when it has
    /// none (see [`load_or_create_keys`](crate::load_or_create_keys)), so a
    /// restart keeps the same keys and kids. `None`: one fresh key `key-1`.
    ///
    /// Keys published or dropped later ([`Issuer::publish`], …) change only
    /// the running issuer, not the directory.
    pub keys_dir: Option<PathBuf>,
    /// The issuer URL: the `iss` of minted tokens and the base of the
    /// discovery and JWKS URLs (trailing `/` removed). Default
    /// `http://ADDR` with the bound address.
    pub issuer_url: Option<String>,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            keys_dir: None,
            issuer_url: None,
        }
    }
}

/// How the JWKS endpoint misbehaves, set with [`Issuer::set_failure`].
/// Discovery and the mint endpoint are not affected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Answer normally.
    #[default]
    None,
    /// Answer with this status and a short text body. A code outside
    /// 200..=999 is answered as 500.
    Status(u16),
    /// Never answer; the connection stays open until the client gives up or
    /// the issuer stops.
    Hang,
    /// 200 `application/json` with a body that is not JSON.
    Garbage,
    /// 200 `{"keys":[]}`.
    EmptyKeys,
    /// 200 with a JSON-looking body of exactly this many bytes, streamed in
    /// 64 KiB chunks without a `Content-Length`, never held in memory whole.
    Oversized(usize),
    /// The real JWKS, sent `chunk` bytes (at least 1) at a time, each chunk
    /// after a pause of `every`.
    Slow {
        /// Bytes per chunk.
        chunk: usize,
        /// Pause before each chunk.
        every: Duration,
    },
}

/// The keys an issuer publishes and the one it signs with. The active key may
/// be missing from the published set (after [`Issuer::drop_key`]), which
/// makes tokens whose kid the JWKS does not have.
struct KeyRing {
    published: Vec<Arc<TestKey>>,
    active: Arc<TestKey>,
}

/// State shared between the [`Issuer`] handle and its server task.
pub(crate) struct Shared {
    url: String,
    /// The issuer URL's host, as the mint endpoint compares `Host` with it.
    host_name: Option<String>,
    keys: Mutex<KeyRing>,
    cache_control: Mutex<Option<String>>,
    age: Mutex<Option<u64>>,
    failure: Mutex<Failure>,
    pub(crate) jwks_fetches: AtomicUsize,
    pub(crate) discovery_fetches: AtomicUsize,
}

/// A poisoned lock only means a test panicked while holding it; the data
/// (keys, settings) is still whole, so keep serving it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn host_name(&self) -> Option<&str> {
        self.host_name.as_deref()
    }

    pub(crate) fn jwks(&self) -> Value {
        let keys: Vec<Value> = lock(&self.keys).published.iter().map(|k| k.jwk()).collect();
        json!({ "keys": keys })
    }

    pub(crate) fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": [
                "aud", "azp", "email", "email_verified", "exp", "hd", "iat", "iss", "sub"
            ],
        })
    }

    pub(crate) fn active_key(&self) -> Arc<TestKey> {
        Arc::clone(&lock(&self.keys).active)
    }

    pub(crate) fn mint(&self, claims: &Value) -> String {
        let key = self.active_key();
        mint(&key, &default_header(&key), claims)
    }

    pub(crate) fn cache_control(&self) -> Option<String> {
        lock(&self.cache_control).clone()
    }

    pub(crate) fn age(&self) -> Option<u64> {
        *lock(&self.age)
    }

    pub(crate) fn failure(&self) -> Failure {
        lock(&self.failure).clone()
    }
}

/// How the server task is run, so it can be stopped.
enum Task {
    /// On the runtime that called [`Issuer::start_with`].
    Spawned(JoinHandle<()>),
    /// On a runtime of its own, in a thread ([`Issuer::start_blocking_with`]).
    Thread {
        server: AbortHandle,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A live OIDC issuer on loopback: discovery, JWKS and a mint endpoint.
///
/// Endpoints: `GET /.well-known/openid-configuration`, `GET /jwks`, and
/// `GET /token?email=E&audience=A[&hd=D][&ttl=SECS][&email_verified=false]`
/// or `POST /token` with a JSON body of the same fields plus an optional
/// `"claims"` object merged over the defaults; the token comes back as
/// `text/plain`, signed by the active key. Bad input gets a 400 with a reason.
///
/// Dropping the issuer stops the server and closes its connections.
pub struct Issuer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Task,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("url", &self.shared.url)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Starts an issuer on `127.0.0.1:0` with one fresh key, `key-1`,
    /// published and active. The listener is bound when this returns.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound or no key generated; use
    /// [`Issuer::start_with`] to get those as errors.
    pub async fn start() -> Issuer {
        match Issuer::start_with(IssuerOptions::default()).await {
            Ok(issuer) => issuer,
            Err(err) => panic!("cannot start test issuer: {}", error_chain(&err)),
        }
    }

    /// Starts an issuer with `opts`, serving on the current tokio runtime.
    /// The listener is bound when this returns.
    pub async fn start_with(opts: IssuerOptions) -> Result<Issuer, Error> {
        let (shared, listener, addr) = prepare(opts).await?;
        let router = server::router(Arc::clone(&shared));
        let handle = tokio::spawn(server::serve(listener, router));
        Ok(Issuer {
            shared,
            addr,
            task: Task::Spawned(handle),
        })
    }

    /// Starts an issuer on a thread with its own tokio runtime, for code that
    /// is not async or that outlives one runtime (a shared issuer for many
    /// `#[tokio::test]`s). Blocks until the listener is bound.
    ///
    /// # Panics
    ///
    /// As [`Issuer::start`].
    pub fn start_blocking() -> Issuer {
        match Issuer::start_blocking_with(IssuerOptions::default()) {
            Ok(issuer) => issuer,
            Err(err) => panic!("cannot start test issuer: {}", error_chain(&err)),
        }
    }

    /// [`Issuer::start_with`] on a thread with its own tokio runtime.
    pub fn start_blocking_with(opts: IssuerOptions) -> Result<Issuer, Error> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("idgate-test-issuer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(Error::Thread(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match prepare(opts).await {
                        Ok((shared, listener, addr)) => {
                            let router = server::router(Arc::clone(&shared));
                            let handle = tokio::spawn(server::serve(listener, router));
                            let ready = (shared, addr, handle.abort_handle());
                            if ready_tx.send(Ok(ready)).is_ok() {
                                // Ends when Issuer aborts the server.
                                let _ = handle.await;
                            }
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                });
            })
            .map_err(Error::Thread)?;
        let ready = ready_rx.recv().map_err(|_| {
            Error::Thread(std::io::Error::other(
                "issuer thread exited before starting",
            ))
        })?;
        match ready {
            Ok((shared, addr, server)) => Ok(Issuer {
                shared,
                addr,
                task: Task::Thread {
                    server,
                    thread: Some(thread),
                },
            }),
            Err(err) => {
                let _ = thread.join();
                Err(err)
            }
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer URL, also the `iss` of the tokens it mints.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// `{url}/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.shared.url)
    }

    /// `{url}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.url)
    }

    /// `{url}/token`, the mint endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.shared.url)
    }

    /// The key that signs new tokens.
    pub fn active_key(&self) -> Arc<TestKey> {
        self.shared.active_key()
    }

    /// The published key with this kid.
    pub fn key(&self, kid: &str) -> Option<Arc<TestKey>> {
        lock(&self.shared.keys)
            .published
            .iter()
            .find(|k| k.kid() == kid)
            .cloned()
    }

    /// The published keys, in JWKS order.
    pub fn published_keys(&self) -> Vec<Arc<TestKey>> {
        lock(&self.shared.keys).published.clone()
    }

    /// The JWKS document as it would be served now (with [`Failure::None`]).
    pub fn jwks(&self) -> Value {
        self.shared.jwks()
    }

    /// [`google_claims`] for `email` and `audience`, issued by this issuer now.
    pub fn claims(&self, email: &str, audience: &str) -> Value {
        google_claims(&self.shared.url, email, audience, now_unix())
    }

    /// Signs `claims` with the active key under [`default_header`].
    pub fn mint(&self, claims: &Value) -> String {
        self.shared.mint(claims)
    }

    /// A valid Google-shaped token for `email`, minted for `audience`.
    pub fn token(&self, email: &str, audience: &str) -> String {
        self.mint(&self.claims(email, audience))
    }

    /// Adds `key` to the JWKS without signing with it yet. A published key
    /// with the same kid is replaced in place.
    pub fn publish(&self, key: TestKey) -> Arc<TestKey> {
        let key = Arc::new(key);
        let mut ring = lock(&self.shared.keys);
        match ring.published.iter_mut().find(|k| k.kid() == key.kid()) {
            Some(slot) => *slot = Arc::clone(&key),
            None => ring.published.push(Arc::clone(&key)),
        }
        key
    }

    /// Signs new tokens with the published key `kid`.
    ///
    /// # Panics
    ///
    /// If no published key has that kid (a mistake in the test);
    /// [`Issuer::try_activate`] returns an error instead.
    pub fn activate(&self, kid: &str) {
        if let Err(err) = self.try_activate(kid) {
            panic!("{err}");
        }
    }

    /// Signs new tokens with the published key `kid`, or fails if there is
    /// none.
    pub fn try_activate(&self, kid: &str) -> Result<(), Error> {
        let mut ring = lock(&self.shared.keys);
        let key = ring
            .published
            .iter()
            .find(|k| k.kid() == kid)
            .cloned()
            .ok_or_else(|| Error::UnknownKid {
                kid: kid.to_owned(),
            })?;
        ring.active = key;
        Ok(())
    }

    /// Removes the key `kid` from the JWKS (nothing if it is not there). If it
    /// is the active key it still signs, making tokens the JWKS cannot verify.
    pub fn drop_key(&self, kid: &str) {
        lock(&self.shared.keys).published.retain(|k| k.kid() != kid);
    }

    /// The `Cache-Control` header of JWKS responses; `None` sends none.
    /// Default `Some("public, max-age=3600")`. A value that is not a valid
    /// header value is left out of responses.
    pub fn set_cache_control(&self, value: Option<&str>) {
        *lock(&self.shared.cache_control) = value.map(str::to_owned);
    }

    /// The `Age` header of JWKS responses; default `None` (no header).
    pub fn set_age(&self, value: Option<u64>) {
        *lock(&self.shared.age) = value;
    }

    /// How the JWKS endpoint answers from now on.
    pub fn set_failure(&self, failure: Failure) {
        *lock(&self.shared.failure) = failure;
    }

    /// How many `GET /jwks` requests arrived, answered or not.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many discovery requests arrived.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Stops the server and closes its connections, without waiting.
    /// Dropping the issuer does the same.
    pub fn shutdown(self) {
        drop(self);
    }

    /// Stops the server and waits until its port is closed, so another
    /// issuer can bind the same address.
    pub async fn stop(mut self) {
        match &mut self.task {
            Task::Spawned(handle) => {
                handle.abort();
                let _ = handle.await;
            }
            Task::Thread { server, thread } => {
                server.abort();
                if let Some(thread) = thread.take() {
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                }
            }
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        match &self.task {
            Task::Spawned(handle) => handle.abort(),
            Task::Thread { server, .. } => server.abort(),
        }
    }
}

/// Loads or makes the keys and binds the listener.
async fn prepare(opts: IssuerOptions) -> Result<(Arc<Shared>, TcpListener, SocketAddr), Error> {
    let IssuerOptions {
        listen,
        keys_dir,
        issuer_url,
    } = opts;
    // Key generation and file reads block; keep them off the async threads.
    let keys = tokio::task::spawn_blocking(move || match keys_dir {
        Some(dir) => keys_dir::load_or_create_keys(&dir),
        None => TestKey::try_generate("key-1").map(|key| vec![key]),
    })
    .await
    .map_err(|_| Error::KeyGeneration)??;
    let published: Vec<Arc<TestKey>> = keys.into_iter().map(Arc::new).collect();
    let active = published.first().cloned().ok_or(Error::KeyGeneration)?;

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    let url = match issuer_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{addr}"),
    };
    let shared = Arc::new(Shared {
        host_name: crate::server::url_host_name(&url),
        url,
        keys: Mutex::new(KeyRing { published, active }),
        cache_control: Mutex::new(Some(DEFAULT_CACHE_CONTROL.to_owned())),
        age: Mutex::new(None),
        failure: Mutex::new(Failure::None),
        jwks_fetches: AtomicUsize::new(0),
        discovery_fetches: AtomicUsize::new(0),
    });
    Ok((shared, listener, addr))
}

fn error_chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
