//! A small HTTP/1.1 client over one kept-alive connection, for tests that
//! need to see exactly what the proxy answers (status, headers, an empty
//! 304) and that a connection stays usable after an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            host: addr.to_string(),
        })
    }

    /// Sends one request (with `Content-Length` unless `headers` sets
    /// `Transfer-Encoding` or the method sends no body) and reads the reply.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<HttpResponse> {
        self.send(method, path, headers, body)?;
        self.read_response(method == "HEAD")
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let has_len = headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        if !has_len && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes())?;
        self.writer.write_all(body)?;
        Ok(())
    }

    pub fn json(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> anyhow::Result<HttpResponse> {
        let mut h = headers.to_vec();
        h.push(("Content-Type", "application/json"));
        self.request(method, path, &h, body.to_string().as_bytes())
    }

    pub fn read_response(&mut self, head_only: bool) -> anyhow::Result<HttpResponse> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if !head_only && status != 304 && status != 204 && !(100..200).contains(&status) {
            if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
                loop {
                    let mut size = String::new();
                    self.reader.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)?;
                    let mut chunk = vec![0; n + 2];
                    self.reader.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(n) = get("content-length") {
                let n: usize = n.parse()?;
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// The path of a transaction's `Location` (absolute or not).
pub fn tx_path(location: &str) -> String {
    location
        .find("/transactions/")
        .map(|i| location[i..].to_owned())
        .unwrap_or_else(|| location.to_owned())
}

impl HttpConn {
    /// Hanging GETs on transaction `tx` (a path) until it is final;
    /// returns its JSON. Panics on an unexpected status, or when `timeout`
    /// passes; every 304 must come without a body.
    pub fn wait_final(&mut self, tx: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        let mut etag: Option<String> = None;
        while std::time::Instant::now() < deadline {
            let mut h = vec![("Request-Timeout", "5")];
            if let Some(e) = &etag {
                h.push(("If-None-Match", e.as_str()));
            }
            let r = self.request("GET", tx, &h, b"").expect("GET");
            match r.status {
                200 => {
                    let v = r.json();
                    if v.get("final_attempt_reason").is_some() {
                        return v;
                    }
                    etag = r.header("etag").map(str::to_owned);
                }
                304 => assert!(r.body.is_empty(), "a 304 carries no body"),
                s => panic!("GET {tx}: {s} {}", r.text()),
            }
        }
        panic!("{tx} not final within {timeout:?}");
    }
}
