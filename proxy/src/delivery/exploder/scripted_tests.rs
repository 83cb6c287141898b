//! The reply table against scripted upstreams (see
//! [`crate::test_support::scripted`]) over a real embedded store, on a
//! paused clock: timeouts are exact and instant.

use std::time::{Duration, SystemTime};

use koukan_chain::{TerminalService, boxed};
use koukan_storage::{StoredResponse, TxId, TxRecord};

use super::*;
use crate::delivery::ChainPolicy;
use crate::queue::Queue;
use crate::test_support::scripted::*;
use crate::test_support::{call, envelope};

const RCPT_TIMEOUT: Duration = Duration::from_secs(5);
const DATA_TIMEOUT: Duration = Duration::from_secs(30);
/// The output chain's retry wait: a stored temporary failure is due
/// this long after it was stored.
const WAIT: Duration = Duration::from_secs(600);
const BODY: &str = "Subject: t\r\n\r\nhi\r\n";

fn upstreams() -> Scripted {
    Scripted::new().chain(
        "out",
        ChainPolicy {
            retry: Some(retry(5, WAIT)),
            notification: Some(notify("bounces")),
        },
    )
}

fn rcpt_reply(s: Step) -> Script {
    Script::default().rcpt(s)
}

fn data_reply(s: Step) -> Script {
    Script::default().data(s)
}

fn rcpt_stored() -> Response {
    Response::new(250, "2.1.5 RCPT ok (exploder store&forward)")
}

fn sr(code: u16, text: &str) -> StoredResponse {
    StoredResponse {
        code,
        text: text.into(),
    }
}

fn upstream_ok() -> (StoredResponse, StoredResponse) {
    (
        sr(250, "2.1.0 upstream sender ok"),
        sr(250, "2.1.5 upstream rcpt ok"),
    )
}

struct Rig {
    _dir: tempfile::TempDir,
    queue: Arc<Queue>,
    up: Arc<Scripted>,
    svc: BoxTxService,
}

fn exploder(queue: &Arc<Queue>, up: &Arc<Scripted>, msa: bool, max: usize) -> BoxTxService {
    let policy = up.policy("out").unwrap();
    let submission = Arc::new(Submission {
        queue: queue.clone(),
        output_chain: "out".into(),
        retry: policy.retry,
        notification: policy.notification.is_some(),
    });
    let spec = Arc::new(ExploderSpec {
        output_chain: "out".into(),
        msa,
        rcpt_timeout: RCPT_TIMEOUT,
        data_timeout: DATA_TIMEOUT,
        max_upstreams: max,
    });
    boxed(TerminalService::new(Exploder::new(
        up.clone(),
        submission,
        spec,
        context("tx-1"),
    )))
}

fn rig(msa: bool, max_upstreams: usize, up: Scripted) -> Rig {
    let (dir, queue) = embedded_queue(1000);
    let up = Arc::new(up);
    let svc = exploder(&queue, &up, msa, max_upstreams);
    Rig {
        _dir: dir,
        queue,
        up,
        svc,
    }
}

impl Rig {
    async fn envelope(&mut self, rcpts: &[&str]) -> UpdateResponse {
        let r = call(&mut self.svc, envelope("a@example.org", rcpts)).await;
        assert_eq!(r.mail, Some(Response::new(250, "2.1.0 MAIL ok (exploder)")));
        r
    }

    async fn data(&mut self, body: &str) -> Response {
        call(&mut self.svc, TxUpdate::body(body.to_owned(), true))
            .await
            .data
            .expect("a data reply")
    }

    /// The transactions a `queued as` reply names.
    async fn stored(&self, d: &Response) -> Vec<TxRecord> {
        assert_eq!(d.code, 250, "{d}");
        let ids = d
            .text
            .strip_prefix("2.0.0 DATA ok (exploder store&forward) queued as ")
            .unwrap_or_else(|| panic!("not stored: {d}"));
        let mut out = Vec::new();
        for id in ids.split(',') {
            let rec = self
                .queue
                .store
                .get_transaction(&TxId(id.into()))
                .await
                .unwrap();
            let body = self
                .queue
                .store
                .read_blob(&rec.tx.body, 0, 1 << 20)
                .await
                .unwrap();
            assert_eq!(&body[..], BODY.as_bytes(), "the stored body");
            assert_eq!(rec.tx.chain, "out");
            assert_eq!(rec.tx.mail_from.address, "a@example.org");
            assert!(rec.tx.retry && rec.tx.notification, "{:?}", rec.tx);
            assert_eq!(rec.final_attempt_reason, None);
            out.push(rec);
        }
        out
    }

