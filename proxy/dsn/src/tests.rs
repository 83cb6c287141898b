//! The DSN is checked by parsing it back with `mail-parser`, an independent
//! MIME reader, so a test passes only if a real mail client would see what
//! we meant to write.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders};

use super::*;

const HEADERS: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net, carol@example.com\r\n\
Subject: quarterly report\r\n\
Message-ID: <orig-1234@example.org>\r\n";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

// 2023-11-14T22:13:20Z and a few later instants, all distinct so a field
// that shows the wrong one fails.
const ARRIVAL: u64 = 1_700_000_000;
const ATTEMPT_1: u64 = 1_700_000_100;
const ATTEMPT_2: u64 = 1_700_000_200;
const NOW: u64 = 1_700_000_300;

fn two_recipients() -> Vec<RecipientStatus> {
    vec![
        RecipientStatus::from_reply(
            "bob@example.net",
            Action::Failed,
            "550 5.1.1 no such user",
            Some("mx.example.net".to_owned()),
            at(ATTEMPT_1),
        ),
        RecipientStatus::from_reply(
            "<carol@example.com>",
            Action::Failed,
            "554 5.7.1 message refused by policy",
            Some("mx2.example.com".to_owned()),
            at(ATTEMPT_2),
        ),
    ]
}

fn input(recipients: Vec<RecipientStatus>) -> DsnInput<'static> {
    DsnInput {
        reporting_mta: "relay.example.com",
        mailer_daemon: "mailer-daemon@relay.example.com",
        original_sender: "alice@example.org",
        arrival_date: at(ARRIVAL),
        recipients,
        original_headers: HEADERS,
        original_message_id: Some("<orig-1234@example.org>"),
        now: at(NOW),
    }
}

fn parse(raw: &[u8]) -> Message<'_> {
    MessageParser::default()
        .parse(raw)
        .expect("mail-parser accepts the DSN")
}

/// The top-level multipart's children, in order.
fn children<'a>(msg: &'a Message<'a>) -> Vec<&'a MessagePart<'a>> {
    msg.root_part()
        .sub_parts()
        .expect("root is multipart")
        .iter()
        .map(|&id| msg.part(id).expect("part exists"))
        .collect()
}

