//! Interoperability with Google's own code, both ways, through python
//! google-auth:
//!
//! 1. a token from `idgate dev-issuer` / `idgate token` verifies with
//!    `google.oauth2.id_token.verify_token`;
//! 2. a token signed by `google.auth.jwt.encode` with a service-account
//!    style key passes `idgate check`.
//!
//! google-auth reads a `certs_url` in two formats: Google's v1 form,
//! `{kid: x509 PEM certificate}`, natively; and a JWKS (`{"keys": […]}`)
//! only through PyJWT, which it does not depend on. The test checks the
//! first always: it wraps each JWKS key in a certificate and serves that
//! from the test (only the certificate's public key is used). It checks
//! the JWKS form, straight from the dev issuer, when PyJWT is installed.
//!
//! Python with google-auth, requests and cryptography is required:
//! `./scripts/test` installs them. Without them this test fails, saying
//! so, unless `IDGATE_SKIP_PYTHON=1`.

mod tools_support;

use std::path::Path;
use std::process::{Command, Stdio};

use idgate_testkit::{Issuer, TestKey};
use serde_json::Value;
use tools_support::{claims, idgate, pkcs8_pem, spawn};

const AUD: &str = "https://svc-abc-uc.a.run.app";

/// The variables python needs to find itself and its packages; nothing
/// else (no proxies: every request here is to loopback).
const PYTHON_ENV: [&str; 7] = [
    "PATH",
    "HOME",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONUSERBASE",
];

const VERIFY: &str = r#"
import base64, datetime, http.server, json, sys, threading
import requests
import google.auth.transport.requests
import google.oauth2.id_token
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

token, audience, jwks_url = sys.argv[1:4]
request = google.auth.transport.requests.Request()
out = {}

# Google's v1 certs format, {kid: certificate}, made from the JWKS.
jwks = requests.get(jwks_url, timeout=10).json()
def number(s):
    return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")
signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
now = datetime.datetime.now(datetime.timezone.utc)
certs = {}
for k in jwks["keys"]:
    public = rsa.RSAPublicNumbers(number(k["e"]), number(k["n"])).public_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, k["kid"])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    certs[k["kid"]] = cert.public_bytes(serialization.Encoding.PEM).decode()
body = json.dumps(certs).encode()

class Certs(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Certs)
threading.Thread(target=server.serve_forever, daemon=True).start()
certs_url = "http://127.0.0.1:%d/certs" % server.server_address[1]

out["x509"] = google.oauth2.id_token.verify_token(
    token, request, audience=audience, certs_url=certs_url)
try:
    google.oauth2.id_token.verify_token(
        token, request, audience="https://other.example", certs_url=certs_url)
    out["other_audience"] = "accepted"
except Exception as e:
    out["other_audience"] = "refused: %s" % e
try:
    import jwt  # PyJWT, google-auth's reader of JWKS certs URLs
    out["jwks"] = google.oauth2.id_token.verify_token(
        token, request, audience=audience, certs_url=jwks_url)
except ImportError:
    out["jwks"] = "skipped: PyJWT is not installed"
print(json.dumps(out))
"#;

const SIGN: &str = r#"
import json, sys, time
import google.auth.crypt
import google.auth.jwt

pem = sys.stdin.read()
kid, iss, audience, email = sys.argv[1:5]
now = int(time.time())
payload = {"iss": iss, "aud": audience, "sub": "104729", "email": email,
           "email_verified": True, "iat": now, "exp": now + 3600}
info = {"private_key": pem, "private_key_id": kid, "client_email": email}
from_info = google.auth.crypt.RSASigner.from_service_account_info(info)
from_string = google.auth.crypt.RSASigner.from_string(pem, kid)
print(json.dumps({
    "from_service_account_info": google.auth.jwt.encode(from_info, payload).decode(),
    "from_string": google.auth.jwt.encode(from_string, payload).decode(),
}))
"#;

