//! The rest endpoint against the test receiver (a real HTTP server on
//! loopback, see `koukan_integration::receiver`), and its checks of
//! replies on their own.

use std::collections::BTreeMap;
use std::time::Duration;

use koukan_chain::{
    Ingress, Mailbox, Recipient, Signal, StoredInfo, TerminalService, TxContext, TxUpdate,
};
use koukan_integration::receiver::{Behaviour, Delivered, Mangle, Receiver, Reply};
use serde_json::json;
use tower::Service;

use super::*;

fn endpoint(url: &str, f: impl FnOnce(&mut RestConfig)) -> Arc<RestEndpoint> {
    let mut c = RestConfig::new(url.parse().unwrap());
    c.sender = Some(SenderRef {
        name: Some("router".into()),
        tag: Some("mx".into()),
    });
    f(&mut c);
    Arc::new(RestEndpoint::new(c, None).unwrap())
}

fn ctx() -> Arc<TxContext> {
    Arc::new(TxContext::new(
        "t1",
        Ingress::Smtp(Arc::new(koukan_chain::SessionInfo {
            listener: "mx".into(),
            peer: "127.0.0.1:50123".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            ehlo_host: Some("client.test".into()),
            esmtp: true,
            tls: None,
            auth_user: None,
        })),
        "inbound",
        "",
    ))
}

type Out = TerminalService<RestOutput>;

fn terminal(ep: &Arc<RestEndpoint>) -> Out {
    TerminalService::new(RestOutput::new(ep.clone(), ctx()))
}

async fn call(t: &mut Out, u: TxUpdate) -> UpdateResponse {
    t.call(u).await.unwrap()
}

fn mail_rcpts(from: &str, rcpts: &[&str]) -> TxUpdate {
    TxUpdate {
        mail_from: Some(Mailbox::new(from).with_param("SIZE", Some("42"))),
        rcpt_to: rcpts
            .iter()
            .map(|r| Recipient::new(Mailbox::new(*r)))
            .collect(),
        ..Default::default()
    }
}

/// MAIL and `rcpts`, then `chunks` of the body; the responses of each.
async fn deliver(t: &mut Out, rcpts: &[&str], chunks: &[&[u8]]) -> Vec<UpdateResponse> {
    let mut out = vec![call(t, mail_rcpts("alice@example.org", rcpts)).await];
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        out.push(call(t, TxUpdate::body(Bytes::copy_from_slice(c), last)).await);
    }
    out
}

fn codes(r: &UpdateResponse) -> Vec<u16> {
    r.rcpts.iter().map(|r| r.code).collect()
}

fn one(rx: &Receiver) -> Delivered {
    let d = rx.wait_delivered(1, Duration::from_secs(5));
    assert_eq!(d.len(), 1, "{:#?}", rx.log());
    d.into_iter().next().unwrap()
}

