//! Upstream connection reuse through a `ConnectionPool`: which sessions are
//! kept, for which destination, for how long, and what happens when a kept
//! session turns out to be gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koukan_chain::transaction::{Hosts, Response, TxUpdate};
use koukan_smtp_client::{ClientConfig, ConnectionPool, DiscardReason, PoolMetrics, SmtpClient};

use crate::smtp::self_signed_tls;
use crate::smtp_server::{CLOSE, Script, SmtpServer};
use crate::*;

fn body(data: &str, last: bool) -> TxUpdate {
    TxUpdate::body(Bytes::from(data.to_owned()), last)
}

fn message(n: usize) -> String {
    format!("Subject: {n}\r\n\r\nmessage {n}\r\n")
}

/// The endpoint label of the test pools.
const ENDPOINT: &str = "test-endpoint";

/// The test configuration (default reuse bounds unless `tweak` changes
/// them) and a pool built from it.
fn setup(tweak: impl FnOnce(&mut ClientConfig)) -> (Arc<ClientConfig>, ConnectionPool) {
    let (cfg, pool, _) = setup_metered(tweak);
    (cfg, pool)
}

/// [`setup`], and the metrics the pool counts into.
fn setup_metered(
    tweak: impl FnOnce(&mut ClientConfig),
) -> (Arc<ClientConfig>, ConnectionPool, PoolMetrics) {
    let mut cfg = test_config();
    tweak(&mut cfg);
    let metrics = PoolMetrics::new();
    let pool = ConnectionPool::new(&cfg, &metrics, ENDPOINT);
    (Arc::new(cfg), pool, metrics)
}

/// Every series of the test endpoint, to compare in one assertion.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    opened: u64,
    reused: u64,
    idle_timeout: u64,
    max_transactions: u64,
    broken: u64,
    pool_full: u64,
    pool_dropped: u64,
    idle: i64,
}

fn counts(m: &PoolMetrics) -> Counts {
    let d = |r| m.discarded(ENDPOINT, r);
    Counts {
        opened: m.opened(ENDPOINT),
        reused: m.reused(ENDPOINT),
        idle_timeout: d(DiscardReason::IdleTimeout),
        max_transactions: d(DiscardReason::MaxTransactions),
        broken: d(DiscardReason::Broken),
        pool_full: d(DiscardReason::PoolFull),
        pool_dropped: d(DiscardReason::PoolDropped),
        idle: m.idle(ENDPOINT),
    }
}

/// One whole transaction (message `n` to one recipient) on a new client of
/// `pool`; returns the data response after checking the envelope passed.
async fn deliver(cfg: &Arc<ClientConfig>, pool: &ConnectionPool, to: Hosts, n: usize) -> Response {
    let mut c = pooled_client(cfg, to, pool);
    let resp = send(&mut c, envelope("a@x.test", &["b@y.test"])).await;
    assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")), "message {n}");
    assert_eq!(
        resp.rcpts,
        vec![r(250, "2.1.5 recipient ok")],
        "message {n}"
    );
    send(&mut c, body(&message(n), true))
        .await
        .data
        .expect("a data response")
}

fn queued() -> Response {
    r(250, "2.0.0 queued as T1")
}

