//! A child process whose output is kept, searched and shown on failure.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Everything a child wrote, line by line, in arrival order per stream.
struct Output {
    lines: Mutex<Vec<(&'static str, String)>>,
    /// Bumped on every line and at each stream's end.
    changed: watch::Sender<u64>,
    /// Streams that reached their end (2 when the child closed both).
    closed: AtomicUsize,
}

impl Output {
    fn push(&self, stream: &'static str, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stream, line));
        self.changed.send_modify(|n| *n += 1);
    }

    fn close(&self) {
        self.closed.fetch_add(1, Ordering::AcqRel);
        self.changed.send_modify(|n| *n += 1);
    }

    fn stream(&self, which: &str) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (_, l) in lines.iter().filter(|(s, _)| *s == which) {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// Reads `pipe` on a thread of its own, so the child never blocks on a
/// full pipe whatever the test's runtime is doing.
fn drain(pipe: impl Read + Send + 'static, stream: &'static str, out: Arc<Output>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    out.push(stream, line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
        out.close();
    });
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`), bytes.
    pub peak: u64,
}

/// A running child. Dropping it kills it; if the test is failing, the
/// command line and everything the child wrote are printed first.
pub struct Process {
    name: String,
    command: String,
    child: Child,
    pid: u32,
    output: Arc<Output>,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured. `command` is how the
    /// failure report shows it.
    pub fn spawn(name: &str, mut cmd: Command, command: String) -> Process {
        let (out_r, out_w) = std::io::pipe().expect("create a pipe");
        let (err_r, err_w) = std::io::pipe().expect("create a pipe");
        cmd.stdin(std::process::Stdio::null())
            .stdout(out_w)
            .stderr(err_w)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        // Our copies of the write ends go with `cmd`, so the readers see
        // the end of the streams when the child exits.
        drop(cmd);
        let pid = child.id().expect("a child that was just spawned has a pid");
        let (changed, _) = watch::channel(0);
        let output = Arc::new(Output {
            lines: Mutex::new(Vec::new()),
            changed,
            closed: AtomicUsize::new(0),
        });
        drain(out_r, "stdout", output.clone());
        drain(err_r, "stderr", output.clone());
        Process {
            name: name.to_owned(),
            command,
            child,
            pid,
            output,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it was started.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.output.stream("stdout")
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.output.stream("stderr")
    }

    /// The JSON log lines (stderr) so far; other lines are skipped.
    pub fn json_logs(&self) -> Vec<Value> {
        let lines = self.output.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .filter(|(s, _)| *s == "stderr")
            .filter_map(|(_, l)| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first JSON log line whose `message` is `message`, if any yet.
    pub fn find_log(&self, message: &str) -> Option<Value> {
        self.json_logs()
            .into_iter()
            .find(|v| v["message"] == message)
    }

    /// Waits for a JSON log line whose `message` is `message`. Panics if the
    /// process closes its output first or `timeout` passes.
    pub async fn wait_for_log(&self, message: &str, timeout: Duration) -> Value {
        let mut rx = self.output.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(v) = self.find_log(message) {
                return v;
            }
            if self.output.closed.load(Ordering::Acquire) == 2 {
                panic!("{} exited before logging {message:?}", self.name);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("{} did not log {message:?} within {timeout:?}", self.name);
            }
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid);
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("checking on {}: {e}", self.name))
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => panic!("{} did not exit within {timeout:?}", self.name),
        }
    }

    /// Its soft and hard limits on open files (`/proc/PID/limits`).
    pub fn open_files_limits(&self) -> (u64, u64) {
        open_files_limits(&self.pid.to_string())
    }

    /// Memory from `/proc/PID/status`.
    pub fn memory(&self) -> Memory {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or_else(|| panic!("no {name} in {path}:\n{status}"))
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }

    /// The failure report: command, stdout, stderr.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "=== {}: {}", self.name, self.command);
        let _ = writeln!(r, "--- stdout\n{}", self.stdout());
        let _ = writeln!(r, "--- stderr\n{}", self.stderr());
        r
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        let _ = self.child.start_kill();
    }
}

/// A run to completion.
#[derive(Debug)]
pub struct Finished {
    /// How it was started.
    pub command: String,
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Finished {
    /// Panics with `why`, the command and both streams.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }

    /// Checks the exit code.
    pub fn expect_code(&self, code: i32) -> &Self {
        if self.code != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }

    /// Checks that stderr holds `needle`.
    pub fn expect_stderr(&self, needle: &str) -> &Self {
        if !self.stderr.contains(needle) {
            self.fail(&format!("stderr lacks {needle:?}"));
        }
        self
    }
}

/// The soft and hard limits on open files of process `pid` (a number, or
/// `self`), from `/proc/PID/limits`; `unlimited` reads as `u64::MAX`.
pub fn open_files_limits(pid: &str) -> (u64, u64) {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // "Max open files  SOFT  HARD  files"
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files line in {path}"));
    let field = |n: usize| {
        line.split_whitespace()
            .nth(n)
            .map_or(u64::MAX, |v| v.parse().unwrap_or(u64::MAX))
    };
    (field(3), field(4))
}

/// The soft `RLIMIT_NOFILE` of this process, first raised to `want` with
/// `prlimit(1)` when it is under that (children inherit it, the sidecar
/// included; the hard limit bounds it).
pub fn ensure_nofile(want: u64) -> u64 {
    let soft = || open_files_limits("self").0;
    if soft() < want {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={want}:")])
            .status();
    }
    soft()
}

/// How a failure report shows `cmd`: its program and arguments, spaced.
pub fn command_line(cmd: &Command) -> String {
    let cmd = cmd.as_std();
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
