//! Two koukan replicas sharing one redis-server: work one replica left
//! behind when it was killed is delivered by the other, exactly once, and
//! a transaction whose lease a live replica keeps renewing is never taken
//! by the other.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use koukan_integration::*;

/// Koukan on a stable admin port (see `stable_port`): the load these tests
/// generate churns through ephemeral ports, and a restarted process needs
/// its ports back.
fn start_koukan(yaml: &str) -> Koukan {
    Koukan::start_at(yaml, loopback(stable_port())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One replica's config: its own listener and admin port, the shared
/// Redis, short leases, retries every second.
fn config(node: &str, listen: SocketAddr, upstream: SocketAddr, redis: &RedisServer) -> String {
    let storage = format!("{{redis: {{url: \"{}\"}}}}", redis.url());
    let hostname = format!("{node}.test");
    StoreForward {
        node,
        hostname: &hostname,
        scheduler: "{lease_ttl: 2s, poll_interval: 0.2s}",
        ..StoreForward::new(listen, upstream, &storage)
    }
    .yaml()
}

fn message(id: &str) -> String {
    format!(
        "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: {id}\r\n\r\nbody\r\nEND {id}\r\n"
    )
}

/// Sends `n` messages `{tag}-{i}` to `smtp`; all must get a 250. Returns
/// (subject, transaction id) pairs.
fn send_all(smtp: SocketAddr, tag: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i:02}");
            match smtp_submit(
                smtp,
                "alice@example.com",
                &["bob@example.net"],
                &message(&id),
            ) {
                Submit::Accepted(reply) => {
                    let tx = reply.rsplit(' ').next().unwrap().to_owned();
                    (id, tx)
                }
                other => panic!("{id}: {other:?}"),
            }
        })
        .collect()
}

/// Complete deliveries per Subject in the sink.
fn delivered(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in sink.messages() {
        if let Some(id) = m.lines().find_map(|l| l.strip_prefix("Subject: "))
            && m.contains(&format!("END {}", id.trim()))
        {
            *out.entry(id.trim().to_owned()).or_insert(0) += 1;
        }
    }
    out
}

fn tx_json(admin: SocketAddr, tx: &str) -> String {
    http_get(admin, &format!("/transactions/{tx}"))
        .map(|r| r.1)
        .unwrap_or_default()
}