    /// Transactions in the store, whatever their state.
    async fn transactions(&self) -> u64 {
        let c = self.queue.store.counts().await.unwrap();
        c.waiting + c.inflight + c.final_
    }

    /// The upstream that was sent `rcpt`, once it is closed.
    async fn closed(&self, rcpt: &str) -> Seen {
        for _ in 0..100 {
            let seen = self.up.seen_for(rcpt);
            assert_eq!(seen.len(), 1, "one upstream for {rcpt}: {seen:?}");
            if seen[0].closed {
                return seen[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the upstream for {rcpt} was never closed");
    }

    /// `rcpt`'s upstream got the whole body, then was closed.
    async fn delivered(&self, rcpt: &str, body: &str) {
        let seen = self.closed(rcpt).await;
        assert_eq!(seen.mail_from.as_deref(), Some("a@example.org"));
        assert_eq!(seen.rcpts, [rcpt]);
        assert_eq!(seen.body(), body.as_bytes(), "{rcpt}'s upstream body");
        assert!(seen.last, "{rcpt}'s upstream got the last chunk");
    }

    /// `rcpt`'s upstream got no body, and was closed.
    async fn no_body(&self, rcpt: &str) {
        let seen = self.closed(rcpt).await;
        assert!(seen.chunks.is_empty(), "{seen:?}");
    }
}

/// The stored transaction retries `WAIT` after it was stored.
fn due_after_wait(rec: &TxRecord, before: SystemTime) {
    let next = rec.next_attempt.expect("scheduled");
    let ms = Duration::from_millis(1);
    assert!(
        next + ms >= before + WAIT && next <= SystemTime::now() + WAIT,
        "{next:?} not {WAIT:?} after {before:?}"
    );
}

/// The stored transaction is due at once (for the scheduler to settle
/// or try it).
fn due_now(rec: &TxRecord, before: SystemTime) {
    let next = rec.next_attempt.expect("scheduled");
    assert!(
        next + Duration::from_millis(1) >= before && next <= SystemTime::now(),
        "{next:?}"
    );
}

/// The stored transaction's one attempt, made while the client waited.
fn prior(rec: &TxRecord) -> &AttemptResponses {
    assert_eq!(rec.attempt_count, 1);
    assert_eq!(rec.attempts.len(), 1, "{:?}", rec.attempts);
    assert_eq!(rec.attempts[0].attempt, 1);
    &rec.attempts[0].responses
}

// ---- the reply table, one cell each ----

#[tokio::test(start_paused = true)]
async fn mx_rcpt_timeout_is_451_upstream_timeout() {
    let mut r = rig(
        false,
        100,
        upstreams().rcpt("out", "b@example.com", rcpt_reply(Step::Never)),
    );
    let t0 = Instant::now();
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [upstream_timeout()]);
    assert_eq!(e.rcpts[0].text, "4.4.7 upstream timeout (exploder)");
    let waited = t0.elapsed();
    assert!(
        (RCPT_TIMEOUT..RCPT_TIMEOUT + Duration::from_millis(10)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(r.data(BODY).await.code, 554);
    r.no_body("b@example.com").await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn msa_rcpt_timeout_is_accepted_and_stored() {
    let mut r = rig(
        true,
        100,
        upstreams().rcpt("out", "b@example.com", rcpt_reply(Step::Never)),
    );
    let before = SystemTime::now();
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [rcpt_stored()]);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].tx.rcpt_to[0].address, "b@example.com");
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: None,
            rcpt: vec![Some(sr(451, "4.4.7 upstream timeout (exploder)"))],
            data: None,
        }
    );
    due_after_wait(&stored[0], before);
    r.no_body("b@example.com").await;
}

