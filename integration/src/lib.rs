//! Test harness: starts real processes (koukan, Postfix's smtp-sink,
//! python3 smtplib clients) on loopback and cleans them up.
#![forbid(unsafe_code)]

pub mod dns;
pub mod http;
pub mod receiver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The `koukan` binary under test: `$KOUKAN_BIN`, else the workspace's debug
/// build (the test command builds it first).
pub fn koukan_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KOUKAN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let bin = target.join("debug").join("koukan");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p koukan-proxy` first",
        bin.display()
    );
    bin
}

/// A free loopback port below the kernel's ephemeral range, so no
/// outgoing connection (of a load test, say) can take it between the
/// check and the bind, nor while a killed server is being restarted on it.
pub fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u64, low.clamp(10_001, 65_535));
    // Spread concurrent test processes apart; then walk the range.
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    // Ports handed out before in this process: one may be free still (its
    // server not started yet), and handing it out twice would have two
    // servers race for it.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..(hi - lo) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (seed.wrapping_add(n.wrapping_mul(104_729))) % (hi - lo)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A loopback port that was free a moment ago. Taken from below the
/// ephemeral range like [`stable_port`]: a port the kernel hands out
/// could meanwhile become the local end of some test's outgoing
/// connection, and the server meant for it would fail to bind.
pub fn free_port() -> u16 {
    stable_port()
}

pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{addr} did not accept connections within {timeout:?}")
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({cmd:?})"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`) through kill(1), so the
    /// harness needs no unsafe code.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Postfix's `smtp-sink`, dumping each message it accepts into `dir`.
pub struct SmtpSink {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _proc: Proc,
}