fn mime_type(part: &MessagePart<'_>) -> String {
    let ct = part.content_type().expect("part has Content-Type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
}

/// A delivery-status body as field groups (RFC 3464 §2.1): unfolded, split
/// at empty lines, each group a list of (lowercased name, value).
fn status_groups(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).expect("status part is UTF-8");
    assert!(!text.contains('\n') || text.contains("\r\n"), "CRLF lines");
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", "\t");
    unfolded
        .split("\r\n\r\n")
        .filter(|g| !g.trim().is_empty())
        .map(|group| {
            group
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|line| {
                    let (name, value) = line.split_once(':').expect("field has a colon");
                    (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                })
                .collect()
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    let mut hits = group.iter().filter(|(n, _)| *n == name);
    let first = hits.next().map(|(_, v)| v.as_str());
    assert!(hits.next().is_none(), "field {name} appears once");
    first
}

fn date_secs(value: &str) -> i64 {
    chrono::DateTime::parse_from_rfc2822(value)
        .unwrap_or_else(|e| panic!("{value:?} is an RFC 5322 date: {e}"))
        .timestamp()
}

fn build(input: &DsnInput<'_>) -> Vec<u8> {
    build_dsn(input).expect("a DSN is produced")
}

#[test]
fn top_level_headers() {
    let raw = build(&input(two_recipients()));
    let msg = parse(&raw);

    let from = msg.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.name(), Some("Mail Delivery System"));
    assert_eq!(from.address(), Some("mailer-daemon@relay.example.com"));
    let to = msg.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some("alice@example.org"));
    assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(msg.date().expect("Date").to_timestamp(), NOW as i64);
    assert_eq!(
        msg.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(msg.header_raw("MIME-Version").map(str::trim), Some("1.0"));

    // Message-ID: angle brackets on the wire (the original omitted them),
    // 128 random bits on the left, our host name on the right.
    let raw_id = msg.header_raw("Message-ID").expect("Message-ID").trim();
    let inner = raw_id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or_else(|| panic!("{raw_id:?} is bracketed"));
    let (left, right) = inner.split_once('@').expect("id-left@id-right");
    assert_eq!(right, "relay.example.com");
    assert_eq!(left.len(), 32);
    assert!(left.bytes().all(|b| b.is_ascii_hexdigit()), "{left}");
    assert_eq!(msg.message_id(), Some(inner));

    // Threading to the failed message.
    assert_eq!(msg.in_reply_to().as_text(), Some("orig-1234@example.org"));
    assert_eq!(msg.references().as_text(), Some("orig-1234@example.org"));
    assert_eq!(
        msg.header_raw("In-Reply-To").map(str::trim),
        Some("<orig-1234@example.org>")
    );
}

#[test]
fn message_ids_are_random() {
    let a = build(&input(two_recipients()));
    let b = build(&input(two_recipients()));
    assert_ne!(parse(&a).message_id(), parse(&b).message_id());
}

#[test]
fn content_type_and_parts_in_order() {
    let raw = build(&input(two_recipients()));
    let msg = parse(&raw);
    let ct = msg.content_type().expect("Content-Type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert!(ct.attribute("boundary").is_some_and(|b| !b.is_empty()));
    // The quirk we fix: no `report_type` parameter anywhere.
    assert!(!contains(&raw, b"report_type"));

    let parts = children(&msg);
    let types: Vec<String> = parts.iter().map(|p| mime_type(p)).collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
}

#[test]
fn delivery_status_fields_per_recipient() {
    let raw = build(&input(two_recipients()));
    let msg = parse(&raw);
    let parts = children(&msg);
    let groups = status_groups(parts[1].contents());
    assert_eq!(groups.len(), 3, "per-message group + one per recipient");

    let per_message = &groups[0];
    assert_eq!(
        field(per_message, "Reporting-MTA"),
        Some("dns; relay.example.com")
    );
    assert_eq!(
        date_secs(field(per_message, "Arrival-Date").expect("Arrival-Date")),
        ARRIVAL as i64
    );

    let bob = &groups[1];
    assert_eq!(
        field(bob, "Final-Recipient"),
        Some("rfc822; bob@example.net")
    );
    assert_eq!(field(bob, "Action"), Some("failed"));
    assert_eq!(field(bob, "Status"), Some("5.1.1"));
    assert_eq!(field(bob, "Remote-MTA"), Some("dns; mx.example.net"));
    assert_eq!(
        field(bob, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 no such user")
    );
    assert_eq!(
        date_secs(field(bob, "Last-Attempt-Date").expect("Last-Attempt-Date")),
        ATTEMPT_1 as i64
    );

    let carol = &groups[2];
    assert_eq!(
        field(carol, "Final-Recipient"),
        Some("rfc822; carol@example.com")
    );
    assert_eq!(field(carol, "Action"), Some("failed"));
    assert_eq!(field(carol, "Status"), Some("5.7.1"));
    assert_eq!(field(carol, "Remote-MTA"), Some("dns; mx2.example.com"));
    assert_eq!(
        field(carol, "Diagnostic-Code"),
        Some("smtp; 554 5.7.1 message refused by policy")
    );
    assert_eq!(
        date_secs(field(carol, "Last-Attempt-Date").expect("Last-Attempt-Date")),
        ATTEMPT_2 as i64
    );
}

#[test]
fn human_part_names_each_recipient_and_reply() {
    let raw = build(&input(two_recipients()));
    let msg = parse(&raw);
    let parts = children(&msg);
    assert_eq!(
        parts[0].content_type().and_then(|c| c.attribute("charset")),
        Some("us-ascii")
    );
    let text = parts[0].text_contents().expect("text part");
    assert!(text.contains("<bob@example.net>"), "{text}");
    assert!(
        text.contains("mx.example.net said: 550 5.1.1 no such user"),
        "{text}"
    );
    assert!(text.contains("<carol@example.com>"), "{text}");
    assert!(
        text.contains("554 5.7.1 message refused by policy"),
        "{text}"
    );
    assert!(text.contains("could not be delivered"), "{text}");
}

#[test]
fn original_headers_part_is_the_input_block() {
    let raw = build(&input(two_recipients()));
    let msg = parse(&raw);
    let parts = children(&msg);
    assert_eq!(parts[2].contents(), HEADERS);
}

#[test]
fn empty_header_block_gives_an_empty_part() {
    let mut i = input(two_recipients());
    i.original_headers = b"";
    let raw = build(&i);
    let msg = parse(&raw);
    let parts = children(&msg);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2].contents(), b"");
}

#[test]
fn bare_line_endings_in_original_headers_become_crlf() {
    let mut i = input(two_recipients());
    i.original_headers = b"Subject: a\nX-Odd: b\rX-End: c\r\n";
    let raw = build(&i);
    let msg = parse(&raw);
    assert_eq!(
        children(&msg)[2].contents(),
        b"Subject: a\r\nX-Odd: b\r\nX-End: c\r\n"
    );
}

#[test]
fn every_line_ends_with_crlf() {
    let mut i = input(two_recipients());
    i.original_headers = b"Subject: a\nX: b\r\n";
    let raw = build(&i);
    for (pos, &b) in raw.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(raw[pos - 1], b'\r', "bare LF at {pos}");
        }
        if b == b'\r' {
            assert_eq!(raw.get(pos + 1), Some(&b'\n'), "bare CR at {pos}");
        }
    }
    assert!(raw.ends_with(b"--\r\n"));
}

