//! A bug in a chain never costs the client its reply: a panic inside the
//! chain ends that transaction with `451 4.3.0` and the session goes on; a
//! panic in the session's own handling ends the session with `421 4.3.0`.
//! Either way the listener keeps serving, the summary line says
//! `internal_error` and `koukan_internal_errors_total` counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use koukan_chain::{BoxTxService, Ingress, TxContext};
use koukan_smtp_server::TransactionFactory;

use crate::common::*;

const INTERNAL: &str = "451 4.3.0 internal error, try again later";

/// Accepts everything, but panics on MAIL from `panic-mail@…`, on a RCPT
/// to `panic-rcpt@…` and on a body chunk containing `PANIC`: a filter with
/// a bug, on purpose.
fn buggy_chain() -> TestFactory {
    TestFactory::with(|u| {
        if u.mail_from
            .as_ref()
            .is_some_and(|m| m.address.starts_with("panic-mail"))
        {
            panic!("bug on MAIL (on purpose)");
        }
        if u.rcpt_to
            .iter()
            .any(|r| r.mailbox.address.starts_with("panic-rcpt"))
        {
            panic!("bug on RCPT (on purpose)");
        }
        if u.body
            .as_ref()
            .is_some_and(|b| b.data.windows(5).any(|w| w == b"PANIC"))
        {
            panic!("bug on the body (on purpose)");
        }
        accept_all(u)
    })
}

/// A message the buggy chain accepts, proving the session still works.
async fn deliver_one(c: &mut Client<tokio::net::TcpStream>, from: &str) {
    envelope(c, from).await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("Subject: fine\r\n\r\nfine\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 queued");
}

fn count(metrics: &str, needle: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_panic_on_the_body_answers_451_and_the_session_goes_on() {
    let logs = captured_logs();
    let srv = start(config(), buggy_chain()).await;
    let mut c = srv.session().await;
    c.ehlo().await;

    // Small message: the panic is in its only (last) chunk.
    envelope(&mut c, "panic-body-small@example.org").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("Subject: x\r\n\r\nPANIC\r\n.\r\n").await;
    assert_eq!(c.reply().await, INTERNAL);

    // Several chunks: the panic is in the first; the rest of the message
    // is read and discarded, the answer comes after the dot.
    envelope(&mut c, "panic-body-big@example.org").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let mut body = b"Subject: big\r\n\r\nPANIC\r\n".to_vec();
    let line = format!("{}\r\n", "y".repeat(998));
    while body.len() < 300 * 1024 {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body).await;
    assert_eq!(c.reply().await, INTERNAL);

    deliver_one(&mut c, "after-panic@example.org").await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye");
    c.expect_eof().await;

    // Each panicking chain was dropped (its state is unknown), and no
    // chunk after the one that panicked reached it (the recorder notes a
    // chunk once the responder returned, so the panicking one is absent
    // too).
    let seen = srv.record.seen();
    let big_chunks = seen
        .iter()
        .filter(|s| s.tx == 1 && s.body.is_some())
        .count();
    assert_eq!(big_chunks, 0, "{seen:?}");
    assert!(srv.record.dropped() >= 2);

    let m = srv.metrics_text();
    assert_eq!(
        count(
            &m,
            "smtp_transactions_total{listener=\"test\",outcome=\"internal_error\"}"
        ),
        2,
        "{m}"
    );
    assert_eq!(
        count(&m, "internal_errors_total{component=\"smtp_chain\"}"),
        2,
        "{m}"
    );
    let text = logs.text();
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("koukan::tx") && l.contains("panic-body-"))
        .collect();
    assert_eq!(summary.len(), 2, "{text}");
    assert!(
        summary
            .iter()
            .all(|l| l.contains("outcome=\"internal_error\"") && l.contains("reply=451 4.3.0")),
        "{summary:?}"
    );
    assert!(
        text.contains("bug on the body (on purpose)"),
        "the panic is logged: {text}"
    );
}