impl SmtpSink {
    /// `extra` are smtp-sink options, e.g. `["-r", "RCPT"]` to answer RCPT
    /// with a 4xx or `["-q", "."]` to drop the connection after the data.
    pub fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1", dir, extra)
    }

    pub fn start_on(ip: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_at(format!("{ip}:{}", free_port()).parse()?, dir, extra)
    }

    pub fn start_at(addr: SocketAddr, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // smtp-sink drops privileges when run as root; the dump directory
        // must stay writable for that user.
        Command::new("chmod").arg("0777").arg(dir).status()?;
        let mut cmd = Command::new(smtp_sink_bin());
        cmd.args(extra)
            .arg("-u")
            .arg("nobody")
            .arg("-d")
            .arg(format!("{}/", dir.display()))
            .arg(addr.to_string())
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn("smtp-sink", &mut cmd)?;
        wait_for_port(addr, Duration::from_secs(10))?;
        Ok(Self {
            addr,
            dir: dir.to_owned(),
            _proc: proc,
        })
    }

    /// The messages dumped so far (smtp-sink writes the envelope as
    /// `X-Client-Addr`, `X-Mail-Args`, `X-Rcpt-Args` lines before the data).
    /// smtp-sink also dumps transactions that never reached DATA (MAIL then
    /// RSET); those carry no Received line of its own and are left out.
    pub fn messages(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_file())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .filter(|m| m.contains("by smtp-sink (smtp-sink)"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn smtp_sink_bin() -> PathBuf {
    ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Postfix's smtp-sink is not installed (the test script installs it)")
}

/// A running koukan process with its own config directory.
pub struct Koukan {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Koukan {
    /// Writes `yaml` (with `{admin}` replaced by a free admin address) into
    /// a fresh directory and starts koukan on it; returns once `/ready`
    /// answers 200.
    pub fn start(yaml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, yaml)
    }

    pub fn start_in(dir: tempfile::TempDir, yaml: &str) -> anyhow::Result<Self> {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        Self::start_in_at(dir, yaml, admin)
    }

    /// Like [`Koukan::start`] with a given admin address (e.g. from
    /// [`stable_port`], for a process restarted on the same ports).
    pub fn start_at(yaml: &str, admin: SocketAddr) -> anyhow::Result<Self> {
        Self::start_in_at(tempfile::tempdir()?, yaml, admin)
    }

    pub fn start_in_at(
        dir: tempfile::TempDir,
        yaml: &str,
        admin: SocketAddr,
    ) -> anyhow::Result<Self> {
        let yaml = yaml.replace("{admin}", &admin.to_string());
        let config_path = dir.path().join("koukan.yaml");
        std::fs::write(&config_path, yaml)?;
        let log_path = dir.path().join("koukan.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(koukan_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("KOUKAN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn("koukan", &mut cmd)?;
        let mut k = Self {
            proc,
            admin,
            dir,
            config_path,
            log_path,
        };
        k.wait_ready(Duration::from_secs(20))?;
        Ok(k)
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.proc.is_running() {
                bail!("koukan exited early; log:\n{}", self.log());
            }
            if let Ok((200, _)) = http_get(self.admin, "/ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("koukan not ready within {timeout:?}; log:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// A minimal HTTP/1.0 GET (no client crate needed for admin probes).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A POST as the admin API expects a mutation: a JSON body.
pub fn http_post(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_with(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        "{}",
    )
}

fn http_request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http_with(addr, method, path, &[], "")
}

/// An HTTP/1.0 request with the given headers and body; `Host` is the
/// address unless `headers` sets one. Returns the status and the body.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP status line")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `f` every 50 ms until it yields a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The messages in a Maildir subfolder (e.g. `bounces/new`) of a koukan's
/// directory.
pub fn maildir_files(k: &Koukan, dir: &str) -> Vec<String> {
    std::fs::read_dir(k.path(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a python3 script with arguments; returns its output.
pub fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

/// A raw SMTP conversation for bad-input tests: write bytes, read replies.
pub struct RawSmtp {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl RawSmtp {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::from_stream(stream)
    }

    /// Connects from `source` (any address of 127.0.0.0/8 is loopback, so
    /// tests can play distinct clients: 127.0.0.2, 127.0.0.3, ...).
    pub fn connect_from(addr: SocketAddr, source: &str) -> anyhow::Result<Self> {
        let source = SocketAddr::new(source.parse()?, 0);
        // std cannot bind before connecting; tokio's socket can.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
        })?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> anyhow::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { reader, stream })
    }

    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply; returns the full text.
    pub fn reply(&mut self) -> anyhow::Result<String> {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                bail!("connection closed; got so far: {out:?}");
            }
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(out);
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A relay config: one SMTP listener on `listen` whose chain adds a
/// Received header and routes every recipient to `upstream` over SMTP.
/// `limits` is a YAML flow mapping of smtp listener limits (or `{}`).
pub fn relay_config(listen: SocketAddr, upstream: SocketAddr, limits: &str) -> String {
    format!(
        r#"
node: {{id: test-node}}
admin: {{address: "{{admin}}"}}
static_resources:
  listeners:
  - name: mx
    address: "{listen}"
    smtp:
      hostname: koukan.test
      sender: inbound
      limits: {limits}
  senders:
  - name: inbound
    chain: relay
  chains:
  - name: relay
    filters:
    - received_header: {{received_hostname: koukan.test}}
    - router:
        destination:
          endpoint: upstream
          host_list: [{{host: "{uhost}", port: {uport}}}]
  endpoints:
  - name: upstream
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        uhost = upstream.ip(),
        uport = upstream.port(),
    )
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends one message with python3's smtplib. `extra` is Python run after
/// `s.ehlo()` on an `smtplib.SMTP` called `s` (e.g. `s.starttls(...)`).
/// Prints `OK <refused-dict>` or `ERR <code> <text>`; returns stdout.
pub fn smtplib_send(
    addr: SocketAddr,
    mail_from: &str,
    rcpts: &[&str],
    message: &str,
    mail_options: &[&str],
    extra: &str,
) -> String {
    let script = format!(
        r#"
import smtplib, ssl, sys, json
addr, port = sys.argv[1], int(sys.argv[2])
mail_from, rcpts, msg, opts = sys.argv[3], json.loads(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
try:
    s = smtplib.SMTP(addr, port, timeout=30)
    s.ehlo()
{extra}
    refused = s.sendmail(mail_from, rcpts, msg.encode('utf-8'), mail_options=opts)
    print('OK', json.dumps({{k: [v[0], v[1].decode()] for k, v in refused.items()}}))
    s.quit()
except smtplib.SMTPRecipientsRefused as e:
    print('ERR RCPT', json.dumps({{k: [v[0], v[1].decode()] for k, v in e.recipients.items()}}))
except smtplib.SMTPResponseException as e:
    print('ERR', e.smtp_code, e.smtp_error.decode())
except Exception as e:
    print('EXC', type(e).__name__, e)
"#,
        extra = extra
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let rcpts = format!(
        "[{}]",
        rcpts
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let opts = format!(
        "[{}]",
        mail_options
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = python(
        &script,
        &[
            &addr.ip().to_string(),
            &addr.port().to_string(),
            mail_from,
            &rcpts,
            message,
            &opts,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_owned()
}

/// A self-signed certificate for `localhost`/127.0.0.1 written as PEM
/// files; returns (cert path, key path).
pub fn write_test_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

impl Koukan {
    /// Starts a fresh process on the same config file and directory (the
    /// previous one having died, e.g. after `proc.signal("KILL")`),
    /// appending to the same log; returns once `/ready` answers 200.
    pub fn respawn(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(koukan_bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("KOUKAN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log);
        // The old `Proc` is dropped here (kill + reap; a no-op once dead).
        self.proc = Proc::spawn("koukan", &mut cmd)?;
        self.wait_ready(timeout)
    }
}

/// A redis-server of the test's own, on a free loopback port, with an
/// append-only file fsynced on every write (what the Redis store
/// requires). It can be killed and restarted on the same port and data
/// directory.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
    /// AOF with fsync on every write; without it the server is volatile.
    durable: bool,
    /// More `redis-server` arguments, e.g. `--maxmemory 8mb`.
    extra: Vec<String>,
}

impl RedisServer {
    /// A durable server: AOF, `appendfsync always`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// A server without an append-only file (`appendonly no`).
    pub fn start_volatile() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// A durable server started with more arguments (kept across
    /// restarts), e.g. `["--maxmemory", "8mb", "--maxmemory-policy",
    /// "noeviction"]`.
    pub fn start_with_args(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(true, extra)
    }

    fn start_with(durable: bool) -> anyhow::Result<Self> {
        Self::start_inner(durable, &[])
    }

    fn start_inner(durable: bool, extra: &[&str]) -> anyhow::Result<Self> {
        let mut r = Self {
            port: stable_port(),
            dir: tempfile::tempdir()?,
            proc: None,
            durable,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: no shutdown, no final AOF rewrite.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(5));
        }
    }

    /// (Re)starts the server on the same port and directory; returns once
    /// it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if self.durable { "yes" } else { "no" },
            "--appendfsync",
            "always",
            "--dir",
        ])
        .arg(self.dir.path())
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.proc = Some(Proc::spawn("redis-server", &mut cmd)?);
        wait_for_port(loopback(self.port), Duration::from_secs(10))
    }
}

/// What became of one message submitted with [`smtp_submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submit {
    /// 250 after the end of data; the reply.
    Accepted(String),
    /// An explicit 4xx/5xx reply at `stage` (greeting, ehlo, mail, rcpt,
    /// data, dot): the server took responsibility for nothing.
    Refused { stage: &'static str, reply: String },
    /// The connection failed before the whole message (its final dot) was
    /// written: the server cannot have accepted it.
    NotSent(String),
    /// The final dot was written but no reply came back: the server may or
    /// may not have accepted it.
    Unknown(String),
}

impl Submit {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Submit::Accepted(_))
    }
}

/// Submits one message over a raw SMTP connection and classifies the
/// outcome precisely (for crash tests, which must tell "refused" from
/// "connection broke before/after the data was sent"). `data` uses CRLF
/// line ends and must not contain a line that is a lone dot.
pub fn smtp_submit(addr: SocketAddr, from: &str, rcpts: &[&str], data: &str) -> Submit {
    fn expect(
        s: &mut RawSmtp,
        stage: &'static str,
        line: Option<&str>,
        want: u16,
    ) -> Result<String, Submit> {
        let r = match line {
            Some(l) => s.cmd(l),
            None => s.reply(),
        }
        .map_err(|e| Submit::NotSent(format!("{stage}: {e:#}")))?;
        let code: u16 = r.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code == want {
            Ok(r)
        } else {
            Err(Submit::Refused {
                stage,
                reply: r.trim_end().to_owned(),
            })
        }
    }
    let run = || -> Result<Submit, Submit> {
        let mut s =
            RawSmtp::connect(addr).map_err(|e| Submit::NotSent(format!("connect: {e:#}")))?;
        s.stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| Submit::NotSent(format!("socket: {e}")))?;
        expect(&mut s, "greeting", None, 220)?;
        expect(&mut s, "ehlo", Some("EHLO client.test"), 250)?;
        expect(&mut s, "mail", Some(&format!("MAIL FROM:<{from}>")), 250)?;
        for r in rcpts {
            expect(&mut s, "rcpt", Some(&format!("RCPT TO:<{r}>")), 250)?;
        }
        expect(&mut s, "data", Some("DATA"), 354)?;
        let mut body = data.to_owned();
        if !body.ends_with("\r\n") {
            body.push_str("\r\n");
        }
        body.push_str(".\r\n");
        s.send(body.as_bytes())
            .map_err(|e| Submit::NotSent(format!("sending data: {e:#}")))?;
        let reply = match s.reply() {
            Ok(r) => r.trim_end().to_owned(),
            Err(e) => return Ok(Submit::Unknown(format!("after the dot: {e:#}"))),
        };
        let _ = s.cmd("QUIT");
        Ok(if reply.starts_with("250") {
            Submit::Accepted(reply)
        } else {
            Submit::Refused {
                stage: "dot",
                reply,
            }
        })
    };
    match run() {
        Ok(s) | Err(s) => s,
    }
}

/// The admin `/queue` counts (`None` if the admin endpoint or the store
/// did not answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub waiting: u64,
    pub due: u64,
    pub inflight: u64,
    pub final_: u64,
}

pub fn queue_counts(admin: SocketAddr) -> Option<QueueCounts> {
    let (status, body) = http_get(admin, "/queue").ok()?;
    if status != 200 {
        return None;
    }
    let field = |name: &str| -> Option<u64> {
        let start = body.find(&format!("\"{name}\":"))? + name.len() + 3;
        let digits: String = body[start..]
            .chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    Some(QueueCounts {
        waiting: field("waiting")?,
        due: field("due")?,
        inflight: field("inflight")?,
        final_: field("final_")?,
    })
}

/// Connection counts seen by a [`TcpTap`].
#[derive(Debug, Default)]
pub struct TapStats {
    accepted: std::sync::atomic::AtomicUsize,
    active: std::sync::atomic::AtomicUsize,
    max_active: std::sync::atomic::AtomicUsize,
}

/// A TCP relay in front of a server (or, without one, a server that
/// accepts and never says a word) that counts the connections made to it:
/// how many are open now, the most open at once, how many were accepted.
/// A connection counts as open until its client closes it.
pub struct TcpTap {
    pub addr: SocketAddr,
    stats: std::sync::Arc<TapStats>,
}

impl TcpTap {
    /// Relays every connection to `target`.
    pub fn relay(target: SocketAddr) -> Self {
        Self::start(Some(target))
    }

    /// Accepts connections and stays silent.
    pub fn silent() -> Self {
        Self::start(None)
    }

    fn start(target: Option<SocketAddr>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind(loopback(free_port())).expect("bind tap");
        let addr = listener.local_addr().expect("tap address");
        let stats = std::sync::Arc::new(TapStats::default());
        let shared = stats.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                shared.accepted.fetch_add(1, SeqCst);
                let now = shared.active.fetch_add(1, SeqCst) + 1;
                shared.max_active.fetch_max(now, SeqCst);
                let stats = shared.clone();
                std::thread::spawn(move || {
                    let upstream = target.and_then(|t| TcpStream::connect(t).ok());
                    if let Some(up) = &upstream {
                        let (mut from_up, mut to_client) = (
                            up.try_clone().expect("clone"),
                            client.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from_up, &mut to_client);
                            let _ = to_client.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    // Until the client closes its side.
                    let mut from_client = &client;
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Some(mut up) = upstream.as_ref()
                                    && up.write_all(&buf[..n]).is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                    stats.active.fetch_sub(1, SeqCst);
                    if let Some(up) = &upstream {
                        let _ = up.shutdown(std::net::Shutdown::Both);
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { addr, stats }
    }

    pub fn accepted(&self) -> usize {
        self.stats
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.stats.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn max_active(&self) -> usize {
        self.stats
            .max_active
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A store-and-forward bootstrap as the durability tests use it: one SMTP
/// listener whose chain adds a Received header and stores into `storage`
/// (the YAML of `storage:`), delivered by the chain `out` to `upstream`
/// with a retry every second.
#[derive(Clone, Debug)]
pub struct StoreForward<'a> {
    pub node: &'a str,
    /// The listener's and the Received header's host name.
    pub hostname: &'a str,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub storage: &'a str,
    /// The YAML flow mapping of `scheduler:`.
    pub scheduler: &'a str,
    pub max_attempts: u32,
    /// Bounces go into the Maildir `bounces/` of the koukan's directory.
    pub bounces: bool,
    /// The upstream endpoint's settings besides `ehlo_hostname`, as the
    /// inside of a YAML flow mapping.
    pub endpoint: &'a str,
}

impl<'a> StoreForward<'a> {
    pub fn new(listen: SocketAddr, upstream: SocketAddr, storage: &'a str) -> Self {
        Self {
            node: "sf-test",
            hostname: "koukan.test",
            listen,
            upstream,
            storage,
            scheduler: "{}",
            max_attempts: 30,
            bounces: false,
            endpoint: "connect_timeout: 1s",
        }
    }

    pub fn yaml(&self) -> String {
        let (notification, bounce_chain, bounce_box) = if self.bounces {
            (
                "\n    notification: {chain: bounces, mailer_daemon: mailer-daemon@koukan.test}",
                "\n  - name: bounces\n    filters:\n    - router: {destination: {endpoint: bounce-box}}",
                "\n  - name: bounce-box\n    maildir: {path: bounces}",
            )
        } else {
            ("", "", "")
        };
        format!(
            r#"
node: {{id: {node}}}
admin: {{address: "{{admin}}"}}
storage: {storage}
scheduler: {scheduler}
static_resources:
  listeners:
  - name: mx
    address: "{listen}"
    smtp: {{hostname: {host}, sender: inbound}}
  senders: [{{name: inbound, chain: inbound}}]
  chains:
  - name: inbound
    filters:
    - received_header: {{received_hostname: {host}}}
    store_and_forward: {{output_chain: out}}
  - name: out
    filters:
    - router:
        destination:
          endpoint: upstream
          host_list: [{{host: "{uhost}", port: {uport}}}]
    retry: {{max_attempts: {attempts}, min_attempt_time: 1s, max_attempt_time: 1s}}{notification}{bounce_chain}
  endpoints:
  - name: upstream
    smtp: {{ehlo_hostname: {host}, {endpoint}}}{bounce_box}
"#,
            node = self.node,
            storage = self.storage,
            scheduler = self.scheduler,
            listen = self.listen,
            host = self.hostname,
            uhost = self.upstream.ip(),
            uport = self.upstream.port(),
            attempts = self.max_attempts,
            endpoint = self.endpoint,
        )
    }
}
