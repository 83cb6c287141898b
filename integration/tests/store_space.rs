//! A full store drains by itself, and a store file that is not a store is
//! refused.
//!
//! The full-store tests fill a store (embedded on a small tmpfs, Redis
//! under a small `maxmemory`) with the upstream down until new mail gets
//! `452 4.3.1`, then start the upstream: every acknowledged message must
//! be delivered without outside help (no tmpfs resize, no `CONFIG SET`),
//! and new mail must be accepted again once delivery has freed space. The
//! figures are printed for the notes.
//!
//! The tmpfs test needs `mount -t tmpfs` (root or CAP_SYS_ADMIN); it
//! fails, it does not skip, when it cannot mount.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use koukan_integration::*;

/// Store-and-forward into `storage`, delivering to `upstream` with a
/// retry every second.
fn config(listen: SocketAddr, upstream: SocketAddr, storage: &str) -> String {
    StoreForward {
        node: "space-test",
        scheduler: "{lease_ttl: 5s, poll_interval: 0.2s, max_concurrency: 16}",
        max_attempts: 100,
        endpoint: "connect_timeout: 1s, command_timeout: 5s",
        ..StoreForward::new(listen, upstream, storage)
    }
    .yaml()
}

/// A message of about 64 KiB whose Subject is `id`, with a trailer that
/// tells a complete delivery from a cut one.
fn big(id: &str) -> String {
    let mut m = format!(
        "From: load@example.com\r\nTo: sink@example.net\r\nSubject: {id}\r\n\
         Message-ID: <{id}@client.test>\r\n\r\n"
    );
    let line = "y".repeat(76);
    for _ in 0..(64 * 1024 / 78) {
        m.push_str(&line);
        m.push_str("\r\n");
    }
    m.push_str(&format!("END {id}\r\n"));
    m
}

