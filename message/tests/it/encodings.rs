//! Transfer encodings chosen per part, and line lengths.

use koukan_message::NoBlobs;
use serde_json::json;

use crate::common::{MemBlobs, check_lines, leaves, render_vec, spec, view};

fn part(ct: &str, id: &str) -> serde_json::Value {
    json!({"content_type": ct, "content": {"create_id": id}})
}

#[tokio::test]
async fn each_part_gets_the_right_encoding() {
    let long_line = "word ".repeat(300); // 1500 octets, no line break
    let bare_lf = "line one\nline two\n";
    let latin = "Grüße aus München, bis später!\r\n".repeat(5);
    let cyrillic = "Привет, как дела? Всё хорошо.\r\n".repeat(5);
    let binary: Vec<u8> = (0..5000u32).map(|i| (i * 37 % 256) as u8).collect();
    let ascii_binary = b"plain ascii but image/* is base64\r\n".to_vec();
    let inner = b"From: a@example.com\r\nSubject: inner\r\n\r\nbody\r\n".to_vec();
    let trailing_ws = "ends with space \r\nand tab\t\r\n";
    let boundary_like = "a line with =_K in it\r\n";

    let blobs = MemBlobs::with(&[
        ("ascii", b"Hello,\r\nthis is plain ASCII.\r\n"),
        ("long", long_line.as_bytes()),
        ("lf", bare_lf.as_bytes()),
        ("latin", latin.as_bytes()),
        ("cyr", cyrillic.as_bytes()),
        ("bin", &binary),
        ("abin", &ascii_binary),
        ("msg", &inner),
        ("ws", trailing_ws.as_bytes()),
        ("bl", boundary_like.as_bytes()),
    ]);
    let s = spec(json!({
        "headers": [["subject", "encodings"]],
        "text_body": [part("text/plain", "ascii")],
        "file_attachments": [
            part("text/plain", "long"), part("text/plain", "lf"), part("text/plain", "latin"),
            part("text/plain", "cyr"), part("application/octet-stream", "bin"),
            part("image/gif", "abin"), part("message/rfc822", "msg"),
            part("text/plain", "ws"), part("text/plain", "bl")]
    }));
    let (raw, _) = render_vec(&s, &blobs).await;
    check_lines(&raw, 78);

    let v = view(&raw);
    let l = leaves(&v);
    let want: [(&str, &[u8]); 9] = [
        ("7bit", b"Hello,\r\nthis is plain ASCII.\r\n"),
        ("quoted-printable", long_line.as_bytes()),
        ("quoted-printable", bare_lf.as_bytes()),
        ("quoted-printable", latin.as_bytes()),
        ("base64", cyrillic.as_bytes()),
        ("base64", &binary),
        ("base64", &ascii_binary),
        ("7bit", b""),                    // message/rfc822: a container, checked below
        ("7bit", trailing_ws.as_bytes()), // trailing whitespace is fine in 7bit
    ];
    // The message/rfc822 part has the inner message as its child.
    assert_eq!(v.children.len(), 10);
    let mut li = 0;
    for (i, (cte, content)) in want.iter().enumerate() {
        let node = &v.children[i];
        assert_eq!(
            node.cte.as_deref(),
            Some(*cte),
            "part {i} {:?}",
            node.content_type
        );
        if node.content_type == "message/rfc822" {
            let inner_leaf = &node.children[0];
            assert_eq!(inner_leaf.content.as_deref(), Some(&b"body\r\n"[..]));
            li += 1;
            continue;
        }
        assert_eq!(l[li].content.as_deref(), Some(*content), "part {i}");
        li += 1;
    }
    let last = &v.children[9];
    assert_eq!(last.cte.as_deref(), Some("quoted-printable"));
    assert_eq!(last.content.as_deref(), Some(boundary_like.as_bytes()));

    // Base64 bodies are in 76-column lines; QP lines are at most 76.
    let text = String::from_utf8(raw.clone()).unwrap();
    let b64_bin = base64_lines_of(&text, &binary);
    assert!(b64_bin.len() > 2);
    for l in &b64_bin[..b64_bin.len() - 1] {
        assert_eq!(l.len(), 76);
    }
    let mut in_qp = false;
    for line in text.split("\r\n") {
        if line.starts_with("Content-Transfer-Encoding: quoted-printable") {
            in_qp = true;
        } else if line.starts_with("--=_K") {
            in_qp = false;
        } else if in_qp {
            assert!(line.len() <= 76, "QP line {line:?}");
        }
    }
}