/// `method path` of each request the receiver got.
fn requests(rx: &Receiver) -> Vec<String> {
    rx.log()
        .iter()
        .map(|e| format!("{} {} {}", e.method, e.path, e.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_delivers_the_exact_message_and_the_create_carries_the_envelope() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let r = deliver(
        &mut t,
        &["bob@example.com"],
        &[b"Subject: x\r\n\r\n", b"hi\r\n"],
    )
    .await;
    assert_eq!(
        r[0].mail.as_ref().unwrap().text,
        "2.1.0 sender ok (receiver)"
    );
    assert_eq!(r[0].rcpts[0].text, "2.1.5 recipient ok (receiver)");
    assert_eq!(r[1].data, None, "nothing before the last chunk");
    assert_eq!(
        r[2].data,
        Some(Response::new(250, "2.0.0 delivered (receiver)"))
    );
    let d = one(&rx);
    assert_eq!(d.body, b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(d.rcpt_to, ["bob@example.com"]);
    assert_eq!(
        d.create,
        json!({
            "remote_host": ["127.0.0.1", 50123],
            "local_host": ["127.0.0.1", 25],
            "mail_from": {"m": "alice@example.org", "e": [{"k": "SIZE", "p": "42"}]},
            "rcpt_to": [{"m": "bob@example.com"}],
            "smtp_meta": {"ehlo_host": "client.test", "esmtp": true, "tls": false, "auth": false},
            "sender": {"name": "router", "tag": "mx"}
        })
    );
    let log = rx.log();
    let put = log.iter().find(|e| e.method == "PUT").unwrap();
    assert!(!put.headers.contains_key("content-range"), "{put:?}");
    assert_eq!(
        put.headers.get("content-length").map(String::as_str),
        Some("18")
    );
    // The replies were in the 201; the data reply is read once.
    assert_eq!(
        requests(&rx),
        [
            "POST /senders/router/transactions 201",
            "PUT /transactions/rx1/body 200",
            "GET /transactions/rx1 200"
        ]
    );
    drop(t);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.cancelled().is_empty(),
        "a delivered transaction is not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_alone_waits_for_the_first_recipient_and_more_are_patched() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let r = call(&mut t, TxUpdate::mail(Mailbox::new("alice@example.org"))).await;
    assert_eq!(r.mail.unwrap().code, 250);
    assert!(rx.log().is_empty(), "nothing sent for MAIL alone");
    let r = call(&mut t, TxUpdate::rcpts([Mailbox::new("a@example.com")])).await;
    assert_eq!(codes(&r), [250]);
    let r = call(
        &mut t,
        TxUpdate::rcpts([
            Mailbox::new("reject-me@example.com"),
            Mailbox::new("tempfail@example.com"),
            Mailbox::new("b@example.com"),
        ]),
    )
    .await;
    assert_eq!(codes(&r), [550, 451, 250]);
    assert_eq!(r.rcpts[0].text, "5.1.1 no such user", "verbatim");
    assert_eq!(r.rcpts[1].text, "4.2.1 mailbox busy, try later");
    let r = call(&mut t, TxUpdate::body(&b"x\r\n"[..], true)).await;
    assert_eq!(r.data.unwrap().code, 250);
    let d = one(&rx);
    assert_eq!(d.mail_from, "alice@example.org");
    assert_eq!(d.accepted, ["a@example.com", "b@example.com"]);
    let log = rx.log();
    let patch = log.iter().find(|e| e.method == "PATCH").unwrap();
    assert_eq!(patch.headers.get("if-match").map(String::as_str), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mail_is_every_recipients_reply_and_nothing_is_uploaded() {
    let rx = Receiver::start(Behaviour {
        mail: Reply::new(550, "5.7.1 sender blocked"),
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let r = call(&mut t, TxUpdate::mail(Mailbox::new("spam@example.org"))).await;
    assert_eq!(r.mail.unwrap().code, 250, "deferred");
    let r = call(&mut t, TxUpdate::rcpts([Mailbox::new("a@example.com")])).await;
    assert_eq!(r.rcpts[0].text, "5.7.1 sender blocked");
    let r = call(&mut t, TxUpdate::rcpts([Mailbox::new("b@example.com")])).await;
    assert_eq!(r.rcpts[0].code, 550, "later recipients too");
    let r = call(&mut t, TxUpdate::body(&b"x"[..], true)).await;
    assert_eq!(r.data.unwrap().code, 550);
    drop(t);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(requests(&rx), ["POST /senders/router/transactions 201"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipient_refused_means_no_upload_and_554() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let r = deliver(&mut t, &["reject@example.com"], &[b"x", b"y"]).await;
    assert_eq!(codes(&r[0]), [550]);
    assert_eq!(r[1].data.as_ref().unwrap().code, 554, "at the first chunk");
    assert_eq!(r[2].data.as_ref().unwrap().code, 554);
    drop(t);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(requests(&rx), ["POST /senders/router/transactions 201"]);
    assert!(rx.cancelled().is_empty(), "over at the receiver already");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_at_most_once_a_second_until_the_replies_appear() {
    let rx = Receiver::start(Behaviour {
        respond_after: Duration::from_millis(2500),
        hanging_get: false,
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let started = std::time::Instant::now();
    let r = call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
    assert_eq!(codes(&r), [250]);
    assert!(started.elapsed() >= Duration::from_millis(2500));
    let gets: Vec<_> = rx.log().into_iter().filter(|e| e.method == "GET").collect();
    // 304s (unchanged) at ~0, 1, 2 s, then the 200 at ~3 s.
    assert!((2..=5).contains(&gets.len()), "{gets:#?}");
    assert!(gets.iter().all(|g| g.headers.contains_key("if-none-match")));
    assert_eq!(gets.last().unwrap().status, 200);
    let timeout: u64 = gets[0].headers["request-timeout"].parse().unwrap();
    assert!(
        (27..=29).contains(&timeout),
        "floor(remaining) - 1: {timeout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_get_waits_for_the_change() {
    let rx = Receiver::start(Behaviour {
        respond_after: Duration::from_millis(1500),
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    let r = call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
    assert_eq!(codes(&r), [250]);
    let gets: Vec<_> = rx.log().into_iter().filter(|e| e.method == "GET").collect();
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert_eq!(gets[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_puts_resume_where_a_416_says() {
    let rx = Receiver::start(Behaviour {
        forget_range_at: Some(8),
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |c| c.chunk_size = 8);
    let mut t = terminal(&ep);
    let body: Vec<u8> = (0..30u8).map(|i| b'a' + i % 26).collect();
    let r = deliver(
        &mut t,
        &["b@example.com"],
        &[&body[..5], &body[5..20], &body[20..]],
    )
    .await;
    assert_eq!(r[3].data.as_ref().unwrap().code, 250, "{:#?}", rx.log());
    assert_eq!(one(&rx).body, body);
    let puts: Vec<(String, u16)> = rx
        .log()
        .iter()
        .filter(|e| e.method == "PUT")
        .map(|e| (e.headers["content-range"].clone(), e.status))
        .collect();
    assert_eq!(
        puts,
        [
            ("bytes 0-7/*".to_owned(), 200),
            // Answered 200 and not stored ...
            ("bytes 8-15/*".to_owned(), 200),
            // ... so the next is ahead: 416 says 0-7, and it resumes at 8.
            ("bytes 16-23/*".to_owned(), 416),
            ("bytes 8-15/*".to_owned(), 200),
            ("bytes 16-23/*".to_owned(), 200),
            ("bytes 24-29/30".to_owned(), 200),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_last_chunk_finalizes_with_the_length() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |c| c.chunk_size = 8);
    let mut t = terminal(&ep);
    let r = deliver(&mut t, &["b@example.com"], &[b"12345678", b"abcdefgh", b""]).await;
    assert_eq!(r[3].data.as_ref().unwrap().code, 250);
    assert_eq!(one(&rx).body, b"12345678abcdefgh");
    let log = rx.log();
    let last = log.iter().rfind(|e| e.method == "PUT").unwrap();
    assert_eq!(
        last.headers
            .get("x-finalize-blob-length")
            .map(String::as_str),
        Some("16")
    );
    assert_eq!(last.entity_len, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fits_one_chunk_goes_in_one_plain_put() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |c| c.chunk_size = 100);
    let mut t = terminal(&ep);
    for body in [&b""[..], b"x"] {
        let r = deliver(&mut t, &["b@example.com"], &[body]).await;
        assert_eq!(r[1].data.as_ref().unwrap().code, 250, "{:#?}", rx.log());
        t = terminal(&ep);
    }
    let d = rx.wait_delivered(2, Duration::from_secs(5));
    assert_eq!(d[0].body, b"");
    assert_eq!(d[1].body, b"x");
    let puts: Vec<_> = rx.log().into_iter().filter(|e| e.method == "PUT").collect();
    assert!(
        puts.iter()
            .all(|p| !p.headers.contains_key("content-range")),
        "{puts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_break_the_protocol_are_temporary_failures() {
    for (mangle, needle) in [
        (Mangle::NoEtag, "no ETag"),
        (Mangle::NotJson, "not JSON"),
        (Mangle::EchoMailFrom, "mail_from"),
        (Mangle::EchoSmtpMeta, "smtp_meta"),
        (Mangle::WrongRemoteHost, "remote_host"),
        (Mangle::NoLocation, "without Location"),
    ] {
        let rx = Receiver::start(Behaviour {
            mangle,
            ..Default::default()
        })
        .unwrap();
        let ep = endpoint(&rx.url("router"), |_| {});
        let mut t = terminal(&ep);
        let r = call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
        let rcpt = &r.rcpts[0];
        assert_eq!(rcpt.code, 451, "{mangle:?}: {rcpt}");
        assert!(
            rcpt.text.starts_with("4.5.0 rest_output: POST http://")
                && rcpt.text.contains("bad reply")
                && rcpt.text.contains(needle),
            "{mangle:?}: {rcpt}"
        );
        assert_eq!(r.mail.as_ref().unwrap().code, 451);
        let r = call(&mut t, TxUpdate::body(&b"x"[..], true)).await;
        assert_eq!(r.data.unwrap().code, 451, "{mangle:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_failures_are_temporary_with_a_clear_text() {
    let rx = Receiver::start(Behaviour {
        fail_creates: 1,
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let r = call(
        &mut terminal(&ep),
        mail_rcpts("a@example.org", &["b@example.com"]),
    )
    .await;
    assert_eq!(
        r.rcpts[0].text,
        format!("4.3.0 rest_output: POST {}: HTTP 500", rx.url("router"))
    );
    // Nobody listening.
    let port = koukan_integration::free_port();
    let url = format!("http://127.0.0.1:{port}/senders/x/transactions");
    let ep = endpoint(&url, |_| {});
    let r = call(
        &mut terminal(&ep),
        mail_rcpts("a@example.org", &["b@example.com"]),
    )
    .await;
    assert_eq!(
        r.rcpts[0],
        Response::new(
            451,
            format!("4.4.1 rest_output: POST {url}: connection refused")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replies_within_rcpt_timeout_is_451_and_the_transaction_is_cancelled() {
    let rx = Receiver::start(Behaviour {
        respond_after: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |c| {
        c.rcpt_timeout = Duration::from_secs(2)
    });
    let mut t = terminal(&ep);
    let started = std::time::Instant::now();
    let r = call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(r.rcpts[0].code, 451);
    assert!(
        r.rcpts[0]
            .text
            .starts_with("4.4.7 rest_output: GET http://")
            && r.rcpts[0]
                .text
                .contains("no mail_response and rcpt_response within 2s"),
        "{}",
        r.rcpts[0]
    );
    let cancelled = koukan_integration::wait_for(Duration::from_secs(5), || {
        (!rx.cancelled().is_empty()).then(|| rx.cancelled())
    });
    assert_eq!(cancelled, Some(vec!["rx1".to_owned()]));
}

/// The data reply may take as long as data_timeout, however short
/// rcpt_timeout is (the original waited rcpt_timeout: §9 item 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_reply_wait_is_bounded_by_data_timeout() {
    let rx = Receiver::start(Behaviour {
        data_after: Duration::from_secs(3),
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |c| {
        c.rcpt_timeout = Duration::from_secs(1);
        c.data_timeout = Duration::from_secs(10);
    });
    let r = deliver(&mut terminal(&ep), &["b@example.com"], &[b"x"]).await;
    assert_eq!(r[1].data.as_ref().unwrap().code, 250);
    // And a data reply later than data_timeout is a timeout.
    rx.set_behaviour(|b| b.data_after = Duration::from_secs(10));
    let ep = endpoint(&rx.url("router"), |c| {
        c.data_timeout = Duration::from_secs(2)
    });
    let r = deliver(&mut terminal(&ep), &["b@example.com"], &[b"x"]).await;
    let data = r[1].data.as_ref().unwrap();
    assert_eq!(data.code, 451);
    assert!(data.text.contains("no data_response within 2s"), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_up_to_max_redirects() {
    let rx = Receiver::start(Behaviour {
        redirect: true,
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint(&rx.url("router"), |c| c.chunk_size = 4);
    let r = deliver(&mut terminal(&ep), &["a@example.com"], &[b"12345", b"678"]).await;
    assert_eq!(r[2].data.as_ref().unwrap().code, 250, "{:#?}", rx.log());
    assert_eq!(one(&rx).body, b"12345678");
    let statuses: Vec<u16> = rx.log().iter().map(|e| e.status).collect();
    assert!(
        statuses.contains(&307) && statuses.contains(&308),
        "{statuses:?}"
    );
    // The body is sent again after each redirect.
    let puts: Vec<_> = rx
        .log()
        .into_iter()
        .filter(|e| e.method == "PUT" && e.status == 200)
        .map(|e| e.headers["content-range"].clone())
        .collect();
    assert_eq!(puts, ["bytes 0-3/*", "bytes 4-7/8"]);

    let ep = endpoint(&rx.url("router"), |c| c.max_redirects = 0);
    let r = call(
        &mut terminal(&ep),
        mail_rcpts("a@example.org", &["b@example.com"]),
    )
    .await;
    assert!(
        r.rcpts[0].text.contains("more than 0 redirects"),
        "{}",
        r.rcpts[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_is_cancelled() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let ep = endpoint(&rx.url("router"), |_| {});
    let mut t = terminal(&ep);
    call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
    call(&mut t, TxUpdate::body(&b"partial"[..], false)).await;
    drop(t);
    let cancelled = koukan_integration::wait_for(Duration::from_secs(5), || {
        (!rx.cancelled().is_empty()).then(|| rx.cancelled())
    });
    assert_eq!(cancelled, Some(vec!["rx1".to_owned()]));
    assert!(rx.delivered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_verifies_the_certificate_against_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (rx, cert) = Receiver::start_tls(Behaviour::default(), dir.path()).unwrap();
    let url = rx.url("router");
    assert!(url.starts_with("https://"), "{url}");
    // Verified against the web PKI only: refused.
    let ep = endpoint(&url, |_| {});
    let r = call(
        &mut terminal(&ep),
        mail_rcpts("a@example.org", &["b@example.com"]),
    )
    .await;
    assert_eq!(r.rcpts[0].code, 451);
    assert!(
        r.rcpts[0]
            .text
            .starts_with("4.4.1 rest_output: POST https://")
            && r.rcpts[0].text.to_lowercase().contains("certificate"),
        "{}",
        r.rcpts[0]
    );
    // Its CA trusted, or verification off: delivered.
    for ep in [
        endpoint(&url, |c| c.ca_file = Some(cert.clone())),
        endpoint(&url, |c| c.verify_certificates = false),
    ] {
        let r = deliver(&mut terminal(&ep), &["b@example.com"], &[b"tls\r\n"]).await;
        assert_eq!(r[1].data.as_ref().unwrap().code, 250, "{:#?}", rx.log());
    }
    assert_eq!(rx.wait_delivered(2, Duration::from_secs(5)).len(), 2);
}

struct Verdict;

impl Signal for Verdict {
    const NAME: &'static str = "verdict";
    fn to_json(&self) -> Value {
        json!({"spam": false})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_go_as_filter_output_only_when_asked() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    // A delivery from the store: the stored signals, no client address.
    let stored = Arc::new(TxContext::new(
        "t2",
        Ingress::Stored(Arc::new(StoredInfo::new(
            "t2".into(),
            1,
            None,
            BTreeMap::from([("message_parse".to_owned(), json!({"defects": []}))]),
        ))),
        "inbound",
        "",
    ));
    for send in [false, true] {
        let ep = endpoint(&rx.url("router"), |c| c.send_filter_output = send);
        let mut t = TerminalService::new(RestOutput::new(ep, stored.clone()));
        call(&mut t, mail_rcpts("a@example.org", &["b@example.com"])).await;
        // A filter decided on the body meanwhile: PATCHed before it.
        stored.signals.insert(Verdict).ok();
        let r = call(&mut t, TxUpdate::body(&b"x"[..], true)).await;
        assert_eq!(r.data.unwrap().code, 250);
    }
    let d = rx.wait_delivered(2, Duration::from_secs(5));
    assert!(
        d[0].create.get("filter_output").is_none(),
        "{}",
        d[0].create
    );
    assert!(d[0].create.get("remote_host").is_none());
    assert!(d[0].create.get("smtp_meta").is_none());
    assert_eq!(
        d[1].create["filter_output"],
        json!({"message_parse": {"defects": []}, "verdict": {"spam": false}}),
        "the signal set before the create"
    );
    assert_eq!(
        d[1].filter_output,
        Some(json!({"message_parse": {"defects": []}, "verdict": {"spam": false}}))
    );
}

struct StubParser;

impl ReceiveParser for StubParser {
    fn parse(&self, raw: &[u8], max_inline: usize) -> Result<Parsed, String> {
        assert_eq!(max_inline, 10);
        Ok(Parsed {
            json: json!({"text_body": [{"content_type": "text/plain",
                                        "content": {"create_id": "0"}}]}),
            blobs: vec![("0".into(), Bytes::copy_from_slice(&raw[raw.len() - 3..]))],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_parsing_posts_the_spec_then_the_blobs_then_the_message() {
    let rx = Receiver::start(Behaviour {
        message_builder: true,
        ..Default::default()
    })
    .unwrap();
    let mut c = RestConfig::new(rx.url("router").parse().unwrap());
    c.receive_parsing = Some(ReceiveParsing { max_inline: 10 });
    assert!(matches!(
        RestEndpoint::new(c.clone(), None),
        Err(BuildError::NoParser)
    ));
    let ep = Arc::new(RestEndpoint::new(c, Some(Arc::new(StubParser))).unwrap());
    let r = deliver(
        &mut terminal(&ep),
        &["b@example.com"],
        &[b"Subject: p\r\n\r\n", b"hi\r\n"],
    )
    .await;
    assert_eq!(r[2].data.as_ref().unwrap().code, 250, "{:#?}", rx.log());
    let d = one(&rx);
    assert_eq!(d.body, b"Subject: p\r\n\r\nhi\r\n");
    assert_eq!(d.blobs["0"], b"hi\r\n"[1..].to_vec());
    assert_eq!(d.spec.unwrap()["text_body"][0]["content"]["create_id"], "0");
    assert_eq!(
        requests(&rx),
        [
            "POST /senders/router/transactions 201",
            "POST /transactions/rx1/message_builder 200",
            "PUT /transactions/rx1/blob/0 200",
            "PUT /transactions/rx1/body 200",
            "GET /transactions/rx1 200",
        ]
    );
}

#[test]
fn urls_the_application_gives_never_downgrade_https() {
    let u = |s: &str| -> Url { s.parse().unwrap() };
    assert!(allowed_next(&u("http://a/x"), &u("https://b/y")));
    assert!(allowed_next(&u("https://a/x"), &u("https://b/y")));
    assert!(!allowed_next(&u("https://a/x"), &u("http://a/y")));
    assert!(!allowed_next(&u("http://a/x"), &u("ftp://a/y")));
    let session = Session {
        url: u("https://app/transactions/t1"),
        etag: "1".into(),
        read: TxRead::default(),
        sent: Sent::default(),
    };
    assert_eq!(
        session.resolve("t1/body").unwrap().as_str(),
        "https://app/transactions/t1/body"
    );
    assert!(session.resolve("http://app/transactions/t1/body").is_err());
}

#[test]
fn reads_are_checked_against_what_was_sent() {
    let sent = Sent {
        remote_host: Some(("192.0.2.1".into(), 25)),
        local_host: None,
        rcpts: 2,
    };
    let read = |v: Value| TxRead::parse(&v).unwrap();
    assert_eq!(
        check_read(&read(json!({"rcpt_to": [{}, {}]})), &sent),
        Ok(())
    );
    assert_eq!(
        check_read(&read(json!({"remote_host": ["192.0.2.1", 25]})), &sent),
        Ok(())
    );
    for (v, why) in [
        (json!({"remote_host": ["192.0.2.1", 26]}), "not the"),
        (json!({"local_host": ["192.0.2.1", 25]}), "was not sent"),
        (json!({"rcpt_to": [{}]}), "rcpt_to has 1"),
        (
            json!({"rcpt_response": [{"code": 250}, {"code": 250}, {"code": 250}]}),
            "rcpt_response has 3",
        ),
        (json!({"mail_response": {"code": 99}}), "not an SMTP reply"),
        (json!({"data_response": {"code": 600}}), "not an SMTP reply"),
    ] {
        let e = check_read(&read(v.clone()), &sent).unwrap_err();
        assert!(e.contains(why), "{v}: {e}");
    }
}

#[test]
fn application_texts_cannot_break_the_smtp_reply() {
    let r = smtp_response(&koukan_rest::Response::new(
        550,
        "5.1.1 no\r\nsuch\u{0}user",
    ));
    assert_eq!(r, Response::new(550, "5.1.1 no\nsuch user"));
    let long = "x".repeat(2000);
    assert_eq!(
        smtp_response(&koukan_rest::Response::new(250, long))
            .text
            .len(),
        500
    );
    let many = vec!["l"; 50].join("\n");
    assert_eq!(
        smtp_response(&koukan_rest::Response::new(250, many))
            .text
            .lines()
            .count(),
        10
    );
    assert_eq!(
        smtp_response(&koukan_rest::Response {
            code: 451,
            message: None
        }),
        Response::new(451, "temporary error")
    );
}
