//! Shared by the local tools' tests: run the real binary in a temporary
//! directory with a cleared environment, keep a long-running one (dev
//! issuer, proxy) and read its output with a deadline, and poll instead of
//! sleeping.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A finished run of the binary.
pub struct Run {
    pub command: String,
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Panics with the command and both streams.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    pub fn expect_code(&self, code: i32) -> &Self {
        if self.code() != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }
    pub fn expect_stdout(&self, needle: &str) -> &Self {
        if !self.stdout().contains(needle) {
            self.fail(&format!("stdout lacks {needle:?}"));
        }
        self
    }
    pub fn expect_stderr(&self, needle: &str) -> &Self {
        if !self.stderr().contains(needle) {
            self.fail(&format!("stderr lacks {needle:?}"));
        }
        self
    }
    pub fn expect_no_stdout(&self, needle: &str) -> &Self {
        if self.stdout().contains(needle) {
            self.fail(&format!("stdout must not contain {needle:?}"));
        }
        self
    }
    /// stdout as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout().trim())
            .unwrap_or_else(|e| self.fail(&format!("stdout is not one JSON value: {e}")))
    }
}

fn describe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    format!(
        "(cd {} && env -i {} idgate {})",
        dir.display(),
        env.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" "),
        args.iter()
            .map(|a| if a.contains(' ') || a.is_empty() {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            })
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idgate"));
    cmd.args(args).current_dir(dir).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `idgate ARGS` to completion, with `stdin` (or none).
pub fn idgate(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = command(dir, args, env);
    let mut command = describe(dir, args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    if stdin.is_some() {
        command = format!("echo … | {command}");
    }
    let mut child = cmd.spawn().expect("the idgate binary runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).expect("writing stdin");
    }
    let output = wait_with_deadline(child, &command);
    Run { command, output }
}

/// Waits for a child, killing it (and failing) after [`DEADLINE`].
fn wait_with_deadline(mut child: Child, command: &str) -> Output {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for idgate") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let out = out_reader.join().unwrap_or_default();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "timed out after {DEADLINE:?}\ncommand: {command}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// A long-running `idgate` (dev issuer, proxy). Killed when dropped.
pub struct Spawned {
    pub command: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Starts `idgate ARGS` in the background.
pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let command = describe(dir, args, env);
    let mut child = command_piped(dir, args, env)
        .spawn()
        .expect("the idgate binary runs");
    let (tx, lines) = mpsc::channel();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().expect("stdout is piped");
    let all = stdout.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            all.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    let err = child.stderr.take().expect("stderr is piped");
    let all = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            all.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    Spawned {
        command,
        child: Some(child),
        lines,
        stdout,
        stderr,
    }
}

fn command_piped(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = command(dir, args, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Spawned {
    /// Panics with the command and what it printed so far.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// The first stdout line for which `pick` gives a value, within the
    /// deadline.
    pub fn line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return v;
                    }
                }
                Err(_) => self.fail(&format!("no stdout line with {what}")),
            }
        }
    }

    /// The first `http://…` URL on a stdout line starting with `prefix`
    /// (after spaces).
    pub fn url_after(&self, prefix: &str) -> String {
        self.line(prefix, |l| {
            let l = l.trim_start();
            l.strip_prefix(prefix).and_then(first_url)
        })
    }

    /// Waits until stdout contains `needle`.
    pub fn stdout_has(&self, needle: &str) -> &Self {
        let start = Instant::now();
        while !self.stdout.lock().unwrap().contains(needle) {
            if start.elapsed() > DEADLINE {
                self.fail(&format!("stdout never contained {needle:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }

    /// Everything on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        let start = Instant::now();
        while !self.stderr().contains(needle) {
            if start.elapsed() > DEADLINE {
                self.fail(&format!("stderr never contained {needle:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            let _ = child.kill();
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                self.fail("did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit by itself; its code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the readers drain what was printed last.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                self.fail("did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn first_url(s: &str) -> Option<String> {
    let start = s.find("http://")?;
    let url: String = s[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some(url)
}

/// A token's claims, decoded without any check.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a token has a payload");
    let json = URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON payload")
}

/// A token's header, decoded without any check.
pub fn header(token: &str) -> Value {
    let h = token.split('.').next().expect("a token has a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).expect("base64url header"))
        .expect("JSON header")
}

/// A PKCS#8 DER key as PEM (`-----BEGIN PRIVATE KEY-----`, 64-char lines).
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    idgate_testkit::now_unix()
}

/// Polls `check` every 10 ms until it gives a value, failing after
/// [`DEADLINE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A blocking HTTP client for tests that are not async.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// Serves `router` on 127.0.0.1:0 from a thread of its own, for the life of
/// the test process.
pub fn serve_router(router: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            tx.send(listener.local_addr().expect("an address"))
                .expect("the test waits");
            let _ = axum::serve(listener, router).await;
        });
    });
    rx.recv_timeout(DEADLINE).expect("the server started")
}

/// An upstream that answers every request with what it received:
/// `{"method", "path", "authorization", "x-serverless-authorization",
/// "host", "body"}`.
pub fn echo_upstream() -> std::net::SocketAddr {
    async fn echo(req: axum::extract::Request) -> axum::Json<Value> {
        let (parts, body) = req.into_parts();
        let h = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned());
        let (authorization, serverless, host) = (
            h("authorization"),
            h("x-serverless-authorization"),
            h("host"),
        );
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        axum::Json(serde_json::json!({
            "method": method,
            "path": path,
            "authorization": authorization,
            "x-serverless-authorization": serverless,
            "host": host,
            "body": String::from_utf8_lossy(&body),
        }))
    }
    serve_router(axum::Router::new().fallback(echo))
}