/// The `"attempt_count":N` of a transaction record.
fn attempts(json: &str) -> u32 {
    json.split_once("\"attempt_count\":")
        .and_then(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts every subject was delivered exactly once and every transaction
/// ended in success, as seen from `admin`.
fn assert_each_delivered_once(
    test: &str,
    sink: &SmtpSink,
    sent: &[(String, String)],
    admin: SocketAddr,
) {
    let got = delivered(sink);
    let duplicates: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = sent.iter().filter(|(s, _)| !got.contains_key(s)).collect();
    let strangers: Vec<_> = got
        .keys()
        .filter(|k| !sent.iter().any(|(s, _)| s == *k))
        .collect();
    eprintln!(
        "{test}: {} sent, {} delivered ({} deliveries), duplicates {duplicates:?}, missing {}",
        sent.len(),
        got.len(),
        got.values().sum::<usize>(),
        missing.len()
    );
    assert!(missing.is_empty(), "{test}: never delivered: {missing:?}");
    assert!(
        duplicates.is_empty(),
        "{test}: delivered more than once: {duplicates:?}"
    );
    assert!(
        strangers.is_empty(),
        "{test}: unexpected messages: {strangers:?}"
    );
    for (s, tx) in sent {
        let j = tx_json(admin, tx);
        assert!(
            j.contains("\"state\":\"final\"") && j.contains("\"upstream response success\""),
            "{test}: {s} ({tx}) not recorded as delivered: {j}"
        );
    }
}

#[test]
fn replica_b_delivers_once_what_killed_replica_a_left_waiting_for_retry() {
    let test = "retry takeover";
    let started = Instant::now();
    let redis = RedisServer::start().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    // The upstream first answers RCPT with a 4xx: everything goes to the
    // retry schedule.
    let upstream = loopback(stable_port());
    let rejecting =
        SmtpSink::start_at(upstream, &dirs.path().join("rejecting"), &["-r", "RCPT"]).unwrap();
    let smtp_a = loopback(stable_port());
    let smtp_b = loopback(stable_port());
    let mut a = start_koukan(&config("replica-a", smtp_a, upstream, &redis));
    let b = start_koukan(&config("replica-b", smtp_b, upstream, &redis));

    const N: usize = 20;
    let sent = send_all(smtp_a, "retry", N);
    // Every transaction has been tried (and refused) at least once and is
    // waiting for its retry.
    let tried = wait_until(Duration::from_secs(10), || {
        sent.iter().all(|(_, tx)| {
            let j = tx_json(b.admin, tx);
            attempts(&j) >= 1 && j.contains("\"state\":\"waiting\"")
        })
    });
    assert!(tried, "{test}: not all tried: {:?}", queue_counts(b.admin));
    let attempts_before: u32 = sent
        .iter()
        .map(|(_, tx)| attempts(&tx_json(b.admin, tx)))
        .sum();
    a.proc.signal("KILL");
    a.proc.wait_exit(Duration::from_secs(5)).expect("A dies");
    eprintln!(
        "{test}: A killed with {N} transactions waiting ({attempts_before} attempts so far); queue {:?}",
        queue_counts(b.admin)
    );

    drop(rejecting);
    let sink = SmtpSink::start_at(upstream, &dirs.path().join("sink"), &[]).unwrap();
    let msgs = sink.wait_messages(N, Duration::from_secs(20));
    assert_eq!(
        msgs.len(),
        N,
        "{test}: B delivered {} of {N}:\n{}",
        msgs.len(),
        b.log()
    );
    let drained = wait_until(Duration::from_secs(10), || {
        queue_counts(b.admin).is_some_and(|q| q.waiting == 0 && q.inflight == 0)
    });
    assert!(drained, "{test}: queue {:?}", queue_counts(b.admin));
    // Longer than a lease: a second delivery would have happened by now.
    std::thread::sleep(Duration::from_millis(2500));
    assert_each_delivered_once(test, &sink, &sent, b.admin);
    let attempts_after: u32 = sent
        .iter()
        .map(|(_, tx)| attempts(&tx_json(b.admin, tx)))
        .sum();
    eprintln!(
        "{test}: {attempts_after} attempts in all; took {:?}",
        started.elapsed()
    );
}

/// Accepts connections and never says a word: an SMTP client talking to it
/// waits for the greeting for as long as its timeout allows.
fn tarpit() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

#[test]
fn a_lease_kept_alive_by_a_live_replica_is_never_taken_over() {
    let test = "live lease";
    let started = Instant::now();
    let redis = RedisServer::start().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    // A delivers into a tarpit (its attempts hang, its leases renewed by
    // its heartbeat); B delivers into the real sink.
    let pit = tarpit();
    let smtp_a = loopback(stable_port());
    let smtp_b = loopback(stable_port());
    let mut a = start_koukan(&config("replica-a", smtp_a, pit, &redis));
    let b = start_koukan(&config("replica-b", smtp_b, sink.addr, &redis));

    const N: usize = 12;
    let sent = send_all(smtp_a, "lease", N);
    // A is woken by its own stores, B only polls: most (usually all) go to
    // A. Whatever B claimed first it delivers; that is fine.
    let settled = wait_until(Duration::from_secs(10), || {
        sent.iter().all(|(_, tx)| {
            let j = tx_json(b.admin, tx);
            j.contains("\"state\":\"final\"")
                || (j.contains("\"state\":\"inflight\"") && j.contains("replica-a-"))
        })
    });
    assert!(settled, "{test}: {:?}", queue_counts(b.admin));
    let held_by_a: Vec<(String, String)> = sent
        .iter()
        .filter(|(_, tx)| tx_json(b.admin, tx).contains("replica-a-"))
        .cloned()
        .collect();
    eprintln!(
        "{test}: A holds {} leases, B delivered {} before A claimed them",
        held_by_a.len(),
        N - held_by_a.len()
    );
    assert!(
        held_by_a.len() >= N / 2,
        "{test}: A claimed only {} of its own {N} transactions",
        held_by_a.len()
    );

    // Three lease lifetimes: A's heartbeat keeps its leases, B must not
    // take (and deliver) any of them.
    std::thread::sleep(Duration::from_secs(6));
    let got = delivered(&sink);
    let stolen: Vec<_> = held_by_a
        .iter()
        .filter(|(s, _)| got.contains_key(s))
        .collect();
    assert!(
        stolen.is_empty(),
        "{test}: B delivered transactions A was still working on: {stolen:?}"
    );
    for (s, tx) in &held_by_a {
        let j = tx_json(b.admin, tx);
        assert!(
            j.contains("\"state\":\"inflight\"") && j.contains("replica-a-"),
            "{test}: {s} ({tx}) no longer leased by A while A lives: {j}"
        );
        assert_eq!(attempts(&j), 1, "{test}: {s} claimed again: {j}");
    }

    // A dies: its leases expire and B delivers each of them once.
    a.proc.signal("KILL");
    a.proc.wait_exit(Duration::from_secs(5)).expect("A dies");
    let killed = Instant::now();
    let msgs = sink.wait_messages(N, Duration::from_secs(15));
    eprintln!("{test}: B took over within {:?}", killed.elapsed());
    assert_eq!(msgs.len(), N, "{test}: {}", b.log());
    std::thread::sleep(Duration::from_millis(2500));
    assert_each_delivered_once(test, &sink, &sent, b.admin);
    eprintln!("{test}: took {:?}", started.elapsed());
}