#[test]
fn no_dsn_for_null_sender_or_no_recipients() {
    for null in ["", "<>", " <> "] {
        let mut i = input(two_recipients());
        i.original_sender = null;
        assert!(build_dsn(&i).is_none(), "sender {null:?}");
    }
    assert!(build_dsn(&input(Vec::new())).is_none());
    // And the same input with a real sender does produce one.
    assert!(build_dsn(&input(two_recipients())).is_some());
}

#[test]
fn is_bounce_recognises_the_null_reverse_path() {
    assert!(is_bounce(""));
    assert!(is_bounce("<>"));
    assert!(is_bounce("  "));
    assert!(!is_bounce("alice@example.org"));
    assert!(!is_bounce("<alice@example.org>"));
}

#[test]
fn status_derivation() {
    assert_eq!(status_from_reply("550 5.1.1 x", Action::Failed), "5.1.1");
    assert_eq!(
        status_from_reply("550 no enhanced", Action::Failed),
        "5.0.0"
    );
    assert_eq!(status_from_reply("451 try later", Action::Delayed), "4.0.0");
    // A temporary failure at the last attempt is reported as failed but
    // keeps its 4.x.x class (behaviour spec §4.6).
    assert_eq!(status_from_reply("451 try later", Action::Failed), "4.0.0");
    assert_eq!(
        status_from_reply(
            "452-4.2.2 mailbox full\r\n452 4.2.2 really",
            Action::Delayed
        ),
        "4.2.2"
    );
    // Enhanced code contradicting the reply class is not trusted.
    assert_eq!(status_from_reply("550 4.2.2 odd", Action::Failed), "5.0.0");
    // Malformed enhanced codes are ignored.
    assert_eq!(status_from_reply("550 5.1 short", Action::Failed), "5.0.0");
    assert_eq!(status_from_reply("550 5.1.1x", Action::Failed), "5.0.0");
    // No usable reply code: the action decides.
    assert_eq!(
        status_from_reply("connection lost", Action::Failed),
        "5.0.0"
    );
    assert_eq!(status_from_reply("", Action::Delayed), "4.0.0");
    assert_eq!(status_from_reply("250 2.0.0 ok", Action::Delayed), "4.0.0");
}

#[test]
fn temporary_failure_reported_as_delayed() {
    let rcpt = RecipientStatus::from_reply(
        "bob@example.net",
        Action::Delayed,
        "451 greylisted, come back later",
        None,
        at(ATTEMPT_1),
    );
    assert_eq!(rcpt.status, "4.0.0");
    let raw = build(&input(vec![rcpt]));
    let msg = parse(&raw);
    assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
    let groups = status_groups(children(&msg)[1].contents());
    assert_eq!(field(&groups[1], "Action"), Some("delayed"));
    assert_eq!(field(&groups[1], "Status"), Some("4.0.0"));
    assert_eq!(
        field(&groups[1], "Diagnostic-Code"),
        Some("smtp; 451 greylisted, come back later")
    );
    // Remote MTA unknown: no field rather than an empty one.
    assert_eq!(field(&groups[1], "Remote-MTA"), None);
    let text = children(&msg)[0].text_contents().unwrap().to_owned();
    assert!(text.contains("will keep trying"), "{text}");
    assert!(!text.contains("given up"), "{text}");
}

#[test]
fn mixed_actions_are_undelivered() {
    let mut rcpts = two_recipients();
    rcpts[1].action = Action::Delayed;
    rcpts[1].status = "4.4.1".to_owned();
    let raw = build(&input(rcpts));
    let msg = parse(&raw);
    assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
    let groups = status_groups(children(&msg)[1].contents());
    assert_eq!(field(&groups[1], "Action"), Some("failed"));
    assert_eq!(field(&groups[2], "Action"), Some("delayed"));
    assert_eq!(field(&groups[2], "Status"), Some("4.4.1"));
}

