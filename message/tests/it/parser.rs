//! The parser: the §2.3 example, the original's test vectors, max_inline,
//! blob order, the depth limit and malformed input.

use koukan_message::{MAX_DEPTH, ParseError, parse};
use serde_json::{Value, json};

const EXAMPLE_2_3: &str = "From: Grace <grace@example.org>\r
Subject: weekly\r
Message-ID: <m1@example.org>\r
Date: Mon, 01 Apr 2024 21:33:20 +0200\r
Content-Type: multipart/mixed; boundary=\"b1\"\r
\r
--b1\r
Content-Type: multipart/related; boundary=\"b2\"\r
\r
--b2\r
Content-Type: multipart/alternative; boundary=\"b3\"\r
\r
--b3\r
Content-Type: text/plain\r
\r
hi\r
--b3\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
<p>hello =E2=98=83</p>\r
--b3--\r
--b2\r
Content-Type: image/png\r
Content-ID: logo1\r
Content-Transfer-Encoding: base64\r
\r
iVBORw0KGgo=\r
--b2--\r
--b1\r
Content-Type: application/pdf\r
Content-Disposition: attachment; filename=\"report.pdf\"\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0xLjQK\r
--b1--\r
";

#[test]
fn section_2_3_example() {
    let p = parse(EXAMPLE_2_3.as_bytes(), 10).unwrap();
    let j = &p.json;
    assert_eq!(
        j["parts"]["headers"],
        json!([
            ["from", [{"display_name": "Grace", "address": "grace@example.org"}]],
            ["subject", "weekly"],
            ["message-id", "m1@example.org"],
            ["date", {"unix_secs": 1712000000, "tz_offset": 7200}],
            ["content-type", ["multipart/mixed", {"boundary": "b1"}]]
        ])
    );
    assert_eq!(j["parts"]["content_type"], "multipart/mixed");
    assert_eq!(
        j["text_body"],
        json!([{"content_type": "text/plain", "content": {"inline": "hi"}},
               {"content_type": "text/html", "content": {"create_id": "0"}}])
    );
    assert_eq!(
        j["related_attachments"],
        json!([{"content_type": "image/png", "content_id": "logo1", "content": {"create_id": "1"}}])
    );
    assert_eq!(
        j["file_attachments"],
        json!([{"content_type": "application/pdf", "filename": "report.pdf",
                "content": {"create_id": "2"}}])
    );
    let ids: Vec<&str> = p.blobs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2"]);
    assert_eq!(&p.blobs[0].1[..], "<p>hello ☃</p>".as_bytes());
    assert_eq!(&p.blobs[1].1[..], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&p.blobs[2].1[..], b"%PDF-1.4\n");
    // The tree: leaf nodes carry their headers with typed values.
    let png = &j["parts"]["parts"][0]["parts"][1];
    assert_eq!(
        png["headers"],
        json!([
            ["content-type", ["image/png", {}]],
            ["content-id", "logo1"],
            ["content-transfer-encoding", "base64"]
        ])
    );
    assert_eq!(j.as_object().unwrap().len(), 4);
}

/// Rewrites `create_id`s `"n"` to `"n - by"` (the original's test used one
/// counter across files).
fn renumber(v: &mut Value, by: u64) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(id)) = m.get_mut("create_id") {
                *id = (id.parse::<u64>().unwrap() - by).to_string();
            }
            m.values_mut().for_each(|x| renumber(x, by));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| renumber(x, by)),
        _ => {}
    }
}

#[test]
fn original_test_vectors() {
    type Case<'a> = (&'a str, &'a [u8], &'a str, u64, &'a [&'a [u8]]);
    let cases: [Case<'_>; 2] = [
        (
            "multipart",
            include_bytes!("../data/multipart.msg"),
            include_str!("../data/multipart.json"),
            0,
            &[b"yolocat", b"yolocat2"],
        ),
        (
            "related",
            include_bytes!("../data/related.msg"),
            include_str!("../data/related.json"),
            4,
            &[b"yolocat"],
        ),
    ];
    for (name, raw, want, by, blobs) in cases {
        let mut want: Value = serde_json::from_str(want).unwrap();
        renumber(&mut want, by);
        let p = parse(raw, 1000).unwrap();
        assert_eq!(
            p.json,
            want,
            "{name}: got {}",
            serde_json::to_string_pretty(&p.json).unwrap()
        );
        let got: Vec<&[u8]> = p.blobs.iter().map(|(_, b)| &b[..]).collect();
        assert_eq!(got, blobs, "{name}");
    }
}

