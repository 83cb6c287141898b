//! The REST API across replicas and crashes: two proxies on one
//! redis-server (redirects to the replica holding a transaction, finished
//! ones served by either), and idempotent POSTs retried across kill -9
//! delivering each message exactly once (embedded store and Redis).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koukan_integration::http::{HttpConn, tx_path};
use koukan_integration::*;
use serde_json::{Value, json};

fn config(node: &str, api: SocketAddr, storage: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
node: {{id: {node}}}
admin: {{address: "{{admin}}"}}
storage: {storage}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
  - name: api
    address: "{api}"
    http: {{session_uri: "http://{api}"}}
  senders: [{{name: submission, chain: out}}]
  chains:
  - name: out
    relay: {{endpoint: sink}}
    retry: {{max_attempts: 200, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: sink
    smtp:
      ehlo_hostname: koukan.test
      hosts: [{{host: "{uhost}", port: {uport}}}]
      connect_timeout: 1s
"#,
        uhost = upstream.ip(),
        uport = upstream.port(),
    )
}

fn redis_storage(r: &RedisServer) -> String {
    format!("{{redis: {{url: \"{}\"}}}}", r.url())
}

fn create(subject: &str, with_body: bool) -> Value {
    let mut v = json!({"mail_from": {"m": "alice@example.com"},
                       "rcpt_to": [{"m": "bob@example.net"}]});
    if with_body {
        v["body"] = json!({"inline": format!(
            "From: alice@example.com\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\nbody of {subject}\r\n"
        )});
    }
    v
}

fn path_of(location: &str) -> String {
    tx_path(location)
}

#[test]
fn replicas_redirect_to_the_holder_and_serve_finished_transactions() {
    let redis = RedisServer::start().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    // The sink waits 2 s before answering DATA, so a delivery holds its
    // lease long enough to be seen.
    let sink = SmtpSink::start(&dirs.path().join("sink"), &["-w", "2"]).unwrap();
    let (api_a, api_b) = (loopback(free_port()), loopback(free_port()));
    let storage = redis_storage(&redis);
    let a = Koukan::start(&config("rest-a", api_a, &storage, sink.addr)).unwrap();
    let b = Koukan::start(&config("rest-b", api_b, &storage, sink.addr)).unwrap();
    let mut ca = HttpConn::connect(api_a).unwrap();
    let mut cb = HttpConn::connect(api_b).unwrap();

    // A pending transaction lives on A: B redirects its upload there.
    let r = ca
        .json(
            "POST",
            "/senders/submission/transactions",
            &[],
            &create("pending", false),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let tx = path_of(r.header("location").unwrap());
    let put = format!("{tx}/body");
    let r = cb
        .request("PUT", &put, &[], b"Subject: x\r\n\r\nx\r\n")
        .unwrap();
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("http://{api_a}{put}").as_str())
    );
    // Followed, the upload completes there.
    let r = ca
        .request("PUT", &put, &[], b"Subject: x\r\n\r\nx\r\n")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // While A delivers it (leased, the sink slow), B redirects reads to A.
    let redirected = wait_for(Duration::from_secs(10), || {
        let r = cb.request("GET", &tx, &[], b"").ok()?;
        (r.status == 308).then(|| r.header("location").map(str::to_owned))
    });
    assert_eq!(
        redirected.flatten(),
        Some(format!("http://{api_a}{tx}")),
        "A: {}\nB: {}",
        a.log(),
        b.log()
    );
    // Once final, either replica serves it.
    let done = wait_for(Duration::from_secs(20), || {
        let r = cb.request("GET", &tx, &[], b"").ok()?;
        let v = r.json();
        (r.status == 200 && v.get("final_attempt_reason").is_some()).then_some(v)
    })
    .unwrap_or_else(|| panic!("not final\nA: {}\nB: {}", a.log(), b.log()));
    assert_eq!(done["final_attempt_reason"], "upstream response success");
    let from_a = ca.request("GET", &tx, &[], b"").unwrap();
    assert_eq!(from_a.status, 200);
    assert_eq!(
        from_a.json()["final_attempt_reason"],
        done["final_attempt_reason"]
    );
}

/// `n` messages POSTed by `clients` threads, each retried (same key,
/// same request) until answered 201 while the proxy is killed with -9 and
/// restarted `kills` times; the upstream is down meanwhile, so what the
/// sink receives later shows exactly what was stored.
fn exactly_once_across_kills(storage: &str, n: usize) {
    let dirs = tempfile::tempdir().unwrap();
    let sink_addr = loopback(stable_port());
    let api = loopback(stable_port());
    let admin = loopback(stable_port());
    let mut k = Koukan::start_at(&config("rest-kill", api, storage, sink_addr), admin).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (next, done, retries, stop) =
                (next.clone(), done.clone(), retries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn: Option<HttpConn> = None;
                let deadline = Instant::now() + Duration::from_secs(240);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let subject = format!("m{i:05}");
                    let key = format!("key-{i}");
                    loop {
                        assert!(
                            Instant::now() < deadline && !stop.load(Ordering::Relaxed),
                            "message {i} never acknowledged"
                        );
                        if conn.is_none() {
                            conn = HttpConn::connect(api).ok();
                        }
                        let Some(c) = conn.as_mut() else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        match c.json(
                            "POST",
                            "/senders/submission/transactions",
                            &[("Idempotency-Key", &key)],
                            &create(&subject, true),
                        ) {
                            Ok(r) if r.status == 201 => {
                                done.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(r) => {
                                assert!(
                                    r.status >= 500 || r.status == 429,
                                    "{subject}: {} {}",
                                    r.status,
                                    r.text()
                                );
                                retries.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Err(_) => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Kill -9 while POSTs are in flight, a few times.
    let mut kills = 0;
    while done.load(Ordering::Relaxed) < n && kills < 4 {
        let target = (kills + 1) * n / 5;
        let waited = wait_for(Duration::from_secs(60), || {
            (done.load(Ordering::Relaxed) >= target).then_some(())
        });
        if waited.is_none() {
            stop.store(true, Ordering::Relaxed);
            panic!("stalled at {}: {}", done.load(Ordering::Relaxed), k.log());
        }
        k.proc.signal("KILL");
        k.proc.wait_exit(Duration::from_secs(5));
        kills += 1;
        k.respawn(Duration::from_secs(30)).unwrap();
    }
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), n);
    assert!(kills >= 3, "only {kills} kills");
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "no request was interrupted: the kills tested nothing"
    );
    // Now the upstream: every stored message is delivered, once.
    let sink = SmtpSink::start_at(sink_addr, &dirs.path().join("sink"), &[]).unwrap();
    let msgs = sink.wait_messages(n, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let msgs = if msgs.len() >= n {
        sink.messages()
    } else {
        msgs
    };
    let mut subjects: Vec<String> = msgs
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect();
    subjects.sort();
    let total = subjects.len();
    subjects.dedup();
    assert_eq!(
        (total, subjects.len()),
        (n, n),
        "every message exactly once; log:\n{}",
        &k.log()[k.log().len().saturating_sub(4000)..]
    );
}

#[test]
fn idempotent_posts_across_kill_9_embedded() {
    exactly_once_across_kills("{embedded: {path: data/koukan.db}}", 2000);
}

#[test]
fn idempotent_posts_across_kill_9_redis() {
    let redis = RedisServer::start().unwrap();
    exactly_once_across_kills(&redis_storage(&redis), 2000);
}
