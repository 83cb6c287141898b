//! The REST API end to end: a real koukan with an HTTP listener, a real
//! HTTP/1.1 client on kept-alive connections, Postfix's smtp-sink as the
//! upstream. Sending (inline bodies, PUT whole and in ranges, reuse),
//! hanging GETs, ETags, cancel, idempotent POSTs, and every client error
//! followed by a good request on the same connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use koukan_integration::http::{HttpConn, HttpResponse, tx_path};
use koukan_integration::*;
use serde_json::{Value, json};

const EMBEDDED: &str = "{embedded: {path: data/koukan.db}}";

struct Api {
    k: Koukan,
    api: SocketAddr,
    sink: SmtpSink,
    _dirs: tempfile::TempDir,
}

/// A proxy with one HTTP listener (`http`: its YAML flow mapping) whose
/// sender `submission` relays to `sink`.
fn one_sink_config(node: &str, api: SocketAddr, http: &str, sink: SocketAddr) -> String {
    format!(
        r#"
node: {{id: {node}}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
static_resources:
  listeners:
  - name: api
    address: "{api}"
    http: {http}
  senders: [{{name: submission, chain: out}}]
  chains:
  - name: out
    relay: {{endpoint: sink}}
  endpoints:
  - name: sink
    smtp: {{ehlo_hostname: koukan.test, hosts: [{{host: "{h}", port: {p}}}]}}
"#,
        h = sink.ip(),
        p = sink.port(),
    )
}

/// `n` hanging GETs of `tx` with `etag`, each on its own connection, sent
/// and not yet answered.
fn hang(api: SocketAddr, tx: &str, etag: &str, secs: &str, n: usize) -> Vec<HttpConn> {
    (0..n)
        .map(|_| {
            let mut w = HttpConn::connect(api).unwrap();
            w.send(
                "GET",
                tx,
                &[("If-None-Match", etag), ("Request-Timeout", secs)],
                b"",
            )
            .unwrap();
            w
        })
        .collect()
}

/// `limits`: the YAML flow mapping of the listener's limits.
fn start(limits: &str, storage: &str) -> Api {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let api = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: rest-test}}
admin: {{address: "{{admin}}"}}
storage: {storage}
static_resources:
  listeners:
  - name: api
    address: "{api}"
    http: {{session_uri: "http://{api}", limits: {limits}}}
  senders:
  - name: submission
    chain: out
    tags: [{{name: stored, chain: queued}}]
  chains:
  - name: out
    relay: {{endpoint: sink}}
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  - name: queued
    store_and_forward: {{output_chain: out}}
  endpoints:
  - name: sink
    smtp:
      ehlo_hostname: koukan.test
      hosts: [{{host: "{uhost}", port: {uport}}}]
      connect_timeout: 1s
"#,
        uhost = sink.addr.ip(),
        uport = sink.addr.port(),
    );
    let k = Koukan::start(&yaml).unwrap();
    Api {
        k,
        api,
        sink,
        _dirs: dirs,
    }
}

fn message(subject: &str) -> String {
    format!(
        "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\nhello over REST\r\n"
    )
}

fn create(body: Option<Value>) -> Value {
    let mut v =
        json!({"mail_from": {"m": "alice@example.com"}, "rcpt_to": [{"m": "bob@example.net"}]});
    if let Some(b) = body {
        v["body"] = b;
    }
    v
}

fn post(c: &mut HttpConn, v: &Value, headers: &[(&str, &str)]) -> HttpResponse {
    c.json("POST", "/senders/submission/transactions", headers, v)
        .unwrap()
}

fn path_of(location: &str) -> String {
    tx_path(location)
}

fn wait_final(c: &mut HttpConn, tx: &str, timeout: Duration) -> Value {
    c.wait_final(tx, timeout)
}