/// The Subjects the sink holds complete, with their delivery counts.
fn delivered(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in sink.messages() {
        let Some(id) = m
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .map(|s| s.trim().to_owned())
        else {
            continue;
        };
        if m.contains(&format!("END {id}")) {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

fn warnings(k: &Koukan) -> String {
    let log = k.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn is_full(r: &Submit) -> bool {
    matches!(r, Submit::Refused { reply, .. } if reply.starts_with("452 4.3.1"))
}

/// What a fill-and-drain run measured.
struct Figures {
    acknowledged: usize,
    refused: usize,
    delivered: usize,
    drain: Duration,
    accepted_again_after: Duration,
}

/// Sends until `452 4.3.1` with the upstream down, checks it stays so,
/// starts the upstream at `up`, waits for every acknowledged message and
/// for new mail to be accepted again; asserts the exact delivered set.
fn fill_then_drain(
    test: &str,
    smtp: SocketAddr,
    up: SocketAddr,
    k: &Koukan,
    probe: &dyn Fn() -> String,
) -> Figures {
    let mut acknowledged = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for n in 0..400 {
        let id = format!("{test}-m{n:03}");
        let r = smtp_submit(smtp, "load@example.com", &["sink@example.net"], &big(&id));
        match &r {
            Submit::Accepted(_) => {
                acknowledged.insert(id);
            }
            r if is_full(r) => {
                eprintln!("{test}: {id}: {r:?}");
                refused.insert(id);
                break;
            }
            other => panic!(
                "{test}: {id}: expected 250 or 452 4.3.1, got {other:?}\n{}",
                warnings(k)
            ),
        }
    }
    assert!(
        !refused.is_empty(),
        "{test}: the store never filled after {} messages",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 5,
        "{test}: only {} acknowledged before the store was full",
        acknowledged.len()
    );
    eprintln!(
        "{test}: {} acknowledged, then 452 4.3.1; queue {:?}; {}",
        acknowledged.len(),
        queue_counts(k.admin),
        probe()
    );
    // Still full while nothing is delivered: refused, and still serving.
    std::thread::sleep(Duration::from_secs(2));
    for n in 0..3 {
        let id = format!("{test}-full{n}");
        let r = smtp_submit(smtp, "load@example.com", &["sink@example.net"], &big(&id));
        assert!(
            is_full(&r),
            "{test}: {id} while full: {r:?}\n{}",
            warnings(k)
        );
        refused.insert(id);
    }
    eprintln!("{test}: after 2 s full: {}", probe());
    let below_logs = k.log().matches("below its").count();
    assert_eq!(
        below_logs,
        1,
        "{test}: the state change is logged once, not per message:\n{}",
        warnings(k)
    );

    // The upstream comes back: everything acknowledged drains by itself.
    let dirs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_at(up, &dirs.path().join("sink"), &[]).unwrap();
    let back = Instant::now();
    let drained = wait_for(Duration::from_secs(120), || {
        let got = delivered(&sink);
        acknowledged
            .iter()
            .all(|id| got.contains_key(id))
            .then_some(())
    });
    let drain = back.elapsed();
    eprintln!("{test}: drained: {}", probe());
    let got = delivered(&sink);
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !got.contains_key(*id))
        .collect();
    assert!(
        drained.is_some() && missing.is_empty(),
        "{test}: {} of {} acknowledged messages not delivered after {drain:?}: {missing:?}\n\
         queue {:?}\n{}",
        missing.len(),
        acknowledged.len(),
        queue_counts(k.admin),
        warnings(k)
    );

    // New mail is accepted again once delivery has freed space.
    let mut accepted_again = None;
    for n in 0..100 {
        let id = format!("{test}-after{n:02}");
        let r = smtp_submit(smtp, "load@example.com", &["sink@example.net"], &big(&id));
        if r.is_accepted() {
            acknowledged.insert(id);
            accepted_again = Some(back.elapsed());
            break;
        }
        assert!(is_full(&r), "{test}: {id}: {r:?}");
        refused.insert(id);
        std::thread::sleep(Duration::from_millis(200));
    }
    let accepted_again_after = accepted_again.unwrap_or_else(|| {
        panic!(
            "{test}: new mail still refused after the queue drained\n{}",
            warnings(k)
        )
    });
    assert!(
        k.log().contains("above its"),
        "{test}: leaving the reserve is logged"
    );
    let done = wait_for(Duration::from_secs(30), || {
        let got = delivered(&sink);
        acknowledged
            .iter()
            .all(|id| got.contains_key(id))
            .then_some(got)
    })
    .unwrap_or_else(|| panic!("{test}: the last message was not delivered"));
    std::thread::sleep(Duration::from_millis(300));
    let got = delivered(&sink);
    // Exactly the acknowledged set: none lost, none refused delivered.
    let wrongly: Vec<&String> = refused.iter().filter(|id| got.contains_key(*id)).collect();
    assert!(
        wrongly.is_empty(),
        "{test}: refused yet delivered: {wrongly:?}"
    );
    let strangers: Vec<&String> = got
        .keys()
        .filter(|id| !acknowledged.contains(*id))
        .collect();
    assert!(
        strangers.is_empty(),
        "{test}: unknown deliveries: {strangers:?}"
    );
    let duplicates = got.values().filter(|n| **n > 1).count();
    assert_eq!(done.len(), acknowledged.len());
    eprintln!(
        "{test}: acknowledged {}, refused {}, delivered {} ({duplicates} duplicated), \
         drain {drain:?}, accepted again {accepted_again_after:?} after the upstream came back; \
         queue at the end {:?}",
        acknowledged.len(),
        refused.len(),
        got.len(),
        queue_counts(k.admin)
    );
    assert!(k.log().matches("below its").count() >= 1);
    Figures {
        acknowledged: acknowledged.len(),
        refused: refused.len(),
        delivered: got.len(),
        drain,
        accepted_again_after,
    }
}

/// Unmounts (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(test: &str, mnt: &Path, size: &str) -> Tmpfs {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt)
        .status()
        .expect("mount(8)");
    assert!(
        status.success(),
        "{test}: `mount -t tmpfs` failed ({status}): this test needs root or CAP_SYS_ADMIN"
    );
    Tmpfs(mnt.to_owned())
}

#[test]
fn a_full_embedded_store_drains_by_itself_and_accepts_mail_again() {
    let test = "embedded-full";
    let started = Instant::now();
    let mnt = tempfile::tempdir().unwrap();
    let _tmpfs = mount_tmpfs(test, mnt.path(), "8m");
    let db = mnt.path().join("koukan.db");
    let smtp = loopback(stable_port());
    // Nothing listens there until the test starts the sink.
    let up = loopback(stable_port());
    let storage = format!(
        "{{embedded: {{path: \"{}\", reserve_bytes: 1048576}}}}",
        db.display()
    );
    let k = Koukan::start(&config(smtp, up, &storage)).unwrap_or_else(|e| panic!("{e:#}"));
    let probe = || {
        let ls = Command::new("ls")
            .arg("-l")
            .arg(mnt.path())
            .output()
            .unwrap();
        let df = Command::new("df")
            .arg("-B1")
            .arg("--output=avail")
            .arg(mnt.path())
            .output()
            .unwrap();
        format!(
            "{} free; {}",
            String::from_utf8_lossy(&df.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .trim(),
            String::from_utf8_lossy(&ls.stdout)
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let f = fill_then_drain(test, smtp, up, &k, &probe);
    assert!(f.acknowledged > 20, "{test}: only {}", f.acknowledged);
    assert!(f.refused >= 4 && f.delivered == f.acknowledged);
    let df = Command::new("df")
        .arg("-B1")
        .arg(mnt.path())
        .output()
        .unwrap();
    eprintln!(
        "{test}: 8 MiB tmpfs, reserve 1 MiB: acknowledged {}, refused {}, delivered {}, \
         drain {:?}, accepted again after {:?}; total {:?}\n{}",
        f.acknowledged,
        f.refused,
        f.delivered,
        f.drain,
        f.accepted_again_after,
        started.elapsed(),
        String::from_utf8_lossy(&df.stdout)
    );
    assert_no_stall(test, &k);
}

/// The symptom this guards against: delivery's own writes failing on a
/// full store.
fn assert_no_stall(test: &str, k: &Koukan) {
    let log = k.log();
    for symptom in [
        "claiming due transactions failed",
        "gc failed",
        "recording the attempt failed",
    ] {
        assert!(
            !log.contains(symptom),
            "{test}: delivery stalled on the full store ({symptom}):\n{}",
            warnings(k)
        );
    }
}

#[test]
fn a_full_redis_store_drains_by_itself_and_accepts_mail_again() {
    let test = "redis-full";
    let started = Instant::now();
    let redis =
        RedisServer::start_with_args(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"])
            .unwrap();
    let smtp = loopback(stable_port());
    let up = loopback(stable_port());
    // The default reserve: 10 % of maxmemory.
    let storage = format!("{{redis: {{url: \"{}\"}}}}", redis.url());
    let k = Koukan::start(&config(smtp, up, &storage)).unwrap_or_else(|e| panic!("{e:#}"));
    let port = redis.port.to_string();
    let probe = || {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "INFO", "memory"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter(|l| {
                [
                    "used_memory:",
                    "maxmemory:",
                    "used_memory_scripts:",
                    "mem_clients_normal:",
                    "mem_aof_buffer:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let f = fill_then_drain(test, smtp, up, &k, &probe);
    assert!(f.acknowledged > 20, "{test}: only {}", f.acknowledged);
    assert!(f.refused >= 4 && f.delivered == f.acknowledged);
    eprintln!(
        "{test}: maxmemory 8 MiB, default reserve (10 %): acknowledged {}, refused {}, \
         delivered {}, drain {:?}, accepted again after {:?}; total {:?}",
        f.acknowledged,
        f.refused,
        f.delivered,
        f.drain,
        f.accepted_again_after,
        started.elapsed()
    );
    assert_no_stall(test, &k);
}

// ---------------------------------------------------------------------
// Store files that are not a store.

/// Runs `koukan` with `args` (bounded: killed after 20 s); returns the
/// exit code and what it printed.
fn run_koukan(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(koukan_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&out).unwrap_or_default(),
    )
}

/// The config (with `{admin}` still to fill in) whose embedded store is
/// `data/koukan.db`.
fn store_yaml() -> String {
    config(
        loopback(free_port()),
        loopback(free_port()),
        "{embedded: {path: data/koukan.db}}",
    )
}

/// [`store_yaml`] written to `dir/koukan.yaml` with an admin address.
fn store_config(dir: &Path) -> PathBuf {
    let yaml = store_yaml().replace("{admin}", &loopback(free_port()).to_string());
    let path = dir.join("koukan.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn koukan_refuses_to_start_on_a_store_file_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    let db = dir.path().join("data/koukan.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let foreign = |p: &Path| {
        let out = python(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('CREATE TABLE accounts (id INTEGER)')\n\
             c.commit()\n",
            &[p.to_str().unwrap()],
        );
        assert!(out.status.success(), "{out:?}");
    };
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "0 bytes",
            Box::new(|p| std::fs::write(p, b"").unwrap()),
            "an empty file (0 bytes)",
        ),
        (
            "garbage",
            Box::new(|p| std::fs::write(p, b"#!/bin/sh\necho not a database\n").unwrap()),
            "not an SQLite database",
        ),
        (
            "foreign SQLite",
            Box::new(foreign),
            "without koukan's schema_version table (tables: accounts)",
        ),
    ];
    for (what, make, found) in cases {
        let _ = std::fs::remove_file(&db);
        make(&db);
        let before = std::fs::read(&db).unwrap();
        let (code, out) = run_koukan(&["--config", cfg.to_str().unwrap()]);
        eprintln!("{what}: exit {code:?}: {}", out.trim_end());
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(
            out.contains("storage.embedded.path:") && out.contains(&db.display().to_string()),
            "{what}: the message names the field and the file: {out}"
        );
        assert!(out.contains("not a koukan store"), "{what}: {out}");
        assert!(out.contains(found), "{what}: {out}");
        assert!(out.contains("init-store"), "{what}: {out}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            before,
            "{what}: the file was changed"
        );
        // check-config stops on it too, and changes nothing either.
        let (code, out) = run_koukan(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{what}: check-config: {out}");
        assert!(
            out.contains("storage.embedded.path") && out.contains(found),
            "{what}: check-config: {out}"
        );
        assert_eq!(std::fs::read(&db).unwrap(), before, "{what}: check-config");
    }
}

#[test]
fn init_store_creates_a_store_and_with_force_sets_an_invalid_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    let cfg_s = cfg.to_str().unwrap();
    let db = dir.path().join("data/koukan.db");

    // check-config creates nothing.
    let (code, out) = run_koukan(&["check-config", cfg_s]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!db.exists(), "check-config created the store file");

    let (code, out) = run_koukan(&["init-store", "--config", cfg_s]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("created a new store"), "{out}");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 0);
    let (code, out) = run_koukan(&["init-store", "--config", cfg_s, "--force"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("left untouched"), "{out}");

    // The store it made serves (the harness writes the same config with
    // an admin address of its own).
    let yaml = store_yaml();
    let k = Koukan::start_in(dir, &yaml).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(queue_counts(k.admin).is_some());
    let dir = k.dir;
    drop(k.proc);

    // Truncated: refused without --force, set aside with it.
    std::fs::write(&db, b"").unwrap();
    let (code, out) = run_koukan(&["init-store", "--config", cfg_s]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("storage.embedded.path") && out.contains("0 bytes"),
        "{out}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    let (code, out) = run_koukan(&["init-store", "--config", cfg_s, "--force"]);
    assert_eq!(code, Some(0), "{out}");
    eprintln!("init-store --force: {}", out.trim_end());
    assert!(out.contains("moved it to"), "{out}");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("koukan.db.invalid-"))
        })
        .collect();
    // The file, and the -wal/-shm the killed process left beside it,
    // which belong to it.
    let main: Vec<&PathBuf> = aside
        .iter()
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(main.len(), 1, "{aside:?}");
    assert_eq!(std::fs::metadata(main[0]).unwrap().len(), 0);
    // None of the old log is left to be replayed into the new store.
    assert!(!dir.path().join("data/koukan.db-wal").exists());
    assert!(std::fs::metadata(&db).unwrap().len() > 0);
    let k = Koukan::start_in(dir, &yaml).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(queue_counts(k.admin).is_some());
}
