//! The REST API's OpenAPI document (`rest/openapi.json`, served at
//! `GET /openapi.json`) against the server it describes:
//!
//! * every route of `proxy/src/rest/mod.rs` is documented, and nothing
//!   else; the `ErrorKind` enum is the crate's;
//! * the document is valid OpenAPI 3.1 (`openapi-spec-validator`);
//! * schemathesis, driven by the document, finds no answer that is not
//!   documented: no 5xx, and every status, content type, header and body
//!   as documented. It runs against a real koukan (HTTP listener on
//!   loopback, smtp-sink upstream) seeded with real transactions, so that
//!   its requests reach past the 404s of random ids.
//!
//! The Python tools are installed by `integration/pytools.sh` (pinned,
//! into a virtualenv under `target/`), which this test runs when needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use koukan_integration::http::HttpConn;
use koukan_integration::*;
use serde_json::{Value, json};

fn doc_path() -> PathBuf {
    workspace_root().join("rest/openapi.json")
}

fn doc() -> Value {
    let text = std::fs::read_to_string(doc_path()).expect("rest/openapi.json");
    serde_json::from_str(&text).expect("rest/openapi.json is JSON")
}

/// The bin directory of the Python tools' virtualenv, installed once per
/// test process (the script locks against other processes).
fn pytools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(workspace_root().join("integration/pytools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running integration/pytools.sh");
        assert!(out.status.success(), "integration/pytools.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The `(path, method)` pairs `routes()` in `proxy/src/rest/mod.rs`
/// registers, read from its source: `.route("/p/{x}", get(..).patch(..))`.
fn server_routes() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(workspace_root().join("proxy/src/rest/mod.rs")).unwrap();
    let mut routes = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).expect("a route's path literal");
        // The method router: up to the `)` closing `.route(`.
        let mut depth = 0;
        let end = chunk
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => return true,
                    ')' => depth -= 1,
                    _ => {}
                }
                false
            })
            .map(|(i, _)| i)
            .expect("the end of .route(");
        let expr = &chunk[..end];
        for m in ["get", "post", "put", "patch", "delete", "head", "options"] {
            let called = expr.match_indices(&format!("{m}(")).any(|(i, _)| {
                let before = expr[..i].trim_end().chars().last();
                matches!(before, Some(',') | Some('.'))
            });
            if called {
                routes.insert((path.to_owned(), m.to_owned()));
            }
        }
    }
    assert!(routes.len() >= 7, "routes not found in mod.rs: {routes:?}");
    routes
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert((path.clone(), method.clone()));
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
        }
    }
    assert_eq!(documented, server_routes());
}

/// The document's `ErrorKind` values are exactly the serde names of
/// `koukan_rest::ErrorKind`, and each kind's status is documented.
#[test]
fn error_kinds_are_the_crates() {
    let doc = doc();
    let kinds: BTreeSet<String> = doc["components"]["schemas"]["ErrorKind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    // The variants, from the source (an enum cannot be listed at run time).
    let src = std::fs::read_to_string(workspace_root().join("rest/src/error.rs")).unwrap();
    let body = src
        .split("pub enum ErrorKind {")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .unwrap();
    let variants: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(','))
        .map(|l| {
            let name = l.trim_end_matches(',');
            let mut snake = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            snake
        })
        .collect();
    assert_eq!(kinds, variants);
    let descriptions: BTreeSet<String> = doc["components"]["responses"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|r| r["description"].as_str().map(str::to_owned))
        .collect();
    let mut codes = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(r) = op["responses"].as_object() {
                codes.extend(r.keys().cloned());
            }
        }
    }
    for kind in &kinds {
        let e: koukan_rest::ApiError =
            serde_json::from_value(json!({"error": kind, "message": "m"})).unwrap();
        let status = e.status();
        // Internal (500) is a bug whenever it happens: not documented as an
        // answer.
        if status != 500 {
            assert!(
                codes.contains(&status.to_string()),
                "{kind}: {status} not documented"
            );
            assert!(
                descriptions
                    .iter()
                    .any(|d| d.contains(&format!("`{kind}`"))),
                "{kind}: no response names it"
            );
        }
    }
}