#[test]
fn inline_body_is_delivered_and_followed_to_its_final_status() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(
        &mut c,
        &create(Some(json!({"inline": message("inline")}))),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").unwrap().to_owned();
    assert!(
        loc.starts_with(&format!("http://{}/transactions/", a.api)),
        "{loc}"
    );
    assert_eq!(r.header("etag"), Some("1"));
    let v = r.json();
    assert_eq!(v["mail_from"], json!({}));
    assert_eq!(v["rcpt_to"], json!([{}]));
    assert_eq!(v["retry"], json!({}));
    assert_eq!(v["body"]["blob_status"]["finalized"], json!(true));
    let tx = path_of(&loc);
    let done = wait_final(&mut c, &tx, Duration::from_secs(20));
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    assert_eq!(done["data_response"]["code"], 250, "{done}");
    assert_eq!(done["rcpt_response"][0]["code"], 250, "{done}");
    assert_eq!(done["attempt_count"], 1);
    let msgs = a.sink.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1, "{}", a.k.log());
    assert!(msgs[0].contains("hello over REST"));

    // Final: a GET with its ETag answers 304 at once, without a body.
    let etag = c.request("GET", &tx, &[], b"").unwrap();
    let etag = etag.header("etag").unwrap().to_owned();
    let t0 = Instant::now();
    let r = c
        .request(
            "GET",
            &tx,
            &[("If-None-Match", &etag), ("Request-Timeout", "10")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // And the connection is still good.
    assert_eq!(c.request("GET", &tx, &[], b"").unwrap().status, 200);
    // Counted on the admin server.
    let (_, metrics) = http_get(a.k.admin, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"koukan_rest_requests_total{route="create",status="201"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"koukan_rest_requests_total{route="read",status="304"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("koukan_rest_request_duration_seconds_bucket{"));
}

/// The body PUT after the POST: whole, in ranges with a resend, with an
/// empty finalizing PUT; bodies of every boundary size arrive byte-exact.
#[test]
fn bodies_put_whole_and_in_ranges_arrive_exactly() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let base = message("sizes");
    // Empty padding, one byte, exactly the append chunk (1 MiB) and one
    // more, several chunks.
    let sizes = [
        0usize,
        1,
        (1 << 20) - base.len(),
        (1 << 20) + 1 - base.len(),
        3 << 20,
    ];
    let mut expected = Vec::new();
    for (i, pad) in sizes.iter().enumerate() {
        let mut msg = message(&format!("size{i}"));
        msg.push_str(&"x".repeat(*pad));
        msg.push_str("\r\n");
        let r = post(&mut c, &create(None), &[]);
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.header("etag").unwrap().starts_with('p'));
        let v = r.json();
        assert!(v["body"]["blob_status"].get("finalized").is_none(), "{v}");
        let body_uri = path_of(v["body"]["blob_status"]["uri"].as_str().unwrap());
        let tx = path_of(r.header("location").unwrap());
        let bytes = msg.as_bytes();
        match i % 3 {
            0 => {
                let r = c.request("PUT", &body_uri, &[], bytes).unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
            }
            1 => {
                // Two ranges, the first sent twice (a retry).
                let half = bytes.len() / 2;
                let r1 = format!("bytes 0-{}/*", half - 1);
                for _ in 0..2 {
                    let r = c
                        .request("PUT", &body_uri, &[("Content-Range", &r1)], &bytes[..half])
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(r.header("content-range"), Some(r1.as_str()));
                }
                let r2 = format!("bytes {half}-{}/{}", bytes.len() - 1, bytes.len());
                let r = c
                    .request("PUT", &body_uri, &[("Content-Range", &r2)], &bytes[half..])
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                let whole = format!("bytes 0-{}/{}", bytes.len() - 1, bytes.len());
                assert_eq!(r.header("content-range"), Some(whole.as_str()));
            }
            _ => {
                // Many ranges of unknown total, then an empty finalizing PUT.
                let step = bytes.len().div_ceil(7);
                for (n, chunk) in bytes.chunks(step).enumerate() {
                    let first = n * step;
                    let range = format!("bytes {first}-{}/*", first + chunk.len() - 1);
                    let r = c
                        .request("PUT", &body_uri, &[("Content-Range", &range)], chunk)
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                }
                let len = bytes.len().to_string();
                let r = c
                    .request("PUT", &body_uri, &[("X-Finalize-Blob-Length", &len)], b"")
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
        let done = wait_final(&mut c, &tx, Duration::from_secs(30));
        assert_eq!(
            done["final_attempt_reason"], "upstream response success",
            "{done}"
        );
        expected.push(msg);
    }
    let msgs = a
        .sink
        .wait_messages(expected.len(), Duration::from_secs(20));
    assert_eq!(msgs.len(), expected.len());
    for want in &expected {
        let subject = want.lines().nth(2).unwrap();
        let got = msgs
            .iter()
            .find(|m| m.contains(subject))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        // smtp-sink's dump has its own headers first, and LF line ends.
        let want = want.replace("\r\n", "\n");
        let got = got.replace("\r\n", "\n");
        assert!(
            got.trim_end().ends_with(want.trim_end()),
            "{subject}: {} bytes, want {}: ...{:?}",
            got.len(),
            want.len(),
            &got[got.len().saturating_sub(200)..]
        );
    }
}

#[test]
fn a_body_is_reused_by_a_later_transaction() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(
        &mut c,
        &create(Some(json!({"inline": message("reused")}))),
        &[],
    );
    assert_eq!(r.status, 201);
    let body_uri = r.json()["body"]["blob_status"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reused after the first is delivered: its body is kept for that.
    let first = path_of(r.header("location").unwrap());
    let done = wait_final(&mut c, &first, Duration::from_secs(20));
    assert_eq!(done["final_attempt_reason"], "upstream response success");
    let mut second = create(Some(json!({"reuse_uri": body_uri})));
    second["rcpt_to"] = json!([{"m": "carol@example.net"}]);
    let r = post(&mut c, &second, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = path_of(r.header("location").unwrap());
    let done = wait_final(&mut c, &tx, Duration::from_secs(20));
    assert_eq!(done["final_attempt_reason"], "upstream response success");
    let msgs = a.sink.wait_messages(2, Duration::from_secs(10));
    assert_eq!(
        msgs.iter()
            .filter(|m| m.contains("Subject: reused"))
            .count(),
        2
    );
}

/// A store-and-forward tag: the same final status, through the output
/// chain.
#[test]
fn a_tag_picks_the_chain() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let mut v = create(Some(json!({"inline": message("tagged")})));
    v["sender"] = json!({"tag": "stored"});
    let r = post(&mut c, &v, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = path_of(r.header("location").unwrap());
    let done = wait_final(&mut c, &tx, Duration::from_secs(20));
    assert_eq!(done["final_attempt_reason"], "upstream response success");
    assert_eq!(a.sink.wait_messages(1, Duration::from_secs(10)).len(), 1);
}

#[test]
fn a_hanging_get_returns_soon_after_the_final_response() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(&mut c, &create(None), &[]);
    let tx = path_of(r.header("location").unwrap());
    let etag = r.header("etag").unwrap().to_owned();
    let body_uri = path_of(r.json()["body"]["blob_status"]["uri"].as_str().unwrap());
    // A second connection waits while the first uploads.
    let api = a.api;
    let tx2 = tx.clone();
    let waiter = std::thread::spawn(move || {
        let mut c = HttpConn::connect(api).unwrap();
        let mut etag = etag;
        loop {
            let r = c
                .request(
                    "GET",
                    &tx2,
                    &[("If-None-Match", &etag), ("Request-Timeout", "20")],
                    b"",
                )
                .unwrap();
            if r.status == 200 {
                let v = r.json();
                if v.get("final_attempt_reason").is_some() {
                    return (std::time::SystemTime::now(), v);
                }
                etag = r.header("etag").unwrap().to_owned();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let r = c
        .request("PUT", &body_uri, &[], message("hang").as_bytes())
        .unwrap();
    assert_eq!(r.status, 200);
    let (returned, v) = waiter.join().unwrap();
    assert_eq!(v["final_attempt_reason"], "upstream response success");
    // The sink's dump of the message is written when it receives the end
    // of the data, just before its 250: the final response. The hanging
    // GET returned within moments of it (measured loosely: the dump's
    // mtime, then the 250, the store's write of the outcome, the wake-up).
    let msgs = a.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1);
    let dumped = std::fs::read_dir(&a.sink.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
        .unwrap();
    let after = returned.duration_since(dumped).unwrap_or_default();
    eprintln!("hanging GET returned {after:?} after the sink took the message");
    assert!(after < Duration::from_millis(250), "{after:?}");
}

#[test]
fn cancel_of_a_pending_transaction() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(&mut c, &create(None), &[]);
    let tx = path_of(r.header("location").unwrap());
    let r = c
        .request("POST", &format!("{tx}/cancel"), &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Nothing was stored: the transaction is gone.
    assert_eq!(c.request("GET", &tx, &[], b"").unwrap().status, 404);
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.sink.messages().is_empty());
}

/// Every client error gets its 4xx and a JSON error naming the problem,
/// and the connection serves the next request.
#[test]
// The tables of cases are tuples, spelled out where they are listed.
#[allow(clippy::type_complexity)]
fn every_client_error_is_a_4xx_and_the_connection_goes_on() {
    let a = start("{max_message_size: 4096, max_json_bytes: 8192}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let good = |c: &mut HttpConn, after: &str| {
        let r = c
            .request("GET", "/openapi.json", &[], b"")
            .unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert_eq!(r.status, 200, "the connection stays usable");
    };
    // A transaction with a finalized body, and a pending one.
    let done = post(
        &mut c,
        &create(Some(json!({"inline": message("errs")}))),
        &[],
    );
    assert_eq!(done.status, 201);
    let done_tx = path_of(done.header("location").unwrap());
    let pend = post(&mut c, &create(None), &[]);
    let pend_tx = path_of(pend.header("location").unwrap());
    let pend_etag = pend.header("etag").unwrap().to_owned();
    let json_ct = ("Content-Type", "application/json");
    // (what, headers, entity, status, field)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        Option<&'a str>,
    );
    let posts: Vec<Case<'_>> = vec![
        ("malformed JSON", vec![json_ct], b"{\"mail_from\": ".to_vec(), 400, None),
        ("empty entity", vec![json_ct], b"".to_vec(), 400, None),
        ("wrong content type", vec![("Content-Type", "text/plain")], b"{}".to_vec(), 415, Some("content-type")),
        ("not an object", vec![json_ct], b"[1]".to_vec(), 400, None),
        ("unknown field", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "b@c.d"}], "color": 1}"#.to_vec(), 400, Some("color")),
        ("read-only field", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "b@c.d"}], "attempt_count": 1}"#.to_vec(), 400, Some("attempt_count")),
        ("null value", vec![json_ct], br#"{"mail_from": null}"#.to_vec(), 400, Some("mail_from")),
        ("invalid address", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "not an address"}]}"#.to_vec(), 400, Some("rcpt_to[0].m")),
        ("no recipient", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}}"#.to_vec(), 400, Some("rcpt_to")),
        ("two recipients", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "b@c.d"}, {"m": "e@f.g"}]}"#.to_vec(), 400, Some("rcpt_to")),
        ("conflicting sender", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "b@c.d"}], "sender": {"name": "other"}}"#.to_vec(), 400, Some("sender.name")),
        ("two body forms", vec![json_ct], br#"{"mail_from": {"m": "a@b.c"}, "rcpt_to": [{"m": "b@c.d"}], "body": {"inline": "x", "reuse_uri": "y"}}"#.to_vec(), 400, Some("body")),
        ("body too large", vec![json_ct], create(Some(json!({"inline": "x".repeat(5000)}))).to_string().into_bytes(), 413, Some("body.inline")),
        ("JSON too large", vec![json_ct], vec![b' '; 9000], 413, None),
        ("reuse of nothing", vec![json_ct], create(Some(json!({"reuse_uri": "/transactions/nosuch/body"}))).to_string().into_bytes(), 400, Some("body.reuse_uri")),
        ("reuse of an unfinalized body", vec![json_ct], create(Some(json!({"reuse_uri": format!("{pend_tx}/body")}))).to_string().into_bytes(), 400, Some("body.reuse_uri")),
        ("bad idempotency key", vec![json_ct, ("Idempotency-Key", "")], create(None).to_string().into_bytes(), 400, Some("idempotency-key")),
    ];
    for (what, headers, body, status, field) in posts {
        let r = c
            .request("POST", "/senders/submission/transactions", &headers, &body)
            .unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let e = r.json();
        assert!(
            e["error"].is_string() && e["message"].is_string(),
            "{what}: {e}"
        );
        if let Some(f) = field {
            assert_eq!(e["field"], f, "{what}: {e}");
        }
        good(&mut c, what);
    }
    let deep = {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!([v]);
        }
        let mut t = create(None);
        t["smtp_meta"] = json!({"x": v});
        t
    };
    let r = post(&mut c, &deep, &[]);
    assert_eq!(r.status, 400, "too deep: {}", r.text());
    good(&mut c, "deep");
    let r = c
        .json("POST", "/senders/nobody/transactions", &[], &create(None))
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["field"], "sender");
    good(&mut c, "unknown sender");

    // (what, method, path, headers, entity, status)
    type Other<'a> = (
        &'a str,
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
    );
    let others: Vec<Other<'_>> = vec![
        (
            "unknown transaction",
            "GET",
            "/transactions/nosuch".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "unknown transaction id form",
            "GET",
            "/transactions/..%2f".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "bad request-timeout",
            "GET",
            pend_tx.clone(),
            vec![("If-None-Match", "p1"), ("Request-Timeout", "soon")],
            vec![],
            400,
        ),
        (
            "PATCH without If-Match",
            "PATCH",
            pend_tx.clone(),
            vec![],
            vec![],
            400,
        ),
        (
            "PATCH with a stale If-Match",
            "PATCH",
            pend_tx.clone(),
            vec![("If-Match", "p999")],
            vec![],
            412,
        ),
        (
            "PATCH with an update",
            "PATCH",
            pend_tx.clone(),
            vec![("If-Match", pend_etag.as_str()), json_ct],
            br#"{"mail_from": {"m": "x@y.z"}}"#.to_vec(),
            400,
        ),
        (
            "PATCH with a non-JSON entity",
            "PATCH",
            pend_tx.clone(),
            vec![
                ("If-Match", pend_etag.as_str()),
                ("Content-Type", "text/plain"),
            ],
            b"hi".to_vec(),
            415,
        ),
        (
            "bad Content-Range",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("Content-Range", "bytes 5-1/*")],
            b"hello".to_vec(),
            400,
        ),
        (
            "Content-Range length mismatch",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("Content-Range", "bytes 0-9/*")],
            b"hello".to_vec(),
            400,
        ),
        (
            "range beyond what is stored",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("Content-Range", "bytes 100-104/*")],
            b"hello".to_vec(),
            416,
        ),
        (
            "bad finalize length",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("X-Finalize-Blob-Length", "ten")],
            vec![],
            400,
        ),
        (
            "finalize length mismatch",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("X-Finalize-Blob-Length", "10")],
            vec![],
            416,
        ),
        (
            "finalize with data",
            "PUT",
            format!("{pend_tx}/body"),
            vec![("X-Finalize-Blob-Length", "5")],
            b"hello".to_vec(),
            400,
        ),
        (
            "blob too large",
            "PUT",
            format!("{pend_tx}/body"),
            vec![],
            vec![b'x'; 5000],
            413,
        ),
        (
            "unknown blob",
            "PUT",
            format!("{pend_tx}/blob/nosuch"),
            vec![],
            b"x".to_vec(),
            404,
        ),
        (
            "PUT after finalization",
            "PUT",
            format!("{done_tx}/body"),
            vec![],
            b"something else".to_vec(),
            409,
        ),
        (
            "unknown route",
            "GET",
            "/nothing/here".into(),
            vec![],
            vec![],
            404,
        ),
        (
            "wrong method",
            "DELETE",
            pend_tx.clone(),
            vec![],
            vec![],
            405,
        ),
    ];
    for (what, method, path, headers, body, status) in others {
        let r = c.request(method, &path, &headers, &body).unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status != 304 {
            let e = r.json();
            assert!(e["error"].is_string(), "{what}: {e}");
        }
        if status == 416 {
            assert!(r.header("x-blob-length").is_some(), "{what}");
        }
        good(&mut c, what);
    }
    // The pending transaction survived all that and still completes.
    let r = c
        .request(
            "PUT",
            &format!("{pend_tx}/body"),
            &[],
            message("after").as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let done = wait_final(&mut c, &pend_tx, Duration::from_secs(20));
    assert_eq!(done["final_attempt_reason"], "upstream response success");
}