#[tokio::test]
async fn a_panic_on_a_bdat_chunk_answers_451_to_it_and_to_last() {
    let srv = start(config(), buggy_chain()).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    envelope(&mut c, "panic-bdat@example.org").await;
    let first = "Subject: chunked\r\n\r\nPANIC\r\n";
    c.send(format!("BDAT {}\r\n{first}", first.len())).await;
    assert_eq!(c.reply().await, INTERNAL);
    // The octets of the following chunks are still consumed, not run as
    // commands.
    let more = "RSET\r\nQUIT\r\n";
    c.send(format!("BDAT {}\r\n{more}", more.len())).await;
    assert_eq!(c.reply().await, INTERNAL);
    c.send(format!("BDAT {} LAST\r\n{more}", more.len())).await;
    assert_eq!(c.reply().await, INTERNAL);
    deliver_one(&mut c, "after-bdat-panic@example.org").await;
    let m = srv.metrics_text();
    assert_eq!(
        count(
            &m,
            "smtp_transactions_total{listener=\"test\",outcome=\"internal_error\"}"
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn a_panic_on_mail_or_rcpt_answers_every_command_of_the_batch() {
    let srv = start(config(), buggy_chain()).await;
    let mut c = srv.session().await;
    c.ehlo().await;

    // MAIL with pipelined RCPTs: one update, every part answered.
    c.send("MAIL FROM:<panic-mail@example.org>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\n")
        .await;
    assert_eq!(c.reply().await, INTERNAL);
    for _ in 0..2 {
        let r = c.reply().await;
        assert!(r.starts_with("451 4.3.0") || r.starts_with("503"), "{r}");
    }
    // No transaction is left open.
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));

    // A RCPT batch in an open transaction: the transaction ends with it.
    assert_eq!(
        c.cmd("MAIL FROM:<ok@example.org>").await,
        "250 2.1.0 sender ok"
    );
    c.send("RCPT TO:<panic-rcpt@example.net>\r\nRCPT TO:<c@example.net>\r\n")
        .await;
    assert_eq!(c.reply().await, INTERNAL);
    assert_eq!(c.reply().await, INTERNAL);
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));

    deliver_one(&mut c, "after-envelope-panic@example.org").await;
    let m = srv.metrics_text();
    assert_eq!(
        count(&m, "internal_errors_total{component=\"smtp_chain\"}"),
        2,
        "{m}"
    );
}

/// Builds chains fine, except that building the second one panics: a bug
/// in the session's own path (not inside a chain), so the session's state
/// is unknown and it ends.
struct PanicsOnSecondMail {
    inner: TestFactory,
    calls: AtomicUsize,
}

impl TransactionFactory for PanicsOnSecondMail {
    fn new_transaction(&self, ingress: Ingress) -> (Arc<TxContext>, BoxTxService) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("factory bug (on purpose)");
        }
        self.inner.new_transaction(ingress)
    }
}

#[tokio::test]
async fn a_panic_in_the_session_path_closes_with_421_and_the_listener_serves_on() {
    let inner = TestFactory::new();
    let record = inner.record.clone();
    let factory = PanicsOnSecondMail {
        inner,
        calls: AtomicUsize::new(0),
    };
    let srv = start_with_factory(config(), Arc::new(factory), record).await;
    let mut c = srv.session().await;
    c.ehlo().await;
    deliver_one(&mut c, "first@example.org").await;
    assert_eq!(
        c.cmd("MAIL FROM:<second@example.org>").await,
        "421 4.3.0 internal error, closing connection"
    );
    c.expect_eof().await;

    let mut again = srv.session().await;
    again.ehlo().await;
    deliver_one(&mut again, "third@example.org").await;
    let m = srv.metrics_text();
    assert_eq!(
        count(&m, "internal_errors_total{component=\"smtp_session\"}"),
        1,
        "{m}"
    );
}
