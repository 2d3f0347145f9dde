//! Every idgate container in the deployment manifests under `deploy/` starts
//! with a configuration the real binary accepts.
//!
//! The test walks `deploy/`, parses every YAML file (all documents in it),
//! and finds every container that runs idgate: Kubernetes workloads, the
//! Cloud Run (Knative) service, and compose services. A container runs
//! idgate when its image names `idgate` or its arguments start with `serve`.
//! For each `serve` container it runs `idgate serve … --check-config` with
//! that container's arguments and environment, and requires exit code 0. Other
//! idgate containers (the compose file's `dev-issuer`) run with `--help`
//! appended, which checks that every flag they pass exists.
//!
//! What a platform would provide is stood in for, explicitly and no more:
//!
//! - Environment: the container's `env`/`environment` on top of the image's
//!   `ENV` lines from `deploy/docker/Dockerfile`; Cloud Run's `PORT` for the
//!   ingress container; nothing from the test's own environment.
//! - References: `$(VAR)` (Kubernetes) from the container's environment;
//!   `${VAR:-default}` (compose) resolves to its default, as in a checkout
//!   with no `.env` file.
//! - Mounted files: a ConfigMap volume becomes a temporary directory holding
//!   the ConfigMap's `data` from the same manifest directory; a Cloud Run
//!   Secret Manager volume becomes a directory holding the file that
//!   [`SECRET_MANAGER`] names for that secret; a compose bind mount is its
//!   source directory; `emptyDir` and tmpfs are empty temporary directories.
//!   Any argument or variable (or comma-separated item of one) that is a path
//!   under a mount is rewritten to the stand-in.
//!
//! The binary: `$IDGATE_BIN` if set; otherwise the test runs `cargo build -p
//! idgate-sidecar --bin idgate` (a no-op when it is fresh, so the test never
//! checks a stale binary) and uses the executable cargo reports, which
//! honours `CARGO_TARGET_DIR` and any configured target directory. The e2e
//! crate cannot use `CARGO_BIN_EXE_idgate`: that exists only in the
//! binary's own package.
//!
//! It also checks what makes each deployment safe rather than merely valid:
//! the Cloud Run ingress container is idgate, the Kubernetes Service targets
//! an idgate port, and no compose service that idgate proxies to publishes a
//! port of its own.

use idgate_e2e::{idgate_bin, workspace_root};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};
use tempfile::TempDir;

/// Secret Manager secrets that Cloud Run manifests mount, and the file in
/// `deploy/` that stands in for each secret's value.
const SECRET_MANAGER: &[(&str, &str)] = &[("idgate-policy", "examples/policy.json")];

/// Platform directories under `deploy/` that must each hold at least one
/// idgate container.
const PLATFORMS: &[&str] = &["cloud-run", "kubernetes", "compose"];

