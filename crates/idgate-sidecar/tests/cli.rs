//! The real binary: settings problems, `--check-config`, exit codes. Each
//! run has a cleared environment and its own temporary directory.

use std::path::Path;
use std::process::{Command, Output};

struct Run {
    command: String,
    output: Output,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Panics with the command and both streams.
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    fn expect_code(&self, code: i32) -> &Self {
        if self.code() != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }
    fn expect_stderr(&self, needle: &str) -> &Self {
        if !self.stderr().contains(needle) {
            self.fail(&format!("stderr lacks {needle:?}"));
        }
        self
    }
    fn expect_stdout(&self, needle: &str) -> &Self {
        if !self.stdout().contains(needle) {
            self.fail(&format!("stdout lacks {needle:?}"));
        }
        self
    }
}

fn idgate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idgate"));
    cmd.args(args).current_dir(dir).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let command = format!(
        "(cd {} && env -i {} idgate {})",
        dir.display(),
        env.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" "),
        args.join(" ")
    );
    let output = cmd.output().expect("the idgate binary runs");
    Run { command, output }
}

#[test]
fn every_problem_is_listed_with_its_source_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "jwks_min_ttl = \"soon\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let run = idgate(
        dir.path(),
        &[
            "serve",
            "--config",
            "config.toml",
            "--member",
            "bob@example.com",
            "--policy",
            "missing.json",
            "--upstream",
            "https://app:8443",
        ],
        &[("IDGATE_CLOCK_SKEW", "30 parsecs"), ("PORT", "eighty")],
    );
    run.expect_code(2)
        .expect_stderr("8 configuration problems")
        .expect_stderr("config.toml: unknown key `colour`")
        .expect_stderr("config.toml: jwks_min_ttl: invalid value \"soon\"")
        .expect_stderr("IDGATE_CLOCK_SKEW: invalid value \"30 parsecs\"")
        .expect_stderr("PORT: invalid value \"eighty\"")
        .expect_stderr("--member: invalid value \"bob@example.com\"")
        .expect_stderr("--policy: cannot read missing.json")
        .expect_stderr("--upstream: invalid value \"https://app:8443\"")
        .expect_stderr("no audience");
    if !run.stdout().is_empty() {
        run.fail("nothing belongs on stdout");
    }
}

#[test]
fn check_config_summarises_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.json"),
        r#"{"bindings":[{"role":"roles/run.invoker","members":["user:alice@example.com"]}]}"#,
    )
    .unwrap();
    idgate(
        dir.path(),
        &["serve", "--check-config", "--policy", "policy.json"],
        &[
            ("IDGATE_AUDIENCE", "https://a.example,https://b.example"),
            ("IDGATE_UPSTREAM", "http://127.0.0.1:8081"),
        ],
    )
    .expect_code(0)
    .expect_stdout("configuration OK")
    .expect_stdout("audiences: https://a.example, https://b.example")
    .expect_stdout("mode: proxy to http://127.0.0.1:8081");
}

#[test]
fn check_config_loads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.json"),
        r#"{"bindings":[{"role":"roles/run.invoker","members":["garbage","user:"]}]}"#,
    )
    .unwrap();
    idgate(
        dir.path(),
        &[
            "serve",
            "--check-config",
            "--policy",
            "policy.json",
            "--audience",
            "a",
            "--mode",
            "forward-auth",
        ],
        &[],
    )
    .expect_code(2)
    .expect_stderr("2 configuration problems")
    .expect_stderr("policy: policy.json");
}

/// Flags, environment, the line expected on stdout.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn flag_beats_env_beats_file_beats_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("idgate.toml"),
        "listen = \"127.0.0.1:7001\"\naudience = \"a\"\nupstream = \"http://u:1\"\nmember = [\"allUsers\"]\n",
    )
    .unwrap();
    let base = ["serve", "--check-config"];
    let cases: [Case; 4] = [
        (
            &["--listen", "127.0.0.1:7003"],
            &[
                ("IDGATE_LISTEN", "127.0.0.1:7002"),
                ("IDGATE_CONFIG", "idgate.toml"),
                ("PORT", "7004"),
            ],
            "listen: 127.0.0.1:7003",
        ),
        (
            &[],
            &[
                ("IDGATE_LISTEN", "127.0.0.1:7002"),
                ("IDGATE_CONFIG", "idgate.toml"),
                ("PORT", "7004"),
            ],
            "listen: 127.0.0.1:7002",
        ),
        (
            &["--config", "idgate.toml"],
            &[("PORT", "7004")],
            "listen: 127.0.0.1:7001",
        ),
        (
            &[
                "--audience",
                "a",
                "--upstream",
                "http://u:1",
                "--member",
                "allUsers",
            ],
            &[("PORT", "7004")],
            "listen: 0.0.0.0:7004",
        ),
    ];
    for (flags, env, expected) in cases {
        let args: Vec<&str> = base.iter().chain(flags).copied().collect();
        idgate(dir.path(), &args, env)
            .expect_code(0)
            .expect_stdout(expected);
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    idgate(dir.path(), &["serve", "--no-such-flag"], &[])
        .expect_code(2)
        .expect_stderr("--no-such-flag");
    idgate(dir.path(), &["serve", "--help"], &[])
        .expect_code(0)
        .expect_stdout("--forward-token");
    idgate(dir.path(), &["--version"], &[]).expect_code(0);
}

#[test]
fn bad_settings_bind_nothing() {
    // The listen address is taken: a config error must be reported before
    // any attempt to bind (which would fail differently).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    idgate(
        dir.path(),
        &["serve", "--listen", &addr, "--upstream", "http://u:1"],
        &[],
    )
    .expect_code(2)
    .expect_stderr("no audience");
}

/// The real `serve`: JSON logs with `severity`, a denial, SIGHUP reloading
/// the policy, and SIGTERM draining to exit 0.
#[cfg(unix)]
#[test]
fn serve_logs_json_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let issuer = idgate_testkit::Issuer::start_blocking();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--audience",
        "https://svc.example",
        "--member",
        "user:alice@example.com",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .arg("--jwks-url")
        .arg(issuer.jwks_url())
        .current_dir(dir.path())
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let command = format!("idgate {} --jwks-url {}", args.join(" "), issuer.jwks_url());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait_for = |seen: &mut Vec<String>, message: &str| -> serde_json::Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    let v: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{command}: not a JSON log line ({e}): {line}"));
                    assert!(v["severity"].is_string(), "{line}");
                    if v["message"] == message {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "{command}: no {message:?} log line; stderr so far:\n{}",
                    seen.join("\n")
                ),
            }
        }
    };
    let serving = wait_for(&mut seen, "serving");
    assert_eq!(serving["severity"], "INFO");
    let addr = serving["listen"].as_str().unwrap().to_owned();

    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    let denied = wait_for(&mut seen, "request denied");
    assert_eq!(denied["auth.reason"], "missing_token");

    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name}");
    };
    signal("-HUP");
    wait_for(&mut seen, "policy reloaded");
    signal("-TERM");
    wait_for(&mut seen, "drained");
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{command}\n{}", seen.join("\n"));
    assert!(
        seen.iter().all(|l| !l.contains("Bearer")),
        "no credential in the logs"
    );
}