#[test]
fn idempotent_posts_create_one_transaction() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let v = create(Some(json!({"inline": message("once")})));
    let key = ("Idempotency-Key", "order-42");
    let first = post(&mut c, &v, &[key]);
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(first.header("idempotent-replayed").is_none());
    let again = post(&mut c, &v, &[key]);
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The same key with another request.
    let other = create(Some(json!({"inline": message("twice")})));
    let r = post(&mut c, &other, &[key]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["field"], "idempotency-key");
    // Concurrent duplicates: one transaction.
    let v2 = create(Some(json!({"inline": message("race")})));
    let api = a.api;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let v2 = v2.clone();
            std::thread::spawn(move || {
                let mut c = HttpConn::connect(api).unwrap();
                let r = post(&mut c, &v2, &[("Idempotency-Key", "race-1")]);
                assert_eq!(r.status, 201, "{}", r.text());
                r.header("location").unwrap().to_owned()
            })
        })
        .collect();
    let locs: std::collections::BTreeSet<String> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(locs.len(), 1, "{locs:?}");
    // A bodiless POST retried before its PUT: the same pending one.
    let p1 = post(&mut c, &create(None), &[("Idempotency-Key", "pending-1")]);
    let p2 = post(&mut c, &create(None), &[("Idempotency-Key", "pending-1")]);
    assert_eq!(p1.header("location"), p2.header("location"));
    let msgs = a.sink.wait_messages(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let msgs2 = a.sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs2.len(),
        2,
        "exactly one delivery each of 'once' and 'race'"
    );
}

