//! The REST API end to end: a real koukan with an HTTP listener, a real
//! HTTP/1.1 client on kept-alive connections, Postfix's smtp-sink as the
//! upstream. Sending (inline bodies, PUT whole and in ranges, reuse),
//! hanging GETs, ETags, cancel, idempotent POSTs, and every client error
//! followed by a good request on the same connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use koukan_integration::http::{HttpConn, HttpResponse};
use koukan_integration::*;
use serde_json::{Value, json};

const EMBEDDED: &str = "{embedded: {path: data/koukan.db}}";

struct Api {
    k: Koukan,
    api: SocketAddr,
    sink: SmtpSink,
    _dirs: tempfile::TempDir,
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
    location
        .find("/transactions/")
        .map(|i| location[i..].to_owned())
        .unwrap_or_else(|| location.to_owned())
}

/// Hanging GETs until the transaction is final; returns its JSON.
fn wait_final(c: &mut HttpConn, tx: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut etag: Option<String> = None;
    while Instant::now() < deadline {
        let mut h = vec![("Request-Timeout", "5")];
        if let Some(e) = &etag {
            h.push(("If-None-Match", e.as_str()));
        }
        let r = c.request("GET", tx, &h, b"").unwrap();
        match r.status {
            200 => {
                let v = r.json();
                if v.get("final_attempt_reason").is_some() {
                    return v;
                }
                etag = r.header("etag").map(str::to_owned);
            }
            304 => assert!(r.body.is_empty(), "a 304 carries no body"),
            s => panic!("GET {tx}: {s} {}", r.text()),
        }
    }
    panic!("{tx} not final within {timeout:?}");
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
                    return (Instant::now(), v);
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
    // The sink has the message by the time the waiter returned; the
    // hanging GET returned within moments of the final write (loosely:
    // the admin API's record of the finish is the reference).
    let msgs = a.sink.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1);
    assert!(returned.elapsed() < Duration::from_secs(5));
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
    let posts: Vec<(&str, Vec<(&str, &str)>, Vec<u8>, u16, Option<&str>)> = vec![
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

    let others: Vec<(&str, &str, String, Vec<(&str, &str)>, Vec<u8>, u16)> = vec![
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
