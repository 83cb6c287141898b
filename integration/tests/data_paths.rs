//! Every data path at its boundaries, through every chain terminal: body
//! sizes around the 64 KiB internal chunk (empty, one octet, 1 KiB,
//! exactly one chunk, one chunk plus one byte, 300 KiB, 5 MiB), sent with
//! DATA, with one BDAT
//! and with several BDATs (a pause before LAST), to one and to three
//! recipients, through a relay chain, a relay chain behind two
//! whole-message filters (`message_parse`: the body held back, spooled,
//! then streamed on), the exploder (msa and mx) and store-and-forward. Each cell checks the client's reply and the bytes
//! Postfix's smtp-sink received (smtp-sink writes its dumps with LF line
//! ends, so the expected content is compared with CRLF turned into LF).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use koukan_integration::*;

const CHUNK: usize = 64 * 1024;
const SIZES: [usize; 7] = [0, 1, 1024, CHUNK, CHUNK + 1, 300 * 1024, 5 * 1024 * 1024];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Terminal {
    Relay,
    /// The relay behind two whole-message filters.
    WholeMessage,
    ExploderMsa,
    ExploderMx,
    StoreForward,
}

impl Terminal {
    const ALL: [Terminal; 5] = [
        Terminal::Relay,
        Terminal::WholeMessage,
        Terminal::ExploderMsa,
        Terminal::ExploderMx,
        Terminal::StoreForward,
    ];

    fn chain(self) -> &'static str {
        match self {
            Terminal::Relay => "relay",
            Terminal::WholeMessage => "whole",
            Terminal::ExploderMsa => "xmsa",
            Terminal::ExploderMx => "xmx",
            Terminal::StoreForward => "sf",
        }
    }

    /// Upstream transactions per inbound one: the relay keeps the
    /// recipients together, the others deliver each on its own.
    fn splits(self) -> bool {
        !matches!(self, Terminal::Relay | Terminal::WholeMessage)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Data,
    BdatOne,
    /// Four chunks, with a pause before the last.
    BdatSeveral,
}

fn config(listeners: &[(Terminal, SocketAddr)], sink: SocketAddr) -> String {
    let mut l = String::new();
    for (t, addr) in listeners {
        l.push_str(&format!(
            "  - name: {c}\n    address: \"{addr}\"\n    smtp: {{hostname: koukan.test, sender: {c}}}\n",
            c = t.chain()
        ));
    }
    let senders: Vec<String> = Terminal::ALL
        .iter()
        .map(|t| format!("{{name: {c}, chain: {c}}}", c = t.chain()))
        .collect();
    format!(
        r#"
node: {{id: data-paths}}
admin: {{address: "{{admin}}"}}
storage: {{embedded: {{path: data/koukan.db}}}}
scheduler: {{poll_interval: 0.2s}}
static_resources:
  listeners:
{l}  senders: [{senders}]
  chains:
  - name: relay
    filters:
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
  - name: whole
    filters:
    - message_parse: {{}}
    - message_parse: {{max_header_bytes: 100}}
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
  - name: xmsa
    exploder: {{output_chain: out, msa: true, rcpt_timeout: 20s, data_timeout: 60s}}
  - name: xmx
    exploder: {{output_chain: out, msa: false, rcpt_timeout: 20s, data_timeout: 60s}}
  - name: sf
    store_and_forward: {{output_chain: out}}
  - name: out
    filters:
    - router: {{destination: {{endpoint: sink, host_list: [{{host: "{sh}", port: {sp}}}]}}}}
    retry: {{max_attempts: 3, min_attempt_time: 1s, max_attempt_time: 1s}}
  endpoints:
  - name: sink
    smtp: {{ehlo_hostname: koukan.test}}
"#,
        senders = senders.join(", "),
        sh = sink.ip(),
        sp = sink.port(),
    )
}

/// `size` octets of message content: a header, then 78-octet lines (some
/// starting with a dot, for DATA's dot-stuffing), ending with CRLF; one
/// octet is just that, without a line end (only BDAT can carry it as is).
fn content(size: usize) -> Vec<u8> {
    match size {
        0 => return Vec::new(),
        1 => return b"x".to_vec(),
        _ => {}
    }
    let mut out = b"Subject: data path\r\n\r\n".to_vec();
    let mut n = 0usize;
    while size - out.len() >= 78 + 2 {
        let lead = if n.is_multiple_of(7) { '.' } else { 'x' };
        let line = format!("{lead}{:07}{}\r\n", n, "y".repeat(68));
        out.extend_from_slice(line.as_bytes());
        n += 1;
    }
    let rest = size - out.len();
    out.extend(std::iter::repeat_n(b'z', rest - 2));
    out.extend_from_slice(b"\r\n");
    assert_eq!(out.len(), size);
    out
}