/// Runs `python3 -c SCRIPT ARGS` with `stdin`; its stdout as JSON.
fn python(dir: &Path, script: &str, args: &[&str], stdin: &str) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in PYTHON_ENV {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().expect("python3 runs");
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(stdin.as_bytes()).expect("writing to python");
    }
    let out = child.wait_with_output().expect("python3 finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 failed ({})\nargs: {args:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Whether python3 with google-auth is here. Missing: a failure that says
/// how to get it, or a skip when `IDGATE_SKIP_PYTHON=1`.
fn google_auth_available() -> bool {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import google.auth, google.auth.crypt, google.auth.jwt, google.auth.transport.requests, google.oauth2.id_token, requests, cryptography; print(google.auth.__version__)",
    ])
    .env_clear();
    for k in PYTHON_ENV {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    let why = match cmd.output() {
        Ok(o) if o.status.success() => {
            eprintln!("google-auth {}", String::from_utf8_lossy(&o.stdout).trim());
            return true;
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    if std::env::var("IDGATE_SKIP_PYTHON").as_deref() == Ok("1") {
        eprintln!("skipped (IDGATE_SKIP_PYTHON=1): {why}");
        return false;
    }
    panic!(
        "this test needs python3 with google-auth, requests and cryptography: run ./scripts/test, \
         which installs them (python3 -m pip install google-auth requests cryptography), \
         or set IDGATE_SKIP_PYTHON=1 to skip it.\n{why}"
    );
}

#[test]
fn a_dev_issuer_token_verifies_with_google_auth() {
    if !google_auth_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let issuer = spawn(
        dir.path(),
        &[
            "dev-issuer",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            "keys",
        ],
        &[],
    );
    let url = issuer.url_after("issuer");
    let jwks = issuer.url_after("jwks");
    let run = idgate(
        dir.path(),
        &[
            "token",
            "--issuer-url",
            &url,
            "--email",
            "alice@example.com",
            "--audience",
            AUD,
        ],
        &[],
        None,
    );
    run.expect_code(0);
    let token = run.stdout().trim().to_owned();

    let out = python(dir.path(), VERIFY, &[&token, AUD, &jwks], "");
    let verified = &out["x509"];
    assert_eq!(verified["email"], "alice@example.com", "{out}");
    assert_eq!(verified["aud"], AUD, "{out}");
    assert_eq!(verified["iss"], url.as_str(), "{out}");
    assert!(
        out["other_audience"]
            .as_str()
            .is_some_and(|s| s.starts_with("refused")),
        "{out}"
    );
    match &out["jwks"] {
        Value::Object(c) => assert_eq!(c["email"], "alice@example.com", "{out}"),
        other => eprintln!("JWKS certs_url: {other}"),
    }
}

#[test]
fn a_google_auth_token_passes_idgate_check() {
    if !google_auth_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start_blocking();
    let key = TestKey::generate("google-auth-key");
    let pem = pkcs8_pem(&key.to_pkcs8_der());
    issuer.publish(key);
    let email = "robot@my-project.iam.gserviceaccount.com";
    let out = python(
        dir.path(),
        SIGN,
        &["google-auth-key", &issuer.url(), AUD, email],
        &pem,
    );
    for (how, token) in out.as_object().expect("an object") {
        let token = token.as_str().expect("a token");
        assert_eq!(claims(token)["email"], email, "{how}");
        idgate(
            dir.path(),
            &[
                "check",
                "--issuer",
                &issuer.url(),
                "--jwks-url",
                &issuer.jwks_url(),
                "--issuer-trust-emails",
                "--audience",
                AUD,
                "--member",
                &format!("serviceAccount:{email}"),
            ],
            &[],
            Some(token),
        )
        .expect_code(0)
        .expect_stdout("header      pass  alg RS256, kid \"google-auth-key\", typ JWT")
        .expect_stdout(&format!(
            "ALLOWED  roles/run.invoker for serviceAccount:{email}"
        ));
    }
}