#[tokio::test(start_paused = true)]
async fn mx_rcpt_4xx_is_passed_back() {
    let mut r = rig(
        false,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            rcpt_reply(reply(450, "4.2.1 mailbox busy")),
        ),
    );
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [Response::new(450, "4.2.1 mailbox busy")]);
    assert_eq!(r.data(BODY).await.code, 554);
    r.no_body("b@example.com").await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn msa_rcpt_4xx_is_accepted_and_stored() {
    let mut r = rig(
        true,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            rcpt_reply(reply(450, "4.2.1 mailbox busy")),
        ),
    );
    let before = SystemTime::now();
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [rcpt_stored()]);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    let (mail, _) = upstream_ok();
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: Some(mail),
            rcpt: vec![Some(sr(450, "4.2.1 mailbox busy"))],
            data: None,
        }
    );
    due_after_wait(&stored[0], before);
    r.no_body("b@example.com").await;
}

async fn rcpt_5xx_is_passed_back(msa: bool) {
    let mut r = rig(
        msa,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            rcpt_reply(reply(550, "5.1.1 no such user")),
        ),
    );
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [Response::new(550, "5.1.1 no such user")]);
    assert_eq!(
        r.data(BODY).await,
        Response::new(554, "5.5.1 no valid recipients")
    );
    r.no_body("b@example.com").await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn mx_rcpt_5xx_is_passed_back() {
    rcpt_5xx_is_passed_back(false).await;
}

#[tokio::test(start_paused = true)]
async fn msa_rcpt_5xx_is_passed_back() {
    rcpt_5xx_is_passed_back(true).await;
}

#[tokio::test(start_paused = true)]
async fn mx_data_timeout_is_451_upstream_timeout() {
    let mut r = rig(
        false,
        100,
        upstreams().rcpt("out", "b@example.com", data_reply(Step::Never)),
    );
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [Response::new(250, "2.1.5 upstream rcpt ok")]);
    let t0 = Instant::now();
    assert_eq!(
        r.data(BODY).await,
        Response::new(451, "4.4.7 upstream timeout (exploder)")
    );
    let waited = t0.elapsed();
    assert!(
        (DATA_TIMEOUT..DATA_TIMEOUT + Duration::from_millis(10)).contains(&waited),
        "{waited:?}"
    );
    r.delivered("b@example.com", BODY).await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn msa_data_timeout_is_stored() {
    let mut r = rig(
        true,
        100,
        upstreams().rcpt("out", "b@example.com", data_reply(Step::Never)),
    );
    let before = SystemTime::now();
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [Response::new(250, "2.1.5 upstream rcpt ok")]);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    let (mail, rcpt) = upstream_ok();
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: Some(mail),
            rcpt: vec![Some(rcpt)],
            data: Some(sr(451, "4.4.7 upstream timeout (exploder)")),
        }
    );
    due_after_wait(&stored[0], before);
    r.delivered("b@example.com", BODY).await;
}

#[tokio::test(start_paused = true)]
async fn mx_data_4xx_is_passed_back() {
    let mut r = rig(
        false,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            data_reply(reply(452, "4.3.1 upstream full")),
        ),
    );
    r.envelope(&["b@example.com"]).await;
    assert_eq!(
        r.data(BODY).await,
        Response::new(452, "4.3.1 upstream full")
    );
    r.delivered("b@example.com", BODY).await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn msa_data_4xx_is_stored_for_retry_and_bounce() {
    let mut r = rig(
        true,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            data_reply(reply(452, "4.3.1 upstream full")),
        ),
    );
    let before = SystemTime::now();
    r.envelope(&["b@example.com"]).await;
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    let (mail, rcpt) = upstream_ok();
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: Some(mail),
            rcpt: vec![Some(rcpt)],
            data: Some(sr(452, "4.3.1 upstream full")),
        }
    );
    due_after_wait(&stored[0], before);
    r.delivered("b@example.com", BODY).await;
}

async fn data_5xx_is_passed_back(msa: bool) {
    let mut r = rig(
        msa,
        100,
        upstreams().rcpt(
            "out",
            "b@example.com",
            data_reply(reply(554, "5.6.0 content rejected")),
        ),
    );
    r.envelope(&["b@example.com"]).await;
    assert_eq!(
        r.data(BODY).await,
        Response::new(554, "5.6.0 content rejected")
    );
    r.delivered("b@example.com", BODY).await;
    assert_eq!(r.transactions().await, 0);
}

