//! Spec validation: every error names the offending field.

use koukan_message::{BlobRef, Content, HeaderValue, Spec};
use serde_json::{Value, json};

fn text(s: &str) -> Value {
    json!({"content_type": "text/plain", "content": {"inline": s}})
}

/// A valid spec with `f` applied.
fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "headers": [["subject", "s"], ["from", [{"address": "a@example.com"}]],
                    ["date", {"unix_secs": 1, "tz_offset": 0}], ["message-id", ["x@y"]]],
        "text_body": [text("t")],
        "related_attachments": [],
        "file_attachments": [{"content_type": "image/png", "filename": "f.png",
                              "content": {"create_id": "b1"}}]
    });
    f(&mut v);
    v
}

fn error(v: &Value) -> (String, String) {
    let e = Spec::from_json(v).expect_err(&format!("accepted {v}"));
    (e.path, e.problem)
}

#[test]
fn the_base_spec_is_valid() {
    let v = with(|_| {});
    Spec::from_json(&v).unwrap();
    // blob_status (REST_READ echo) is accepted and ignored.
    let v = with(|v| v["blob_status"] = json!({"b1": {"uri": "http://x/blob/b1"}}));
    let s = Spec::from_json(&v).unwrap();
    assert_eq!(s, Spec::from_json(&with(|_| {})).unwrap());
}

