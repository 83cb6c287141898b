//! The scheduler against scripted output chains (see
//! [`crate::test_support::scripted`]) over a real embedded store, on the
//! real clock (the store's times are wall-clock times) with a short poll
//! interval.

use std::sync::Mutex;

use koukan_storage::{AttemptRecord, StoredMailbox, TxId};

use super::*;
use koukan_storage::FinalReason;

const REASON_SUCCESS: FinalReason = FinalReason::UpstreamSuccess;
const REASON_DATA_PERM: FinalReason = FinalReason::UpstreamPermfail;
const REASON_MAIL_PERM: FinalReason = FinalReason::UpstreamMailPermfail;
const REASON_RCPT_PERM: FinalReason = FinalReason::UpstreamRcptPermfail;
const REASON_MAX_ATTEMPTS: FinalReason = FinalReason::RetryMaxAttempts;
const REASON_TEMP_NO_RETRY: FinalReason = FinalReason::UpstreamTempNoRetry;
use crate::test_support::eventually;
use crate::test_support::scripted::*;

const SENDER: &str = "a@example.org";
const BODY: &[u8] = b"Subject: t\r\n\r\nhi\r\n";
/// Long enough that a retry never comes during a test.
const LONG: Duration = Duration::from_secs(600);
/// Short enough that a test sees the retry.
const SHORT: Duration = Duration::from_millis(100);

fn sr(code: u16, text: &str) -> StoredResponse {
    StoredResponse {
        code,
        text: text.into(),
    }
}

fn ok_mail() -> StoredResponse {
    sr(250, "2.1.0 upstream sender ok")
}

fn ok_rcpt() -> StoredResponse {
    sr(250, "2.1.5 upstream rcpt ok")
}

/// Chain `name` with retries (`max_attempts`, every wait `wait`) and
/// bounces through chain `bounces`.
fn policy(max_attempts: u32, wait: Duration) -> ChainPolicy {
    ChainPolicy {
        retry: Some(retry(max_attempts, wait)),
        notification: Some(notify("bounces")),
    }
}

/// `out` retries (3 attempts, a long wait) and bounces; `bounces`
/// delivers bounces, once, never bouncing them.
fn chains() -> Scripted {
    Scripted::new()
        .chain("out", policy(3, LONG))
        .chain("bounces", ChainPolicy::default())
}

