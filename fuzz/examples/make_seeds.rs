//! Writes the seed corpora under `fuzz/seeds/<target>/` from what the tests
//! use: tokens minted by the testkit, the policy fixtures, JWK sets, the
//! conditions of the policy tests and the sidecar's settings tests.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- config
//! ```
//!
//! With target names, only their directories are rewritten (token seeds
//! are signed by a fresh key each time, so rewriting them churns every
//! file).
//!
//! The seeds are committed; `scripts/fuzz` copies them into the (ignored)
//! working corpora under `fuzz/corpus/`.

use std::fs;
use std::path::{Path, PathBuf};

use idgate_fuzz::config::ConfigInput;
use idgate_fuzz::{AUD, ISS, NOW, POOL};
use idgate_testkit::{TestKey, b64url, default_header, google_claims, mint, mint_hs256};
use serde_json::{Value, json};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    let fixtures = root.join("../crates/idgate/tests/fixtures/policy");

    let mut token = Seeds::new(seeds.join("token"));
    token_seeds(&mut token);
    let mut jwks = Seeds::new(seeds.join("jwks"));
    jwks_seeds(&mut jwks);
    let mut json_policies = Seeds::new(seeds.join("policy_json"));
    let mut yaml_policies = Seeds::new(seeds.join("policy_yaml"));
    for entry in fs::read_dir(&fixtures)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let bytes = fs::read(&path)?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => json_policies.add(&format!("fixture-{name}"), bytes),
            Some("yaml") => yaml_policies.add(&format!("fixture-{name}"), bytes),
            _ => {}
        }
    }
    policy_seeds(&mut json_policies, &mut yaml_policies);
    let mut cel = Seeds::new(seeds.join("cel"));
    for (i, expr) in CONDITIONS.iter().enumerate() {
        cel.add(&format!("condition-{i:02}"), expr.as_bytes().to_vec());
    }

    let mut config = Seeds::new(seeds.join("config"));
    config_seeds(&mut config);

    let only: Vec<String> = std::env::args().skip(1).collect();
    for s in [token, jwks, json_policies, yaml_policies, cel, config] {
        let name = s.dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if only.is_empty() || only.iter().any(|o| o == name) {
            s.finish()?;
        }
    }
    Ok(())
}

/// One target's seed directory, rewritten from scratch.
struct Seeds {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl Seeds {
    fn new(dir: PathBuf) -> Seeds {
        Seeds {
            dir,
            files: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.push((name.to_owned(), bytes));
    }

    fn finish(self) -> std::io::Result<()> {
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)?;
        }
        fs::create_dir_all(&self.dir)?;
        for (name, bytes) in &self.files {
            fs::write(self.dir.join(name), bytes)?;
        }
        println!("{}: {} seeds", self.dir.display(), self.files.len());
        Ok(())
    }
}

/// Claims the harness accepts: its issuer, its audience, valid at `NOW`.
fn good_claims() -> Value {
    let mut c = google_claims(ISS, "alice@example.com", AUD, NOW - 60);
    c["repository"] = json!("o/r");
    c
}