#[test]
fn each_error_names_its_path() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([]), "", "object"),
        (json!({}), "", "nothing to render"),
        (with(|v| v["bogus"] = json!(1)), "bogus", "unknown key"),
        (with(|v| v["headers"] = Value::Null), "headers", "list"),
        (with(|v| v["text_body"] = json!({})), "text_body", "list"),
        (
            with(|v| v["headers"][1] = json!(["to"])),
            "headers[1]",
            "[name, value]",
        ),
        (
            with(|v| v["headers"][1] = Value::Null),
            "headers[1]",
            "null",
        ),
        (
            with(|v| v["headers"][0][0] = json!(5)),
            "headers[0][0]",
            "string",
        ),
        (
            with(|v| v["headers"][0][0] = json!("bad name")),
            "headers[0][0]",
            "invalid character",
        ),
        (
            with(|v| v["headers"][0][0] = json!("x:y")),
            "headers[0][0]",
            "invalid character",
        ),
        (
            with(|v| v["headers"][0][0] = json!("")),
            "headers[0][0]",
            "empty",
        ),
        (
            with(|v| v["headers"][0][0] = json!("Content-Type")),
            "headers[0][0]",
            "MIME",
        ),
        (
            with(|v| v["headers"][0][0] = json!("MIME-Version")),
            "headers[0][0]",
            "MIME",
        ),
        (
            with(|v| v["headers"][0][1] = Value::Null),
            "headers[0][1]",
            "null",
        ),
        (
            with(|v| v["headers"][0][1] = json!(["a"])),
            "headers[0][1]",
            "string",
        ),
        // Header injection.
        (
            with(|v| v["headers"][0][1] = json!("hi\r\nBcc: victim@example.com")),
            "headers[0][1]",
            "CR/LF",
        ),
        (
            with(|v| v["headers"][0][1] = json!("hi\nX: y")),
            "headers[0][1]",
            "CR/LF",
        ),
        (
            with(|v| v["headers"][0][1] = json!("nul\u{0}")),
            "headers[0][1]",
            "control",
        ),
        (
            with(|v| v["headers"][0][1] = json!("x".repeat(20000))),
            "headers[0][1]",
            "longer",
        ),
        (
            with(|v| v["headers"][1][1][0]["display_name"] = json!("Eve\r\nBcc: x@y")),
            "headers[1][1][0].display_name",
            "CR/LF",
        ),
        (
            with(|v| v["headers"][1][1][0] = json!({"display_name": "A"})),
            "headers[1][1][0].address",
            "missing",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!("no-at-sign")),
            "headers[1][1][0].address",
            "@",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!("a@-bad-.com")),
            "headers[1][1][0].address",
            "domain",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!("a b@example.com")),
            "headers[1][1][0].address",
            "local part",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!("a@example.com>\r\nBcc: x")),
            "headers[1][1][0].address",
            "control",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!("<a@example.com>")),
            "headers[1][1][0].address",
            "invalid",
        ),
        (
            with(|v| v["headers"][1][1][0]["address"] = json!(7)),
            "headers[1][1][0].address",
            "string",
        ),
        (
            with(|v| v["headers"][1][1][0]["extra"] = json!(7)),
            "headers[1][1][0].extra",
            "unknown key",
        ),
        (
            with(|v| v["headers"][1][1][0] = Value::Null),
            "headers[1][1][0]",
            "null",
        ),
        (
            with(|v| v["headers"][1][1] = json!("not an address")),
            "headers[1][1]",
            "address list",
        ),
        (
            with(|v| v["headers"][1][1] = json!(5)),
            "headers[1][1]",
            "address list",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"tz_offset": 0})),
            "headers[2][1].unix_secs",
            "missing",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"unix_secs": "1"})),
            "headers[2][1].unix_secs",
            "integer",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"unix_secs": 1, "tz_offset": 30})),
            "headers[2][1].tz_offset",
            "minutes",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"unix_secs": 1, "tz_offset": null})),
            "headers[2][1].tz_offset",
            "null",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"unix_secs": 1, "tz": 0})),
            "headers[2][1].tz",
            "unknown key",
        ),
        (
            with(|v| v["headers"][2][1] = json!({"unix_secs": i64::MAX})),
            "headers[2][1].unix_secs",
            "range",
        ),
        (
            with(|v| v["headers"][2][1] = json!("yesterday")),
            "headers[2][1]",
            "date",
        ),
        (
            with(|v| v["headers"][3][1] = json!(["a b"])),
            "headers[3][1][0]",
            "invalid character",
        ),
        (
            with(|v| v["headers"][3][1] = json!(["x\r\ny"])),
            "headers[3][1][0]",
            "invalid character",
        ),
        (
            with(|v| v["headers"][3][1] = json!([5])),
            "headers[3][1][0]",
            "string",
        ),
        (
            with(|v| v["headers"][3][1] = json!({})),
            "headers[3][1]",
            "message ids",
        ),
        (
            with(|v| {
                v["headers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(["Subject", "again"]))
            }),
            "headers[4][0]",
            "only once",
        ),
        (
            with(|v| v["text_body"][0] = json!("x")),
            "text_body[0]",
            "part object",
        ),
        (
            with(|v| v["text_body"][0]["content_type"] = json!("textplain")),
            "text_body[0].content_type",
            "type/subtype",
        ),
        (
            with(|v| v["text_body"][0]["content_type"] = json!("text/plain; charset=x")),
            "text_body[0].content_type",
            "type/subtype",
        ),
        (
            with(|v| v["text_body"][0]["content_type"] = json!("multipart/mixed")),
            "text_body[0].content_type",
            "multipart",
        ),
        (
            with(|v| {
                v["text_body"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("content_type");
            }),
            "text_body[0].content_type",
            "missing",
        ),
        (
            with(|v| {
                v["text_body"][0].as_object_mut().unwrap().remove("content");
            }),
            "text_body[0].content",
            "missing",
        ),
        (
            with(|v| v["text_body"][0]["content"] = json!({})),
            "text_body[0].content",
            "exactly one",
        ),
        (
            with(|v| v["text_body"][0]["content"] = json!({"inline": "a", "create_id": "b"})),
            "text_body[0].content",
            "exactly one",
        ),
        (
            with(|v| v["text_body"][0]["content"] = json!({"url": "a"})),
            "text_body[0].content.url",
            "unknown key",
        ),
        (
            with(|v| v["text_body"][0]["content"] = json!({"inline": null})),
            "text_body[0].content.inline",
            "null",
        ),
        (
            with(|v| v["text_body"][0]["content"] = Value::Null),
            "text_body[0].content",
            "null",
        ),
        (
            with(|v| v["text_body"][0]["charset"] = json!("x")),
            "text_body[0].charset",
            "unknown key",
        ),
        (
            with(|v| v["text_body"][0]["content_id"] = json!("a\r\nb")),
            "text_body[0].content_id",
            "CR/LF",
        ),
        (
            with(|v| v["text_body"][0]["content_id"] = Value::Null),
            "text_body[0].content_id",
            "null",
        ),
        (
            with(|v| v["file_attachments"][0]["filename"] = json!("a\nb.png")),
            "file_attachments[0].filename",
            "CR/LF",
        ),
        (
            with(|v| v["file_attachments"][0]["filename"] = json!("")),
            "file_attachments[0].filename",
            "empty",
        ),
        (
            with(|v| v["file_attachments"][0]["content"] = json!({"create_id": ""})),
            "file_attachments[0].content.create_id",
            "1 to 1024",
        ),
        (
            with(|v| v["file_attachments"][0]["content"] = json!({"create_id": "a/b"})),
            "file_attachments[0].content.create_id",
            "invalid character",
        ),
        (
            with(|v| v["file_attachments"][0]["content"] = json!({"reuse_uri": "a b"})),
            "file_attachments[0].content.reuse_uri",
            "invalid character",
        ),
        (
            with(|v| {
                v["related_attachments"] =
                    json!([{"content_type": "image/png", "content": {"create_id": "b1"}}])
            }),
            "file_attachments[0].content.create_id",
            "earlier part",
        ),
        (
            // text_body[0] is inline, so it becomes inline0.
            with(|v| v["file_attachments"][0]["content"] = json!({"create_id": "inline0"})),
            "file_attachments[0].content.create_id",
            "inline",
        ),
        (
            with(|v| v["file_attachments"] = json!(vec![text("x"); 101])),
            "file_attachments",
            "more than 100",
        ),
        (
            with(|v| v["headers"] = json!(vec![json!(["x-a", "b"]); 101])),
            "headers",
            "more than 100",
        ),
    ];
    for (v, path, problem) in cases {
        let (p, msg) = error(&v);
        assert_eq!(p, path, "for {v}: {msg}");
        assert!(msg.contains(problem), "for {v}: {msg:?} lacks {problem:?}");
    }
}

