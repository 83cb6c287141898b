//! Crash safety of store-and-forward under load: clients keep sending
//! while the test kills koukan with SIGKILL at random moments (and, on
//! Redis, kills redis-server too) and restarts it on the same config and
//! store. Afterwards every message a client got a 250 for must have
//! reached the upstream (duplicates allowed, counted), and none that got an
//! explicit 4xx/5xx, or whose connection broke before its data was sent,
//! may have. A message whose connection broke after the final dot (no reply
//! read) may go either way.
//!
//! `KOUKAN_CRASH_SEED=<n>` replays a kill schedule (the seed is printed).
//! The embedded full-disk test needs `mount -t tmpfs` (root or
//! CAP_SYS_ADMIN); it fails, it does not skip, when it cannot mount.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use koukan_integration::*;

/// Koukan on a stable admin port (see `stable_port`): the load these tests
/// generate churns through ephemeral ports, and a restarted process needs
/// its ports back.
fn start_koukan(yaml: &str) -> Koukan {
    Koukan::start_at(yaml, loopback(stable_port())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The store-and-forward config, with leases short enough that
/// transactions a killed process held are taken over within seconds.
fn config(listen: SocketAddr, upstream: SocketAddr, storage: &str) -> String {
    StoreForward {
        node: "crash-test",
        scheduler: "{lease_ttl: 2s, poll_interval: 0.2s, max_concurrency: 16}",
        endpoint: "connect_timeout: 1s, command_timeout: 5s",
        ..StoreForward::new(listen, upstream, storage)
    }
    .yaml()
}

/// A small xorshift generator: the kill schedule is random but
/// replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Self {
        let seed = std::env::var("KOUKAN_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{test}: KOUKAN_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// One message: its id is the Subject, and a trailer line tells a complete
/// dump from one cut off mid-data.
fn message(id: &str) -> String {
    format!(
        "From: load@example.com\r\nTo: sink@example.net\r\nSubject: {id}\r\n\
         Message-ID: <{id}@client.test>\r\n\r\nbody of {id}\r\nEND {id}\r\n"
    )
}

/// Sends messages `{tag}-t{thread}-m{n}` until `stop` (or `max`); returns
/// each id with its outcome.
fn load(
    smtp: SocketAddr,
    tag: &str,
    thread: usize,
    stop: Arc<AtomicBool>,
    max: usize,
) -> Vec<(String, Submit)> {
    let mut out = Vec::new();
    for n in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("{tag}-t{thread}-m{n:04}");
        let r = smtp_submit(
            smtp,
            "load@example.com",
            &["sink@example.net"],
            &message(&id),
        );
        let pause = !r.is_accepted();
        out.push((id, r));
        if pause {
            // Down or refusing: do not spin.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    out
}

/// What the sink holds: complete deliveries per id, and ids of dumps cut
/// off before the trailer.
struct SinkView {
    complete: HashMap<String, usize>,
    partial: Vec<String>,
}

fn sink_view(sink: &SmtpSink) -> SinkView {
    let mut complete = HashMap::new();
    let mut partial = Vec::new();
    for m in sink.messages() {
        let Some(id) = m
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .map(|s| s.trim().to_owned())
        else {
            partial.push("<no subject>".into());
            continue;
        };
        if m.contains(&format!("END {id}")) {
            *complete.entry(id).or_insert(0) += 1;
        } else {
            partial.push(id);
        }
    }
    SinkView { complete, partial }
}

/// Waits (bounded) until nothing is waiting or in flight.
fn wait_drained(k: &Koukan, timeout: Duration) -> Option<QueueCounts> {
    let deadline = Instant::now() + timeout;
    loop {
        let q = queue_counts(k.admin);
        if let Some(q) = q
            && q.waiting == 0
            && q.inflight == 0
        {
            return Some(q);
        }
        if Instant::now() > deadline {
            eprintln!("queue not drained: {q:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_koukan(k: &mut Koukan) {
    k.proc.signal("KILL");
    assert!(
        k.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "koukan did not die on SIGKILL"
    );
}

/// The ids a 250 reply names (`2.0.0 queued as <id>[,<id>...]`).
fn queued_ids(reply: &str) -> Vec<String> {
    reply
        .rsplit_once("queued as ")
        .map(|(_, ids)| ids.trim().split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Checks the outcomes against the sink and the store; panics with a
/// summary on any violation. Returns how many were accepted.
fn verify(test: &str, k: &Koukan, sink: &SmtpSink, outcomes: &[(String, Submit)]) -> usize {
    let drained = wait_drained(k, Duration::from_secs(30));
    // Whatever is still being written by the sink lands within moments.
    std::thread::sleep(Duration::from_millis(300));
    let view = sink_view(sink);
    let sent: HashMap<&str, &Submit> = outcomes.iter().map(|(i, s)| (i.as_str(), s)).collect();

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut wrongly_delivered = Vec::new();
    let (mut unknown_delivered, mut unknown_not) = (0, 0);
    let mut duplicates = Vec::new();
    let mut wrong_state = Vec::new();
    for (id, outcome) in outcomes {
        let n = view.complete.get(id).copied().unwrap_or(0);
        let partial = view.partial.iter().any(|p| p == id);
        if n > 1 {
            duplicates.push(format!("{id} x{n}"));
        }
        match outcome {
            Submit::Accepted(reply) => {
                *counts.entry("accepted").or_default() += 1;
                if n == 0 {
                    lost.push(format!("{id} ({reply})"));
                }
                for tx in queued_ids(reply) {
                    let (status, body) = http_get(k.admin, &format!("/transactions/{tx}"))
                        .unwrap_or((0, String::new()));
                    if status != 200 || !body.contains("\"upstream response success\"") {
                        wrong_state.push(format!("{id} {tx}: {status} {body}"));
                    }
                }
            }
            Submit::Refused { stage, reply } => {
                *counts.entry("refused").or_default() += 1;
                *refusals
                    .entry(format!("{stage}: {}", reply.get(..9).unwrap_or(reply)))
                    .or_default() += 1;
                if n > 0 || partial {
                    wrongly_delivered.push(format!("{id} refused at {stage} with {reply:?}"));
                }
            }
            Submit::NotSent(why) => {
                *counts
                    .entry("not sent (broken before the dot)")
                    .or_default() += 1;
                if n > 0 || partial {
                    wrongly_delivered.push(format!("{id} never fully sent ({why})"));
                }
            }
            Submit::Unknown(_) => {
                *counts.entry("unknown (broken after the dot)").or_default() += 1;
                if n > 0 {
                    unknown_delivered += 1;
                } else {
                    unknown_not += 1;
                }
            }
        }
    }
    let strangers: Vec<&String> = view
        .complete
        .keys()
        .filter(|id| !sent.contains_key(id.as_str()))
        .collect();
    let extra_deliveries: usize = view.complete.values().map(|n| n.saturating_sub(1)).sum();

    eprintln!("{test}: outcomes {counts:?}");
    eprintln!("{test}: refusals by stage/reply {refusals:?}");
    eprintln!(
        "{test}: sink: {} distinct ids delivered, {extra_deliveries} duplicate deliveries {:?}, \
         {} partial dumps {:?}",
        view.complete.len(),
        duplicates,
        view.partial.len(),
        view.partial
    );
    eprintln!(
        "{test}: unknown outcomes: {unknown_delivered} delivered, {unknown_not} not delivered"
    );
    eprintln!("{test}: queue at the end: {drained:?}");

    assert!(
        lost.is_empty(),
        "{test}: {} acknowledged (250) messages never reached the sink: {lost:?}\nlog tail:\n{}",
        lost.len(),
        log_tail(k)
    );
    assert!(
        wrongly_delivered.is_empty(),
        "{test}: delivered although the client was refused or never sent it: \
         {wrongly_delivered:?}\nlog tail:\n{}",
        log_tail(k)
    );
    assert!(
        strangers.is_empty(),
        "{test}: unknown ids in the sink: {strangers:?}"
    );
    assert!(
        drained.is_some(),
        "{test}: queue never drained: {:?}",
        queue_counts(k.admin)
    );
    assert!(
        wrong_state.is_empty(),
        "{test}: acknowledged transactions not recorded as delivered: {wrong_state:?}"
    );
    counts.get("accepted").copied().unwrap_or(0)
}

/// The last warnings and errors of koukan's log (the per-message INFO
/// lines would drown them).
fn log_tail(k: &Koukan) -> String {
    let log = k.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

const CLIENTS: usize = 4;
const MAX_PER_CLIENT: usize = 2500;

type Outcomes = Vec<(String, Submit)>;

/// Starts the client threads; set the flag to stop them.
fn start_load(
    smtp: SocketAddr,
    tag: &str,
) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<Outcomes>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..CLIENTS)
        .map(|t| {
            let stop = stop.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || load(smtp, &tag, t, stop, MAX_PER_CLIENT))
        })
        .collect();
    (stop, threads)
}

fn interrupted(outcomes: &[(String, Submit)]) -> usize {
    outcomes
        .iter()
        .filter(|(_, s)| matches!(s, Submit::NotSent(_) | Submit::Unknown(_)))
        .count()
}

#[test]
fn embedded_store_keeps_every_acknowledged_message_across_kill_9() {
    let test = "embedded kill -9";
    let started = Instant::now();
    let mut rng = Rng::from_env(test);
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(stable_port());
    let mut k = start_koukan(&config(
        smtp,
        sink.addr,
        "{embedded: {path: data/koukan.db}}",
    ));

    let (stop, threads) = start_load(smtp, "emb");
    let kills = 3 + (rng.next() % 2) as usize;
    for i in 0..kills {
        std::thread::sleep(rng.millis(700, 2200));
        kill_koukan(&mut k);
        std::thread::sleep(rng.millis(0, 300));
        k.respawn(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("restart {i} failed: {e:#}"));
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<(String, Submit)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let load_time = started.elapsed();

    let accepted = verify(test, &k, &sink, &outcomes);
    eprintln!(
        "{test}: {kills} kills, {} messages tried, {} interrupted by kills; load {load_time:?}, total {:?}",
        outcomes.len(),
        interrupted(&outcomes),
        started.elapsed()
    );
    assert!(
        accepted >= 20,
        "{test}: only {accepted} messages accepted: the load proved little"
    );
    assert!(
        interrupted(&outcomes) > 0,
        "{test}: no client session was ever cut by a kill: the kills proved nothing"
    );
    assert!(
        k.proc.is_running(),
        "koukan died on its own:\n{}",
        log_tail(&k)
    );
}

#[test]
fn redis_store_keeps_every_acknowledged_message_across_kill_9_of_koukan_and_redis() {
    let test = "redis kill -9";
    let started = Instant::now();
    let mut rng = Rng::from_env(test);
    let mut redis = RedisServer::start().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(stable_port());
    let storage = format!("{{redis: {{url: \"{}\"}}}}", redis.url());
    let mut k = start_koukan(&config(smtp, sink.addr, &storage));

    let (stop, threads) = start_load(smtp, "red");
    let mut probes: Vec<(String, Submit)> = Vec::new();
    // Koukan is killed three times; Redis once, between the second and
    // the third, while koukan keeps running.
    for i in 0..3 {
        std::thread::sleep(rng.millis(700, 2000));
        kill_koukan(&mut k);
        std::thread::sleep(rng.millis(0, 300));
        k.respawn(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("restart {i} failed: {e:#}"));
        if i != 1 {
            continue;
        }
        std::thread::sleep(rng.millis(300, 1000));
        let pid = k.proc.pid();
        redis.kill();
        let down = Instant::now();
        // While Redis is down, new mail gets a 4xx, never a 250.
        std::thread::sleep(Duration::from_millis(200));
        let id = "red-probe-down".to_owned();
        let r = smtp_submit(
            smtp,
            "probe@example.com",
            &["sink@example.net"],
            &message(&id),
        );
        eprintln!("{test}: with redis down ({:?}): {r:?}", down.elapsed());
        assert!(
            matches!(&r, Submit::Refused { stage: "dot", reply } if reply.starts_with("451 4.3.0")),
            "{test}: with redis down the data must get 451 4.3.0, got {r:?}"
        );
        probes.push((id, r));
        redis.restart().unwrap();
        eprintln!("{test}: redis was down {:?}", down.elapsed());
        // Koukan recovers by itself: same process, mail accepted again.
        let back = Instant::now();
        let mut n = 0;
        let accepted = loop {
            let id = format!("red-probe-up{n:02}");
            n += 1;
            let r = smtp_submit(
                smtp,
                "probe@example.com",
                &["sink@example.net"],
                &message(&id),
            );
            let ok = r.is_accepted();
            probes.push((id, r.clone()));
            if ok {
                break true;
            }
            if back.elapsed() > Duration::from_secs(20) {
                eprintln!("{test}: still refused after redis came back: {r:?}");
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            accepted,
            "{test}: koukan did not recover after redis restarted:\n{}",
            log_tail(&k)
        );
        assert!(k.proc.is_running(), "koukan died with redis");
        assert_eq!(k.proc.pid(), pid);
        eprintln!(
            "{test}: accepted again {:?} after redis restart ({n} probes)",
            back.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let mut outcomes: Vec<(String, Submit)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let load_time = started.elapsed();
    outcomes.extend(probes);

    let accepted = verify(test, &k, &sink, &outcomes);
    eprintln!(
        "{test}: {} messages tried, {} interrupted by kills; load {load_time:?}, total {:?}",
        outcomes.len(),
        interrupted(&outcomes),
        started.elapsed()
    );
    assert!(accepted >= 20, "{test}: only {accepted} messages accepted");
    assert!(
        interrupted(&outcomes) > 0,
        "{test}: no client session was ever cut by a kill"
    );
    assert!(
        k.proc.is_running(),
        "koukan died on its own:\n{}",
        log_tail(&k)
    );
}

/// Unmounts (lazily) when dropped, after whatever used the mount is gone.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn embedded_store_on_a_full_disk_answers_452_and_recovers_when_space_returns() {
    let test = "full disk";
    let started = Instant::now();
    let mnt = tempfile::tempdir().unwrap();
    // About 1 MiB left for the store, then 64 KiB messages.
    let (_tmpfs, ballast) = small_disk(test, mnt.path(), 1 << 20);
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(stable_port());
    let db = mnt.path().join("koukan.db");
    let storage = format!("{{embedded: {{path: \"{}\"}}}}", db.display());
    let mut k = start_koukan(&config(smtp, sink.addr, &storage));

    let filler = "x".repeat(76);
    let body_lines = (64 * 1024) / 78;
    let big = |id: &str| -> String {
        let mut m =
            format!("From: load@example.com\r\nTo: sink@example.net\r\nSubject: {id}\r\n\r\n");
        for _ in 0..body_lines {
            m.push_str(&filler);
            m.push_str("\r\n");
        }
        m.push_str(&format!("END {id}\r\n"));
        m
    };
    let mut outcomes: Vec<(String, Submit)> = Vec::new();
    // The upstream is up, so delivered bodies are collected at once and the
    // store alone does not fill the disk: a few messages, then something
    // else takes all but 64 KiB of the disk.
    for n in 0..5 {
        let id = format!("full-pre{n}");
        let r = smtp_submit(smtp, "load@example.com", &["sink@example.net"], &big(&id));
        assert!(r.is_accepted(), "{test}: {id}: {r:?}\n{}", log_tail(&k));
        outcomes.push((id, r));
    }
    let ballast2 = mnt.path().join("ballast2");
    std::fs::write(
        &ballast2,
        vec![0u8; disk_free(mnt.path()).saturating_sub(64 * 1024) as usize],
    )
    .unwrap();
    let mut full = None;
    for n in 0..60 {
        let id = format!("full-m{n:02}");
        let r = smtp_submit(smtp, "load@example.com", &["sink@example.net"], &big(&id));
        outcomes.push((id.clone(), r.clone()));
        match &r {
            Submit::Accepted(_) => {}
            Submit::Refused { reply, .. } if reply.starts_with("452 4.3.1") => {
                full = Some(id);
                break;
            }
            other => panic!(
                "{test}: {id}: expected 250 or 452 4.3.1, got {other:?}\n{}",
                log_tail(&k)
            ),
        }
    }
    let accepted_before = outcomes.iter().filter(|(_, s)| s.is_accepted()).count();
    eprintln!("{test}: {accepted_before} accepted, then full at {full:?}");
    let full = full.unwrap_or_else(|| panic!("{test}: the disk never filled: {outcomes:?}"));
    assert!(
        accepted_before > 0,
        "{test}: nothing accepted before the disk filled"
    );

    // Still full: still 452, and the process keeps serving.
    let r = smtp_submit(
        smtp,
        "load@example.com",
        &["sink@example.net"],
        &big("full-again"),
    );
    eprintln!("{test}: second try on the full disk: {r:?}");
    assert!(
        matches!(&r, Submit::Refused { reply, .. } if reply.starts_with("452 4.3.1")),
        "{test}: {r:?}"
    );
    outcomes.push(("full-again".into(), r));

    // Space comes back: mail is accepted again without a restart, and
    // everything acknowledged is delivered.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&ballast2).unwrap();
    // The free-space reading is refreshed within moments.
    std::thread::sleep(Duration::from_millis(300));
    let r = smtp_submit(
        smtp,
        "load@example.com",
        &["sink@example.net"],
        &big("full-after"),
    );
    eprintln!("{test}: after freeing space: {r:?}");
    assert!(r.is_accepted(), "{test}: {r:?}\n{}", log_tail(&k));
    outcomes.push(("full-after".into(), r));

    let accepted = verify(test, &k, &sink, &outcomes);
    assert_eq!(accepted, accepted_before + 1);
    assert!(
        !sink_view(&sink).complete.contains_key(&full),
        "the message refused with 452 was delivered"
    );
    assert!(k.proc.is_running());
    eprintln!("{test}: koukan warnings:\n{}", log_tail(&k));
    eprintln!("{test}: took {:?}", started.elapsed());
}

/// Mounts a 4 MiB tmpfs (failing loudly when it cannot) and fills all
/// but `leave` bytes of it with a ballast file; returns the mount guard
/// and the ballast path.
fn small_disk(test: &str, mnt: &std::path::Path, leave: u64) -> (Tmpfs, std::path::PathBuf) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mnt)
        .status()
        .expect("mount(8)");
    assert!(
        status.success(),
        "{test}: `mount -t tmpfs` failed ({status}): this test needs root or CAP_SYS_ADMIN"
    );
    let guard = Tmpfs(mnt.to_owned());
    let ballast = mnt.join("ballast");
    let avail = disk_free(mnt);
    std::fs::write(&ballast, vec![0u8; avail.saturating_sub(leave) as usize]).unwrap();
    eprintln!("{test}: {} bytes left free for the store", disk_free(mnt));
    (guard, ballast)
}

fn disk_free(p: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .arg("-B1")
        .arg("--output=avail")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// The recipients each Subject reached, from smtp-sink's `X-Rcpt-Args`.
fn recipients_by_subject(sink: &SmtpSink) -> HashMap<String, std::collections::HashSet<String>> {
    let mut out: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for m in sink.messages() {
        let Some(id) = m.lines().find_map(|l| l.strip_prefix("Subject: ")) else {
            continue;
        };
        let set = out.entry(id.trim().to_owned()).or_default();
        for r in m.lines().filter_map(|l| l.strip_prefix("X-Rcpt-Args: ")) {
            set.insert(r.trim().to_owned());
        }
    }
    out
}

/// The DATA reply covers the whole message: a 4xx there means no
/// recipient got it. Koukan stores one transaction per recipient; they are
/// committed together, so when storage fails (here: the disk fills) none
/// of them is delivered and the client's retry is the only delivery.
#[test]
fn a_multi_recipient_message_refused_on_a_full_disk_reaches_none_of_its_recipients() {
    let test = "partial commit";
    let mnt = tempfile::tempdir().unwrap();
    let (_tmpfs, ballast) = small_disk(test, mnt.path(), 1 << 20);
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(stable_port());
    let db = mnt.path().join("koukan.db");
    // No reserve: this is about the disk filling inside the commit of a
    // message's transactions, which a reserve would refuse before.
    let storage = format!(
        "{{embedded: {{path: \"{}\", reserve_bytes: 0}}}}",
        db.display()
    );
    let k = start_koukan(&config(smtp, sink.addr, &storage));

    const RCPTS: usize = 100;
    let rcpts: Vec<String> = (0..RCPTS).map(|i| format!("r{i:03}@example.net")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..30 {
        let id = format!("multi-m{n:02}");
        match smtp_submit(smtp, "load@example.com", &rcpts, &message(&id)) {
            Submit::Accepted(_) => accepted.push(id),
            Submit::Refused { reply, .. } if reply.starts_with("452 4.3.1") => {
                refused = Some(id);
                break;
            }
            other => panic!("{test}: {id}: {other:?}"),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("{test}: the disk never filled"));
    let queued_while_full = queue_counts(k.admin);
    // Space returns; whatever was stored gets delivered.
    std::fs::remove_file(&ballast).unwrap();
    let drained = wait_drained(&k, Duration::from_secs(30));
    if drained.is_none() {
        // What holds the space (the store's files, the WAL's size).
        let ls = Command::new("ls")
            .arg("-la")
            .arg(mnt.path())
            .output()
            .unwrap();
        let df = Command::new("df").arg(mnt.path()).output().unwrap();
        eprintln!(
            "{test}: not drained; the disk:\n{}{}",
            String::from_utf8_lossy(&ls.stdout),
            String::from_utf8_lossy(&df.stdout)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let reached = recipients_by_subject(&sink);
    let n_refused = reached.get(&refused).map_or(0, |s| s.len());
    eprintln!(
        "{test}: {} accepted, {refused} refused with 452 4.3.1; queue while full {queued_while_full:?}, \
         at the end {drained:?}; the refused message reached {n_refused} of {RCPTS} recipients",
        accepted.len()
    );
    for id in &accepted {
        let n = reached.get(id).map_or(0, |s| s.len());
        assert_eq!(
            n,
            RCPTS,
            "{test}: accepted {id} reached {n} of {RCPTS} recipients; koukan's warnings:\n{}",
            log_tail(&k)
        );
    }
    assert_eq!(
        n_refused, 0,
        "{test}: {refused} was refused with 452 4.3.1 yet delivered to {n_refused} recipients"
    );
}

/// A TCP proxy in front of redis-server that, once armed, forwards the
/// first request containing `marker` and then cuts the connection before
/// Redis's reply reaches the client: the write is applied, its
/// acknowledgement lost (what a Redis crash right after its AOF write, or
/// a network cut, does).
struct ReplyCutter {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

fn reply_cutter(upstream: SocketAddr, marker: &'static [u8]) -> ReplyCutter {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let (a, f) = (armed.clone(), fired.clone());
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(upstream) else {
                continue;
            };
            let cut = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            let (cut1, cut2, a, f) = (cut.clone(), cut, a.clone(), f.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut tail: Vec<u8> = Vec::new();
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tail.extend_from_slice(&buf[..n]);
                    let hit =
                        a.load(Ordering::SeqCst) && tail.windows(marker.len()).any(|w| w == marker);
                    let keep = tail.len().saturating_sub(marker.len());
                    tail.drain(..keep);
                    if hit {
                        // No byte of the reply may reach the client.
                        cut1.store(true, Ordering::SeqCst);
                        a.store(false, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if hit {
                        // Let Redis run (and persist) it, then cut.
                        std::thread::sleep(Duration::from_millis(300));
                        f.store(true, Ordering::SeqCst);
                        let _ = s_out.shutdown(std::net::Shutdown::Both);
                        let _ = c_in.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cut2.load(Ordering::SeqCst) {
                        continue;
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    ReplyCutter { addr, armed, fired }
}

/// Redis executes (and persists) the script storing the transaction, but
/// its reply is lost. Koukan cannot know whether the message was stored;
/// it repeats the (idempotent) store after reconnecting, so the client
/// gets its 250 and the message is delivered once.
#[test]
fn a_message_whose_redis_acknowledgement_was_lost_is_accepted_and_delivered_once() {
    let test = "lost redis reply";
    let redis = RedisServer::start().unwrap();
    let cutter = reply_cutter(
        loopback(redis.port),
        // Only the transaction's JSON has it in this form (the body's
        // Received header names the recipient too).
        br#""address":"doomed@example.net""#,
    );
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(loopback(stable_port()), &dirs.path().join("sink"), &[]).unwrap();
    let smtp = loopback(stable_port());
    let storage = format!("{{redis: {{url: \"redis://{}/\"}}}}", cutter.addr);
    let k = start_koukan(&config(smtp, sink.addr, &storage));
    // Warm-up: the scripts get loaded, the connection is established.
    let warm = smtp_submit(
        smtp,
        "a@example.com",
        &["sink@example.net"],
        &message("warm"),
    );
    assert!(warm.is_accepted(), "{test}: {warm:?}");

    cutter.armed.store(true, Ordering::SeqCst);
    let r = smtp_submit(
        smtp,
        "a@example.com",
        &["doomed@example.net"],
        &message("lost-reply"),
    );
    assert!(
        cutter.fired.load(Ordering::SeqCst),
        "{test}: the cut never happened"
    );
    eprintln!("{test}: reply with the acknowledgement lost: {r:?}");
    let drained = wait_drained(&k, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    let view = sink_view(&sink);
    let n = view.complete.get("lost-reply").copied().unwrap_or(0);
    eprintln!(
        "{test}: delivered {n} time(s); queue {drained:?}\n{}",
        log_tail(&k)
    );
    assert!(
        r.is_accepted(),
        "{test}: a lost reply cost the client a refusal: {r:?}"
    );
    assert_eq!(n, 1, "{test}: accepted and delivered {n} times");
}
