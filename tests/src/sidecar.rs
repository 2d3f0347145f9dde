//! `idgate serve`, the real binary, as a child process.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use idgate_testkit::Issuer;
use tempfile::TempDir;
use tokio::process::Command;

use crate::process::{Finished, Process};
use crate::{AUD, client, idgate_bin};

/// How long `serve` may take to log that it is serving. Startup waits up
/// to 10 s for the first keys (`KEY_WARMUP`) when the key endpoint hangs.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `/readyz` may take to answer 200 once serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What `serve` logs (once a minute at most) when a connection waits for a
/// place at `--max-connections`.
pub const AT_THE_CONNECTION_CAP: &str = "at the connection cap: a connection waits for a place, \
     and connections between requests are closed";

/// An `idgate serve` command line, run in a temporary directory with a
/// cleared environment.
#[derive(Debug)]
pub struct Serve {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: TempDir,
    cpus: Option<String>,
    open_files: Option<u64>,
}

impl Default for Serve {
    fn default() -> Self {
        Serve::new()
    }
}

impl Serve {
    /// `idgate serve` with no flags at all.
    pub fn bare() -> Serve {
        Serve {
            args: vec!["serve".into()],
            env: Vec::new(),
            dir: tempfile::tempdir().expect("create a temporary directory"),
            cpus: None,
            open_files: None,
        }
    }

    /// `idgate serve` with both listeners on `127.0.0.1:0` and JSON logs.
    pub fn new() -> Serve {
        Serve::bare().args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
    }

    /// A proxy to `upstream` (`http://ADDR`) for [`AUD`], with the Google
    /// preset's keys fetched from `kit`.
    pub fn proxy(upstream: &str, kit: &Issuer) -> Serve {
        Serve::new().args([
            "--upstream",
            upstream,
            "--audience",
            AUD,
            "--jwks-url",
            &kit.jwks_url(),
        ])
    }

    /// Forward-auth mode for [`AUD`], with the Google preset's keys fetched
    /// from `kit`.
    pub fn forward_auth(kit: &Issuer) -> Serve {
        Serve::new().args([
            "--mode",
            "forward-auth",
            "--audience",
            AUD,
            "--jwks-url",
            &kit.jwks_url(),
        ])
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Serve {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the environment is otherwise empty).
    pub fn env(mut self, key: &str, value: &str) -> Serve {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs it on these CPUs only (`taskset -c LIST`), as a container with
    /// a CPU limit would.
    pub fn cpus(mut self, list: &str) -> Serve {
        self.cpus = Some(list.into());
        self
    }

    /// Starts it with this soft limit on open files (`prlimit
    /// --nofile=N:`), as container runtimes start processes at 1,024.
    pub fn open_files_soft_limit(mut self, n: u64) -> Serve {
        self.open_files = Some(n);
        self
    }

    /// The commands it runs under (`taskset`, `prlimit`), each of which
    /// execs the next.
    fn wrappers(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(list) = &self.cpus {
            w.extend(["taskset".to_owned(), "-c".to_owned(), list.clone()]);
        }
        if let Some(n) = self.open_files {
            w.extend(["prlimit".to_owned(), format!("--nofile={n}:")]);
        }
        w
    }

    /// The directory it runs in (relative paths in flags resolve here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command line, as a shell would take it.
    pub fn command_line(&self) -> String {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_word(v)))
            .collect();
        let args: Vec<String> = self.args.iter().map(|a| shell_word(a)).collect();
        let wrappers: String = self.wrappers().iter().map(|w| format!("{w} ")).collect();
        format!(
            "(cd {} && env -i {} {wrappers}{} {})",
            self.dir.path().display(),
            env.join(" "),
            idgate_bin().display(),
            args.join(" ")
        )
    }

    fn command(&self) -> Command {
        let wrappers = self.wrappers();
        let mut cmd = match wrappers.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(idgate_bin());
                c
            }
            None => Command::new(idgate_bin()),
        };
        cmd.args(&self.args)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts it and waits until `/readyz` answers 200.
    pub async fn start(self) -> Sidecar {
        let sidecar = self.start_unready().await;
        sidecar.wait_ready(READY_TIMEOUT).await;
        sidecar
    }

    /// Starts it and waits only for its `serving` log line, which names the
    /// addresses it bound.
    pub async fn start_unready(self) -> Sidecar {
        let process = Process::spawn("idgate serve", self.command(), self.command_line());
        let serving = tokio::select! {
            v = process.wait_for_log("serving", START_TIMEOUT) => v,
            v = process.wait_for_log("serving forward-auth", START_TIMEOUT) => v,
        };
        let addr = |field: &str| -> SocketAddr {
            serving[field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no address in `{field}` of {serving}"))
        };
        Sidecar {
            addr: addr("listen"),
            admin: addr("admin"),
            process,
            _dir: self.dir,
        }
    }

    /// Runs it to completion (at most a minute) and returns what it said.
    pub async fn run(self) -> Finished {
        let mut cmd = self.command();
        cmd.kill_on_drop(true);
        let command = self.command_line();
        let out = match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("cannot run {command}: {e}"),
            Err(_) => panic!("{command} did not exit within a minute"),
        };
        Finished {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A running `idgate serve`. Dereferences to its [`Process`] (logs,
/// signals, memory, exit).
pub struct Sidecar {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Deref for Sidecar {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Sidecar {
    /// The gate's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://GATE{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The status `/readyz` answers now.
    pub async fn readyz(&self) -> u16 {
        client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /readyz: {e}"))
            .status()
            .as_u16()
    }

    /// Polls `/readyz` until it answers 200, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        crate::eventually("/readyz to answer 200", timeout, || async {
            (self.readyz().await == 200).then_some(())
        })
        .await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(res.status(), 200, "GET /metrics");
        res.text().await.expect("read /metrics")
    }

    /// The value of the metric sample `series` (as written in the text
    /// format, labels included), or `None` when it is absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}