struct Rig {
    _dir: tempfile::TempDir,
    queue: Arc<Queue>,
    /// What the chain source returns: swapped by a "reload".
    current: Arc<Mutex<Arc<dyn NewChain>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(chains: &Arc<Scripted>) -> Rig {
    let (dir, queue) = embedded_queue(1000);
    let current: Arc<Mutex<Arc<dyn NewChain>>> = Arc::new(Mutex::new(chains.clone()));
    let source: ChainSource = {
        let current = current.clone();
        Arc::new(move || current.lock().unwrap().clone())
    };
    let scheduler = Arc::new(Scheduler::new(
        &queue,
        source,
        SchedulerConfig {
            max_concurrency: 4,
            lease_ttl: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
            hostname: "koukan.test".into(),
            ..SchedulerConfig::default()
        },
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(scheduler.run(rx));
    Rig {
        _dir: dir,
        queue,
        current,
        stop,
        task,
    }
}

impl Rig {
    fn reload(&self, chains: &Arc<Scripted>) {
        *self.current.lock().unwrap() = chains.clone();
    }

    /// Stores a transaction for `chain` as the store writer or the exploder
    /// would (through [`Submission`], with that chain's policy), with the
    /// attempt already made for it, if any.
    async fn submit(
        &self,
        chain: &str,
        from: &str,
        rcpt: &str,
        body: &[u8],
        prior: Option<AttemptResponses>,
    ) -> TxId {
        let policy = self
            .current
            .lock()
            .unwrap()
            .policy(chain)
            // A chain unknown now was known, with retries, when the
            // transaction was stored (a reload removed it since).
            .unwrap_or_else(|| crate::delivery::ChainPolicy {
                retry: Some(crate::config::retry::RetryPolicy::default()),
                notification: None,
            });
        let submission = Submission {
            queue: self.queue.clone(),
            output_chain: chain.into(),
            retry: policy.retry,
            notification: policy.notification.is_some(),
        };
        let store = &self.queue.store;
        let blob = store.create_blob().await.unwrap();
        store
            .append_blob(&blob, 0, Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        let mailbox = |a: &str| StoredMailbox {
            address: a.into(),
            params: vec![],
        };
        let origin = Origin {
            sender: "in".into(),
            tag: String::new(),
            ingress: koukan_storage::StoredIngress::Generated,
            signals: Default::default(),
        };
        let tx = submission.transaction(
            &origin,
            &mailbox(from),
            mailbox(rcpt),
            &blob,
            prior.map(|p| submission.prior_attempt(p)),
        );
        let id = store.create_transaction(tx).await.unwrap();
        self.queue.wake();
        id
    }

    async fn until(&self, id: &TxId, what: &str, f: impl Fn(&TxRecord) -> bool) -> TxRecord {
        let store = self.queue.store.clone();
        let f = &f;
        eventually(Duration::from_secs(10), || {
            let store = store.clone();
            async move {
                let r = store.get_transaction(id).await.ok()?;
                f(&r).then_some(r)
            }
        })
        .await
        .unwrap_or_else(|| panic!("{id}: never {what}"))
    }

    /// Once final.
    async fn finished(&self, id: &TxId) -> TxRecord {
        self.until(id, "final", |r| r.final_attempt_reason.is_some())
            .await
    }

    /// Once `n` attempts are recorded (the lease released).
    async fn attempted(&self, id: &TxId, n: usize) -> TxRecord {
        self.until(id, "attempted", |r| r.attempts.len() >= n).await
    }

    /// Transactions in the store, whatever their state.
    async fn transactions(&self) -> u64 {
        let c = self.queue.store.counts().await.unwrap();
        c.waiting + c.inflight + c.final_
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// The upstream transactions of chain `chain` once there are `n`, each
/// closed.
async fn upstreams(chains: &Scripted, chain: &str, n: usize) -> Vec<Seen> {
    eventually(Duration::from_secs(10), || async {
        let seen = chains.seen_on(chain);
        (seen.len() >= n && seen.iter().all(|s| s.closed)).then_some(seen)
    })
    .await
    .unwrap_or_else(|| panic!("never {n} upstreams on {chain}: {:?}", chains.seen()))
}

fn codes(a: &AttemptRecord) -> (Option<u16>, Vec<Option<u16>>, Option<u16>) {
    let r = &a.responses;
    (
        r.mail.as_ref().map(|x| x.code),
        r.rcpt.iter().map(|x| x.as_ref().map(|x| x.code)).collect(),
        r.data.as_ref().map(|x| x.code),
    )
}

/// The bounce of a transaction from `sender`, delivered through chain
/// `bounces`: a DSN from the null sender, itself never bounced.
async fn assert_bounce(rig: &Rig, bounce: &Seen, sender: &str, rcpt: &str, reply: &str) {
    assert_eq!(bounce.mail_from.as_deref(), Some(""));
    assert_eq!(bounce.rcpts, [sender]);
    let dsn = String::from_utf8(bounce.body()).unwrap();
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains(rcpt), "the failed recipient: {dsn}");
    assert!(dsn.contains(reply), "the failure {reply:?}: {dsn}");
    let stored = rig.finished(&TxId(bounce.ctx_id.clone())).await;
    assert_eq!(stored.tx.chain, "bounces");
    assert_eq!(stored.tx.mail_from.address, "");
    assert!(
        !stored.tx.notification && !stored.tx.retry,
        "{:?}",
        stored.tx
    );
    assert_eq!(stored.final_attempt_reason, Some(REASON_SUCCESS));
}

/// Delivered: final at once, the body streamed to the upstream in
/// chunks, no retry, no bounce.
#[tokio::test]
async fn success_is_final_with_no_retry() {
    let chains = Arc::new(chains());
    let rig = start(&chains);
    // Three chunks: two full ones and the rest.
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.resize(2 * READ_CHUNK + 1000, b'x');
    let id = rig
        .submit("out", SENDER, "b@example.com", &body, None)
        .await;
    let r = rig.finished(&id).await;
    assert_eq!(r.final_attempt_reason, Some(REASON_SUCCESS));
    assert_eq!(r.next_attempt, None);
    assert_eq!(r.attempt_count, 1);
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(
        r.attempts[0].responses,
        AttemptResponses {
            mail: Some(ok_mail()),
            rcpt: vec![Some(ok_rcpt())],
            data: Some(sr(250, "2.0.0 upstream queued")),
        }
    );
    let seen = upstreams(&chains, "out", 1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].ctx_id, id.0, "the attempt runs as the transaction");
    assert_eq!(seen[0].mail_from.as_deref(), Some(SENDER));
    assert_eq!(seen[0].rcpts, ["b@example.com"]);
    let sizes: Vec<usize> = seen[0].chunks.iter().map(|c| c.len()).collect();
    assert_eq!(sizes, [READ_CHUNK, READ_CHUNK, 1000]);
    assert!(seen[0].last);
    assert_eq!(seen[0].body(), body);
    assert_eq!(rig.transactions().await, 1, "no bounce");
    rig.stop().await;
}

/// A temporary failure at MAIL, RCPT or data is an attempt recorded and
/// a retry scheduled per the chain's policy (its jitter included); the
/// body is sent only past an accepted RCPT.
#[tokio::test]
async fn temporary_failures_schedule_a_retry_per_the_policy() {
    let wait = Duration::from_secs(30);
    let chains = Arc::new(
        Scripted::new()
            .chain(
                "out",
                ChainPolicy {
                    retry: Some(RetryPolicy {
                        jitter: 0.1,
                        ..retry(3, wait)
                    }),
                    notification: Some(notify("bounces")),
                },
            )
            .chain("bounces", ChainPolicy::default())
            .rcpt(
                "out",
                "mail@example.com",
                Script::default().mail(reply(451, "4.3.0 mail later")),
            )
            .rcpt(
                "out",
                "rcpt@example.com",
                Script::default().rcpt(reply(450, "4.2.1 rcpt later")),
            )
            .rcpt(
                "out",
                "data@example.com",
                Script::default().data(reply(452, "4.3.1 data later")),
            ),
    );
    let rig = start(&chains);
    let before = SystemTime::now();
    let cases = [
        (
            "mail@example.com",
            AttemptResponses {
                mail: Some(sr(451, "4.3.0 mail later")),
                rcpt: vec![Some(ok_rcpt())],
                data: None,
            },
            false,
        ),
        (
            "rcpt@example.com",
            AttemptResponses {
                mail: Some(ok_mail()),
                rcpt: vec![Some(sr(450, "4.2.1 rcpt later"))],
                data: None,
            },
            false,
        ),
        (
            "data@example.com",
            AttemptResponses {
                mail: Some(ok_mail()),
                rcpt: vec![Some(ok_rcpt())],
                data: Some(sr(452, "4.3.1 data later")),
            },
            true,
        ),
    ];
    for (rcpt, want, body_sent) in cases {
        let id = rig.submit("out", SENDER, rcpt, BODY, None).await;
        let r = rig.attempted(&id, 1).await;
        assert_eq!(r.final_attempt_reason, None, "{rcpt}");
        assert_eq!(r.lease_owner, None, "{rcpt}: the lease is released");
        assert_eq!((r.attempt_count, r.attempts.len()), (1, 1), "{rcpt}");
        assert_eq!(r.attempts[0].attempt, 1);
        assert_eq!(r.attempts[0].responses, want, "{rcpt}");
        let next = r.next_attempt.expect("a retry");
        let (lo, hi) = (wait.mul_f64(0.9), wait.mul_f64(1.1));
        let ms = Duration::from_millis(1);
        assert!(
            next + ms >= before + lo && next <= SystemTime::now() + hi,
            "{rcpt}: next attempt {next:?} not {lo:?}..{hi:?} after {before:?}"
        );
        let seen = chains.seen_for(rcpt);
        assert_eq!(seen.len(), 1, "{rcpt}");
        assert_eq!(!seen[0].chunks.is_empty(), body_sent, "{rcpt}: {seen:?}");
    }
    assert_eq!(rig.transactions().await, 3, "no bounce");
    rig.stop().await;
}

/// A permanent failure at MAIL, RCPT or data is final with its reason,
/// and bounced to the sender through the notification chain.
#[tokio::test]
async fn permanent_failures_are_final_and_bounced() {
    let chains = Arc::new(
        chains()
            .rcpt(
                "out",
                "mail@example.com",
                Script::default().mail(reply(550, "5.7.1 sender refused")),
            )
            .rcpt(
                "out",
                "rcpt@example.com",
                Script::default().rcpt(reply(550, "5.1.1 no such user")),
            )
            .rcpt(
                "out",
                "data@example.com",
                Script::default().data(reply(554, "5.6.0 content rejected")),
            ),
    );
    let rig = start(&chains);
    let cases = [
        (
            "mail@example.com",
            REASON_MAIL_PERM,
            "550 5.7.1 sender refused",
            false,
        ),
        (
            "rcpt@example.com",
            REASON_RCPT_PERM,
            "550 5.1.1 no such user",
            false,
        ),
        (
            "data@example.com",
            REASON_DATA_PERM,
            "554 5.6.0 content rejected",
            true,
        ),
    ];
    for (i, (rcpt, reason, reply, body_sent)) in cases.into_iter().enumerate() {
        let sender = format!("sender-{i}@example.org");
        let id = rig.submit("out", &sender, rcpt, BODY, None).await;
        let r = rig.finished(&id).await;
        assert_eq!(r.final_attempt_reason, Some(reason), "{rcpt}");
        assert_eq!(r.attempts.len(), 1, "{rcpt}");
        let seen = chains.seen_for(rcpt);
        assert_eq!(seen.len(), 1, "{rcpt}");
        assert_eq!(!seen[0].chunks.is_empty(), body_sent, "{rcpt}: {seen:?}");
        let bounces = upstreams(&chains, "bounces", i + 1).await;
        assert_eq!(bounces.len(), i + 1, "one bounce each");
        assert_bounce(&rig, &bounces[i], &sender, rcpt, reply).await;
    }
    rig.stop().await;
}

/// No bounce for a bounce (null sender), nor from a chain without
/// notification.
#[tokio::test]
async fn no_bounce_for_a_bounce_nor_without_notification() {
    let chains = Arc::new(
        chains()
            .chain(
                "quiet",
                ChainPolicy {
                    retry: Some(retry(3, LONG)),
                    notification: None,
                },
            )
            .default_script(
                "out",
                Script::default().data(reply(554, "5.6.0 content rejected")),
            )
            .default_script(
                "quiet",
                Script::default().data(reply(554, "5.6.0 content rejected")),
            ),
    );
    let rig = start(&chains);
    let bounce = rig.submit("out", "", "b@example.com", BODY, None).await;
    let quiet = rig
        .submit("quiet", SENDER, "c@example.com", BODY, None)
        .await;
    for id in [&bounce, &quiet] {
        let r = rig.finished(id).await;
        assert_eq!(r.final_attempt_reason, Some(REASON_DATA_PERM));
        assert!(!r.tx.notification, "{:?}", r.tx);
    }
    // A bounce is stored before the outcome that needs it.
    assert_eq!(rig.transactions().await, 2, "no bounce stored");
    assert!(chains.seen_on("bounces").is_empty());
    rig.stop().await;
}

/// Temporary failures until `max_attempts`: final, bounced.
#[tokio::test]
async fn retries_exhausted_are_final_and_bounced() {
    let chains = Arc::new(
        Scripted::new()
            .chain("out", policy(2, SHORT))
            .chain("bounces", ChainPolicy::default())
            .default_script(
                "out",
                Script::default().rcpt(reply(451, "4.4.1 no answer from host")),
            ),
    );
    let rig = start(&chains);
    let id = rig.submit("out", SENDER, "b@example.com", BODY, None).await;
    let r = rig.finished(&id).await;
    assert_eq!(r.final_attempt_reason, Some(REASON_MAX_ATTEMPTS));
    let numbers: Vec<u32> = r.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);
    assert!(r.attempts[1].finished >= r.attempts[0].finished + SHORT);
    assert_eq!(chains.seen_on("out").len(), 2, "one upstream per attempt");
    let bounces = upstreams(&chains, "bounces", 1).await;
    assert_eq!(bounces.len(), 1);
    assert_bounce(
        &rig,
        &bounces[0],
        SENDER,
        "b@example.com",
        "451 4.4.1 no answer from host",
    )
    .await;
    rig.stop().await;
}

/// A prior attempt (the exploder's, while the client waited) that
/// already settles the transaction: final and bounced without asking
/// the upstream again, and no attempt added.
#[tokio::test]
async fn a_settling_prior_attempt_is_not_attempted_again() {
    let chains = Arc::new(chains().chain("once", policy(1, LONG)).chain(
        "no-retry",
        ChainPolicy {
            retry: None,
            notification: Some(notify("bounces")),
        },
    ));
    let rig = start(&chains);
    let temp = AttemptResponses {
        mail: Some(ok_mail()),
        rcpt: vec![Some(sr(451, "4.4.7 upstream timeout (exploder)"))],
        data: None,
    };
    let cases = [
        // Refused for good.
        (
            "out",
            AttemptResponses {
                mail: Some(ok_mail()),
                rcpt: vec![Some(ok_rcpt())],
                data: Some(sr(554, "5.6.0 content rejected")),
            },
            REASON_DATA_PERM,
            "554 5.6.0 content rejected",
        ),
        // A temporary failure with no attempt left.
        (
            "once",
            temp.clone(),
            REASON_MAX_ATTEMPTS,
            "451 4.4.7 upstream timeout",
        ),
        // A temporary failure and no retries.
        (
            "no-retry",
            temp,
            REASON_TEMP_NO_RETRY,
            "451 4.4.7 upstream timeout",
        ),
    ];
    for (i, (chain, prior, reason, reply)) in cases.into_iter().enumerate() {
        let sender = format!("sender-{i}@example.org");
        let rcpt = format!("rcpt-{i}@example.com");
        let id = rig
            .submit(chain, &sender, &rcpt, BODY, Some(prior.clone()))
            .await;
        let r = rig.finished(&id).await;
        assert_eq!(r.final_attempt_reason, Some(reason), "{chain}");
        assert_eq!(r.attempt_count, 1, "{chain}: the prior attempt only");
        assert_eq!(r.attempts.len(), 1, "{chain}");
        assert_eq!(r.attempts[0].responses, prior, "{chain}");
        let bounces = upstreams(&chains, "bounces", i + 1).await;
        assert_bounce(&rig, &bounces[i], &sender, &rcpt, reply).await;
        assert!(
            chains.seen_for(&rcpt).is_empty(),
            "{chain}: not asked again"
        );
    }
    assert!(chains.seen_on("out").is_empty());
    rig.stop().await;
}

/// A prior temporary failure with retries left: the next attempt comes
/// after the policy's wait, numbered 2.
#[tokio::test]
async fn a_prior_temporary_failure_is_attempted_again() {
    let chains = Arc::new(chains().chain("fast", policy(3, SHORT)));
    let rig = start(&chains);
    let prior = AttemptResponses {
        mail: Some(ok_mail()),
        rcpt: vec![Some(ok_rcpt())],
        data: Some(sr(451, "4.4.7 upstream timeout (exploder)")),
    };
    let id = rig
        .submit("fast", SENDER, "b@example.com", BODY, Some(prior.clone()))
        .await;
    let r = rig.finished(&id).await;
    assert_eq!(r.final_attempt_reason, Some(REASON_SUCCESS));
    assert_eq!(r.attempt_count, 2);
    let numbers: Vec<u32> = r.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(r.attempts[0].responses, prior);
    assert_eq!(
        codes(&r.attempts[1]),
        (Some(250), vec![Some(250)], Some(250))
    );
    assert!(r.attempts[1].finished >= r.attempts[0].finished + SHORT);
    let seen = upstreams(&chains, "fast", 1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body(), BODY);
    rig.stop().await;
}

/// An upstream panicking at RCPT ends the attempt as a temporary
/// failure (`451 4.3.0` for MAIL and RCPT), retried; the panic is
/// counted and the upstream dropped.
#[tokio::test]
async fn a_panicking_upstream_is_a_temporary_failure() {
    let chains = Arc::new(chains().default_script("out", Script::default().rcpt(Step::Panic)));
    let rig = start(&chains);
    let id = rig.submit("out", SENDER, "b@example.com", BODY, None).await;
    let r = rig.attempted(&id, 1).await;
    let internal = stored_response(&Response::internal_error());
    assert_eq!(internal.code, 451);
    assert_eq!(
        r.attempts[0].responses,
        AttemptResponses {
            mail: Some(internal.clone()),
            rcpt: vec![Some(internal)],
            data: None,
        }
    );
    assert_eq!(r.final_attempt_reason, None);
    assert!(r.next_attempt.unwrap() > SystemTime::now() + LONG / 2);
    assert_eq!(rig.queue.internal_errors.get("scheduler"), 1);
    let seen = upstreams(&chains, "out", 1).await;
    assert!(seen[0].chunks.is_empty());
    rig.stop().await;
}

/// A transaction whose chain is unknown (dropped by a reload) gets a
/// `451 4.3.5` attempt; no upstream is asked.
#[tokio::test]
async fn an_unknown_chain_is_a_451_attempt() {
    let chains = Arc::new(chains());
    let rig = start(&chains);
    let id = rig
        .submit("gone", SENDER, "b@example.com", BODY, None)
        .await;
    let r = rig.attempted(&id, 1).await;
    assert_eq!(
        r.attempts[0].responses,
        AttemptResponses {
            mail: Some(sr(451, "4.3.5 no chain named gone")),
            rcpt: vec![],
            data: None,
        }
    );
    assert_eq!(r.lease_owner, None);
    assert!(chains.seen().is_empty());
    rig.stop().await;
}

/// The unknown chain's 451 is temporary: the transaction (stored with
/// retries and bounces) should be tried again, as after a reload that
/// brings its chain back, rather than be final at once, undelivered and
/// unbounced ("retries disabled": the unknown chain has no policy).
#[tokio::test]
async fn an_unknown_chain_is_retried() {
    let chains = Arc::new(chains());
    let rig = start(&chains);
    let id = rig
        .submit("gone", SENDER, "b@example.com", BODY, None)
        .await;
    let r = rig.attempted(&id, 1).await;
    assert_eq!(r.final_attempt_reason, None);
    assert!(r.next_attempt.is_some());
    rig.stop().await;
}

/// A reload between attempts: the next attempt runs on the new chains.
#[tokio::test]
async fn the_attempt_after_a_reload_runs_on_the_new_chains() {
    let old = Arc::new(
        Scripted::new()
            .chain("out", policy(5, SHORT))
            .default_script("out", Script::default().rcpt(reply(451, "4.3.0 old"))),
    );
    let new = Arc::new(Scripted::new().chain("out", policy(5, SHORT)));
    let rig = start(&old);
    let id = rig.submit("out", SENDER, "b@example.com", BODY, None).await;
    rig.attempted(&id, 1).await;
    rig.reload(&new);
    let reloaded = tokio::time::Instant::now();
    let r = rig.finished(&id).await;
    assert_eq!(r.final_attempt_reason, Some(REASON_SUCCESS));
    // The old chains may have had one more attempt if the reload came
    // late, never one after it.
    let old_seen = old.seen();
    assert!(!old_seen.is_empty());
    assert!(
        old_seen.iter().all(|s| s.opened_at < reloaded),
        "{old_seen:?}"
    );
    let new_seen = upstreams(&new, "out", 1).await;
    assert_eq!(new_seen.len(), 1);
    assert!(new_seen[0].opened_at >= reloaded);
    assert_eq!(new_seen[0].body(), BODY);
    assert_eq!(r.attempts.len(), old_seen.len() + 1);
    rig.stop().await;
}

// ---- decide ----

fn record(retry: bool) -> TxRecord {
    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mailbox = |a: &str| StoredMailbox {
        address: a.into(),
        params: vec![],
    };
    TxRecord {
        id: TxId("t".into()),
        tx: koukan_storage::NewTransaction {
            sender: "in".into(),
            tag: String::new(),
            chain: "out".into(),
            mail_from: mailbox(SENDER),
            rcpt_to: vec![mailbox("b@example.com")],
            ingress: koukan_storage::StoredIngress::Generated,
            signals: Default::default(),
            body: koukan_storage::BlobId("b".into()),
            retry,
            notification: true,
            lease: None,
            prior_attempt: None,
        },
        created,
        last_update: created,
        version: 1,
        attempt_count: 1,
        next_attempt: None,
        final_attempt_reason: None,
        lease_owner: None,
        lease_expires: None,
        cancelled: false,
        last_responses: None,
        attempts: vec![],
    }
}

fn responses(mail: Option<u16>, rcpt: Option<u16>, data: Option<u16>) -> AttemptResponses {
    let r = |c: u16| sr(c, "x");
    AttemptResponses {
        mail: mail.map(r),
        rcpt: rcpt.map(|c| vec![Some(r(c))]).unwrap_or_default(),
        data: data.map(r),
    }
}

#[test]
fn decide_table() {
    let rec = record(true);
    let policy = retry(3, Duration::from_secs(60));
    let now = rec.created + Duration::from_secs(5);
    let retry_at = NextStep::RetryAt(now + Duration::from_secs(60));
    let fin = |reason: FinalReason| NextStep::Final { reason };
    type Case = (Option<u16>, Option<u16>, Option<u16>, NextStep);
    let cases: [Case; 14] = [
        (Some(250), Some(250), Some(250), fin(REASON_SUCCESS)),
        (Some(250), Some(250), Some(554), fin(REASON_DATA_PERM)),
        (Some(250), Some(250), Some(451), retry_at.clone()),
        // No final reply from the output chain.
        (Some(250), Some(250), None, retry_at.clone()),
        (Some(250), Some(550), None, fin(REASON_RCPT_PERM)),
        (Some(250), Some(450), None, retry_at.clone()),
        (Some(550), Some(250), None, fin(REASON_MAIL_PERM)),
        (Some(550), Some(550), Some(250), fin(REASON_MAIL_PERM)),
        // MAIL's temporary failure decides before a later part.
        (Some(451), Some(550), None, retry_at.clone()),
        (Some(451), None, None, retry_at.clone()),
        // RCPT's temporary failure decides before the data.
        (Some(250), Some(450), Some(554), retry_at.clone()),
        // Nothing answered.
        (None, None, None, retry_at.clone()),
        (None, Some(550), None, fin(REASON_RCPT_PERM)),
        (None, None, Some(250), fin(REASON_SUCCESS)),
    ];
    for (mail, rcpt, data, want) in cases {
        let r = responses(mail, rcpt, data);
        assert_eq!(
            decide(&rec, 1, &r, Some(&policy), now),
            want,
            "{mail:?} {rcpt:?} {data:?}"
        );
    }
    let temp = responses(Some(250), Some(250), Some(451));
    // The policy's last attempt.
    assert_eq!(
        decide(&rec, 3, &temp, Some(&policy), now),
        fin(REASON_MAX_ATTEMPTS)
    );
    // No policy, or the transaction stored without retries.
    assert_eq!(decide(&rec, 1, &temp, None, now), fin(REASON_TEMP_NO_RETRY));
    assert_eq!(
        decide(&record(false), 1, &temp, Some(&policy), now),
        fin(REASON_TEMP_NO_RETRY)
    );
    // Success and permanent failures need no policy.
    let ok = responses(Some(250), Some(250), Some(250));
    assert_eq!(
        decide(&record(false), 9, &ok, None, now),
        fin(REASON_SUCCESS)
    );
}

/// Only a prior attempt alone in the history settles, and only when
/// `decide` says final on it.
#[test]
fn settled_by_prior_table() {
    let policy = retry(3, Duration::from_secs(60));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_005);
    let with_prior = |data: u16, attempts: usize, attempt_count: u32| {
        let mut r = record(true);
        let responses = responses(Some(250), Some(250), Some(data));
        r.tx.prior_attempt = Some(koukan_storage::PriorAttempt {
            responses: responses.clone(),
            finished: r.created,
            next_attempt: r.created,
        });
        r.attempts = (1..=attempts as u32)
            .map(|attempt| AttemptRecord {
                attempt,
                finished: r.created,
                responses: responses.clone(),
            })
            .collect();
        r.attempt_count = attempt_count;
        r
    };
    let perm = with_prior(554, 1, 2);
    assert_eq!(
        settled_by_prior(&perm, Some(&policy), now),
        Some(perm.tx.prior_attempt.clone().unwrap().responses)
    );
    assert_eq!(
        settled_by_prior(&with_prior(451, 1, 2), Some(&policy), now),
        None
    );
    // The prior was the last attempt the policy allows.
    let once = retry(1, Duration::from_secs(60));
    assert!(settled_by_prior(&with_prior(451, 1, 2), Some(&once), now).is_some());
    // Our own attempt came after it: the history decides, not the prior.
    assert_eq!(
        settled_by_prior(&with_prior(554, 2, 3), Some(&policy), now),
        None
    );
    // No prior attempt.
    assert_eq!(settled_by_prior(&record(true), Some(&policy), now), None);
}