#[test]
fn serde_goes_through_the_same_checks() {
    let e =
        serde_json::from_value::<Spec>(with(|v| v["headers"][0][1] = json!("a\r\nb"))).unwrap_err();
    assert!(e.to_string().contains("headers[0][1]"), "{e}");
    let s: Spec = serde_json::from_value(with(|_| {})).unwrap();
    // Serializing gives the wire form back, which reads as the same spec.
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(back["headers"][3], json!(["message-id", ["x@y"]]));
    assert_eq!(
        back["headers"][2],
        json!(["date", {"unix_secs": 1, "tz_offset": 0}])
    );
    assert_eq!(Spec::from_json(&back).unwrap(), s);
}

#[test]
fn string_forms_are_accepted_for_typed_headers() {
    let s = Spec::from_json(&json!({"headers": [
        ["message-id", "abc@xyz"],
        ["In-Reply-To", "<a@x>"],
        ["references", "<a@x> <b@y>"],
        ["From", "\"Alice A\" <alice@example.com>, bob@example.org"],
        ["date", "Wed, 06 Mar 2024 10:42:31 -0800"],
    ]}))
    .unwrap();
    assert_eq!(s.headers[0].value, HeaderValue::Ids(vec!["abc@xyz".into()]));
    assert_eq!(s.headers[1].value, HeaderValue::Ids(vec!["a@x".into()]));
    assert_eq!(
        s.headers[2].value,
        HeaderValue::Ids(vec!["a@x".into(), "b@y".into()])
    );
    match &s.headers[3].value {
        HeaderValue::Addresses(a) => {
            assert_eq!(a.len(), 2);
            assert_eq!(a[0].display_name.as_deref(), Some("Alice A"));
            assert_eq!(a[1].address, "bob@example.org");
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(
        s.headers[4].value,
        HeaderValue::Date(koukan_message::Date {
            unix_secs: 1709750551,
            tz_offset: -28800
        })
    );
}

#[test]
fn normalize_inline_counts_all_parts() {
    let mut s = Spec::from_json(&json!({
        "text_body": [text("zero"), {"content_type": "text/plain", "content": {"create_id": "mine"}}],
        "related_attachments": [{"content_type": "image/png", "content": {"reuse_uri": "/transactions/t/blob/b"}}],
        "file_attachments": [text("three")]
    }))
    .unwrap();
    assert_eq!(
        s.blobs(),
        vec![
            BlobRef::Create("mine"),
            BlobRef::Reuse("/transactions/t/blob/b")
        ]
    );
    let stored = s.normalize_inline();
    assert_eq!(
        stored,
        vec![
            ("inline0".into(), "zero".into()),
            ("inline3".into(), "three".into())
        ]
    );
    assert_eq!(s.text_body[0].content, Content::CreateId("inline0".into()));
    assert_eq!(
        s.file_attachments[0].content,
        Content::CreateId("inline3".into())
    );
    assert_eq!(s.blobs().len(), 4);
    assert!(s.normalize_inline().is_empty());
    // The normalized spec is still valid (its ids don't collide).
    s.validate().unwrap();
}

#[test]
fn reference_examples_are_valid() {
    let builder: Value =
        serde_json::from_str(include_str!("../data/message_builder.json")).unwrap();
    let mut s = Spec::from_json(&builder).unwrap();
    let ids: Vec<String> = s.normalize_inline().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["inline0", "inline1", "inline2", "inline3"]);
}
