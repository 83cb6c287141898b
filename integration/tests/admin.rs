//! The admin server refuses what a web page could send it: requests whose
//! Host is not the admin server (DNS rebinding), mutations that are not
//! JSON or that a browser marks as cross-origin; and a cancel of a
//! transaction that is already final is a 409 carrying its final state.

use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::*;

fn config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
node: {{id: admin-test}}
admin: {{address: "{{admin}}", allowed_hosts: [koukan-admin.mail.svc]}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: in
    address: "{listen}"
    smtp: {{hostname: koukan.test, sender: in}}
  senders: [{{name: in, chain: in}}]
  chains:
  - name: in
    store_and_forward: {{output_chain: out}}
  - name: out
    filters:
    - router: {{destination: {{endpoint: smtp, host_list: [{{host: "{uh}", port: {up}}}]}}}}
    retry: {{max_attempts: 5, min_attempt_time: 30s, max_attempt_time: 30s}}
  endpoints:
  - name: smtp
    smtp: {{ehlo_hostname: koukan.test, connect_timeout: 1s}}
"#,
        uh = upstream.ip(),
        up = upstream.port(),
    )
}

fn submit(smtp: SocketAddr) -> String {
    let reply = match smtp_submit(
        smtp,
        "alice@example.org",
        &["bob@example.com"],
        "Subject: admin\r\n\r\nhello\r\n",
    ) {
        Submit::Accepted(r) => r,
        other => panic!("{other:?}"),
    };
    reply.rsplit(' ').next().unwrap().to_owned()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn requests_a_web_page_could_make_are_refused() {
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, loopback(free_port()))).unwrap();
    let port = k.admin.port();
    let id = submit(smtp);
    let cancel = format!("/transactions/{id}/cancel");

    // DNS rebinding: a hostile name resolved to 127.0.0.1.
    let rebound = format!("rebound.example:{port}");
    for path in ["/metrics", "/queue", &format!("/transactions/{id}")] {
        let (status, body) = http_with(k.admin, "GET", path, &[("Host", &rebound)], "").unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    let (status, _) =
        http_with(k.admin, "POST", &cancel, &[("Host", &rebound), JSON], "{}").unwrap();
    assert_eq!(status, 403);

    // A form or text/plain POST (no preflight in a browser) is refused,
    // as is one without a Content-Type.
    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) =
            http_with(k.admin, "POST", &cancel, &[("Content-Type", ct)], "a=1").unwrap();
        assert_eq!(status, 415, "{ct}: {body}");
    }
    let (status, _) = http_with(k.admin, "POST", &cancel, &[], "").unwrap();
    assert_eq!(status, 415);

    // JSON, but the browser says it comes from another page.
    let (status, body) = http_with(
        k.admin,
        "POST",
        &cancel,
        &[JSON, ("Origin", "http://evil.example")],
        "{}",
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, _) = http_with(
        k.admin,
        "POST",
        &cancel,
        &[JSON, ("Sec-Fetch-Site", "cross-site")],
        "{}",
    )
    .unwrap();
    assert_eq!(status, 403);

    // None of that cancelled anything.
    let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert!(tx.contains("\"cancelled\":false"), "{tx}");

    // What a client of the API sends is served: its own address, localhost,
    // a configured name, and a same-origin browser request.
    for host in [
        k.admin.to_string(),
        format!("localhost:{port}"),
        format!("koukan-admin.mail.svc:{port}"),
    ] {
        let (status, body) = http_with(k.admin, "GET", "/queue", &[("Host", &host)], "").unwrap();
        assert_eq!(status, 200, "{host}: {body}");
    }
    let origin = format!("http://localhost:{port}");
    let (status, body) = http_with(
        k.admin,
        "POST",
        &cancel,
        &[
            JSON,
            ("Host", &format!("localhost:{port}")),
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        "{}",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"cancelled\":true"), "{body}");
}

#[test]
fn cancelling_a_final_transaction_is_a_conflict() {
    let d = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&d.path().join("sink"), &[]).unwrap();
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, sink.addr)).unwrap();
    let id = submit(smtp);
    let delivered = wait_for(Duration::from_secs(10), || {
        let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).ok()?;
        tx.contains("\"state\":\"final\"").then_some(tx)
    });
    assert!(delivered.is_some(), "not delivered; log:\n{}", k.log());
    let (status, body) = http_post(k.admin, &format!("/transactions/{id}/cancel")).unwrap();
    assert_eq!(status, 409, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "final", "{body}");
    assert_eq!(
        v["final_attempt_reason"], "upstream response success",
        "{body}"
    );
    assert!(v["error"].as_str().unwrap().contains("final"), "{body}");
    // And it stays delivered, not cancelled.
    let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).unwrap();
    assert!(tx.contains("\"cancelled\":false"), "{tx}");
    assert_eq!(sink.messages().len(), 1);

    // A waiting transaction (its upstream down) is cancelled at once, and
    // a second cancel finds it final.
    let smtp = loopback(free_port());
    let k = Koukan::start(&config(smtp, loopback(free_port()))).unwrap();
    let id = submit(smtp);
    // Waiting for its retry (30 s away) once its first attempt failed, so
    // no attempt is running when the cancel arrives.
    let waiting = wait_for(Duration::from_secs(10), || {
        let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).ok()?;
        (tx.contains("\"state\":\"waiting\"") && tx.contains("\"attempt_count\":1")).then_some(())
    });
    assert!(waiting.is_some(), "log:\n{}", k.log());
    let (status, body) = http_post(k.admin, &format!("/transactions/{id}/cancel")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["cancelled"].as_bool(), v["state"].as_str()),
        (Some(true), Some("final")),
        "{body}"
    );
    let (status, body) = http_post(k.admin, &format!("/transactions/{id}/cancel")).unwrap();
    assert_eq!(status, 409, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["final_attempt_reason"], "downstream cancelled", "{body}");
}
