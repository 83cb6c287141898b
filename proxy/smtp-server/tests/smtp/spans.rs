//! Tracing spans: what a chain logs carries the transaction id and the
//! session's listener and peer, though nobody passed them to it.

use crate::common::*;

/// The target test chains log under (enabled in the shared capture).
const CHAIN: &str = "koukan_test::chain";

#[tokio::test]
async fn chain_log_lines_carry_the_transaction_and_session() {
    let logs = captured_logs();
    let factory = TestFactory::with(|u| {
        if let Some(m) = &u.mail_from {
            tracing::info!(target: CHAIN, mail_from = %m.address, "chain saw MAIL");
        }
        if let Some(b) = u.body.as_ref().filter(|b| b.last) {
            tracing::info!(target: CHAIN, size = b.data.len(), "chain saw the end of data");
        }
        accept_all(u)
    });
    let srv = start(config(), factory).await;
    let mut c = srv.session().await;
    let peer = c.io.local_addr().unwrap();
    c.ehlo().await;
    envelope(&mut c, "spans-a@example.org").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    assert_eq!(c.cmd("hello\r\n.").await, "250 2.0.0 queued");
    // A second transaction on the same connection gets its own id.
    assert_eq!(
        c.cmd("MAIL FROM:<spans-b@example.org>").await,
        "250 2.1.0 sender ok"
    );
    c.cmd("QUIT").await;
    c.expect_eof().await;

    let text = logs.text();
    let session = format!("session{{listener=test peer={peer}}}");
    let line = |needle: &str| {
        let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "{needle}: {found:?}\n{text}");
        found[0]
    };

    let mail = line("chain saw MAIL mail_from=spans-a@example.org");
    assert!(
        mail.contains(&format!("{session}:tx{{tx=tx0}}: {CHAIN}: ")),
        "{mail}"
    );
    // The data arrives in a later command than MAIL: still the same span.
    let data = text
        .lines()
        .find(|l| l.contains("chain saw the end of data") && l.contains(&session))
        .unwrap_or_else(|| panic!("no end-of-data line of this session:\n{text}"));
    assert!(data.contains(":tx{tx=tx0}: "), "{data}");
    let second = line("chain saw MAIL mail_from=spans-b@example.org");
    assert!(
        second.contains(&format!("{session}:tx{{tx=tx1}}: ")),
        "{second}"
    );

    // The summary line gets its id from the span too, not from a field.
    let summary = line("mail_from=spans-a@example.org rcpts=");
    assert!(
        summary.contains(&format!("{session}:tx{{tx=tx0}}: koukan::tx: transaction ")),
        "{summary}"
    );
    assert!(!summary.contains(" tx=tx0"), "{summary}");
    let aborted = line("mail_from=spans-b@example.org rcpts=");
    assert!(aborted.contains(":tx{tx=tx1}: koukan::tx: "), "{aborted}");
    assert!(aborted.contains("outcome=\"aborted\""), "{aborted}");
}