/// How long one `idgate` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// One YAML document, with the file it came from.
struct Doc {
    path: PathBuf,
    value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn load_docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            if !value.is_null() {
                docs.push(Doc {
                    path: path.clone(),
                    value,
                });
            }
        }
    }
    docs
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key))
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    get(v, key).and_then(Value::as_str)
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// A scalar as the string a container would see.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The platform directory (`cloud-run`, …) a file is in.
fn platform_of(path: &Path) -> String {
    path.strip_prefix(deploy_dir())
        .ok()
        .and_then(|rel| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One container, reduced to what running it needs.
struct Container {
    /// `file: kind/name/container` for messages.
    label: String,
    /// The manifest it came from.
    file: PathBuf,
    platform: String,
    image: String,
    /// Arguments after the idgate executable.
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container path prefix -> stand-in directory on this machine.
    mounts: Vec<(String, PathBuf)>,
}

/// Keeps the stand-in directories alive until the checks have run.
#[derive(Default)]
struct Scratch(Vec<TempDir>);

impl Scratch {
    fn dir(&mut self) -> PathBuf {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().to_path_buf();
        self.0.push(dir);
        path
    }
}

/// The image's `ENV` settings: the last stage of the Dockerfile.
fn image_env() -> BTreeMap<String, String> {
    let path = deploy_dir().join("docker/Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut env = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("FROM ") {
            env.clear();
        } else if upper.starts_with("ENV ") {
            for pair in line[4..].split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: use ENV KEY=VALUE: {line}", path.display()));
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
    }
    env
}

/// Kubernetes `$(VAR)` references, from `env`; `$$(` is a literal `$(`.
fn expand_k8s(s: &str, env: &BTreeMap<String, String>, label: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("$(") {
            let end = tail
                .find(')')
                .unwrap_or_else(|| panic!("{label}: unclosed $( in {s:?}"));
            let name = &tail[..end];
            let value = env.get(name).unwrap_or_else(|| {
                panic!("{label}: $({name}) in {s:?} is not in the container's env")
            });
            out.push_str(value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Compose interpolation: `${VAR:-default}` and `${VAR-default}` give the
/// default; `$$` is `$`; anything without a default cannot be resolved here.
fn expand_compose(s: &str, label: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .unwrap_or_else(|| panic!("{label}: unclosed ${{ in {s:?}"));
            let body = &tail[..end];
            let default = body
                .split_once(":-")
                .or_else(|| body.split_once('-'))
                .map(|(_, d)| d)
                .unwrap_or_else(|| {
                    panic!("{label}: ${{{body}}} in {s:?} has no default; give it one (${{VAR:-value}})")
                });
            out.push_str(default);
            rest = &tail[end + 1..];
        } else {
            panic!("{label}: write ${{VAR:-default}}, not a bare $, in {s:?}");
        }
    }
    out.push_str(rest);
    out
}

/// Writes one ConfigMap's `data` (or the `items` picked from it) into `dir`.
fn write_config_map(cm: &Value, items: &[Value], dir: &Path, label: &str) {
    let data = get(cm, "data")
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{label}: ConfigMap has no data"));
    let mut files = Vec::new();
    if items.is_empty() {
        for (k, v) in data {
            files.push((k.as_str().expect("data key").to_owned(), v.clone()));
        }
    } else {
        for item in items {
            let key = get_str(item, "key").expect("items[].key");
            let path = get_str(item, "path").expect("items[].path");
            let v = data
                .get(key)
                .unwrap_or_else(|| panic!("{label}: ConfigMap has no key {key}"));
            files.push((path.to_owned(), v.clone()));
        }
    }
    for (name, v) in files {
        let text = scalar(&v).unwrap_or_else(|| panic!("{label}: data.{name} is not a string"));
        let path = dir.join(&name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(&path, text).expect("write ConfigMap file");
    }
}

/// Stand-ins for a pod spec's volumes, by volume name.
fn pod_volumes(
    pod: &Value,
    doc: &Doc,
    docs: &[Doc],
    scratch: &mut Scratch,
) -> BTreeMap<String, Result<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let knative =
        get_str(&doc.value, "apiVersion").is_some_and(|a| a.starts_with("serving.knative.dev/"));
    for vol in seq(get(pod, "volumes")) {
        let name = get_str(vol, "name").expect("volumes[].name").to_owned();
        let items = seq(get(vol, "configMap")
            .or_else(|| get(vol, "secret"))
            .and_then(|s| get(s, "items")));
        let standin = if let Some(cm) = get(vol, "configMap") {
            let cm_name = get_str(cm, "name").expect("configMap.name");
            let found = docs.iter().find(|d| {
                d.path.parent() == doc.path.parent()
                    && get_str(&d.value, "kind") == Some("ConfigMap")
                    && get(&d.value, "metadata").and_then(|m| get_str(m, "name")) == Some(cm_name)
            });
            match found {
                Some(cm_doc) => {
                    let dir = scratch.dir();
                    write_config_map(&cm_doc.value, items, &dir, &format!("ConfigMap {cm_name}"));
                    Ok(dir)
                }
                None => Err(format!(
                    "ConfigMap {cm_name} is not defined in {}",
                    doc.path.parent().expect("parent").display()
                )),
            }
        } else if let (Some(secret), true) = (get(vol, "secret"), knative) {
            let secret_name = get_str(secret, "secretName").expect("secret.secretName");
            match SECRET_MANAGER.iter().find(|(n, _)| *n == secret_name) {
                Some((_, file)) => {
                    let dir = scratch.dir();
                    let content =
                        std::fs::read(deploy_dir().join(file)).expect("read stand-in file");
                    assert!(
                        !items.is_empty(),
                        "{}: secret volume {name} needs items",
                        doc.path.display()
                    );
                    for item in items {
                        let path = get_str(item, "path").expect("items[].path");
                        std::fs::write(dir.join(path), &content).expect("write secret file");
                    }
                    Ok(dir)
                }
                None => Err(format!(
                    "Secret Manager secret {secret_name} has no stand-in; add it to SECRET_MANAGER"
                )),
            }
        } else if get(vol, "emptyDir").is_some() {
            Ok(scratch.dir())
        } else {
            Err(format!(
                "volume {name}: only configMap, emptyDir and (Cloud Run) secret volumes have stand-ins"
            ))
        };
        out.insert(name, standin);
    }
    out
}

/// Containers of Kubernetes-style objects: workloads and Knative services.
fn object_containers(doc: &Doc, docs: &[Doc], scratch: &mut Scratch, out: &mut Vec<Container>) {
    let kind = get_str(&doc.value, "kind").unwrap_or_default();
    let name = get(&doc.value, "metadata")
        .and_then(|m| get_str(m, "name"))
        .unwrap_or_default();
    let spec = get(&doc.value, "spec");
    let pod = match kind {
        "Pod" => spec,
        "CronJob" => spec
            .and_then(|s| get(s, "jobTemplate"))
            .and_then(|j| get(j, "spec"))
            .and_then(|s| get(s, "template"))
            .and_then(|t| get(t, "spec")),
        _ => spec
            .and_then(|s| get(s, "template"))
            .and_then(|t| get(t, "spec")),
    };
    let Some(pod) = pod.filter(|p| get(p, "containers").is_some()) else {
        return;
    };
    let knative =
        get_str(&doc.value, "apiVersion").is_some_and(|a| a.starts_with("serving.knative.dev/"));
    let volumes = pod_volumes(pod, doc, docs, scratch);
    let base_env = image_env();
    let containers = seq(get(pod, "initContainers"))
        .iter()
        .chain(seq(get(pod, "containers")));
    for c in containers {
        let cname = get_str(c, "name").unwrap_or_default();
        let label = format!("{}: {kind}/{name}/{cname}", doc.path.display());
        let image = get_str(c, "image").unwrap_or_default().to_owned();
        let command: Vec<String> = seq(get(c, "command")).iter().filter_map(scalar).collect();
        let args: Vec<String> = seq(get(c, "args")).iter().filter_map(scalar).collect();
        let Some(argv) = idgate_argv(&image, &command, &args) else {
            continue;
        };
        let mut env = base_env.clone();
        if knative && get(c, "ports").is_some() {
            // Cloud Run sets PORT in the ingress container to its containerPort.
            let port = seq(get(c, "ports"))
                .first()
                .and_then(|p| get(p, "containerPort"))
                .and_then(scalar)
                .unwrap_or_else(|| "8080".into());
            env.insert("PORT".into(), port);
        }
        for e in seq(get(c, "env")) {
            let key = get_str(e, "name").expect("env[].name").to_owned();
            let raw = get(e, "value").and_then(scalar).unwrap_or_else(|| {
                panic!("{label}: env {key} has no literal value (valueFrom has no stand-in)")
            });
            let value = expand_k8s(&raw, &env, &label);
            env.insert(key, value);
        }
        let argv = argv.iter().map(|a| expand_k8s(a, &env, &label)).collect();
        let mut mounts = Vec::new();
        for m in seq(get(c, "volumeMounts")) {
            let vname = get_str(m, "name").expect("volumeMounts[].name");
            let path = get_str(m, "mountPath").expect("volumeMounts[].mountPath");
            let dir = match volumes.get(vname) {
                Some(Ok(dir)) => dir.clone(),
                Some(Err(why)) => panic!("{label}: {why}"),
                None => panic!("{label}: mounts volume {vname}, which the pod does not define"),
            };
            let dir = match get_str(m, "subPath") {
                Some(sub) => dir.join(sub),
                None => dir,
            };
            mounts.push((path.trim_end_matches('/').to_owned(), dir));
        }
        out.push(Container {
            label,
            file: doc.path.clone(),
            platform: platform_of(&doc.path),
            image,
            argv,
            env,
            mounts,
        });
    }
}

/// Containers of a compose file.
fn compose_containers(doc: &Doc, scratch: &mut Scratch, out: &mut Vec<Container>) {
    let dir = doc.path.parent().expect("compose file directory");
    let services = get(&doc.value, "services")
        .and_then(Value::as_mapping)
        .expect("services");
    let base_env = image_env();
    for (sname, svc) in services {
        let sname = sname.as_str().expect("service name");
        let label = format!("{}: services.{sname}", doc.path.display());
        let words = |key: &str| -> Vec<String> {
            match get(svc, key) {
                None => Vec::new(),
                Some(Value::String(s)) => s
                    .split_whitespace()
                    .map(|w| expand_compose(w, &label))
                    .collect(),
                Some(v) => seq(Some(v))
                    .iter()
                    .filter_map(scalar)
                    .map(|w| expand_compose(&w, &label))
                    .collect(),
            }
        };
        let image = get_str(svc, "image").unwrap_or_default().to_owned();
        let Some(argv) = idgate_argv(&image, &words("entrypoint"), &words("command")) else {
            continue;
        };
        let mut env = base_env.clone();
        match get(svc, "environment") {
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let k = k.as_str().expect("environment key").to_owned();
                    let v = scalar(v).unwrap_or_default();
                    env.insert(k, expand_compose(&v, &label));
                }
            }
            Some(Value::Sequence(list)) => {
                for item in list {
                    let item = item.as_str().expect("environment entry");
                    let (k, v) = item.split_once('=').unwrap_or_else(|| {
                        panic!("{label}: environment entry {item} has no value")
                    });
                    env.insert(k.to_owned(), expand_compose(v, &label));
                }
            }
            _ => {}
        }
        let mut mounts = Vec::new();
        for vol in seq(get(svc, "volumes")) {
            let (source, target) = match vol {
                Value::String(s) => {
                    let mut parts = s.splitn(3, ':');
                    let source = parts.next().unwrap_or_default().to_owned();
                    let target = parts.next().unwrap_or_default().to_owned();
                    (Some(source), target)
                }
                v => (
                    get_str(v, "source").map(str::to_owned),
                    get_str(v, "target").expect("volumes[].target").to_owned(),
                ),
            };
            let standin = match source {
                Some(src) if src.starts_with('.') || src.starts_with('/') => dir.join(src),
                _ => scratch.dir(),
            };
            mounts.push((target.trim_end_matches('/').to_owned(), standin));
        }
        for t in seq(get(svc, "tmpfs")).iter().filter_map(Value::as_str) {
            let target = t.split(':').next().unwrap_or(t);
            mounts.push((target.trim_end_matches('/').to_owned(), scratch.dir()));
        }
        out.push(Container {
            label,
            file: doc.path.clone(),
            platform: platform_of(&doc.path),
            image,
            argv,
            env,
            mounts,
        });
    }
}

/// The arguments after the idgate executable, when the container runs idgate.
fn idgate_argv(image: &str, command: &[String], args: &[String]) -> Option<Vec<String>> {
    let runs_idgate = image.contains("idgate")
        || command.first().is_some_and(|c| c.ends_with("idgate"))
        || (command.is_empty() && args.first().is_some_and(|a| a == "serve"));
    if !runs_idgate {
        return None;
    }
    // The image's ENTRYPOINT is the binary; a `command` replaces it.
    let mut argv: Vec<String> = command.iter().skip(1).cloned().collect();
    argv.extend(args.iter().cloned());
    if argv.is_empty() {
        // The image's CMD.
        argv.push("serve".into());
    }
    Some(argv)
}

/// Rewrites a path under a mount to its stand-in.
fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut best: Option<(&str, &Path)> = None;
    for (target, dir) in mounts {
        let under = value == target
            || value
                .strip_prefix(target.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if under && best.is_none_or(|(t, _)| target.len() > t.len()) {
            best = Some((target, dir));
        }
    }
    match best {
        Some((target, dir)) => {
            let rest = value[target.len()..].trim_start_matches('/');
            if rest.is_empty() {
                dir.display().to_string()
            } else {
                dir.join(rest).display().to_string()
            }
        }
        None => value.to_owned(),
    }
}

fn rewrite_list(value: &str, mounts: &[(String, PathBuf)]) -> String {
    value
        .split(',')
        .map(|item| rewrite_path(item, mounts))
        .collect::<Vec<_>>()
        .join(",")
}

fn rewrite_arg(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => {
            format!("{flag}={}", rewrite_list(value, mounts))
        }
        _ => rewrite_path(arg, mounts),
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs idgate as the container would, with `extra` appended; `Err` holds a
/// report with the command, environment and output.
fn run_idgate(c: &Container, extra: &str) -> Result<(), String> {
    let argv: Vec<String> = c
        .argv
        .iter()
        .map(|a| rewrite_arg(a, &c.mounts))
        .chain(std::iter::once(extra.to_owned()))
        .collect();
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .map(|(k, v)| (k.clone(), rewrite_list(v, &c.mounts)))
        .collect();
    let workdir = tempfile::tempdir().expect("temporary working directory");
    let mut child = Command::new(idgate_bin())
        .args(&argv)
        .env_clear()
        .envs(&env)
        .current_dir(workdir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", idgate_bin().display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for idgate") {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("collect idgate output");
    if status.is_some_and(|s| s.success()) {
        return Ok(());
    }
    let mut report = String::new();
    let _ = writeln!(report, "--- {} ({})", c.label, c.image);
    let _ = writeln!(
        report,
        "command: {}{} {}",
        env.iter()
            .map(|(k, v)| format!("{k}={} ", shell_quote(v)))
            .collect::<String>(),
        idgate_bin().display(),
        argv.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        report,
        "exit: {}",
        status.map_or_else(
            || format!("killed after {RUN_TIMEOUT:?}"),
            |s| s.to_string()
        )
    );
    let _ = writeln!(
        report,
        "stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let _ = writeln!(
        report,
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Err(report)
}

/// The binary's subcommands, from `idgate --help`.
fn subcommands() -> Vec<String> {
    let out = Command::new(idgate_bin())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run idgate --help");
    assert!(out.status.success(), "idgate --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The `--upstream` host of a `serve` container, from flags or environment.
fn upstream_host(c: &Container) -> Option<String> {
    let url = c
        .argv
        .iter()
        .find_map(|a| a.strip_prefix("--upstream=").map(str::to_owned))
        .or_else(|| {
            c.argv
                .iter()
                .position(|a| a == "--upstream")
                .and_then(|i| c.argv.get(i + 1).cloned())
        })
        .or_else(|| c.env.get("IDGATE_UPSTREAM").cloned())?;
    let authority = url.strip_prefix("http://")?.split('/').next()?;
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_owned(),
    )
}

/// The Cloud Run ingress container (the one with `ports`) must be idgate.
fn check_cloud_run_ingress(docs: &[Doc], problems: &mut Vec<String>) {
    for doc in docs.iter().filter(|d| {
        get_str(&d.value, "apiVersion").is_some_and(|a| a.starts_with("serving.knative.dev/"))
    }) {
        let pod = get(&doc.value, "spec")
            .and_then(|s| get(s, "template"))
            .and_then(|t| get(t, "spec"));
        let ingress: Vec<&Value> = seq(pod.and_then(|p| get(p, "containers")))
            .iter()
            .filter(|c| get(c, "ports").is_some())
            .collect();
        let is_idgate = |c: &&Value| {
            let image = get_str(c, "image").unwrap_or_default();
            let args: Vec<String> = seq(get(c, "args")).iter().filter_map(scalar).collect();
            idgate_argv(image, &[], &args).is_some_and(|a| a.first().is_some_and(|s| s == "serve"))
        };
        if ingress.len() != 1 || !ingress.iter().all(is_idgate) {
            problems.push(format!(
                "{}: the one container with `ports` (the ingress) must be idgate serve",
                doc.path.display()
            ));
        }
    }
}

/// Every Kubernetes Service must target a port of an idgate container.
fn check_kubernetes_services(docs: &[Doc], problems: &mut Vec<String>) {
    for svc in docs.iter().filter(|d| {
        get_str(&d.value, "kind") == Some("Service")
            && get_str(&d.value, "apiVersion") == Some("v1")
    }) {
        let selector = get(&svc.value, "spec")
            .and_then(|s| get(s, "selector"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let selects = |labels: Option<&Mapping>| {
            !selector.is_empty()
                && labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
        };
        let mut idgate_ports = HashSet::new();
        let mut matched = false;
        for doc in docs.iter().filter(|d| d.path.parent() == svc.path.parent()) {
            let template = get(&doc.value, "spec").and_then(|s| get(s, "template"));
            let labels = template
                .and_then(|t| get(t, "metadata"))
                .and_then(|m| get(m, "labels"))
                .and_then(Value::as_mapping);
            if !selects(labels) {
                continue;
            }
            matched = true;
            let pod = template.and_then(|t| get(t, "spec"));
            for c in seq(pod.and_then(|p| get(p, "containers"))) {
                let image = get_str(c, "image").unwrap_or_default();
                let args: Vec<String> = seq(get(c, "args")).iter().filter_map(scalar).collect();
                if idgate_argv(image, &[], &args).is_none() {
                    continue;
                }
                for p in seq(get(c, "ports")) {
                    idgate_ports.extend(get(p, "name").and_then(scalar));
                    idgate_ports.extend(get(p, "containerPort").and_then(scalar));
                }
            }
        }
        if !matched {
            problems.push(format!(
                "{}: the Service selects no workload here",
                svc.path.display()
            ));
        }
        for port in seq(get(&svc.value, "spec").and_then(|s| get(s, "ports"))) {
            let target = get(port, "targetPort")
                .or_else(|| get(port, "port"))
                .and_then(scalar)
                .unwrap_or_default();
            if !idgate_ports.contains(&target) {
                problems.push(format!(
                    "{}: targetPort {target} is not an idgate port (idgate's: {idgate_ports:?}); traffic would skip the gate",
                    svc.path.display()
                ));
            }
        }
    }
}

/// A compose service that idgate proxies to must not publish ports.
fn check_compose_upstreams(docs: &[Doc], containers: &[Container], problems: &mut Vec<String>) {
    for doc in docs.iter().filter(|d| get(&d.value, "services").is_some()) {
        let services = get(&doc.value, "services")
            .and_then(Value::as_mapping)
            .expect("services");
        for c in containers.iter().filter(|c| c.file == doc.path) {
            let Some(host) = upstream_host(c) else {
                continue;
            };
            if let Some(svc) = services.get(host.as_str())
                && !seq(get(svc, "ports")).is_empty()
            {
                problems.push(format!(
                    "{}: services.{host} is idgate's upstream but publishes ports; callers could skip the gate",
                    doc.path.display()
                ));
            }
        }
    }
}

/// Every container that runs idgate, in every manifest under `deploy/`.
fn idgate_containers(docs: &[Doc], scratch: &mut Scratch) -> Vec<Container> {
    let mut containers = Vec::new();
    for doc in docs {
        if get(&doc.value, "kind").is_some() {
            object_containers(doc, docs, scratch, &mut containers);
        } else if get(&doc.value, "services").is_some() {
            compose_containers(doc, scratch, &mut containers);
        } else {
            panic!(
                "{}: neither a Kubernetes-style object (kind) nor a compose file (services); teach this test about it",
                doc.path.display()
            );
        }
    }
    containers
}

fn is_serve(c: &Container) -> bool {
    c.argv.first().is_some_and(|a| a == "serve")
}

#[test]
fn every_idgate_container_in_deploy_passes_check_config() {
    let docs = load_docs();
    assert!(!docs.is_empty(), "no YAML under {}", deploy_dir().display());
    let mut scratch = Scratch::default();
    let containers = idgate_containers(&docs, &mut scratch);

    let mut problems = Vec::new();
    for platform in PLATFORMS {
        if !containers
            .iter()
            .any(|c| c.platform == *platform && is_serve(c))
        {
            problems.push(format!(
                "deploy/{platform}: no `idgate serve` container found"
            ));
        }
    }
    check_cloud_run_ingress(&docs, &mut problems);
    check_kubernetes_services(&docs, &mut problems);
    check_compose_upstreams(&docs, &containers, &mut problems);

    let known = subcommands();
    for c in &containers {
        let extra = if is_serve(c) {
            "--check-config"
        } else {
            "--help"
        };
        // A tool subcommand (dev-issuer) may not be in this build yet; say
        // so loudly. `serve` is always checked.
        if !is_serve(c) && !known.contains(&c.argv[0]) {
            eprintln!(
                "SKIP {}: this idgate has no `{}` subcommand yet (has: {known:?}); its flags are unchecked",
                c.label, c.argv[0]
            );
            continue;
        }
        match run_idgate(c, extra) {
            Ok(()) => eprintln!("ok   {} (idgate {} … {extra})", c.label, c.argv[0]),
            Err(report) => problems.push(report),
        }
    }

    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/:\n\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The harness can fail: the same containers, with a policy idgate must
/// refuse in place of each policy mount, do not pass. This guards against a
/// mapping that silently points idgate at nothing it reads.
#[test]
fn a_bad_policy_behind_the_same_mounts_fails_check_config() {
    let docs = load_docs();
    let mut scratch = Scratch::default();
    let containers = idgate_containers(&docs, &mut scratch);
    let bad = scratch.dir();
    std::fs::write(
        bad.join("policy.json"),
        r#"{"bindings":[{"role":"roles/run.invoker","members":["nobody"]}],"version":1}"#,
    )
    .expect("write the bad policy");

    let mut checked = 0;
    for c in containers.iter().filter(|c| is_serve(c)) {
        let mounts: Vec<(String, PathBuf)> = c
            .mounts
            .iter()
            .map(|(target, dir)| {
                let holds_policy = dir.join("policy.json").is_file();
                (
                    target.clone(),
                    if holds_policy {
                        bad.clone()
                    } else {
                        dir.clone()
                    },
                )
            })
            .collect();
        if mounts == c.mounts {
            continue;
        }
        checked += 1;
        let broken = Container {
            label: c.label.clone(),
            file: c.file.clone(),
            platform: c.platform.clone(),
            image: c.image.clone(),
            argv: c.argv.clone(),
            env: c.env.clone(),
            mounts,
        };
        assert!(
            run_idgate(&broken, "--check-config").is_err(),
            "{}: idgate accepted a policy with an unknown member; is the policy path mapped?",
            c.label
        );
    }
    assert_eq!(
        checked,
        PLATFORMS.len(),
        "expected one policy-mounting idgate serve container per platform"
    );
}