#[tokio::test(start_paused = true)]
async fn mx_data_5xx_is_passed_back() {
    data_5xx_is_passed_back(false).await;
}

#[tokio::test(start_paused = true)]
async fn msa_data_5xx_is_passed_back() {
    data_5xx_is_passed_back(true).await;
}

// ---- several recipients ----

/// One recipient delivered, one failing temporarily: 250, the failed
/// one stored with its attempt, retried after the wait.
#[tokio::test(start_paused = true)]
async fn mx_one_ok_and_one_data_4xx_stores_the_failed_one() {
    let mut r = rig(
        false,
        100,
        upstreams().rcpt(
            "out",
            "c@example.com",
            data_reply(reply(451, "4.7.1 greylisted")),
        ),
    );
    let before = SystemTime::now();
    let e = r.envelope(&["b@example.com", "c@example.com"]).await;
    assert!(e.rcpts.iter().all(Response::is_ok), "{:?}", e.rcpts);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].tx.rcpt_to[0].address, "c@example.com");
    let (mail, rcpt) = upstream_ok();
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: Some(mail),
            rcpt: vec![Some(rcpt)],
            data: Some(sr(451, "4.7.1 greylisted")),
        }
    );
    due_after_wait(&stored[0], before);
    r.delivered("b@example.com", BODY).await;
    r.delivered("c@example.com", BODY).await;
}

/// One delivered, one refused for good: 250, the refused one stored
/// due at once, for the scheduler to bounce without asking again.
async fn one_ok_and_one_data_5xx_stores_for_a_bounce(msa: bool) {
    let mut r = rig(
        msa,
        100,
        upstreams().rcpt(
            "out",
            "c@example.com",
            data_reply(reply(554, "5.6.0 content rejected")),
        ),
    );
    let before = SystemTime::now();
    r.envelope(&["b@example.com", "c@example.com"]).await;
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].tx.rcpt_to[0].address, "c@example.com");
    assert_eq!(
        prior(&stored[0]).data,
        Some(sr(554, "5.6.0 content rejected"))
    );
    due_now(&stored[0], before);
    r.delivered("b@example.com", BODY).await;
    r.delivered("c@example.com", BODY).await;
}

#[tokio::test(start_paused = true)]
async fn mx_one_ok_and_one_data_5xx_stores_for_a_bounce() {
    one_ok_and_one_data_5xx_stores_for_a_bounce(false).await;
}

#[tokio::test(start_paused = true)]
async fn msa_one_ok_and_one_data_5xx_stores_for_a_bounce() {
    one_ok_and_one_data_5xx_stores_for_a_bounce(true).await;
}

/// Upstreams agreeing in class: the first one's reply, marked; nothing
/// stored. A timeout is a 4xx like any other.
#[tokio::test(start_paused = true)]
async fn replies_of_one_class_are_the_first_marked_same_response() {
    let cases: [(bool, Step, Step, Response); 4] = [
        (
            false,
            reply(250, "2.0.0 first queued"),
            reply(250, "2.0.0 second queued"),
            Response::new(250, "2.0.0 first queued (exploder same response)"),
        ),
        (
            false,
            reply(452, "4.3.1 first full"),
            Step::Never,
            Response::new(452, "4.3.1 first full (exploder same response)"),
        ),
        (
            false,
            reply(554, "5.6.0 first rejected"),
            reply(550, "5.7.1 second rejected"),
            Response::new(554, "5.6.0 first rejected (exploder same response)"),
        ),
        (
            true,
            reply(554, "5.6.0 first rejected"),
            reply(550, "5.7.1 second rejected"),
            Response::new(554, "5.6.0 first rejected (exploder same response)"),
        ),
    ];
    for (msa, first, second, want) in cases {
        let mut r = rig(
            msa,
            100,
            upstreams()
                .rcpt("out", "b@example.com", data_reply(first))
                .rcpt("out", "c@example.com", data_reply(second)),
        );
        r.envelope(&["b@example.com", "c@example.com"]).await;
        assert_eq!(r.data(BODY).await, want, "msa: {msa}");
        assert_eq!(r.transactions().await, 0, "{want}");
        r.delivered("b@example.com", BODY).await;
        r.delivered("c@example.com", BODY).await;
    }
}