/// Waits until connection `conn` has received a command with `verb`.
async fn wait_for_verb(srv: &SmtpServer, conn: usize, verb: &str) {
    for _ in 0..200 {
        if srv.conns().get(conn).is_some_and(|c| c.count(verb) > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("connection {conn} never got {verb}: {:?}", srv.conns());
}

/// Waits until the pool holds `n` idle sessions (releases after RSET run
/// in the background).
async fn wait_idle(pool: &ConnectionPool, n: usize) {
    for _ in 0..200 {
        if pool.idle_count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool holds {} idle sessions, not {n}", pool.idle_count());
}

#[tokio::test]
async fn sequential_transactions_share_one_connection() {
    let srv = SmtpServer::start(Script::new().ext("PIPELINING")).await;
    let (cfg, pool, m) = setup_metered(|_| {});
    for n in 1..=2 {
        assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), n).await, queued());
    }
    let conns = srv.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        conns[0].verbs(),
        ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"]
    );
    let delivered: Vec<Vec<u8>> = (1..=2)
        .map(|n| format!("{}.\r\n", message(n)).into_bytes())
        .collect();
    assert_eq!(conns[0].messages, delivered);
    assert!(!conns[0].closed);
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 1,
            reused: 1,
            idle: 1,
            ..Counts::default()
        }
    );

    // The pool owns what it keeps: dropping it QUITs the session.
    drop(pool);
    let log = srv.wait_quit(0).await;
    assert_eq!(log.count("MAIL"), 2);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 1,
            reused: 1,
            pool_dropped: 1,
            ..Counts::default()
        }
    );
}

#[tokio::test]
async fn reuse_keeps_tls_and_chunking() {
    let srv = SmtpServer::start(Script::new().ext("CHUNKING").tls(self_signed_tls())).await;
    let (cfg, pool) = setup(|_| {});
    for n in 1..=3 {
        let data = deliver(&cfg, &pool, hosts(&[srv.addr]), n).await;
        assert_eq!(data.code, 250, "{data}");
    }
    let conns = srv.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert!(conns[0].tls);
    assert_eq!(
        conns[0].verbs(),
        [
            "EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "BDAT", "MAIL", "RCPT", "BDAT", "MAIL",
            "RCPT", "BDAT"
        ]
    );
}

#[tokio::test]
async fn another_destination_gets_its_own_connection() {
    let a = SmtpServer::start(Script::new()).await;
    let b = SmtpServer::start(Script::new()).await;
    let (cfg, pool) = setup(|_| {});
    for (n, srv) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), n).await, queued());
    }
    for srv in [&a, &b] {
        let conns = srv.conns();
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].count("MAIL"), 2);
    }
    assert_eq!(pool.idle_count(), 2);

    // The destination is the host list, not the peer it led to: a list
    // starting with the same server is another destination.
    let other = hosts(&[a.addr, b.addr]);
    assert_eq!(deliver(&cfg, &pool, other.clone(), 9).await, queued());
    assert_eq!(a.conns().len(), 2);
    assert_eq!(pool.idle_count(), 3);
    // ... whose session is then reused for it.
    assert_eq!(deliver(&cfg, &pool, other, 10).await, queued());
    assert_eq!(a.conns().len(), 2);
    assert_eq!(a.conns()[1].count("MAIL"), 2);
}

#[tokio::test]
async fn an_idle_session_is_never_shared() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|_| {});
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    // Two transactions open at once: one gets the idle session, the other
    // a new connection.
    let mut first = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let mut second = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    for c in [&mut first, &mut second] {
        let resp = send(c, envelope("a@x", &["b@y"])).await;
        assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    }
    assert_eq!(pool.idle_count(), 0);
    for c in [&mut first, &mut second] {
        assert_eq!(send(c, body("x\r\n", true)).await.data, Some(queued()));
    }
    let conns = srv.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].count("MAIL"), 2);
    assert_eq!(conns[1].count("MAIL"), 1);
    assert_eq!(pool.idle_count(), 2);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            reused: 1,
            idle: 2,
            ..Counts::default()
        }
    );
}