/// A message as it travels with DATA, which cannot end without a line
/// end: a final CRLF added when missing (as every client and koukan's own
/// SMTP client do).
fn terminated(content: &[u8]) -> Vec<u8> {
    let mut out = content.to_vec();
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// DATA's wire form: leading dots doubled, then the terminator.
fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let content = &terminated(content)[..];
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

struct Cell {
    terminal: Terminal,
    mode: Mode,
    size: usize,
    rcpts: usize,
}

impl Cell {
    /// The envelope sender names the cell, so each message at the sink is
    /// matched to its cell whatever its content (even when empty).
    fn sender(&self) -> String {
        format!(
            "{}-{:?}-{}-{}@client.test",
            self.terminal.chain(),
            self.mode,
            self.size,
            self.rcpts
        )
        .to_lowercase()
    }

    fn recipients(&self) -> Vec<String> {
        (1..=self.rcpts)
            .map(|i| format!("r{i}@dest.test"))
            .collect()
    }
}

fn expect_code(reply: &str, code: &str, what: &str) {
    assert!(reply.starts_with(code), "{what}: {reply:?}");
}

/// Sends one cell's message; returns the final reply.
fn send(addr: SocketAddr, cell: &Cell, body: &[u8]) -> String {
    let mut c = RawSmtp::connect(addr).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    expect_code(&c.reply().unwrap(), "220", "greeting");
    expect_code(&c.cmd("EHLO client.test").unwrap(), "250", "EHLO");
    let mail = c.cmd(&format!("MAIL FROM:<{}>", cell.sender())).unwrap();
    expect_code(&mail, "250", "MAIL");
    for r in cell.recipients() {
        expect_code(&c.cmd(&format!("RCPT TO:<{r}>")).unwrap(), "250", "RCPT");
    }
    let reply = match cell.mode {
        Mode::Data => {
            expect_code(&c.cmd("DATA").unwrap(), "354", "DATA");
            c.send(&dot_stuffed(body)).unwrap();
            c.reply().unwrap()
        }
        Mode::BdatOne => {
            c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes())
                .unwrap();
            c.send(body).unwrap();
            c.reply().unwrap()
        }
        Mode::BdatSeveral => {
            // Four chunks, empty ones first for a body too short to split.
            let quarter = body.len().div_ceil(4).max(1);
            let mut pieces: Vec<&[u8]> = body.chunks(quarter).collect();
            while pieces.len() < 4 {
                pieces.insert(0, &[]);
            }
            let (last, rest) = pieces.split_last().unwrap();
            for p in rest {
                c.send(format!("BDAT {}\r\n", p.len()).as_bytes()).unwrap();
                c.send(p).unwrap();
                let r = c.reply().unwrap();
                assert_eq!(
                    r.trim_end(),
                    format!("250 2.0.0 {} octets received", p.len()),
                    "{}",
                    cell.sender()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            c.send(format!("BDAT {} LAST\r\n", last.len()).as_bytes())
                .unwrap();
            c.send(last).unwrap();
            c.reply().unwrap()
        }
    };
    let _ = c.cmd("QUIT");
    reply.trim_end().to_owned()
}

/// The reply each terminal gives for a message the upstream accepted.
fn check_reply(cell: &Cell, reply: &str) {
    let who = cell.sender();
    match cell.terminal {
        Terminal::Relay | Terminal::WholeMessage => assert_eq!(reply, "250 2.0.0 Ok", "{who}"),
        Terminal::ExploderMsa | Terminal::ExploderMx if cell.rcpts == 1 => {
            assert_eq!(reply, "250 2.0.0 Ok", "{who}")
        }
        Terminal::ExploderMsa | Terminal::ExploderMx => {
            assert_eq!(reply, "250 2.0.0 Ok (exploder same response)", "{who}")
        }
        Terminal::StoreForward => {
            let ids = reply
                .strip_prefix("250 2.0.0 queued as ")
                .unwrap_or_else(|| panic!("{who}: {reply}"));
            assert_eq!(ids.split(',').count(), cell.rcpts, "{who}: {reply}");
        }
    }
}

/// One dump of smtp-sink: its envelope lines and the message after its
/// own Received header.
struct Dump {
    sender: String,
    rcpts: Vec<String>,
    content: Vec<u8>,
}

fn parse_dump(raw: &[u8]) -> Option<Dump> {
    let text = std::str::from_utf8(raw).ok()?;
    let sender = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: <"))?
        .split('>')
        .next()?
        .to_owned();
    let rcpts = text
        .lines()
        .filter_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
        .filter_map(|l| l.split('>').next())
        .map(str::to_owned)
        .collect();
    // The Received header smtp-sink adds is three lines (two folded).
    let at = text.find("Received: from ")?;
    let mut end = at;
    loop {
        let nl = text[end..].find('\n')? + end;
        end = nl + 1;
        if !text[end..].starts_with('\t') {
            break;
        }
    }
    Some(Dump {
        sender,
        rcpts,
        content: raw[end..].to_vec(),
    })
}

fn lf(content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(content.len() + 1);
    for w in content {
        if *w != b'\r' {
            out.push(*w);
        }
    }
    // smtp-sink ends each dump with an empty line.
    out.push(b'\n');
    out
}

/// Every cell's messages at the sink: one per inbound transaction for the
/// relay, one per recipient otherwise, none twice, each with its
/// recipients and the exact content. `Err` names the first mismatch.
fn check_dumps(cells: &[(usize, Cell)], bodies: &[Vec<u8>], dumps: &[Dump]) -> Result<(), String> {
    let expected: usize = cells
        .iter()
        .map(|(_, c)| if c.terminal.splits() { c.rcpts } else { 1 })
        .sum();
    if dumps.len() != expected {
        return Err(format!(
            "{} messages at the sink, expected {expected}",
            dumps.len()
        ));
    }
    for (i, cell) in cells {
        let who = cell.sender();
        let mine: Vec<&Dump> = dumps.iter().filter(|d| d.sender == who).collect();
        let want = if cell.terminal.splits() {
            cell.rcpts
        } else {
            1
        };
        if mine.len() != want {
            return Err(format!(
                "{who}: {} messages at the sink, expected {want}",
                mine.len()
            ));
        }
        let rcpts: BTreeSet<&str> = mine
            .iter()
            .flat_map(|d| d.rcpts.iter().map(String::as_str))
            .collect();
        let all = cell.recipients();
        let expected_rcpts: BTreeSet<&str> = all.iter().map(String::as_str).collect();
        if rcpts != expected_rcpts {
            return Err(format!(
                "{who}: recipients {rcpts:?}, expected {expected_rcpts:?}"
            ));
        }
        // smtp-sink has no CHUNKING: every message reaches it with DATA.
        let expected_content = lf(&terminated(&bodies[*i]));
        for d in mine {
            if d.content != expected_content {
                return Err(format!(
                    "{who}: the sink got {} octets, expected {} (first difference at {:?})",
                    d.content.len(),
                    expected_content.len(),
                    d.content
                        .iter()
                        .zip(&expected_content)
                        .position(|(a, b)| a != b)
                ));
            }
        }
    }
    Ok(())
}

/// koukan's WARN and ERROR lines.
fn warnings(k: &Koukan) -> String {
    k.log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_terminal_mode_and_size_delivers_the_exact_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dir.path().join("sink"), &[]).unwrap();
    let listeners: Vec<(Terminal, SocketAddr)> = Terminal::ALL
        .iter()
        .map(|t| (*t, loopback(free_port())))
        .collect();
    let koukan = Koukan::start(&config(&listeners, sink.addr)).unwrap();

    let bodies: Vec<Vec<u8>> = SIZES.iter().map(|s| content(*s)).collect();
    let mut cells = Vec::new();
    for terminal in Terminal::ALL {
        for mode in [Mode::Data, Mode::BdatOne, Mode::BdatSeveral] {
            for (i, size) in SIZES.iter().enumerate() {
                for rcpts in [1, 3] {
                    cells.push((
                        i,
                        Cell {
                            terminal,
                            mode,
                            size: *size,
                            rcpts,
                        },
                    ));
                }
            }
        }
    }
    // One client thread per terminal, cells in order within it.
    std::thread::scope(|scope| {
        for terminal in Terminal::ALL {
            let addr = listeners.iter().find(|(t, _)| *t == terminal).unwrap().1;
            let cells: Vec<&(usize, Cell)> = cells
                .iter()
                .filter(|(_, c)| c.terminal == terminal)
                .collect();
            let bodies = &bodies;
            let koukan = &koukan;
            scope.spawn(move || {
                for (i, cell) in cells {
                    let reply = send(addr, cell, &bodies[*i]);
                    if !reply.starts_with("250") {
                        panic!("{}: {reply}\nlog:\n{}", cell.sender(), koukan.log());
                    }
                    check_reply(cell, &reply);
                }
            });
        }
    });

    // Every cell's messages at the sink (store-and-forward's arrive from
    // the scheduler). A dump is written while its message arrives, so the
    // dumps are read until every cell checks out (or the time is up: then
    // the first mismatch is the failure); only once there are enough files,
    // the contents being over 100 MB.
    let expected: usize = cells
        .iter()
        .map(|(_, c)| if c.terminal.splits() { c.rcpts } else { 1 })
        .sum();
    let files = || std::fs::read_dir(&sink.dir).map_or(0, |rd| rd.count());
    let read = || -> Vec<Dump> {
        std::fs::read_dir(&sink.dir)
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .filter_map(|f| parse_dump(&f))
                    .collect()
            })
            .unwrap_or_default()
    };
    let settled = wait_for(Duration::from_secs(120), || {
        (files() >= expected)
            .then(|| check_dumps(&cells, &bodies, &read()).ok())
            .flatten()
    });
    if settled.is_none() {
        let why = check_dumps(&cells, &bodies, &read()).unwrap_err();
        panic!("{why}; koukan's warnings:\n{}", warnings(&koukan));
    }
    assert!(
        !koukan.log().contains("panicked"),
        "no panic anywhere:\n{}",
        koukan.log()
    );
}
