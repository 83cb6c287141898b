//! The flows through koukan that involve a receiving application, end to
//! end with real processes: SMTP -> koukan -> REST receiver with the
//! message parsed (receive_parsing), and REST -> koukan -> REST receiver,
//! raw and parsed, with the receiver's answers reaching the REST client as
//! the transaction's final status.

use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::http::HttpConn;
use koukan_integration::receiver::{Behaviour, Receiver};
use koukan_integration::*;
use serde_json::{Value, json};

const MSG: &str = "From: Grace <grace@example.org>\r\nTo: app@example.com\r\nSubject: weekly\r\nMessage-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi there\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n";

fn config(smtp: SocketAddr, api: SocketAddr, url: &str) -> String {
    format!(
        r#"
node: {{id: rest-flows}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: mx
    address: "{smtp}"
    smtp: {{hostname: koukan.test, sender: mx}}
  - name: api
    address: "{api}"
    http: {{}}
  senders:
  - name: mx
    chain: parsed
  - name: app
    chain: raw
    tags: [{{name: parsed, chain: parsed}}]
  chains:
  - name: raw
    endpoint: app-raw
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  - name: parsed
    endpoint: app-parsed
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: app-raw
    rest: {{url: "{url}", rcpt_timeout: 10s, data_timeout: 30s}}
  - name: app-parsed
    rest: {{url: "{url}", rcpt_timeout: 10s, data_timeout: 30s, receive_parsing: {{max_inline: 4}}}}
"#
    )
}

fn start() -> (Koukan, Receiver, SocketAddr, SocketAddr) {
    let receiver = Receiver::start(Behaviour {
        message_builder: true,
        ..Behaviour::default()
    })
    .unwrap();
    let (smtp, api) = (loopback(free_port()), loopback(free_port()));
    let k = Koukan::start(&config(smtp, api, &receiver.url("router"))).unwrap();
    (k, receiver, smtp, api)
}

/// The parsed spec the receiver got: the original's JSON (section 2.3),
/// its blobs PUT by id.
fn check_parsed(d: &koukan_integration::receiver::Delivered) {
    let spec = d.spec.as_ref().expect("a parsed spec");
    let headers = spec["parts"]["headers"].as_array().unwrap();
    assert!(headers.contains(&json!(["subject", "weekly"])), "{spec}");
    assert!(
        headers.contains(
            &json!(["from", [{"display_name": "Grace", "address": "grace@example.org"}]])
        ),
        "{spec}"
    );
    assert_eq!(spec["text_body"][0]["content_type"], "text/plain", "{spec}");
    let att = &spec["file_attachments"][0];
    assert_eq!(att["filename"], "report.pdf", "{spec}");
    // max_inline 4: the text is a blob too.
    let id = att["content"]["create_id"].as_str().unwrap();
    assert_eq!(d.blobs.get(id).map(Vec::as_slice), Some(&b"%PDF-1.4\n"[..]));
    assert!(!d.blobs.is_empty());
    // And the raw message after them, byte-exact.
    assert!(
        String::from_utf8_lossy(&d.body).ends_with(MSG),
        "{}",
        String::from_utf8_lossy(&d.body)
    );
}

#[test]
fn smtp_to_a_receiver_with_the_message_parsed() {
    let (k, receiver, smtp, _) = start();
    let reply = smtplib_send(
        smtp,
        "grace@example.org",
        &["app@example.com"],
        MSG,
        &[],
        "",
    );
    assert!(reply.starts_with("OK"), "{reply}\n{}", k.log());
    let d = receiver.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(d.len(), 1, "{}", k.log());
    check_parsed(&d[0]);
}

fn rest_send(api: SocketAddr, tag: Option<&str>) -> Value {
    let mut c = HttpConn::connect(api).unwrap();
    let mut v = json!({"mail_from": {"m": "grace@example.org"},
                       "rcpt_to": [{"m": "app@example.com"}],
                       "body": {"inline": MSG}});
    if let Some(t) = tag {
        v["sender"] = json!({"tag": t});
    }
    let r = c
        .json("POST", "/senders/app/transactions", &[], &v)
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = r.header("location").unwrap().to_owned();
    c.wait_final(&tx, Duration::from_secs(30))
}

#[test]
fn rest_to_a_receiver_raw_and_parsed() {
    let (k, receiver, _, api) = start();
    let done = rest_send(api, None);
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    // The receiver's own answers are the transaction's.
    assert_eq!(
        done["data_response"]["message"], "2.0.0 delivered (receiver)",
        "{done}"
    );
    assert_eq!(
        done["rcpt_response"][0]["message"], "2.1.5 recipient ok (receiver)",
        "{done}"
    );
    let d = receiver.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(d.len(), 1, "{}", k.log());
    assert!(d[0].spec.is_none(), "raw: no spec");
    assert_eq!(d[0].body, MSG.as_bytes());
    assert_eq!(d[0].mail_from, "grace@example.org");

    let done = rest_send(api, Some("parsed"));
    assert_eq!(
        done["final_attempt_reason"], "upstream response success",
        "{done}"
    );
    let d = receiver.wait_delivered(2, Duration::from_secs(10));
    assert_eq!(d.len(), 2);
    check_parsed(&d[1]);
}

/// A receiver that refuses the recipient: the REST client sees its 550 as
/// the final status, and nothing is retried.
#[test]
fn a_receivers_refusal_is_the_rest_clients_final_status() {
    let (_k, receiver, _, api) = start();
    let mut c = HttpConn::connect(api).unwrap();
    let r = c
        .json(
            "POST",
            "/senders/app/transactions",
            &[],
            &json!({"mail_from": {"m": "grace@example.org"},
                    "rcpt_to": [{"m": "reject-me@example.com"}],
                    "body": {"inline": MSG}}),
        )
        .unwrap();
    assert_eq!(r.status, 201);
    let tx = r.header("location").unwrap().to_owned();
    let done = wait_for(Duration::from_secs(20), || {
        let v = c.request("GET", &tx, &[], b"").ok()?.json();
        v.get("final_attempt_reason").is_some().then_some(v)
    })
    .unwrap();
    assert_eq!(
        done["final_attempt_reason"], "upstream rcpt_response permfail",
        "{done}"
    );
    assert_eq!(done["rcpt_response"][0]["code"], 550, "{done}");
    assert_eq!(done["attempt_count"], 1);
    assert!(receiver.delivered().is_empty());
}