fn token_seeds(s: &mut Seeds) {
    let key = TestKey::generate("key-1");
    let header = default_header(&key);

    // Mode 0: header values as sent. Their signatures are by a key the
    // harness does not know, so they end at bad_signature at best; they
    // seed the credential and JWS syntax.
    let raw = |s: &mut Seeds, name: &str, value: &str, mode: u8| {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(value.as_bytes());
        s.add(&format!("raw-{name}"), bytes);
    };
    let good = mint(&key, &header, &good_claims());
    raw(s, "bearer", &format!("Bearer {good}"), 0);
    raw(s, "lowercase-padded", &format!("  bearer   {good} \t"), 0);
    raw(s, "serverless", &format!("Bearer {good}"), 8);
    raw(s, "twice", &format!("Bearer {good}"), 16);
    raw(s, "basic", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", 0);
    raw(s, "empty", "Bearer ", 0);
    raw(
        s,
        "hs256",
        &format!(
            "Bearer {}",
            mint_hs256(
                b"secret",
                &json!({"alg":"HS256","kid":"key-1"}),
                &good_claims()
            )
        ),
        0,
    );

    // Mode 1: JSON the harness signs.
    let signed = |s: &mut Seeds, name: &str, header: &Value, claims: &Value| {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(header.to_string().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(claims.to_string().as_bytes());
        s.add(&format!("signed-{name}"), bytes);
    };
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good_claims();
        if let Value::Object(m) = &mut c {
            f(m);
        }
        c
    };
    signed(s, "good", &header, &good_claims());
    let google = google_claims(
        "https://accounts.google.com",
        "ci@proj.iam.gserviceaccount.com",
        AUD,
        NOW - 60,
    );
    signed(s, "google-sa", &header, &google);
    let mut hd = google_claims("accounts.google.com", "bob@corp.example.net", AUD, NOW);
    hd["hd"] = json!("corp.example.net");
    signed(s, "google-hd", &header, &hd);
    signed(
        s,
        "unverified",
        &header,
        &with(&|m| {
            m.insert("email_verified".into(), json!("true"));
        }),
    );
    signed(
        s,
        "float-times",
        &header,
        &with(&|m| {
            m.insert("iat".into(), json!(NOW as f64 - 0.5));
            m.insert("exp".into(), json!(NOW as f64 + 600.25));
        }),
    );
    signed(
        s,
        "nbf",
        &header,
        &with(&|m| {
            m.insert("nbf".into(), json!(NOW + 10));
        }),
    );
    signed(
        s,
        "expired",
        &header,
        &with(&|m| {
            m.insert("exp".into(), json!(NOW - 31));
        }),
    );
    signed(
        s,
        "long-lived",
        &header,
        &with(&|m| {
            m.insert("exp".into(), json!(NOW + 48 * 3600));
        }),
    );
    signed(
        s,
        "aud-array",
        &header,
        &with(&|m| {
            m.insert("aud".into(), json!([AUD]));
        }),
    );
    signed(
        s,
        "pool-subject",
        &header,
        &with(&|m| {
            m.insert("sub".into(), json!("repo:o/r:ref:refs/heads/main"));
            m.remove("email");
        }),
    );
    signed(
        s,
        "crit",
        &json!({"alg":"RS256","kid":"key-1","crit":["exp"]}),
        &good_claims(),
    );
    signed(
        s,
        "alg-none",
        &json!({"alg":"none","kid":"key-1"}),
        &good_claims(),
    );
    signed(
        s,
        "unknown-kid",
        &json!({"alg":"RS256","kid":"key-9"}),
        &good_claims(),
    );
    signed(
        s,
        "pool-claims",
        &header,
        &with(&|m| {
            m.insert("groups".into(), json!(["a", "b"]));
            m.insert("pool".into(), json!(POOL));
        }),
    );
    let mut dup = vec![1u8];
    dup.extend_from_slice(br#"{"alg":"RS256","kid":"key-1"}"#);
    dup.push(0);
    dup.extend_from_slice(
        format!(
            r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"1","sub":"2","iat":{NOW},"exp":{}}}"#,
            NOW + 60
        )
        .as_bytes(),
    );
    s.add("signed-duplicate-sub", dup);

    // Mode 2: segments the harness signs as written.
    let segments = |s: &mut Seeds, name: &str, header_b64: &str, claims_b64: &str| {
        let mut bytes = vec![2u8];
        bytes.extend_from_slice(format!("{header_b64}.{claims_b64}").as_bytes());
        s.add(&format!("segments-{name}"), bytes);
    };
    let h = b64url(header.to_string().as_bytes());
    let c = b64url(good_claims().to_string().as_bytes());
    segments(s, "good", &h, &c);
    segments(s, "padded", &format!("{h}=="), &c);
    segments(
        s,
        "std-alphabet",
        &h.replace('-', "+").replace('_', "/"),
        &c,
    );
}

fn jwks_seeds(s: &mut Seeds) {
    let a = TestKey::generate("key-1");
    let b = TestKey::generate("key-2");
    s.add(
        "testkit",
        json!({"keys": [a.jwk(), b.jwk()]}).to_string().into_bytes(),
    );
    let mut with_alg = a.jwk();
    with_alg["alg"] = json!("RS256");
    with_alg["use"] = json!("sig");
    let mut enc = b.jwk();
    enc["use"] = json!("enc");
    s.add(
        "alg-use",
        json!({"keys": [with_alg, enc]}).to_string().into_bytes(),
    );
    // An EC P-256 key (RFC 7517 appendix A.1) and an Ed25519 one (skipped).
    s.add(
        "ec-okp",
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]})
        .to_string()
        .into_bytes(),
    );
    s.add(
        "duplicate-kid",
        json!({"keys": [a.jwk(), a.jwk(), {"kty": "RSA", "kid": "", "n": "AQAB", "e": "AQAB"}]})
            .to_string()
            .into_bytes(),
    );
}

