//! Load generator for `integration/bench/rest-send.sh`: N clients, each on
//! its own kept-alive HTTP/1.1 connection, create transactions with a
//! small message-builder body and follow each with hanging GETs to its
//! final status. Prints one line of figures:
//!
//! `ok=N failed=N secs=S tps=T p50_ms=X p99_ms=Y max_ms=Z`
//!
//! Usage: rest-load ADDR SENDER CLIENTS COUNT [TAG]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koukan_integration::http::HttpConn;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        anyhow::bail!("usage: rest-load ADDR SENDER CLIENTS COUNT [TAG]");
    }
    let addr: SocketAddr = args[1].parse()?;
    let sender = args[2].clone();
    let clients: usize = args[3].parse()?;
    let count: usize = args[4].parse()?;
    let tag = args.get(5).cloned().unwrap_or_default();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    // Bounded: each client stops at COUNT in all, or after 10 minutes.
    let deadline = start + Duration::from_secs(600);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (next, failed, sender, tag) =
                (next.clone(), failed.clone(), sender.clone(), tag.clone());
            std::thread::spawn(move || -> Vec<Duration> {
                let mut lat = Vec::new();
                let Ok(mut c) = HttpConn::connect(addr) else {
                    return lat;
                };
                let path = format!("/senders/{sender}/transactions");
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let mut tx = json!({
                        "mail_from": {"m": "load@example.com"},
                        "rcpt_to": [{"m": format!("rcpt{i}@example.net")}],
                        "body": {"message_builder": {
                            "headers": [["subject", format!("load {i}")],
                                        ["from", [{"address": "load@example.com"}]],
                                        ["to", [{"address": format!("rcpt{i}@example.net")}]]],
                            "text_body": [{"content_type": "text/plain",
                                           "content": {"inline": "a small message\r\n"}}]}}
                    });
                    if !tag.is_empty() {
                        tx["sender"] = json!({"tag": tag});
                    }
                    let t0 = Instant::now();
                    match follow(&mut c, &path, &tx) {
                        Some(true) => lat.push(t0.elapsed()),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(fresh) = HttpConn::connect(addr) {
                                c = fresh;
                            }
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i].as_secs_f64() * 1000.0
    };
    println!(
        "ok={} failed={} secs={secs:.2} tps={:.1} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        all.len(),
        failed.load(Ordering::Relaxed),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}

/// POSTs `tx` and follows it to its final status: whether it was
/// delivered.
fn follow(c: &mut HttpConn, path: &str, tx: &serde_json::Value) -> Option<bool> {
    let r = c.json("POST", path, &[], tx).ok()?;
    if r.status != 201 {
        eprintln!("POST: {} {}", r.status, r.text());
        return None;
    }
    let loc = r.header("location")?;
    let tx_path = loc[loc.find("/transactions/")?..].to_owned();
    let mut etag = r.header("etag")?.to_owned();
    for _ in 0..100 {
        let r = c
            .request(
                "GET",
                &tx_path,
                &[("If-None-Match", &etag), ("Request-Timeout", "10")],
                b"",
            )
            .ok()?;
        match r.status {
            304 => continue,
            200 => {
                let v = r.json();
                if let Some(reason) = v.get("final_attempt_reason") {
                    return Some(reason == "upstream response success");
                }
                etag = r.header("etag")?.to_owned();
            }
            _ => return None,
        }
    }
    None
}