/// `multipart2.msg` has part headers without the empty line before the
/// body (`content-type: text/plain\nhello`). Python's parser ends the
/// headers at the first line without a colon; mail-parser skips such lines
/// and reads on, so the tree differs (a known difference). It still
/// parses, with the attachment intact.
#[test]
fn original_vector_without_header_separator_is_best_effort() {
    let p = parse(include_bytes!("../data/multipart2.msg"), 1000).unwrap();
    assert_eq!(p.json["parts"]["content_type"], "multipart/mixed");
    assert_eq!(
        p.json["file_attachments"][0]["filename"],
        json!("funny cats.png")
    );
    let last = &p.blobs.last().unwrap().1;
    assert_eq!(&last[..], b"yolocat2");
}

fn find_header<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    node["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .map(|h| &h[1])
}

#[test]
fn original_dsn_vectors() {
    for (raw, third) in [
        (&include_bytes!("../data/dsn.msg")[..], "message/rfc822"),
        (
            &include_bytes!("../data/dsn-text-rfc822-headers.msg")[..],
            "text/rfc822-headers",
        ),
    ] {
        let p = parse(raw, 0).unwrap();
        let root = &p.json["parts"];
        assert_eq!(
            find_header(root, "content-type").unwrap()[0],
            "multipart/report"
        );
        assert_eq!(
            find_header(root, "content-type").unwrap()[1]["report-type"],
            "delivery-status"
        );
        let status = &root["parts"][1];
        assert_eq!(status["content_type"], "message/delivery-status");
        let blocks = status["parts"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(
            blocks[0]["headers"]
                .as_array()
                .unwrap()
                .contains(&json!(["reporting-mta", "dns; googlemail.com"]))
        );
        assert!(
            blocks[1]["headers"]
                .as_array()
                .unwrap()
                .contains(&json!(["final-recipient", "rfc822; xyz@sandbox.gloop.org"]))
        );
        let orig = &root["parts"][2];
        assert_eq!(orig["content_type"], third);
        let orig_headers = &orig["parts"][0];
        assert_eq!(find_header(orig_headers, "subject").unwrap(), "2/15 #2");
        assert_eq!(
            find_header(orig_headers, "from").unwrap(),
            &json!([{"display_name": "John Bucy", "address": "xyz@gmail.com"}])
        );
        // Folded headers come back unfolded.
        let received: Vec<&Value> = root["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == "received")
            .map(|h| &h[1])
            .collect();
        assert!(received.iter().all(|r| !r.as_str().unwrap().contains('\n')));
        // max_inline 0: nothing inline.
        assert!(!p.json.to_string().contains("\"inline\""));
        // Blob ids count up in tree order.
        let mut ids = Vec::new();
        collect_ids(&p.json["parts"], &mut ids);
        let want: Vec<String> = (0..ids.len()).map(|i| i.to_string()).collect();
        assert_eq!(ids, want);
        assert_eq!(p.blobs.len(), ids.len());
    }
}

fn collect_ids(v: &Value, out: &mut Vec<String>) {
    if let Some(id) = v["content"]["create_id"].as_str() {
        out.push(id.to_owned());
    }
    if let Some(kids) = v["parts"].as_array() {
        kids.iter().for_each(|k| collect_ids(k, out));
    }
}

fn multipart(parts: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n",
    );
    for (ct, body) in parts {
        s.push_str(&format!("--B\r\nContent-Type: {ct}\r\n\r\n{body}\r\n"));
    }
    s.push_str("--B--\r\n");
    s
}

#[test]
fn max_inline_is_a_running_total() {
    let raw = multipart(&[
        ("text/plain", "aaaa"),
        ("text/plain", "bbbbbbbb"),
        ("image/gif", "GIF"),
        ("text/plain", "éé"),
        ("text/plain", "c"),
    ]);
    let p = parse(raw.as_bytes(), 10).unwrap();
    let kids = p.json["parts"]["parts"].as_array().unwrap();
    // 4 < 10 inline; 4 + 8 = 12 blob; not text; "éé" is 4 UTF-8 bytes:
    // 4 + 4 = 8 < 10 inline; then "c": 9 < 10 inline.
    assert_eq!(kids[0]["content"], json!({"inline": "aaaa"}));
    assert_eq!(kids[3]["content"], json!({"inline": "éé"}));
    assert_eq!(kids[4]["content"], json!({"inline": "c"}));
    assert_eq!(kids[1]["content"], json!({"create_id": "0"}));
    assert_eq!(kids[2]["content"], json!({"create_id": "1"}));
    assert_eq!(&p.blobs[0].1[..], b"bbbbbbbb");
    assert_eq!(&p.blobs[1].1[..], b"GIF");

    // max_inline 0 inlines nothing; a big one inlines all text.
    let p = parse(raw.as_bytes(), 0).unwrap();
    assert_eq!(p.blobs.len(), 5);
    let p = parse(raw.as_bytes(), 1 << 20).unwrap();
    assert_eq!(p.blobs.len(), 1);
}

#[test]
fn depth_limit() {
    let levels = MAX_DEPTH + 5;
    let mut s = String::from("From: a@example.com\r\n");
    for i in 0..levels {
        s.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    s.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    for i in (0..levels).rev() {
        s.push_str(&format!("--b{i}--\r\n"));
    }
    let p = parse(s.as_bytes(), 1000).unwrap();
    let mut node = &p.json["parts"];
    for depth in 0..MAX_DEPTH {
        assert_eq!(node["content_type"], "multipart/mixed", "depth {depth}");
        assert!(node.get("content").is_none());
        node = &node["parts"][0];
    }
    // Depth 10: not descended into, one leaf with the raw body.
    assert_eq!(node["content_type"], "multipart/mixed");
    assert!(node.get("parts").is_none());
    assert_eq!(node["content"], json!({"create_id": "0"}));
    let raw_body = String::from_utf8_lossy(&p.blobs[0].1);
    assert!(
        raw_body.contains("deep") && raw_body.contains("--b10"),
        "{raw_body}"
    );

    // Nested messages count too.
    let mut m = String::from("Subject: leaf\r\n\r\ninnermost\r\n");
    for i in 0..levels {
        m = format!("Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n{m}");
    }
    let p = parse(m.as_bytes(), 1000).unwrap();
    let mut node = &p.json["parts"];
    let mut depth = 0;
    while let Some(kids) = node["parts"].as_array() {
        node = &kids[0];
        depth += 1;
    }
    assert!(depth <= MAX_DEPTH, "descended {depth}");
}

#[test]
fn malformed_input_never_panics() {
    let mut inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"no colon in this line\r\n".to_vec(),
        b"\x00\xff\xfe garbage".to_vec(),
        b"From: a\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n".to_vec(),
        b"Content-Type: multipart/alternative\r\n\r\nno boundary".to_vec(),
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n----\r\n".to_vec(),
        b"Content-Type: multipart/related; boundary=r\r\n\r\n--r--\r\n".to_vec(),
        b"Content-Type: multipart/signed; boundary=s\r\n\r\n--s--\r\n".to_vec(),
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n".to_vec(),
        b"Content-Type: message/delivery-status\r\n\r\n\r\n\r\nx\r\n".to_vec(),
        b"Content-Type: text/rfc822-headers\r\n\r\n\xff\xfe: \x00\r\n".to_vec(),
        b"Date: not a date\r\nFrom: <<<@>>>\r\nTo: ,,,\r\nMessage-ID: <\r\n\r\n".to_vec(),
        b"Content-Type: text/plain; charset=x-unknown\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n".to_vec(),
        format!("Subject: {}\r\n\r\n", "x".repeat(100_000)).into_bytes(),
        format!("{}\r\n", "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n".repeat(500)).into_bytes(),
    ];
    // Pseudo-random bytes, with a few header-looking prefixes.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for len in [1usize, 10, 100, 1000, 10000] {
        for prefix in [
            &b""[..],
            b"From: a@b\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n",
        ] {
            let mut v = prefix.to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(b"ab:\r\n-q= <>@;\"\x00\xff"[(x % 16) as usize]);
            }
            inputs.push(v);
        }
    }
    for raw in &inputs {
        match parse(raw, 100) {
            Ok(p) => {
                assert!(p.json["parts"].is_object());
                // Whatever came out is consistent: every blob id is listed.
                let mut ids = Vec::new();
                collect_ids(&p.json["parts"], &mut ids);
                assert_eq!(ids.len(), p.blobs.len());
            }
            Err(ParseError::NoHeaders) => {}
        }
    }
    assert_eq!(parse(b"", 100).unwrap_err(), ParseError::NoHeaders);
}

#[test]
fn flattened_parts_keep_both_filename_and_content_id() {
    let raw = "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n--B\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"x.png\"\r\nContent-ID: <x@y>\r\n\r\nPNG\r\n--B--\r\n";
    let p = parse(raw.as_bytes(), 1000).unwrap();
    assert_eq!(
        p.json["file_attachments"],
        json!([{"content_type": "image/png", "filename": "x.png", "content_id": "<x@y>",
                "content": {"create_id": "0"}}])
    );
    assert_eq!(
        p.json["text_body"],
        json!([{"content_type": "text/plain", "content": {"inline": "body"}}])
    );
}