#[tokio::test]
async fn session_closed_while_idle_is_replaced() {
    let srv = SmtpServer::start(Script::new().ext("PIPELINING")).await;
    let (cfg, pool, m) = setup_metered(|_| {});
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    assert_eq!(srv.close_idle().await, 1);
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert!(conns[0].closed_idle);
    assert_eq!(conns[0].count("MAIL"), 1);
    assert_eq!(conns[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
    assert_eq!(conns[1].data, format!("{}.\r\n", message(2)).into_bytes());
    // Whether the probe on taking it or the MAIL on it found it closed,
    // it counts as broken once.
    let c = counts(&m);
    assert_eq!((c.opened, c.broken, c.idle), (2, 1, 1), "{c:?}");
}

/// The peer answers the first MAIL on the reused session with 421 (the
/// session looked open, so only the MAIL shows it is gone).
#[tokio::test]
async fn reused_session_answering_421_is_replaced() {
    let srv = SmtpServer::start(
        Script::new()
            .reply("MAIL", "250 2.1.0 sender ok")
            .reply("MAIL", "421 4.4.2 idle too long"),
    )
    .await;
    let (cfg, pool, m) = setup_metered(|_| {});
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "MAIL"]);
    assert_eq!(conns[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            reused: 1,
            broken: 1,
            idle: 1,
            ..Counts::default()
        }
    );
}

/// The peer closes the reused session on the first (pipelined) MAIL.
#[tokio::test]
async fn reused_session_dropped_at_mail_is_replaced() {
    let srv = SmtpServer::start(
        Script::new()
            .ext("PIPELINING")
            .reply("MAIL", "250 2.1.0 sender ok")
            .reply("MAIL", CLOSE),
    )
    .await;
    let (cfg, pool) = setup(|_| {});
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].count("MAIL"), 2);
    assert_eq!(conns[0].count("DATA"), 1);
    assert_eq!(conns[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
}

/// The retry is on a fresh connection, once: what that connection says is
/// the answer, verbatim.
#[tokio::test]
async fn a_fresh_connection_is_not_retried() {
    let srv = SmtpServer::start(
        Script::new()
            .reply("MAIL", "250 2.1.0 sender ok")
            .reply("MAIL", "421 4.4.2 idle too long")
            .reply("MAIL", "421 4.3.2 shutting down"),
    )
    .await;
    let (cfg, pool) = setup(|_| {});
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let resp = send(&mut c, envelope("a@x", &["b@y", "c@y"])).await;
    let down = r(421, "4.3.2 shutting down");
    assert_eq!(resp.mail, Some(down.clone()));
    assert_eq!(resp.rcpts, vec![down.clone(), down.clone()]);
    assert_eq!(send(&mut c, body("x\r\n", true)).await.data, Some(down));
    assert_eq!(srv.conns().len(), 2);
    assert_eq!(srv.wait_closed(1).await.verbs(), ["EHLO", "MAIL"]);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn refused_mail_is_followed_by_rset_before_reuse() {
    let srv = SmtpServer::start(
        Script::new()
            .ext("PIPELINING")
            .reply("MAIL", "550 5.7.1 sender refused"),
    )
    .await;
    let (cfg, pool) = setup(|_| {});
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let resp = send(&mut c, envelope("a@x.test", &["b@y.test", "c@y.test"])).await;
    let refused = r(550, "5.7.1 sender refused");
    assert_eq!(resp.mail, Some(refused.clone()));
    assert_eq!(resp.rcpts, vec![refused.clone(), refused.clone()]);
    assert_eq!(send(&mut c, body("x\r\n", true)).await.data, Some(refused));
    drop(c);

    // The pipelined RCPTs' replies are read first, then RSET.
    wait_idle(&pool, 1).await;
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        conns[0].verbs(),
        [
            "EHLO", "MAIL", "RCPT", "RCPT", "RSET", "MAIL", "RCPT", "DATA"
        ]
    );
}

#[tokio::test]
async fn no_accepted_recipient_is_followed_by_rset_before_reuse() {
    let srv = SmtpServer::start(Script::new().reply("RCPT", "550 5.1.1 unknown")).await;
    let (cfg, pool) = setup(|_| {});
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.rcpts, vec![r(550, "5.1.1 unknown")]);
    let resp = send(&mut c, body("x\r\n", true)).await;
    assert_eq!(resp.data, Some(r(554, "5.5.1 no valid recipients")));

    wait_for_verb(&srv, 0, "RSET").await;
    wait_idle(&pool, 1).await;
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        conns[0].verbs(),
        ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA"]
    );
}

