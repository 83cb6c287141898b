//! The rest endpoint end to end: SMTP clients -> the koukan binary -> a
//! receiving application over HTTP (the test receiver,
//! `koukan_integration::receiver`): cut-through relay with the
//! application's own replies passed back while the client waits, HTTP
//! failures as 4xx, store-and-forward retrying until the application
//! recovers, redirects, and every body size around the chunk size with
//! DATA and BDAT, one PUT or ranged PUTs.

use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::receiver::{Behaviour, Receiver, Reply};
use koukan_integration::*;

/// The ranged endpoint's chunk size.
const CHUNK: usize = 64 * 1024;

/// Listeners: `relay` (cut-through, one PUT), `chunked` (cut-through,
/// ranged PUTs of CHUNK), `sf` (store-and-forward through `out`, which
/// relays to the one-PUT endpoint).
struct Setup {
    relay: SocketAddr,
    chunked: SocketAddr,
    sf: SocketAddr,
}

impl Setup {
    fn new() -> Self {
        Self {
            relay: loopback(free_port()),
            chunked: loopback(free_port()),
            sf: loopback(free_port()),
        }
    }

    fn yaml(&self, url: &str) -> String {
        format!(
            r#"
node: {{id: rest-output}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: relay
    address: "{relay}"
    smtp: {{hostname: koukan.test, sender: relay}}
  - name: chunked
    address: "{chunked}"
    smtp: {{hostname: koukan.test, sender: chunked}}
  - name: sf
    address: "{sf}"
    smtp: {{hostname: koukan.test, sender: sf}}
  senders: [{{name: relay, chain: relay}}, {{name: chunked, chain: chunked}}, {{name: sf, chain: sf}}]
  chains:
  # A static router hands MAIL over alone; the shorthand with the first
  # recipient: both are exercised.
  - name: relay
    filters:
    - router: {{destination: {{endpoint: app}}}}
  - name: chunked
    endpoint: app-chunked
  - name: sf
    store_and_forward: {{output_chain: out}}
  - name: out
    endpoint: app
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: app
    rest: {{url: "{url}", sender_name: router, sender_tag: koukan, rcpt_timeout: 10s, data_timeout: 60s}}
  - name: app-chunked
    rest: {{url: "{url}", chunk_size: {CHUNK}, rcpt_timeout: 10s, data_timeout: 60s}}
"#,
            relay = self.relay,
            chunked = self.chunked,
            sf = self.sf,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Data,
    BdatOne,
    /// Four chunks, with a pause before the last.
    BdatSeveral,
}

/// `size` octets of message content: a header, then 78-octet lines (some
/// starting with a dot, for DATA's dot-stuffing), ending with CRLF; one
/// octet is just that (only BDAT carries it as is).
fn content(size: usize) -> Vec<u8> {
    match size {
        0 => return Vec::new(),
        1 => return b"x".to_vec(),
        _ => {}
    }
    let mut out = b"Subject: rest path\r\n\r\n".to_vec();
    let mut n = 0usize;
    while size - out.len() >= 78 + 2 {
        let lead = if n.is_multiple_of(7) { '.' } else { 'x' };
        out.extend_from_slice(format!("{lead}{n:07}{}\r\n", "y".repeat(68)).as_bytes());
        n += 1;
    }
    let rest = size - out.len();
    out.extend(std::iter::repeat_n(b'z', rest - 2));
    out.extend_from_slice(b"\r\n");
    assert_eq!(out.len(), size);
    out
}

/// What DATA delivers: a final CRLF added when missing.
fn terminated(content: &[u8]) -> Vec<u8> {
    let mut out = content.to_vec();
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut at_line_start = true;
    for &b in &terminated(content) {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One SMTP transaction: the RCPT replies, and the final reply to the
/// data (`None` when no recipient was accepted and no data was sent).
fn smtp(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    body: &[u8],
    mode: Mode,
) -> (Vec<String>, Option<String>) {
    let mut c = RawSmtp::connect(addr).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    assert!(c.reply().unwrap().starts_with("220"));
    assert!(c.cmd("EHLO client.test").unwrap().starts_with("250"));
    let mail = c.cmd(&format!("MAIL FROM:<{from}>")).unwrap();
    assert!(mail.starts_with("250"), "MAIL: {mail}");
    let replies: Vec<String> = rcpts
        .iter()
        .map(|r| {
            c.cmd(&format!("RCPT TO:<{r}>"))
                .unwrap()
                .trim_end()
                .to_owned()
        })
        .collect();
    if !replies.iter().any(|r| r.starts_with("250")) {
        let _ = c.cmd("QUIT");
        return (replies, None);
    }
    let reply = match mode {
        Mode::Data => {
            assert!(c.cmd("DATA").unwrap().starts_with("354"));
            c.send(&dot_stuffed(body)).unwrap();
            c.reply().unwrap()
        }
        Mode::BdatOne => {
            c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes())
                .unwrap();
            c.send(body).unwrap();
            c.reply().unwrap()
        }
        Mode::BdatSeveral => {
            let quarter = body.len().div_ceil(4).max(1);
            let mut pieces: Vec<&[u8]> = body.chunks(quarter).collect();
            while pieces.len() < 4 {
                pieces.insert(0, &[]);
            }
            let (last, rest) = pieces.split_last().unwrap();
            for p in rest {
                c.send(format!("BDAT {}\r\n", p.len()).as_bytes()).unwrap();
                c.send(p).unwrap();
                let r = c.reply().unwrap();
                assert!(r.starts_with("250"), "BDAT: {r}");
            }
            std::thread::sleep(Duration::from_millis(100));
            c.send(format!("BDAT {} LAST\r\n", last.len()).as_bytes())
                .unwrap();
            c.send(last).unwrap();
            c.reply().unwrap()
        }
    };
    let _ = c.cmd("QUIT");
    (replies, Some(reply.trim_end().to_owned()))
}

fn start(rx: &Receiver) -> (Setup, Koukan) {
    let setup = Setup::new();
    let k = Koukan::start(&setup.yaml(&rx.url("router"))).unwrap();
    (setup, k)
}

fn no_panic(k: &Koukan) {
    assert!(!k.log().contains("panicked"), "{}", k.log());
}

#[test]
fn relay_delivers_the_exact_message_with_its_envelope() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let (setup, k) = start(&rx);
    let body = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n";
    let (rcpts, data) = smtp(
        setup.relay,
        "a@example.org",
        &["b@example.com", "c@example.com"],
        body,
        Mode::Data,
    );
    assert_eq!(
        rcpts,
        [
            "250 2.1.5 recipient ok (receiver)",
            "250 2.1.5 recipient ok (receiver)"
        ]
    );
    assert_eq!(data.as_deref(), Some("250 2.0.0 delivered (receiver)"));
    let d = rx.wait_delivered(1, Duration::from_secs(5));
    assert_eq!(d.len(), 1, "one transaction for both: {:#?}", rx.log());
    assert_eq!(d[0].body, body);
    assert_eq!(d[0].mail_from, "a@example.org");
    assert_eq!(d[0].rcpt_to, ["b@example.com", "c@example.com"]);
    let create = &d[0].create;
    assert_eq!(create["remote_host"][0], "127.0.0.1");
    assert_eq!(create["local_host"][1], setup.relay.port());
    assert_eq!(create["smtp_meta"]["ehlo_host"], "client.test");
    assert_eq!(create["sender"]["name"], "router");
    assert_eq!(create["sender"]["tag"], "koukan");
    assert!(create.get("filter_output").is_none());
    // The second recipient was PATCHed.
    assert!(
        rx.log()
            .iter()
            .any(|e| e.method == "PATCH" && e.status == 200)
    );
    no_panic(&k);
}

#[test]
fn the_applications_refusals_reach_the_client_while_it_waits() {
    let rx = Receiver::start(Behaviour {
        data: Reply::new(554, "5.6.0 content refused by the application"),
        ..Default::default()
    })
    .unwrap();
    let (setup, k) = start(&rx);
    for addr in [setup.relay, setup.chunked] {
        let (rcpts, data) = smtp(
            addr,
            "a@example.org",
            &[
                "reject@example.com",
                "tempfail@example.com",
                "ok@example.com",
            ],
            b"Subject: x\r\n\r\nbody\r\n",
            Mode::Data,
        );
        assert_eq!(
            rcpts,
            [
                "550 5.1.1 no such user",
                "451 4.2.1 mailbox busy, try later",
                "250 2.1.5 recipient ok (receiver)"
            ]
        );
        assert_eq!(
            data.as_deref(),
            Some("554 5.6.0 content refused by the application")
        );
    }
    assert!(rx.delivered().is_empty());
    no_panic(&k);
}

#[test]
fn an_application_that_is_down_is_a_temporary_failure() {
    let mut rx = Receiver::start(Behaviour::default()).unwrap();
    let (setup, k) = start(&rx);
    rx.stop();
    let (rcpts, data) = smtp(
        setup.relay,
        "a@example.org",
        &["b@example.com"],
        b"x\r\n",
        Mode::Data,
    );
    assert_eq!(data, None);
    let url = rx.url("router");
    assert_eq!(
        rcpts,
        [format!(
            "451 4.4.1 rest_output: POST {url}: connection refused"
        )]
    );
    // Back: the client's retry goes through.
    rx.restart().unwrap();
    let (rcpts, data) = smtp(
        setup.relay,
        "a@example.org",
        &["b@example.com"],
        b"x\r\n",
        Mode::BdatOne,
    );
    assert!(rcpts[0].starts_with("250"), "{rcpts:?}");
    assert_eq!(data.as_deref(), Some("250 2.0.0 delivered (receiver)"));
    no_panic(&k);
}

#[test]
fn stored_mail_is_retried_until_the_application_recovers() {
    let rx = Receiver::start(Behaviour {
        fail_creates: 1,
        ..Default::default()
    })
    .unwrap();
    let (setup, k) = start(&rx);
    let body = b"Subject: stored\r\n\r\nkept\r\n";
    let (rcpts, data) = smtp(
        setup.sf,
        "a@example.org",
        &["b@example.com"],
        body,
        Mode::Data,
    );
    assert!(rcpts[0].starts_with("250"), "{rcpts:?}");
    let data = data.unwrap();
    let id = data
        .strip_prefix("250 2.0.0 queued as ")
        .unwrap_or_else(|| panic!("{data}"))
        .to_owned();
    let d = rx.wait_delivered(1, Duration::from_secs(20));
    assert_eq!(d.len(), 1, "{:#?}\n{}", rx.log(), k.log());
    assert_eq!(d[0].body, body);
    assert_eq!(rx.creates(), 2, "the first got HTTP 500");
    let tx = wait_for(Duration::from_secs(10), || {
        let (_, tx) = http_get(k.admin, &format!("/transactions/{id}")).ok()?;
        tx.contains("\"state\":\"final\"").then_some(tx)
    })
    .unwrap_or_else(|| panic!("not final: {}", k.log()));
    assert!(tx.contains("\"attempt_count\":2"), "{tx}");
    assert!(tx.contains("HTTP 500"), "attempt 1's reply is kept: {tx}");
    no_panic(&k);
}

#[test]
fn redirects_are_followed() {
    let rx = Receiver::start(Behaviour {
        redirect: true,
        ..Default::default()
    })
    .unwrap();
    let (setup, k) = start(&rx);
    let body = content(3 * CHUNK + 5);
    for addr in [setup.relay, setup.chunked] {
        let (_, data) = smtp(
            addr,
            "a@example.org",
            &["b@example.com"],
            &body,
            Mode::BdatOne,
        );
        assert_eq!(data.as_deref(), Some("250 2.0.0 delivered (receiver)"));
    }
    let d = rx.wait_delivered(2, Duration::from_secs(10));
    assert!(d.iter().all(|d| d.body == body));
    let log = rx.log();
    assert!(log.iter().any(|e| e.status == 307), "create redirected");
    assert!(
        log.iter().any(|e| e.status == 308 && e.method == "PUT"),
        "uploads redirected"
    );
    no_panic(&k);
}

#[test]
fn every_size_and_mode_arrives_intact_in_one_put_and_in_ranges() {
    let rx = Receiver::start(Behaviour::default()).unwrap();
    let (setup, k) = start(&rx);
    let sizes = [0, 1, CHUNK, CHUNK + 1, 7 * CHUNK + 3, 5 * 1024 * 1024];
    let mut cells = Vec::new();
    for (name, addr) in [("one-put", setup.relay), ("ranged", setup.chunked)] {
        for mode in [Mode::Data, Mode::BdatOne, Mode::BdatSeveral] {
            for size in sizes {
                let rcpts: &[usize] = if mode == Mode::Data { &[1, 3] } else { &[1] };
                for n in rcpts {
                    cells.push((name, addr, mode, size, *n));
                }
            }
        }
    }
    for (name, addr, mode, size, n) in &cells {
        let from = format!("{name}-{mode:?}-{size}-{n}@example.org").to_lowercase();
        let rcpts: Vec<String> = (1..=*n).map(|i| format!("r{i}@example.com")).collect();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let (replies, data) = smtp(*addr, &from, &rcpts, &content(*size), *mode);
        assert!(
            replies.iter().all(|r| r.starts_with("250")),
            "{from}: {replies:?}"
        );
        assert_eq!(
            data.as_deref(),
            Some("250 2.0.0 delivered (receiver)"),
            "{from}\n{}",
            k.log()
        );
    }
    let delivered = rx.wait_delivered(cells.len(), Duration::from_secs(30));
    assert_eq!(delivered.len(), cells.len());
    for (name, _, mode, size, n) in &cells {
        let from = format!("{name}-{mode:?}-{size}-{n}@example.org").to_lowercase();
        let d = delivered.iter().find(|d| d.mail_from == from).unwrap();
        let sent = content(*size);
        let want = if *mode == Mode::Data {
            terminated(&sent)
        } else {
            sent
        };
        assert_eq!(d.rcpt_to.len(), *n, "{from}");
        assert!(
            d.body == want,
            "{from}: {} octets arrived, {} sent",
            d.body.len(),
            want.len()
        );
    }
    // How each went: one plain PUT for the one-put endpoint; for the
    // ranged one, a body over a chunk in ranges of CHUNK (an empty last
    // PUT with X-Finalize-Blob-Length when all was sent before the end
    // was known), at most a chunk in one plain PUT or one range.
    let log = rx.log();
    for (name, _, mode, size, n) in &cells {
        let from = format!("{name}-{mode:?}-{size}-{n}@example.org").to_lowercase();
        let d = delivered.iter().find(|d| d.mail_from == from).unwrap();
        let path = format!("/transactions/{}/body", d.tx);
        let puts: Vec<_> = log
            .iter()
            .filter(|e| e.method == "PUT" && e.path == path)
            .collect();
        let ranged = puts
            .iter()
            .filter(|e| e.headers.contains_key("content-range"))
            .count();
        let plain = puts
            .iter()
            .filter(|e| !e.headers.contains_key("content-range"))
            .filter(|e| !e.headers.contains_key("x-finalize-blob-length"))
            .count();
        let body = d.body.len();
        if *name == "one-put" || body < CHUNK {
            assert_eq!((plain, ranged), (1, 0), "{from}: {puts:#?}");
        } else if body == CHUNK {
            // As one last chunk: a plain PUT; as a chunk then the end: a
            // range, then the empty PUT finalizing it.
            let finalized = puts.len() - plain - ranged;
            assert!(
                (plain, ranged, finalized) == (1, 0, 0) || (plain, ranged, finalized) == (0, 1, 1),
                "{from}: {puts:#?}"
            );
        } else {
            assert_eq!(plain, 0, "{from}: {puts:#?}");
            assert_eq!(ranged, body.div_ceil(CHUNK), "{from}: {puts:#?}");
            assert!(puts.iter().all(|e| e.status == 200), "{from}: {puts:#?}");
        }
    }
    no_panic(&k);
}