/// Failures of different classes are no common reply: 250, both
/// stored, the 4xx for retry, the 5xx due for its bounce.
#[tokio::test(start_paused = true)]
async fn mx_a_4xx_and_a_5xx_are_both_stored() {
    let mut r = rig(
        false,
        100,
        upstreams()
            .rcpt(
                "out",
                "b@example.com",
                data_reply(reply(451, "4.7.1 greylisted")),
            )
            .rcpt(
                "out",
                "c@example.com",
                data_reply(reply(554, "5.6.0 content rejected")),
            ),
    );
    let before = SystemTime::now();
    r.envelope(&["b@example.com", "c@example.com"]).await;
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    let rcpts: Vec<_> = stored
        .iter()
        .map(|s| s.tx.rcpt_to[0].address.as_str())
        .collect();
    assert_eq!(rcpts, ["b@example.com", "c@example.com"]);
    assert_eq!(prior(&stored[0]).data.as_ref().unwrap().code, 451);
    due_after_wait(&stored[0], before);
    assert_eq!(prior(&stored[1]).data.as_ref().unwrap().code, 554);
    due_now(&stored[1], before);
}

/// msa: two temporary failures are both stored; the client gets 250.
#[tokio::test(start_paused = true)]
async fn msa_temporary_failures_are_all_stored() {
    let mut r = rig(
        true,
        100,
        upstreams()
            .rcpt("out", "b@example.com", data_reply(Step::Never))
            .rcpt(
                "out",
                "c@example.com",
                data_reply(reply(451, "4.7.1 greylisted")),
            ),
    );
    let before = SystemTime::now();
    r.envelope(&["b@example.com", "c@example.com"]).await;
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        prior(&stored[0]).data,
        Some(sr(451, "4.4.7 upstream timeout (exploder)"))
    );
    assert_eq!(prior(&stored[1]).data, Some(sr(451, "4.7.1 greylisted")));
    for s in &stored {
        due_after_wait(s, before);
    }
}

// ---- the fan-out bound ----

/// Over the bound with nothing that could free a slot: mx refuses the
/// rest at once with 452 4.5.3; only one upstream is opened.
#[tokio::test(start_paused = true)]
async fn mx_over_the_bound_is_452_at_once() {
    let mut r = rig(false, 1, upstreams());
    let t0 = Instant::now();
    let e = r
        .envelope(&["b@example.com", "c@example.com", "d@example.com"])
        .await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "nobody waited");
    assert_eq!(e.rcpts[0], Response::new(250, "2.1.5 upstream rcpt ok"));
    assert_eq!(e.rcpts[1..], [over_bound(), over_bound()]);
    assert!(e.rcpts[1].text.starts_with("4.5.3 "), "{}", e.rcpts[1]);
    assert_eq!(r.up.seen().len(), 1);
    assert_eq!(
        r.data(BODY).await,
        Response::new(250, "2.0.0 upstream queued")
    );
    r.delivered("b@example.com", BODY).await;
    assert_eq!(r.transactions().await, 0);
}

/// msa stores the recipients over the bound, with no attempt (no
/// upstream was asked), due at once.
#[tokio::test(start_paused = true)]
async fn msa_over_the_bound_is_stored_without_an_attempt() {
    let mut r = rig(true, 1, upstreams());
    let before = SystemTime::now();
    let e = r
        .envelope(&["b@example.com", "c@example.com", "d@example.com"])
        .await;
    assert_eq!(e.rcpts[0], Response::new(250, "2.1.5 upstream rcpt ok"));
    assert_eq!(e.rcpts[1..], [rcpt_stored(), rcpt_stored()]);
    assert_eq!(r.up.seen().len(), 1);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    let rcpts: Vec<_> = stored
        .iter()
        .map(|s| s.tx.rcpt_to[0].address.as_str())
        .collect();
    assert_eq!(rcpts, ["c@example.com", "d@example.com"]);
    for s in &stored {
        assert_eq!((s.attempt_count, s.attempts.len()), (0, 0));
        due_now(s, before);
    }
    r.delivered("b@example.com", BODY).await;
}