#[tokio::test]
async fn refused_data_is_followed_by_rset_before_reuse() {
    let srv = SmtpServer::start(Script::new().reply("DATA", "554 5.7.1 not today")).await;
    let (cfg, pool) = setup(|_| {});
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let resp = send(&mut c, body("x\r\n", false)).await;
    assert_eq!(resp.data, Some(r(554, "5.7.1 not today")));
    drop(c);

    wait_idle(&pool, 1).await;
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    let conns = srv.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        conns[0].verbs(),
        [
            "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"
        ]
    );
}

#[tokio::test]
async fn a_refused_rset_closes_the_session() {
    let srv = SmtpServer::start(
        Script::new()
            .reply("MAIL", "550 5.7.1 sender refused")
            .reply("RSET", "500 5.5.1 what"),
    )
    .await;
    let (cfg, pool, m) = setup_metered(|_| {});
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let resp = send(&mut c, envelope("a@x", &["b@y"])).await;
    assert_eq!(resp.mail, Some(r(550, "5.7.1 sender refused")));
    drop(c);

    let log = srv.wait_quit(0).await;
    assert_eq!(log.verbs(), ["EHLO", "MAIL", "RSET", "QUIT"]);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 1,
            broken: 1,
            ..Counts::default()
        }
    );
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    assert_eq!(srv.conns().len(), 2);
}

/// The final reply ends the transaction whatever it says (no RSET needed),
/// except 421, after which the peer is gone.
#[tokio::test]
async fn final_reply_decides_reuse() {
    let srv = SmtpServer::start(
        Script::new()
            .reply(".", "554 5.7.1 looks like spam")
            .reply(".", "451 4.3.0 try later")
            .reply(".", "421 4.3.2 shutting down"),
    )
    .await;
    let (cfg, pool) = setup(|_| {});
    let expected = [
        r(554, "5.7.1 looks like spam"),
        r(451, "4.3.0 try later"),
        r(421, "4.3.2 shutting down"),
    ];
    for (n, want) in expected.into_iter().enumerate() {
        assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), n).await, want);
    }
    let log = srv.wait_quit(0).await;
    assert_eq!(
        log.verbs(),
        [
            "EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "QUIT"
        ]
    );
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn broken_or_abandoned_sessions_are_not_kept() {
    // Dropped in the middle of DATA.
    let srv = SmtpServer::start(Script::new().drop_in_data_after(3)).await;
    let (cfg, pool, m) = setup_metered(|_| {});
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    send(&mut c, envelope("a@x", &["b@y"])).await;
    let data = send(&mut c, body("0123456789\r\n", true))
        .await
        .data
        .unwrap();
    assert_eq!(data.code, 451, "{data}");
    assert_eq!(pool.idle_count(), 0);

    // The client dropped mid-transaction: QUIT, as without a pool.
    let srv = SmtpServer::start(Script::new()).await;
    let mut c = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    send(&mut c, envelope("a@x", &["b@y"])).await;
    drop(c);
    assert_eq!(
        srv.wait_quit(0).await.verbs(),
        ["EHLO", "MAIL", "RCPT", "QUIT"]
    );
    assert_eq!(pool.idle_count(), 0);
    // Closed by their transactions, never offered to the pool: not the
    // pool's discards.
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            ..Counts::default()
        }
    );
}

#[tokio::test]
async fn idle_sessions_expire() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|c| c.idle_timeout = Duration::from_millis(300));
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 1).await, queued());
    assert_eq!(pool.idle_count(), 1);
    assert!(!srv.conns()[0].quit);

    // QUIT by the sweeper, without any further transaction.
    let log = srv.wait_quit(0).await;
    assert_eq!(log.verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 1,
            idle_timeout: 1,
            ..Counts::default()
        }
    );
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 2).await, queued());
    assert_eq!(srv.conns().len(), 2);
}