fn policy_seeds(json_policies: &mut Seeds, yaml_policies: &mut Seeds) {
    let pool_policy = json!({
        "version": 3,
        "etag": "BwYQ8b9r5sE=",
        "bindings": [
            {"role": "roles/run.invoker", "members": [
                format!("principal://{POOL}/subject/repo:o/r:ref:refs/heads/main"),
                format!("principalSet://{POOL}/attribute.repository/o/r"),
                format!("principalSet://{POOL}/*"),
            ]},
            {"role": "roles/run.invoker", "members": ["allUsers"],
             "condition": {"title": "health", "expression": "request.path == \"/healthz\""}},
            {"role": "roles/run.invoker_withcond_1a2b", "members": ["user:a@b.c"]},
        ],
    });
    // Pools are not configured by `load_document`: these members are
    // errors there, which is a path worth fuzzing too.
    json_policies.add("pools", pool_policy.to_string().into_bytes());
    yaml_policies.add(
        "pools",
        format!(
            "bindings:\n- members:\n  - principal://{POOL}/subject/s\n  - allAuthenticatedUsers\n  role: roles/run.invoker\n  condition:\n    title: t\n    expression: request.time < timestamp(\"2030-01-01T00:00:00Z\")\n- members: []\n  role: roles/owner\netag: BwYQ8b9r5sE=\nversion: 1\n"
        )
        .into_bytes(),
    );
    yaml_policies.add(
        "anchors",
        b"bindings:\n- &b\n  members: [user:a@b.c]\n  role: roles/run.invoker\n- *b\n".to_vec(),
    );
}

/// The conditions of the policy tests and fixtures, and a few more.
const CONDITIONS: &[&str] = &[
    r#"request.time < timestamp("2030-01-01T00:00:00Z")"#,
    r#"request.path.startsWith("/admin")"#,
    r#"request.method == "GET" && request.host.endsWith(".example.com")"#,
    r#"["GET", "HEAD"].exists(m, m == request.method)"#,
    r#"has(request.path) && request.path.matches("^/v[0-9]+/")"#,
    r#"request.time.getHours("Europe/Paris") >= 9"#,
    r#"request.time - timestamp("2020-01-01T00:00:00Z") > duration("1h")"#,
    r#"type(request.path) == string"#,
    r#"request.method == "GET" && !request.path.startsWith("/admin")"#,
    r#"request.time < timestamp("yesterday")"#,
    r#"request.path.size() > 3 ? request.path[1] == "a" : false"#,
    r#"{"a": 1}["a"] == 1 || [1, 2, 3].all(x, x > 0)"#,
    r#"request.host in ["svc.fuzz.example", "localhost"]"#,
    r#"int(request.time) % 2 == 0 && double(1) / 0.0 > 1.0"#,
    r#"request.path.split("/").size() == 4"#,
    "request.time <",
    "request.path",
];