#[test]
fn document_is_valid_openapi_3_1() {
    let out = Command::new(pytools().join("openapi-spec-validator"))
        .arg(doc_path())
        .output()
        .expect("openapi-spec-validator");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `{"sender": "<hex SHA-256 of key>"}`, the listener's api_keys file.
fn api_keys_file(dir: &Path, sender: &str, digest_hex: &str) -> PathBuf {
    let p = dir.join("api-keys.json");
    std::fs::write(&p, json!({ sender: digest_hex }).to_string()).unwrap();
    p
}

struct Server {
    k: Koukan,
    open: std::net::SocketAddr,
    keyed: std::net::SocketAddr,
    _sink: SmtpSink,
    dirs: tempfile::TempDir,
}

fn start() -> Server {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let open = loopback(free_port());
    let keyed = loopback(free_port());
    // SHA-256 of "secret-key": a listener where every request needs it.
    let keys = api_keys_file(
        dirs.path(),
        "submission",
        "85dbe15d75ef9308c7ae0f33c7a324cc6f4bf519a2ed2f3027bd33c140a4f9aa",
    );
    // Hanging GETs wait at most a second: schemathesis does send a current
    // ETag now and then.
    let limits = "{max_request_timeout: 1s, max_message_size: 1048576}";
    let yaml = format!(
        r#"
node: {{id: openapi-test}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
static_resources:
  listeners:
  - name: api
    address: "{open}"
    http: {{session_uri: "http://{open}", limits: {limits}}}
  - name: keyed
    address: "{keyed}"
    http: {{session_uri: "http://{keyed}", api_keys: "{keys}", limits: {limits}}}
  senders:
  - name: submission
    chain: out
    tags: [{{name: stored, chain: queued}}]
  chains:
  - name: out
    relay: {{endpoint: sink}}
    retry: {{max_attempts: 2, min_attempt_time: 1s, max_attempt_time: 1s}}
  - name: queued
    store_and_forward: {{output_chain: out}}
  endpoints:
  - name: sink
    smtp:
      ehlo_hostname: koukan.test
      hosts: [{{host: "{uhost}", port: {uport}}}]
      connect_timeout: 1s
"#,
        keys = keys.display(),
        uhost = sink.addr.ip(),
        uport = sink.addr.port(),
    );
    let k = Koukan::start(&yaml).unwrap();
    Server {
        k,
        open,
        keyed,
        _sink: sink,
        dirs,
    }
}

/// Transactions in every state for schemathesis to work on: bodies
/// pending, a message-builder body with a blob to upload, bodies
/// complete (stored, soon final). Returns their ids.
fn seed(api: std::net::SocketAddr) -> Vec<String> {
    let mut c = HttpConn::connect(api).unwrap();
    let envelope =
        json!({"mail_from": {"m": "alice@example.com"}, "rcpt_to": [{"m": "bob@example.net"}]});
    let with_body = |body: Value| {
        let mut v = envelope.clone();
        v["body"] = body;
        v
    };
    let builder = json!({"message_builder": {
        "headers": [["subject", "seed"], ["from", [{"address": "alice@example.com"}]]],
        "text_body": [{"content_type": "text/plain", "content": {"inline": "hello"}}],
        "file_attachments": [{"content_type": "application/octet-stream",
                              "content": {"create_id": "att"}, "filename": "a.bin"}]}});
    let requests = [
        (envelope.clone(), None),
        (envelope.clone(), None),
        (envelope.clone(), Some("seed-key")),
        (with_body(builder), None),
        (
            with_body(json!({"inline": "Subject: seed\r\n\r\nhello\r\n"})),
            None,
        ),
    ];
    let mut ids = Vec::new();
    for (v, key) in requests {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        let r = c
            .json("POST", "/senders/submission/transactions", &headers, &v)
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        let loc = r.header("location").unwrap();
        ids.push(loc.rsplit('/').next().unwrap().to_owned());
    }
    ids
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The schemathesis config: dictionaries of values worth trying (real
/// ids, current ETags, boundary ranges and keys) mixed into what it
/// generates from the document.
fn schemathesis_config(dir: &Path, ids: &[String]) -> PathBuf {
    let strings = |v: &[&str]| v.iter().map(|s| toml_str(s)).collect::<Vec<_>>();
    let max = u64::MAX;
    let dicts: Vec<(&str, Vec<String>)> = vec![
        ("senders", strings(&["submission"])),
        ("txs", ids.iter().map(|s| toml_str(s)).collect()),
        ("blobs", strings(&["att", "inline0"])),
        (
            "etags",
            strings(&["p1", "p2", "1", "2", "3", "\"p1\"", "W/\"1\""]),
        ),
        (
            "ranges",
            strings(&[
                "bytes 0-4/*",
                "bytes 0-4/5",
                "bytes 5-9/10",
                &format!("bytes 0-{max}/*"),
                &format!("bytes 0-{}/*", max - 1),
                &format!("bytes {}-{}/{max}", max - 1, max - 1),
            ]),
        ),
        // Integers (TOML's are i64).
        (
            "lengths",
            vec!["0".into(), "5".into(), i64::MAX.to_string()],
        ),
        // The longest key the header allows, and a key already used.
        ("keys", strings(&[&"k".repeat(255), "seed-key"])),
        (
            "addresses",
            strings(&["bob@example.net", "a@b", "ü@bücher.de"]),
        ),
    ];
    let bindings = [
        ("path.sender", "senders", 0.8),
        ("path.tx", "txs", 0.6),
        ("path.blob", "blobs", 0.6),
        ("header.If-None-Match", "etags", 0.5),
        ("header.If-Match", "etags", 0.5),
        ("header.Content-Range", "ranges", 0.3),
        ("header.X-Finalize-Blob-Length", "lengths", 0.3),
        ("header.Idempotency-Key", "keys", 0.3),
        ("body.rcpt_to[*].m", "addresses", 0.5),
    ];
    let mut toml = String::new();
    for (name, values) in &dicts {
        toml.push_str(&format!(
            "[dictionaries.{name}]\nvalues = [{}]\n",
            values.join(", ")
        ));
    }
    toml.push_str("\n[parameters]\n");
    for (key, dict, p) in bindings {
        toml.push_str(&format!(
            "{} = {{ dictionary = \"{dict}\", probability = {p} }}\n",
            toml_str(key)
        ));
    }
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Every check of the answers against the document, and of the HTTP
/// around it (405 with `Allow` for an undocumented method, 4xx for a
/// missing required header, 401 without the API key). Not run:
/// positive_data_acceptance and negative_data_rejection, which judge the
/// server's input validation by the request schemas alone: here a
/// schema-valid request is refused for state the document cannot
/// express (a stale `If-Match`, a range that does not continue what is
/// stored, a blob the transaction does not declare), and some headers are
/// only read in context (`Request-Timeout` without `If-None-Match`); nor
/// the checks of resource models this API does not have (use_after_free,
/// ensure_resource_availability: no DELETE; object_level_authorization:
/// one key per sender).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      unsupported_method,allow_header_conformance,missing_required_header,\
                      ignored_auth";

/// Runs `st run` against `base`; panics with its output unless it
/// passed.
fn schemathesis(dir: &Path, config: &Path, base: &str, examples: u32, extra: &[&str]) {
    let seed = std::env::var("KOUKAN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let log = dir.join(format!(
        "schemathesis-{}.log",
        base.rsplit(':').next().unwrap()
    ));
    let mut cmd = Command::new(pytools().join("st"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(config)
        .arg("--no-color")
        .arg("run")
        .arg(doc_path())
        .args(["--url", base])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed])
        // One worker: CPython 3.11's parser is not thread-safe, and
        // Hypothesis parses lambdas' source while generating ("AST
        // constructor recursion depth mismatch" with more workers).
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--max-failures", "20"])
        .args(["--output-sanitize", "false"])
        .args(["--generation-database", "none"])
        .args(extra)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("st.err")).unwrap(),
        ));
    let mut child = Proc::spawn("schemathesis", &mut cmd).unwrap();
    let t0 = Instant::now();
    let status = child.wait_exit(Duration::from_secs(300));
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("st.err")).unwrap_or_default();
    eprintln!("schemathesis against {base}: {:?}\n{out}", t0.elapsed());
    let status = status.unwrap_or_else(|| panic!("schemathesis still running after 300 s\n{err}"));
    assert!(
        status.success(),
        "schemathesis found problems (seed {seed}); see above\n{err}"
    );
    assert!(
        out.contains("Tested: 7"),
        "schemathesis did not test every operation\n{err}"
    );
}

#[test]
fn schemathesis_finds_nothing_undocumented() {
    pytools();
    let s = start();
    let ids = seed(s.open);
    let work = s.dirs.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let config = schemathesis_config(&work, &ids);
    let examples = std::env::var("KOUKAN_SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    schemathesis(&work, &config, &format!("http://{}", s.open), examples, &[]);
    // A listener with API keys, asked without one: every operation but
    // the document itself answers 401 as documented.
    schemathesis(
        &work,
        &config,
        &format!("http://{}", s.keyed),
        10,
        &["--phases", "examples,coverage,fuzzing"],
    );
    // The proxy is still up.
    let mut c = HttpConn::connect(s.open).unwrap();
    let r = c.request("GET", "/openapi.json", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", s.k.log());
}