/// The base64 lines that encode `data` in the message (found by encoding
/// its first 57 octets).
fn base64_lines_of<'a>(text: &'a str, data: &[u8]) -> Vec<&'a str> {
    use base64::Engine as _;
    let first = base64::engine::general_purpose::STANDARD.encode(&data[..57]);
    let start = text.find(&first).expect("base64 of the blob");
    text[start..]
        .split("\r\n")
        .take_while(|l| !l.is_empty() && !l.starts_with("--"))
        .collect()
}

#[tokio::test]
async fn single_part_bodies_keep_their_exact_content() {
    for body in [
        "no final newline",
        "final newline\r\n",
        "",
        "ü at end",
        "bare\nlf",
    ] {
        let s = spec(json!({"headers": [["subject", "x"]],
            "text_body": [{"content_type": "text/plain", "content": {"inline": body}}]}));
        let (raw, _) = render_vec(&s, &NoBlobs).await;
        check_lines(&raw, 78);
        let v = view(&raw);
        let got = v.content.clone().unwrap_or_default();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            body,
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
}

#[tokio::test]
async fn headers_fold_at_78_and_never_exceed_998() {
    let many: Vec<_> = (0..40)
        .map(|i| json!({"display_name": format!("Person Number {i}"), "address": format!("p{i}@example.com")}))
        .collect();
    let refs: Vec<_> = (0..60)
        .map(|i| format!("ref{i}.abcdef@host.example"))
        .collect();
    let s = spec(json!({
        "headers": [
            ["to", many],
            ["references", refs],
            ["subject", "word ".repeat(150)],
            ["X-Long-Token", "x".repeat(900)],
            ["X-Unicode", "ünïcödé ".repeat(40)]
        ],
        "file_attachments": [{"content_type": "application/pdf",
            "filename": "a very long file name that certainly needs more than one line to be written out.pdf",
            "content": {"inline": "%PDF"}},
            {"content_type": "application/pdf",
            "filename": "ein sehr langer Dateiname mit Umlauten äöü, der nicht in eine Zeile passt.pdf",
            "content": {"inline": "%PDF"}}]
    }));
    let (raw, _) = render_vec(&s, &NoBlobs).await;
    check_lines(&raw, 78);
    let v = view(&raw);
    assert_eq!(
        v.children[1].filename.as_deref(),
        Some("ein sehr langer Dateiname mit Umlauten äöü, der nicht in eine Zeile passt.pdf")
    );
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(msg.to().unwrap().iter().count(), 40);
    let refs_back = msg.references().as_text_list().unwrap().to_vec();
    assert_eq!(refs_back, refs);
    assert_eq!(
        msg.subject().map(str::trim),
        Some("word ".repeat(150).trim())
    );
    // Other headers come back raw from mail-parser: decode them here.
    let text = |name: &str| {
        let raw = format!("{}\r\n", msg.header_raw(name).unwrap());
        match mail_parser::parsers::MessageStream::new(raw.as_bytes()).parse_unstructured() {
            mail_parser::HeaderValue::Text(t) => t.to_string(),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(text("X-Long-Token"), "x".repeat(900));
    assert_eq!(text("X-Unicode").trim(), "ünïcödé ".repeat(40).trim());
}

#[tokio::test]
async fn extreme_header_values_stay_within_998() {
    let id = format!("{}@{}", "i".repeat(300), "h".repeat(200));
    let s = spec(json!({
        "headers": [
            ["from", [{"display_name": "x".repeat(2000), "address": "a@example.com"}]],
            ["to", [{"display_name": "ü".repeat(3000), "address": "b@example.com"}]],
            ["subject", "y".repeat(16 * 1024)],
            ["X-Spaces", "z ".repeat(8000)],
            ["message-id", [id.clone()]],
            ["references", vec![id.clone(); 20]],
        ],
        "file_attachments": [{"content_type": "application/octet-stream",
            "filename": "f".repeat(5000), "content_id": "c".repeat(512),
            "content": {"inline": "x"}}]
    }));
    let (raw, _) = render_vec(&s, &NoBlobs).await;
    check_lines(&raw, 998);
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(msg.subject(), Some("y".repeat(16 * 1024).as_str()));
    assert_eq!(msg.message_id(), Some(id.as_str()));
    let from = msg.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("x".repeat(2000).as_str()));
    let v = view(&raw);
    assert_eq!(
        v.children[0].filename.as_deref(),
        Some("f".repeat(5000).as_str())
    );

    let too_long = spec_err(json!({"headers": [["message-id", ["i".repeat(513)]]]}));
    assert_eq!(too_long, "headers[0][1][0]");
}

fn spec_err(v: serde_json::Value) -> String {
    koukan_message::Spec::from_json(&v).unwrap_err().path
}