#[test]
fn invalid_status_replaced_by_generic_code() {
    let mut rcpts = two_recipients();
    rcpts[0].status = "bogus".to_owned();
    rcpts[1].status = "2.0.0".to_owned();
    rcpts[1].action = Action::Delayed;
    let mut delayed_perm = rcpts[1].clone();
    delayed_perm.status = "5.1.1".to_owned();
    let mut failed_temp = rcpts[0].clone();
    failed_temp.status = "4.4.7".to_owned();
    rcpts.extend([delayed_perm, failed_temp]);
    let raw = build(&input(rcpts));
    let groups = status_groups(children(&parse(&raw))[1].contents());
    assert_eq!(field(&groups[1], "Status"), Some("5.0.0"));
    assert_eq!(field(&groups[2], "Status"), Some("4.0.0"));
    // A delay can't carry a permanent status...
    assert_eq!(field(&groups[3], "Status"), Some("4.0.0"));
    // ...but a failure may keep a temporary one (last attempt, spec §4.6).
    assert_eq!(field(&groups[4], "Status"), Some("4.4.7"));
}

#[test]
fn multi_line_reply_joined_with_spaces() {
    // Wire form, code and enhanced code on every line.
    assert_eq!(
        diagnostic_from_reply(
            "550-5.1.1 The email account that you tried to reach does not exist.\r\n\
             550-5.1.1 Please try double-checking the recipient's address.\r\n\
             550 5.1.1 https://support.example/answer 123"
        ),
        "550 5.1.1 The email account that you tried to reach does not exist. \
         Please try double-checking the recipient's address. \
         https://support.example/answer 123"
    );
    // `code text` with unprefixed continuation lines (koukan Response form).
    assert_eq!(
        diagnostic_from_reply("550 5.7.1 first line\n5.7.1 second line\nthird"),
        "550 5.7.1 first line second line third"
    );
    // Single line: verbatim.
    assert_eq!(
        diagnostic_from_reply("421 4.3.2 shutting down"),
        "421 4.3.2 shutting down"
    );
    // Control characters can't end the field early.
    assert_eq!(diagnostic_from_reply("550 a\tb\x07c"), "550 a b c");

    let rcpt = RecipientStatus::from_reply(
        "bob@example.net",
        Action::Failed,
        "550-5.1.1 line one\r\n550 5.1.1 line two",
        None,
        at(ATTEMPT_1),
    );
    assert_eq!(rcpt.status, "5.1.1");
    let raw = build(&input(vec![rcpt]));
    let groups = status_groups(children(&parse(&raw))[1].contents());
    assert_eq!(
        field(&groups[1], "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 line one line two")
    );
}

#[test]
fn long_diagnostic_is_folded_and_unfolds_verbatim() {
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    let reply = format!("550 5.7.1 {}", words.join(" "));
    let rcpt = RecipientStatus::from_reply(
        "bob@example.net",
        Action::Failed,
        &reply,
        None,
        at(ATTEMPT_1),
    );
    let raw = build(&input(vec![rcpt]));
    let msg = parse(&raw);
    let body = children(&msg)[1].contents().to_vec();
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("\r\n "), "long field was folded:\n{text}");
    for line in text.split("\r\n") {
        assert!(line.len() <= fold::PREFERRED, "{line:?}");
    }
    let groups = status_groups(&body);
    assert_eq!(
        field(&groups[1], "Diagnostic-Code").map(str::to_owned),
        Some(format!("smtp; {reply}"))
    );
    // No line of the whole message exceeds the hard limit either.
    let long = "x".repeat(3000);
    let rcpt = RecipientStatus::from_reply(
        "bob@example.net",
        Action::Failed,
        &format!("550 {long}"),
        None,
        at(ATTEMPT_1),
    );
    let raw = build(&input(vec![rcpt]));
    for line in raw.split(|&b| b == b'\n') {
        assert!(line.len() <= 998, "line of {} octets", line.len());
    }
}

#[test]
fn header_injection_through_addresses_is_neutralised() {
    let mut rcpts = two_recipients();
    rcpts[0].final_recipient = "bob@example.net\r\nAction: delivered".to_owned();
    rcpts[0].diagnostic = "550 x\r\n\r\nFinal-Recipient: rfc822; evil@x".to_owned();
    let mut i = input(rcpts);
    i.original_sender = "alice@example.org\r\nBcc: victim@example.net";
    let raw = build(&i);
    let msg = parse(&raw);
    assert!(msg.header("Bcc").is_none());
    let groups = status_groups(children(&msg)[1].contents());
    assert_eq!(groups.len(), 3, "no extra recipient group");
    assert_eq!(
        field(&groups[1], "Final-Recipient"),
        Some("rfc822; bob@example.net  Action: delivered")
    );
    assert_eq!(field(&groups[1], "Action"), Some("failed"));
}