/// The settings of the sidecar's config tests (`crates/idgate-sidecar/src/
/// config/tests.rs`), as a file, flags and variables. Relative paths in the
/// file are taken from the policy fixtures' directory (see
/// `idgate_fuzz::config::CONFIG_PATH`).
fn config_seeds(s: &mut Seeds) {
    let mut add = |name: &str, toml: &str, flags: &[&str], env: &[(&str, &str)]| {
        let input = ConfigInput {
            toml: toml.to_owned(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.add(name, input.encode());
    };
    const MINIMAL: &[&str] = &[
        "--audience",
        "https://svc",
        "--upstream",
        "http://127.0.0.1:8081",
        "--member",
        "allUsers",
    ];
    let minimal_file = "audience = \"a\"\nupstream = \"http://u:1\"\n";

    add("flags-minimal", "", MINIMAL, &[]);
    add(
        "file-minimal",
        minimal_file,
        &[],
        &[("IDGATE_UPSTREAM", "")],
    );
    add(
        "env-minimal",
        "",
        &[],
        &[
            ("IDGATE_AUDIENCE", "env-a, env-b"),
            ("IDGATE_UPSTREAM", "http://127.0.0.1:8081/base/"),
            ("IDGATE_MEMBER", "user:a@b.com,group:eng@corp.example.net"),
        ],
    );
    add(
        "port",
        "listen = \"127.0.0.1:7000\"\n",
        MINIMAL,
        &[("PORT", "9999")],
    );
    add("port-invalid", "", MINIMAL, &[("PORT", "http")]);
    let layered = "audience = [\"file-aud\"]\nupstream = \"http://file:1\"\nclock_skew = \"3s\"\njwks_min_ttl = \"7m\"\nforward_token = \"none\"\n";
    let layered_env: &[(&str, &str)] = &[
        ("IDGATE_AUDIENCE", "env-a, env-b"),
        ("IDGATE_CLOCK_SKEW", "2s"),
        ("IDGATE_FORWARD_TOKEN", "full"),
    ];
    add("layers-file", layered, &[], &[]);
    add("layers-env", layered, &[], layered_env);
    add(
        "layers-flags",
        layered,
        &["--clock-skew", "1s", "--audience", "flag-a"],
        layered_env,
    );
    add(
        "every-problem",
        "jwks_min_ttl = \"5 fortnights-ish\"\njwks_max_tll = \"1h\"\ncolour = \"blue\"\nmax_token_bytes = [\"a\"]\n",
        &[
            "--member",
            "users:a@b.com",
            "--policy",
            "/nonexistent/policy.json",
            "--listen",
            "nowhere",
            "--forward-token",
            "partial",
            "--strip-header",
            "authorization",
            "--public-path",
            "/a/../b",
        ],
        &[("IDGATE_CLOCK_SKEW", "5x"), ("IDGATE_JWKS_URL", "ftp://x")],
    );
    add("bad-toml", "audience = [\n", &[], &[]);
    add(
        "policy-files",
        "audience = \"a\"\nupstream = \"http://u:1\"\npolicy = [\"project.json\", \"service.yaml\"]\ngroups = \"groups.yaml\"\n",
        &[],
        &[],
    );
    add(
        "policy-invalid",
        "audience = \"a\"\nupstream = \"http://u:1\"\npolicy = \"invalid.json\"\ngroups = \"groups-cycle.yaml\"\nmember = [\"projectOwner:p\", \"user:ok@example.com\"]\n",
        &["--clock-skew", "soon"],
        &[],
    );
    add(
        "forward-auth",
        "",
        &["--audience", "a", "--mode", "forward-auth"],
        &[("IDGATE_UPSTREAM", "http://u:1")],
    );
    add(
        "issuers-paired",
        "issuer = [\"https://a.example\", \"http://issuer:8900\"]\njwks_url = [\"https://a.example/k\", \"http://issuer:8900/k\"]\n",
        MINIMAL,
        &[],
    );
    add(
        "issuers-unpaired",
        "",
        &[
            "--audience",
            "a",
            "--upstream",
            "http://u:1",
            "--issuer",
            "https://a",
            "--issuer",
            "https://b",
            "--jwks-url",
            "https://k",
        ],
        &[("IDGATE_JWKS_URL", "https://k1,https://k2")],
    );
    add(
        "conflicts",
        "jwks_min_ttl = \"2h\"\njwks_max_ttl = \"1h\"\nrequest_timeout = \"0s\"\n",
        &[
            "--audience",
            "a",
            "--upstream",
            "http://u:1",
            "--listen",
            "127.0.0.1:9090",
        ],
        &[],
    );
    add(
        "misspelt-variable",
        "",
        MINIMAL,
        &[("IDGATE_AUDIENCES", "x"), ("IDGATE_CONFIG", "")],
    );
    add(
        "headers-and-paths",
        "audience = \"a\"\nupstream = \"http://u:1\"\nstrip_header = [\"x-a\", \"x-my-*\"]\npublic_path = [\"/healthz\", \"/static/\"]\nmax_token_bytes = 4096\ntoken_cache_capacity = 0\n",
        &[],
        &[],
    );
    add(
        "issuer-pool-trust-emails",
        &format!(
            "audience = \"a\"\nupstream = \"http://u:1\"\nissuer = \"https://issuer.example\"\nissuer_pool = [\"https://issuer.example={POOL}/\"]\nissuer_trust_emails = true\ninvoker_role = [\"roles/custom.invoker\"]\nmember = \"principalSet://{POOL}/*\"\n"
        ),
        &[],
        &[],
    );
    add(
        "issuer-pool-problems",
        "",
        &[
            "--audience",
            "a",
            "--upstream",
            "http://u:1",
            "--issuer-trust-emails",
            "maybe",
            "--issuer-pool",
            "https://unknown.example=iam.googleapis.com/x",
            "--issuer-pool",
            "no-equals-sign",
            "--invoker-role",
            "run.invoker",
        ],
        &[],
    );
    add(
        "google-issuer-false",
        "google_issuer = false\n",
        MINIMAL,
        &[("IDGATE_ISSUER", "https://i.example")],
    );
    add(
        "durations-and-choices",
        "clock_skew = \"1m 30s\"\nshutdown_grace = \"250ms\"\nrequest_timeout = \"5m\"\njwks_refresh_interval = \"30s\"\njwks_stale_if_error = \"12h\"\nstatus_codes = \"cloud-run\"\nlog_format = \"text\"\nadmin_listen = \"[::1]:0\"\n",
        MINIMAL,
        &[("IDGATE_MODE", "proxy"), ("IDGATE_LISTEN", "127.0.0.1:0")],
    );
}
