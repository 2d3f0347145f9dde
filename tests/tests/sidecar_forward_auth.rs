//! The real `idgate serve --mode forward-auth` behind a real nginx
//! (`auth_request`, configured with the README's recipe as written there),
//! in front of a real upstream.
//!
//! nginx is Debian's (`nginx-light`, which `./scripts/test` installs). When
//! it is missing the test fails saying so, unless `IDGATE_SKIP_NGINX=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idgate_e2e::*;
use idgate_testkit::Issuer;
use serde_json::Value;
use tokio::process::Command;

fn find_nginx() -> Option<PathBuf> {
    let candidates = [PathBuf::from("/usr/sbin/nginx")].into_iter().chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nginx"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// The README's nginx recipe for forward-auth, as it is written there: the
/// part before the first `location` goes in `http { }` (the `upstream`s
/// for idgate and the app), the rest in the `server { }`. The test runs
/// the recipe itself, so a user who copies it gets what the test checked.
/// (`authreq_conf` in bench/lib.sh reads it by the same rules.)
fn readme_recipe() -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let blocks: Vec<&str> = readme
        .split("```nginx\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .filter(|block| block.contains("auth_request"))
        .collect();
    assert_eq!(blocks.len(), 1, "one nginx auth_request block in README.md");
    let (http, server) = blocks[0]
        .split_once("\nlocation / {")
        .expect("the recipe's location /");
    (http.to_owned(), format!("location / {{{server}"))
}

/// nginx's config: the README's recipe, with idgate at `idgate` (the
/// recipe's 127.0.0.1:8080) and `upstream` as the app (its 127.0.0.1:8081).
fn nginx_conf(dir: &Path, port: u16, idgate: &str, upstream: &str) -> String {
    let (mut http, server) = readme_recipe();
    for (default, addr) in [("127.0.0.1:8080", idgate), ("127.0.0.1:8081", upstream)] {
        let line = format!("server {default};");
        assert_eq!(
            http.matches(&line).count(),
            1,
            "the recipe's upstreams name {default} once: {http}"
        );
        http = http.replace(&line, &format!("server {addr};"));
    }
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

/// A TCP relay to `to` that counts the connections it accepted: how many
/// connections nginx opened to idgate.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let Some(nginx) = find_nginx() else {
        if std::env::var_os("IDGATE_SKIP_NGINX").is_some_and(|v| v == "1") {
            eprintln!("skipped: nginx not found and IDGATE_SKIP_NGINX=1");
            return;
        }
        panic!(
            "nginx not found (/usr/sbin/nginx or on PATH): run ./scripts/test, which installs \
             Debian's nginx-light, or set IDGATE_SKIP_NGINX=1 to skip this test"
        );
    };

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
    let command = format!(
        "{} -p {d} -c {} -e {d}/error.log",
        nginx.display(),
        conf.display(),
        d = dir.path().display()
    );
    let nginx_proc = Process::spawn("nginx", cmd, command);
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    eventually(
        "nginx to accept connections",
        Duration::from_secs(20),
        || {
            let (c, url) = (c.clone(), format!("{base}/public/ping"));
            async move { c.get(url).send().await.ok().map(|_| ()) }
        },
    )
    .await;
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();

    let send = |path: &str, token: Option<String>| {
        let mut req = c
            .get(format!("{base}{path}"))
            .header("x-idgate-principal", "user:boss@example.com")
            .header("x-idgate-email", "boss@example.com");
        if let Some(t) = token {
            req = req.header("authorization", bearer(&t));
        }
        req.send()
    };

    // Allowed: nginx asks idgate, copies the principal it answered with.
    let alice = google_token(&kit, "alice@example.com");
    let res = send("/app/items?page=2", Some(alice)).await.expect("alice");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(status, 200, "alice through nginx: {text}\n{}", error_log());
    let echo: Value = serde_json::from_str(&text).expect("the upstream's echo");
    assert_eq!(echo["path"], "/app/items");
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
    assert!(
        header_values(&echo, "authorization").is_empty(),
        "the README's config keeps the token from the app: {echo}"
    );

    // A public path: idgate allows it without a token; nginx's header
    // rule sends an empty principal, never the client's.
    let res = send("/public/logo.svg", None).await.expect("public");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the upstream's echo");
    for name in ["x-idgate-principal", "x-idgate-email"] {
        assert!(
            header_values(&echo, name).iter().all(String::is_empty),
            "{name}: {echo}"
        );
    }

    let hits = up.hits();
    let res = send("/app/items", None).await.expect("no token");
    assert_eq!(res.status(), 401, "no token");
    let bob = google_token(&kit, "bob@example.com");
    let res = send("/app/items", Some(bob)).await.expect("bob");
    assert_eq!(res.status(), 403, "bob is not allowed");
    let res = send("/app/items", Some("e30.e30.e30".into()))
        .await
        .expect("bad token");
    assert_eq!(res.status(), 401, "a bad token");
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
    // (Log lines are read from a pipe: wait for them rather than assume.)
    let denials: Vec<Value> = eventually("4 denials in the log", Duration::from_secs(10), || {
        let denials: Vec<Value> = idgate
            .json_logs()
            .into_iter()
            .filter(|v| v["message"] == "request denied")
            .collect();
        std::future::ready((denials.len() >= 4).then_some(denials))
    })
    .await;
    assert_eq!(denials.len(), 4, "{denials:?}");
    assert!(
        denials.iter().all(|v| v["http.path"] == "/app/items"),
        "{denials:?}"
    );

    // The recipe keeps nginx's connections to idgate open from one
    // subrequest to the next, denials included: requests one at a time,
    // answered 200, 401 and 403 in turn, all go over connections already
    // open (without keep-alive, each would open one of its own).
    let opened = relay.accepted();
    assert!(opened >= 1, "nginx reached idgate through the relay");
    let alice = google_token(&kit, "alice@example.com");
    let bob = google_token(&kit, "bob@example.com");
    for i in 0..12 {
        let (token, want) = match i % 3 {
            0 => (Some(alice.clone()), 200),
            1 => (None, 401),
            _ => (Some(bob.clone()), 403),
        };
        let res = send("/app/items", token).await.expect("a request");
        assert_eq!(res.status(), want, "request {i}\n{}", error_log());
    }
    assert_eq!(
        relay.accepted(),
        opened,
        "nginx opened new connections to idgate for requests one at a time"
    );
    drop(nginx_proc);
}