#[test]
fn in_reply_to_only_with_a_usable_message_id() {
    let mut i = input(two_recipients());
    i.original_message_id = Some("bare-id@example.org");
    let raw = build(&i);
    let msg = parse(&raw);
    assert_eq!(
        msg.header_raw("In-Reply-To").map(str::trim),
        Some("<bare-id@example.org>")
    );
    assert_eq!(
        msg.header_raw("References").map(str::trim),
        Some("<bare-id@example.org>")
    );

    for missing in [
        None,
        Some(""),
        Some("<>"),
        Some("a b@c"),
        Some("x\r\nBcc: y"),
    ] {
        let mut i = input(two_recipients());
        i.original_message_id = missing;
        let raw = build(&i);
        let msg = parse(&raw);
        assert!(msg.header("In-Reply-To").is_none(), "{missing:?}");
        assert!(msg.header("References").is_none(), "{missing:?}");
        assert!(msg.header("Bcc").is_none(), "{missing:?}");
    }
}

#[test]
fn header_block_finds_the_end_of_the_headers() {
    let body = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody text\r\n\r\nmore";
    assert_eq!(header_block(body), b"Subject: hi\r\nFrom: a@b\r\n");

    // No empty line at all: not a complete header block.
    assert_eq!(header_block(b"Subject: hi\r\nFrom: a@b\r\n"), b"");
    // Starts with the empty line: no header fields.
    assert_eq!(header_block(b"\r\nbody"), b"");
    assert_eq!(header_block(b""), b"");

    // The end must fall within the first 64 KiB.
    let mut big = b"X-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BLOCK));
    big.extend_from_slice(b"\r\n\r\nbody");
    assert_eq!(header_block(&big), b"");

    // Exactly at the limit (CRLFCRLF ending on the last byte): found.
    let mut edge = b"X-Edge: ".to_vec();
    edge.extend(std::iter::repeat_n(b'a', MAX_HEADER_BLOCK - edge.len() - 4));
    edge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(edge.len(), MAX_HEADER_BLOCK);
    edge.extend_from_slice(b"body");
    assert_eq!(header_block(&edge), &edge[..MAX_HEADER_BLOCK - 2]);
    // One byte later: out of reach.
    let mut past = b"X-Edge: a".to_vec();
    past.extend_from_slice(&edge[8..]);
    assert_eq!(header_block(&past), b"");
}

#[test]
fn utf8_addresses_use_rfc6533_forms() {
    let rcpts = vec![
        RecipientStatus::from_reply(
            "用户@例子.广告",
            Action::Failed,
            "550 5.1.1 unknown",
            Some("mx.例子.广告".to_owned()),
            at(ATTEMPT_1),
        ),
        RecipientStatus::from_reply(
            "bob@example.net",
            Action::Failed,
            "550 5.1.1 unknown",
            None,
            at(ATTEMPT_2),
        ),
        RecipientStatus::from_reply(
            "josé+tag@example.com",
            Action::Failed,
            "550 5.1.1 unknown",
            None,
            at(ATTEMPT_2),
        ),
    ];
    let mut i = input(rcpts);
    i.original_sender = "rené@exemple.fr";
    let raw = build(&i);
    let msg = parse(&raw);

    assert_eq!(
        msg.content_type().and_then(|c| c.attribute("report-type")),
        Some("global-delivery-status")
    );
    assert_eq!(
        msg.header_raw("Content-Transfer-Encoding").map(str::trim),
        Some("8bit")
    );
    // RFC 6532: the address goes into To unencoded.
    assert!(contains(&raw, "To: <rené@exemple.fr>\r\n".as_bytes()));

    let parts = children(&msg);
    assert_eq!(mime_type(parts[1]), "message/global-delivery-status");
    let groups = status_groups(parts[1].contents());
    assert_eq!(
        field(&groups[1], "Final-Recipient"),
        Some("utf-8; 用户@例子.广告")
    );
    assert_eq!(field(&groups[1], "Remote-MTA"), Some("dns; mx.例子.广告"));
    // ASCII addresses keep the rfc822 type in the same report.
    assert_eq!(
        field(&groups[2], "Final-Recipient"),
        Some("rfc822; bob@example.net")
    );
    assert_eq!(
        field(&groups[3], "Final-Recipient"),
        Some("utf-8; josé+tag@example.com")
    );
    let text = parts[0].text_contents().expect("text part");
    assert_eq!(
        parts[0].content_type().and_then(|c| c.attribute("charset")),
        Some("utf-8")
    );
    assert!(text.contains("<用户@例子.广告>"), "{text}");
    // Original headers were ASCII: still text/rfc822-headers.
    assert_eq!(mime_type(parts[2]), "text/rfc822-headers");
}