/// A recipient over the bound waits while an upstream of its batch is
/// unsettled, and takes the slot a refused recipient frees.
#[tokio::test(start_paused = true)]
async fn a_recipient_waits_for_the_slot_a_refusal_frees() {
    let mut r = rig(
        false,
        2,
        upstreams().rcpt(
            "out",
            "c@example.com",
            rcpt_reply(after(Duration::from_secs(1), 550, "5.1.1 no such user")),
        ),
    );
    let t0 = Instant::now();
    let e = r
        .envelope(&["b@example.com", "c@example.com", "d@example.com"])
        .await;
    let codes: Vec<u16> = e.rcpts.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 550, 250]);
    let seen = r.up.seen();
    let opened: Vec<(&str, Duration)> = seen
        .iter()
        .map(|s| (s.rcpts[0].as_str(), s.opened_at - t0))
        .collect();
    assert_eq!(
        opened,
        [
            ("b@example.com", Duration::ZERO),
            ("c@example.com", Duration::ZERO),
            ("d@example.com", Duration::from_secs(1)),
        ]
    );
    assert_eq!(
        r.data(BODY).await,
        Response::new(250, "2.0.0 upstream queued (exploder same response)")
    );
    r.delivered("b@example.com", BODY).await;
    r.delivered("d@example.com", BODY).await;
    r.no_body("c@example.com").await;
}

/// A recipient that waited for a slot in vain (the upstream holding it
/// never answered) is answered like a timeout, at the rcpt timeout.
#[tokio::test(start_paused = true)]
async fn mx_waiting_for_a_slot_in_vain_is_a_timeout() {
    let mut r = rig(
        false,
        1,
        upstreams().rcpt("out", "b@example.com", rcpt_reply(Step::Never)),
    );
    let t0 = Instant::now();
    let e = r.envelope(&["b@example.com", "c@example.com"]).await;
    assert_eq!(e.rcpts, [upstream_timeout(), upstream_timeout()]);
    assert!(t0.elapsed() >= RCPT_TIMEOUT);
    assert!(r.up.seen_for("c@example.com").is_empty(), "never tried");
    assert_eq!(r.data(BODY).await.code, 554);
    assert_eq!(r.transactions().await, 0);
}

/// msa: a recipient that waited for a slot in vain was never sent to
/// an upstream, so it is stored like one over the bound: no attempt,
/// due at once. (It is stored with a made-up `451 4.4.7` attempt,
/// which costs it one of `max_attempts` and the retry wait, and with
/// no retry policy bounces it without a delivery ever being tried.)
#[tokio::test(start_paused = true)]
async fn msa_waiting_for_a_slot_in_vain_is_stored_without_an_attempt() {
    let mut r = rig(
        true,
        1,
        upstreams().rcpt("out", "b@example.com", rcpt_reply(Step::Never)),
    );
    let before = SystemTime::now();
    let e = r.envelope(&["b@example.com", "c@example.com"]).await;
    assert_eq!(e.rcpts, [rcpt_stored(), rcpt_stored()]);
    assert!(r.up.seen_for("c@example.com").is_empty(), "never tried");
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(stored[1].tx.rcpt_to[0].address, "c@example.com");
    assert_eq!(stored[1].attempts, []);
    due_now(&stored[1], before);
}

/// RCPTs one update at a time: a later batch has no unsettled
/// upstream to wait for, so it is over the bound at once.
#[tokio::test(start_paused = true)]
async fn a_later_batch_over_the_bound_does_not_wait() {
    let mut r = rig(false, 1, upstreams());
    r.envelope(&["b@example.com"]).await;
    let t0 = Instant::now();
    let e = call(&mut r.svc, TxUpdate::rcpts([Mailbox::new("c@example.com")])).await;
    assert_eq!(e.rcpts, [over_bound()]);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(r.up.seen().len(), 1);
    assert!(r.data(BODY).await.is_ok());
}

// ---- MAIL, body ----