#[tokio::test]
async fn max_transactions_per_connection() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|c| c.max_transactions_per_connection = 2);
    for n in 1..=3 {
        assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), n).await, queued());
    }
    let first = srv.wait_quit(0).await;
    assert_eq!(first.count("MAIL"), 2);
    let conns = srv.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[1].count("MAIL"), 1);
    assert!(!conns[1].quit);
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            reused: 1,
            max_transactions: 1,
            idle: 1,
            ..Counts::default()
        }
    );
}

#[tokio::test]
async fn max_idle_per_destination() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|c| c.max_idle_per_destination = 2);
    let mut clients: Vec<SmtpClient> = (0..3)
        .map(|_| pooled_client(&cfg, hosts(&[srv.addr]), &pool))
        .collect();
    for c in &mut clients {
        send(c, envelope("a@x", &["b@y"])).await;
    }
    for c in &mut clients {
        assert_eq!(send(c, body("x\r\n", true)).await.data, Some(queued()));
    }
    assert_eq!(pool.idle_count(), 2);
    // The oldest idle session made room.
    srv.wait_quit(0).await;
    let conns = srv.conns();
    assert_eq!(conns.len(), 3);
    assert!(!conns[1].quit && !conns[2].quit);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 3,
            pool_full: 1,
            idle: 2,
            ..Counts::default()
        }
    );
}

#[tokio::test]
async fn reuse_can_be_disabled() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|c| c.max_idle_per_destination = 0);
    assert!(!pool.enabled());
    for n in 1..=2 {
        assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), n).await, queued());
    }
    for i in 0..2 {
        assert_eq!(
            srv.wait_quit(i).await.verbs(),
            ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
        );
    }
    assert_eq!(srv.conns().len(), 2);
    assert_eq!(pool.idle_count(), 0);
    // No room for any: each counts as turned away by a full pool.
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            pool_full: 2,
            ..Counts::default()
        }
    );
}

/// Two connections opened at once, one of them reused, both timing out
/// idle; and a second pool of the same endpoint (the next config
/// snapshot's) counting into the same series.
#[tokio::test]
async fn metrics_follow_connections_through_the_pool() {
    let srv = SmtpServer::start(Script::new()).await;
    let (cfg, pool, m) = setup_metered(|c| c.idle_timeout = Duration::from_millis(1500));
    let mut first = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    let mut second = pooled_client(&cfg, hosts(&[srv.addr]), &pool);
    for c in [&mut first, &mut second] {
        let resp = send(c, envelope("a@x", &["b@y"])).await;
        assert_eq!(resp.mail, Some(r(250, "2.1.0 sender ok")));
    }
    for c in [&mut first, &mut second] {
        assert_eq!(send(c, body("x\r\n", true)).await.data, Some(queued()));
    }
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            idle: 2,
            ..Counts::default()
        }
    );
    assert_eq!(deliver(&cfg, &pool, hosts(&[srv.addr]), 3).await, queued());
    assert_eq!(
        counts(&m),
        Counts {
            opened: 2,
            reused: 1,
            idle: 2,
            ..Counts::default()
        }
    );

    // The next snapshot's pool for the endpoint: its idle session adds to
    // the gauge rather than overwriting it.
    let next = ConnectionPool::new(&cfg, &m, ENDPOINT);
    assert_eq!(deliver(&cfg, &next, hosts(&[srv.addr]), 4).await, queued());
    assert_eq!(m.idle(ENDPOINT), 3);
    drop(next);
    assert_eq!(m.idle(ENDPOINT), 2);

    srv.wait_quit(0).await;
    srv.wait_quit(1).await;
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(
        counts(&m),
        Counts {
            opened: 3,
            reused: 1,
            idle_timeout: 2,
            pool_dropped: 1,
            ..Counts::default()
        }
    );
}