#[test]
fn openapi_document_is_served() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = c.request("GET", "/openapi.json", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["openapi"], "3.1.0");
}

fn builder_spec(subject: &str, attachment: Value) -> Value {
    json!({
        "headers": [
            ["subject", subject],
            ["from", [{"display_name": "Carol", "address": "carol@example.org"}]],
            ["to", [{"address": "dave@example.net"}]]
        ],
        "text_body": [
            {"content_type": "text/html", "content": {"inline": "<p>all systems nominal</p>"}},
            {"content_type": "text/plain", "content": {"inline": "all systems nominal"}}
        ],
        "file_attachments": [attachment]
    })
}

/// A message-builder body with inline parts: rendered to MIME and
/// delivered; its inline blobs are listed and can be reused.
#[test]
fn message_builder_body_is_rendered_and_delivered() {
    let a = start("{}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let spec = builder_spec(
        "status report",
        json!({"content_type": "application/pdf", "filename": "r.pdf",
               "content": {"inline": "%PDF-1.4 not really"}}),
    );
    let r = post(&mut c, &create(Some(json!({"message_builder": spec}))), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let blobs = v["body"]["message_builder"]["blob_status"]
        .as_object()
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(
        blobs.keys().cloned().collect::<Vec<_>>(),
        ["inline0", "inline1", "inline2"]
    );
    assert!(blobs.values().all(|b| b["finalized"] == true));
    let tx = path_of(r.header("location").unwrap());
    let done = wait_final(&mut c, &tx, Duration::from_secs(20));
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    let msgs = a.sink.wait_messages(1, Duration::from_secs(10));
    // Header names keep the spec's spelling (the original's too).
    let m = msgs[0].to_ascii_lowercase();
    for want in [
        "subject: status report",
        "carol",
        "multipart/mixed",
        "multipart/alternative",
        "text/html",
        "text/plain",
        "filename=\"r.pdf\"",
        "mime-version: 1.0",
        "message-id: <",
        "date: ",
    ] {
        assert!(m.contains(want), "{want} missing in\n{m}");
    }
    // The PDF's inline blob, reused by a second transaction.
    let reuse = blobs["inline2"]["uri"].as_str().unwrap().to_owned();
    let spec2 = builder_spec(
        "second",
        json!({"content_type": "application/pdf", "filename": "again.pdf",
               "content": {"reuse_uri": reuse}}),
    );
    let r = post(
        &mut c,
        &create(Some(json!({"message_builder": spec2}))),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = path_of(r.header("location").unwrap());
    let done = wait_final(&mut c, &tx, Duration::from_secs(20));
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    let msgs = a.sink.wait_messages(2, Duration::from_secs(10));
    let second = msgs
        .iter()
        .find(|m| m.to_ascii_lowercase().contains("subject: second"))
        .unwrap();
    assert!(second.contains("again.pdf"));
    // A bad spec names its field.
    let bad = json!({"headers": [["subject", "x\r\nBcc: evil@example.com"]],
                     "text_body": [{"content_type": "text/plain", "content": {"inline": "x"}}]});
    let r = post(&mut c, &create(Some(json!({"message_builder": bad}))), &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["field"]
            .as_str()
            .unwrap()
            .starts_with("body.message_builder"),
        "{}",
        r.text()
    );
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A 50 MB attachment uploaded in ranges, rendered (base64) and delivered
/// with the proxy's memory bounded: the body streams from the client into
/// the store and from the store to the upstream.
#[test]
fn a_50_mb_attachment_in_ranges_is_delivered_in_bounded_memory() {
    let a = start("{max_message_size: 100000000}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let spec = builder_spec(
        "big",
        json!({"content_type": "application/octet-stream", "filename": "big.bin",
               "content": {"create_id": "big"}}),
    );
    let r = post(&mut c, &create(Some(json!({"message_builder": spec}))), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let uri = path_of(
        v["body"]["message_builder"]["blob_status"]["big"]["uri"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}")),
    );
    let tx = path_of(r.header("location").unwrap());
    const TOTAL: usize = 50 << 20;
    const STEP: usize = 4 << 20;
    let chunk: Vec<u8> = (0..STEP).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = 0;
    while sent < TOTAL {
        let n = STEP.min(TOTAL - sent);
        let range = format!("bytes {sent}-{}/{TOTAL}", sent + n - 1);
        let r = c
            .request("PUT", &uri, &[("Content-Range", &range)], &chunk[..n])
            .unwrap();
        assert_eq!(r.status, 200, "{range}: {}", r.text());
        sent += n;
    }
    let done = wait_final(&mut c, &tx, Duration::from_secs(120));
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    let msgs = a.sink.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    // Base64 of 50 MB is about 68 MB of lines.
    assert!(msgs[0].len() > 68_000_000, "{}", msgs[0].len());
    let peak = rss_peak_kib(a.k.proc.pid());
    assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} KiB");
}

/// REST through an exploder (msa) chain whose upstream is down: retried
/// by the output chain's policy, then final with a bounce (DSN) back to
/// the sender.
#[test]
fn rest_through_an_exploder_retries_then_bounces() {
    let dirs = tempfile::tempdir().unwrap();
    let api = loopback(free_port());
    let dead = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: rest-msa}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: api
    address: "{api}"
    http: {{}}
  senders: [{{name: submission, chain: msa}}]
  chains:
  - name: msa
    exploder: {{output_chain: out, msa: true}}
  - name: out
    relay: {{endpoint: dead}}
    retry: {{max_attempts: 2, min_attempt_time: 1s, max_attempt_time: 1s}}
    notification: {{chain: bounces, mailer_daemon: mailer-daemon@koukan.test}}
  - name: bounces
    relay: {{endpoint: bounce-box}}
  endpoints:
  - name: dead
    smtp:
      ehlo_hostname: koukan.test
      hosts: [{{host: "{dhost}", port: {dport}}}]
      connect_timeout: 1s
  - name: bounce-box
    maildir: {{path: bounces}}
"#,
        dhost = dead.ip(),
        dport = dead.port(),
    );
    let k = Koukan::start_in(dirs, &yaml).unwrap();
    let mut c = HttpConn::connect(api).unwrap();
    let r = post(
        &mut c,
        &create(Some(json!({"inline": message("bounced")}))),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // No session_uri: bare paths.
    let loc = r.header("location").unwrap().to_owned();
    assert!(loc.starts_with("/transactions/"), "{loc}");
    assert_eq!(r.json()["notification"], json!({}));
    let done = wait_final(&mut c, &loc, Duration::from_secs(30));
    assert_eq!(
        done["final_attempt_reason"], "retry policy max attempts",
        "{done}"
    );
    assert_eq!(done["attempt_count"], 2, "{done}");
    // The upstream was unreachable: a temporary reply, recipient-level.
    let code = |v: &Value| v["code"].as_u64().unwrap_or(0);
    assert!(
        (400..500).contains(&code(&done["rcpt_response"][0])),
        "{done}"
    );
    let bounce = wait_for(Duration::from_secs(10), || {
        maildir_files(&k, "bounces/new").pop()
    })
    .unwrap_or_else(|| panic!("no bounce; {}", k.log()));
    assert!(bounce.contains("alice@example.com"), "{bounce}");
    assert!(bounce.contains("Subject: bounced"), "{bounce}");
}

/// API keys: a listener with keys refuses requests without the sender's
/// key, for creation and for the transaction's later requests.
#[test]
fn api_keys_guard_senders_and_their_transactions() {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let api = loopback(free_port());
    let key = "s3cret-token-for-submission";
    let digest = {
        let out = python(
            "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
            &[key],
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    std::fs::write(
        dirs.path().join("keys.json"),
        format!(r#"{{"submission": "{digest}"}}"#),
    )
    .unwrap();
    let yaml = one_sink_config("rest-keys", api, "{api_keys: keys.json}", sink.addr);
    let _k = Koukan::start_in(dirs, &yaml).unwrap();
    let mut c = HttpConn::connect(api).unwrap();
    let v = create(Some(json!({"inline": message("keyed")})));
    let r = post(&mut c, &v, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(&mut c, &v, &[("Authorization", "Bearer wrong")]);
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {key}");
    let r = post(&mut c, &v, &[("Authorization", &bearer)]);
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = path_of(r.header("location").unwrap());
    assert_eq!(c.request("GET", &tx, &[], b"").unwrap().status, 401);
    assert_eq!(
        c.request("GET", &tx, &[("Authorization", &bearer)], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(sink.wait_messages(1, Duration::from_secs(10)).len(), 1);
}

/// Over the hanging-GET limit a GET that would wait answers 429 at once,
/// with Retry-After; one that need not wait is served.
#[test]
fn hanging_gets_over_the_limit_get_429() {
    let a = start("{max_hanging_gets: 2}", EMBEDDED);
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(&mut c, &create(None), &[]);
    let tx = path_of(r.header("location").unwrap());
    let etag = r.header("etag").unwrap().to_owned();
    let waiting = hang(a.api, &tx, &etag, "5", 2);
    std::thread::sleep(Duration::from_millis(300));
    let r = c
        .request(
            "GET",
            &tx,
            &[("If-None-Match", &etag), ("Request-Timeout", "5")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(c.request("GET", &tx, &[], b"").unwrap().status, 200);
    for mut w in waiting {
        assert_eq!(w.read_response(false).unwrap().status, 304);
    }

    // A reload raises the limit for the running listener.
    let yaml = std::fs::read_to_string(&a.k.config_path)
        .unwrap()
        .replace("max_hanging_gets: 2", "max_hanging_gets: 3");
    std::fs::write(&a.k.config_path, yaml).unwrap();
    a.k.proc.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(10), || a
            .k
            .log()
            .contains("config reloaded")
            .then_some(()))
        .is_some(),
        "{}",
        a.k.log()
    );
    let waiting = hang(a.api, &tx, &etag, "2", 3);
    for mut w in waiting {
        let r = w.read_response(false).unwrap();
        assert_eq!(r.status, 304, "{}", r.text());
    }
}

/// HTTPS with a test certificate, through Python's ssl client.
#[test]
fn the_api_over_tls() {
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dirs.path().join("sink"), &[]).unwrap();
    let (cert, key) = write_test_cert(dirs.path());
    let api = loopback(free_port());
    let http = format!(
        "{{tls: {{cert: \"{}\", key: \"{}\"}}}}",
        cert.display(),
        key.display()
    );
    let yaml = one_sink_config("rest-tls", api, &http, sink.addr);
    let _k = Koukan::start_in(dirs, &yaml).unwrap();
    let script = r#"
import http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False
c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx, timeout=10)
body = json.dumps({"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "b@example.net"}],
                   "body": {"inline": "Subject: tls\r\n\r\nover https\r\n"}})
c.request("POST", "/senders/submission/transactions", body, {"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.getheader("Location"))
r.read()
"#;
    let out = python(
        script,
        &[
            &api.ip().to_string(),
            &api.port().to_string(),
            &cert.display().to_string(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("201 /transactions/"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = sink.wait_messages(1, Duration::from_secs(10));
    assert!(msgs[0].contains("over https"));
}

/// Over `max_concurrent_requests` a request answers 503 with Retry-After
/// at once; an over-long request head is refused by the HTTP server
/// (431) and the next connection is served.
#[test]
fn request_limits_answer_503_and_431() {
    let a = start(
        "{max_concurrent_requests: 2, max_header_bytes: 8192}",
        EMBEDDED,
    );
    let mut c = HttpConn::connect(a.api).unwrap();
    let r = post(&mut c, &create(None), &[]);
    let tx = path_of(r.header("location").unwrap());
    let etag = r.header("etag").unwrap().to_owned();
    let waiting = hang(a.api, &tx, &etag, "3", 2);
    std::thread::sleep(Duration::from_millis(300));
    let r = c.request("GET", &tx, &[], b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "unavailable");
    for mut w in waiting {
        assert_eq!(w.read_response(false).unwrap().status, 304);
    }
    assert_eq!(c.request("GET", &tx, &[], b"").unwrap().status, 200);

    let big = "x".repeat(10_000);
    let mut h = HttpConn::connect(a.api).unwrap();
    let r = h.request("GET", &tx, &[("X-Padding", &big)], b"");
    assert!(
        r.as_ref().map_or(true, |r| r.status == 431),
        "{:?}",
        r.map(|r| r.status)
    );
    let mut fresh = HttpConn::connect(a.api).unwrap();
    assert_eq!(fresh.request("GET", &tx, &[], b"").unwrap().status, 200);
}

/// The maildir terminal: a REST transaction written into a local maildir.
#[test]
fn rest_into_a_maildir() {
    let api = loopback(free_port());
    let yaml = format!(
        r#"
node: {{id: rest-maildir}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
static_resources:
  listeners:
  - name: api
    address: "{api}"
    http: {{}}
  senders: [{{name: submission, chain: local}}]
  chains:
  - name: local
    relay: {{endpoint: box}}
  endpoints:
  - name: box
    maildir: {{path: box}}
"#
    );
    let k = Koukan::start(&yaml).unwrap();
    let mut c = HttpConn::connect(api).unwrap();
    let r = post(
        &mut c,
        &create(Some(json!({"inline": message("boxed")}))),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let done = wait_final(
        &mut c,
        r.header("location").unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    let files = maildir_files(&k, "box/new");
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with(&message("boxed")), "{}", files[0]);
}