/// The upstream refusing MAIL is the recipient's answer: a 5xx
/// verbatim; a 4xx verbatim for mx, stored by msa with both replies
/// as its attempt.
#[tokio::test(start_paused = true)]
async fn mail_refused_by_the_upstream() {
    for msa in [false, true] {
        let mut r = rig(
            msa,
            100,
            upstreams().rcpt(
                "out",
                "b@example.com",
                Script::default().mail(reply(550, "5.7.1 sender refused")),
            ),
        );
        let e = r.envelope(&["b@example.com"]).await;
        assert_eq!(e.rcpts, [Response::new(550, "5.7.1 sender refused")]);
        assert_eq!(r.data(BODY).await.code, 554);
        r.no_body("b@example.com").await;
    }
    let mail_4xx = || {
        upstreams().rcpt(
            "out",
            "b@example.com",
            Script::default().mail(reply(451, "4.3.0 try later")),
        )
    };
    let mut r = rig(false, 100, mail_4xx());
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [Response::new(451, "4.3.0 try later")]);

    let mut r = rig(true, 100, mail_4xx());
    let e = r.envelope(&["b@example.com"]).await;
    assert_eq!(e.rcpts, [rcpt_stored()]);
    let d = r.data(BODY).await;
    let stored = r.stored(&d).await;
    assert_eq!(
        *prior(&stored[0]),
        AttemptResponses {
            mail: Some(sr(451, "4.3.0 try later")),
            rcpt: vec![Some(sr(451, "4.3.0 try later"))],
            data: None,
        }
    );
    r.no_body("b@example.com").await;
}

/// A body in several chunks reaches every accepted upstream, chunk by
/// chunk in order; a refused recipient's upstream gets none.
#[tokio::test(start_paused = true)]
async fn body_chunks_reach_every_accepted_upstream_in_order() {
    let mut r = rig(
        false,
        100,
        upstreams()
            .rcpt(
                "out",
                "c@example.com",
                rcpt_reply(reply(550, "5.1.1 no such user")),
            )
            // A slow upstream still gets every chunk, in order.
            .rcpt(
                "out",
                "d@example.com",
                data_reply(after(Duration::from_secs(2), 250, "2.0.0 slow queued")),
            ),
    );
    let e = r
        .envelope(&["b@example.com", "c@example.com", "d@example.com"])
        .await;
    let codes: Vec<u16> = e.rcpts.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 550, 250]);
    let chunks = ["Subject: t\r\n\r\n", "one\r\n", "two\r\n", "three\r\n"];
    for (i, c) in chunks.iter().enumerate() {
        let last = i == chunks.len() - 1;
        let d = call(&mut r.svc, TxUpdate::body(c.to_string(), last)).await;
        if last {
            assert_eq!(
                d.data,
                Some(Response::new(
                    250,
                    "2.0.0 upstream queued (exploder same response)"
                ))
            );
        } else {
            assert_eq!(d.data, None, "chunk {i}");
        }
    }
    for rcpt in ["b@example.com", "d@example.com"] {
        let seen = r.closed(rcpt).await;
        let got: Vec<&[u8]> = seen.chunks.iter().map(|c| &c[..]).collect();
        let want: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(got, want, "{rcpt}");
        assert!(seen.last);
    }
    r.no_body("c@example.com").await;
    assert_eq!(r.transactions().await, 0);
}

/// `max_receiving` messages can be received at once: MAIL is refused
/// `451 4.3.2` only beyond it.
#[tokio::test(start_paused = true)]
async fn mail_is_refused_only_beyond_max_receiving() {
    let (_dir, queue) = embedded_queue(1);
    let up = Arc::new(upstreams());
    let mut first = exploder(&queue, &up, false, 100);
    let r = call(&mut first, TxUpdate::mail(Mailbox::new("a@example.org"))).await;
    assert_eq!(r.mail, Some(Response::new(250, "2.1.0 MAIL ok (exploder)")));
    let mut second = exploder(&queue, &up, false, 100);
    let r = call(&mut second, TxUpdate::mail(Mailbox::new("a@example.org"))).await;
    assert_eq!(
        r.mail,
        Some(Response::new(
            451,
            "4.3.2 delivery queue full, try again later"
        ))
    );
    drop((first, second));
    let mut third = exploder(&queue, &up, false, 100);
    let r = call(&mut third, TxUpdate::mail(Mailbox::new("a@example.org"))).await;
    assert!(r.mail.unwrap().is_ok());
}