#[test]
fn utf8_address_that_needs_unitext_escaping() {
    assert_eq!(
        typed_address("\"a b\\c+d=e\"@例子.广告"),
        "utf-8; \"a\\x{20}b\\x{5C}c\\x{2B}d\\x{3D}e\"@例子.广告"
    );
    assert_eq!(typed_address("a+b@example.com"), "rfc822; a+b@example.com");
}

#[test]
fn utf8_original_headers_become_global_headers() {
    let headers = "Subject: Grüße\r\nFrom: rené@exemple.fr\r\n".as_bytes();
    let mut i = input(two_recipients());
    i.original_headers = headers;
    let raw = build(&i);
    let msg = parse(&raw);
    let parts = children(&msg);
    assert_eq!(mime_type(parts[2]), "message/global-headers");
    assert_eq!(parts[2].contents(), headers);
    // The report itself is all ASCII, so it stays message/delivery-status.
    assert_eq!(mime_type(parts[1]), "message/delivery-status");
    assert_eq!(
        msg.header_raw("Content-Transfer-Encoding").map(str::trim),
        Some("8bit")
    );
}

#[test]
fn ascii_dsn_is_7bit() {
    let raw = build(&input(two_recipients()));
    assert!(raw.is_ascii());
    let msg = parse(&raw);
    assert!(msg.header("Content-Transfer-Encoding").is_none());
}

#[test]
fn boundary_collision_is_avoided() {
    let trap = "koukan-dsn-0123456789abcdef0123456789abcdef";
    let headers = format!("Subject: hi\r\nX-Trap: {trap}\r\n--{trap}--\r\n");
    let mut i = input(two_recipients());
    i.original_headers = headers.as_bytes();
    // A reply text carrying the second candidate: the text and status parts
    // count as content too.
    let second = "second-candidate";
    i.recipients[1].diagnostic = format!("550 5.7.1 {second}");

    let mut offered = vec![
        trap.to_owned(),
        second.to_owned(),
        "fresh-boundary".to_owned(),
    ];
    offered.reverse();
    let mut asked = 0;
    let raw = build_dsn_with(&i, "0000", &mut || {
        asked += 1;
        offered.pop().expect("ran out of candidates")
    })
    .expect("a DSN");
    assert_eq!(asked, 3);

    let msg = parse(&raw);
    assert_eq!(
        msg.content_type().and_then(|c| c.attribute("boundary")),
        Some("fresh-boundary")
    );
    let parts = children(&msg);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2].contents(), headers.as_bytes());
    let groups = status_groups(parts[1].contents());
    assert_eq!(
        field(&groups[2], "Diagnostic-Code"),
        Some("smtp; 550 5.7.1 second-candidate")
    );
}

#[test]
fn remote_mta_forms() {
    assert_eq!(mta_name("mx.example.net."), "mx.example.net");
    assert_eq!(mta_name("192.0.2.1"), "[192.0.2.1]");
    assert_eq!(mta_name("2001:db8::1"), "[IPv6:2001:db8::1]");
}

#[test]
fn dates_are_rfc5322_utc_and_clamped() {
    assert_eq!(rfc5322_date(at(ARRIVAL)), "Tue, 14 Nov 2023 22:13:20 +0000");
    assert_eq!(
        rfc5322_date(UNIX_EPOCH - Duration::from_secs(10)),
        "Thu, 01 Jan 1970 00:00:00 +0000"
    );
    // Far future: no panic, still a four-digit year.
    assert_eq!(
        rfc5322_date(UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
        "Fri, 31 Dec 9999 23:59:59 +0000"
    );
}

#[test]
fn empty_mailer_daemon_falls_back_to_reporting_host() {
    let mut i = input(two_recipients());
    i.mailer_daemon = "";
    let raw = build(&i);
    let msg = parse(&raw);
    let from = msg.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example.com"));
}
