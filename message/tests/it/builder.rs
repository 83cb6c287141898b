//! Builder output read back with mail-parser, field by field.

use koukan_message::{NoBlobs, RenderError, render, render_headers};
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};
use serde_json::json;

use crate::common::{
    MemBlobs, check_lines, header_block, leaves, opts, outline, render_vec, spec, view,
};

fn addrs(a: Option<&Address<'_>>) -> Vec<(Option<String>, String)> {
    let a = a.expect("address header");
    a.iter()
        .map(|x| {
            (
                x.name().map(str::to_owned),
                x.address().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

const SUBJECT: &str = "Grüße aus Köln — a subject long enough that it has to be folded over more than one header line";

fn full_spec() -> serde_json::Value {
    json!({
        "headers": [
            ["from", [{"display_name": "Zoë Ünicode", "address": "zoe@example.com"}]],
            ["to", [{"address": "bob@example.net"},
                    {"display_name": "Carol, Q. \"CQ\"", "address": "carol@example.org"}]],
            ["cc", [{"display_name": "", "address": "dave@example.org"}]],
            ["bcc", [{"address": "hidden@example.org"}]],
            ["reply-to", [{"display_name": "Lists", "address": "list@example.com"}]],
            ["subject", SUBJECT],
            ["date", {"unix_secs": 1709750551, "tz_offset": -28800}],
            ["message-id", ["abc@xyz"]],
            ["in-reply-to", ["abd@xyz"]],
            ["references", ["abd@xyz", "abe@xyz"]],
            ["X-Custom-Header", "custom value"]
        ],
        "text_body": [
            {"content_type": "text/html", "content": {"inline": "<b>hello</b> wörld"}},
            {"content_type": "text/plain", "content": {"create_id": "plain"}}
        ],
        "related_attachments": [
            {"content_type": "image/png", "content_id": "<img1@example.com>",
             "content": {"create_id": "img"}}
        ],
        "file_attachments": [
            {"content_type": "application/pdf", "filename": "résumé für Bewerbung.pdf",
             "content": {"reuse_uri": "/transactions/old/blob/doc"}},
            {"content_type": "text/csv", "filename": "data.csv",
             "content": {"inline": "a,b\r\n1,2\r\n"}}
        ]
    })
}

fn full_blobs() -> MemBlobs {
    MemBlobs::with(&[
        ("plain", b"hello world\r\nsecond line"),
        ("img", b"\x89PNG\r\n\x1a\n\x00\x00binary\xff\xfe"),
        ("/transactions/old/blob/doc", b"%PDF-1.4 fake\x00\x01\x02"),
    ])
}

#[tokio::test]
async fn headers_read_back_field_by_field() {
    let s = spec(full_spec());
    let (raw, rendered) = render_vec(&s, &full_blobs()).await;
    assert!(!rendered.needs_smtputf8);
    check_lines(&raw, 78);
    let msg = MessageParser::default().parse(&raw).unwrap();

    assert_eq!(
        addrs(msg.from()),
        vec![(Some("Zoë Ünicode".into()), "zoe@example.com".into())]
    );
    assert_eq!(
        addrs(msg.to()),
        vec![
            (None, "bob@example.net".into()),
            (Some("Carol, Q. \"CQ\"".into()), "carol@example.org".into())
        ]
    );
    assert_eq!(addrs(msg.cc()), vec![(None, "dave@example.org".into())]);
    assert_eq!(
        addrs(msg.reply_to()),
        vec![(Some("Lists".into()), "list@example.com".into())]
    );
    // Bcc is for the envelope only.
    assert!(msg.bcc().is_none());
    assert!(!String::from_utf8_lossy(&raw).contains("hidden@example.org"));

    assert_eq!(msg.subject(), Some(SUBJECT));
    let date = msg.date().unwrap();
    assert_eq!(date.to_timestamp(), 1709750551);
    assert!(date.tz_before_gmt);
    assert_eq!((date.tz_hour, date.tz_minute), (8, 0));
    assert_eq!(msg.message_id(), Some("abc@xyz"));
    assert_eq!(msg.in_reply_to().as_text(), Some("abd@xyz"));
    assert_eq!(
        msg.references().as_text_list().map(|l| l.to_vec()),
        Some(vec!["abd@xyz".into(), "abe@xyz".into()])
    );
    match msg.header("X-Custom-Header") {
        Some(HeaderValue::Text(t)) => assert_eq!(t, "custom value"),
        other => panic!("X-Custom-Header: {other:?}"),
    }
    // Names keep their spelling; non-ASCII text is RFC 2047-encoded.
    let head = header_block(&raw);
    assert!(
        head.contains("\r\nX-Custom-Header: custom value\r\n"),
        "{head}"
    );
    assert!(head.starts_with("from: "), "{head}");
    assert!(head.contains("=?utf-8?"), "{head}");
    assert!(head.is_ascii());
    assert!(head.contains("MIME-Version: 1.0\r\n"));
}

#[tokio::test]
async fn parts_read_back_field_by_field() {
    let s = spec(full_spec());
    let (raw, _) = render_vec(&s, &full_blobs()).await;
    let v = view(&raw);
    assert_eq!(
        outline(&v),
        "multipart/mixed\n  multipart/alternative\n    multipart/related\n      text/html\n      image/png\n    text/plain\n  application/pdf\n  text/csv\n"
    );
    let l = leaves(&v);
    let html = l[0];
    assert_eq!(
        html.content.as_deref(),
        Some("<b>hello</b> wörld".as_bytes())
    );
    assert_eq!(html.disposition, None);
    assert_eq!(html.content_id, None);

    let img = l[1];
    assert_eq!(img.disposition.as_deref(), Some("inline"));
    assert_eq!(img.content_id.as_deref(), Some("<img1@example.com>"));
    assert_eq!(img.cte.as_deref(), Some("base64"));
    assert_eq!(
        img.content.as_deref(),
        Some(&b"\x89PNG\r\n\x1a\n\x00\x00binary\xff\xfe"[..])
    );

    let plain = l[2];
    assert_eq!(
        plain.content.as_deref(),
        Some(&b"hello world\r\nsecond line"[..])
    );
    assert_eq!(plain.cte.as_deref(), Some("7bit"));
    assert_eq!(plain.disposition, None);

    let pdf = l[3];
    assert_eq!(pdf.disposition.as_deref(), Some("attachment"));
    assert_eq!(pdf.filename.as_deref(), Some("résumé für Bewerbung.pdf"));
    assert_eq!(
        pdf.content.as_deref(),
        Some(&b"%PDF-1.4 fake\x00\x01\x02"[..])
    );
    assert_eq!(pdf.cte.as_deref(), Some("base64"));

    let csv = l[4];
    assert_eq!(csv.filename.as_deref(), Some("data.csv"));
    assert_eq!(csv.content.as_deref(), Some(&b"a,b\r\n1,2\r\n"[..]));

    // Every text/* part says utf-8.
    let msg = MessageParser::default().parse(&raw).unwrap();
    for part in &msg.parts {
        let ct = part.content_type().unwrap();
        if ct.ctype() == "text" {
            assert_eq!(ct.attribute("charset"), Some("utf-8"));
        }
    }
}

#[tokio::test]
async fn stanza_combinations_nest_as_section_2_2() {
    let t = |ct: &str| json!({"content_type": ct, "content": {"inline": "x"}});
    let cases = [
        (json!({"text_body": [t("text/plain")]}), "text/plain\n"),
        (
            json!({"text_body": [t("text/plain"), t("text/html")]}),
            "multipart/alternative\n  text/plain\n  text/html\n",
        ),
        (
            json!({"text_body": [t("text/html")], "related_attachments": [t("image/gif")]}),
            "multipart/related\n  text/html\n  image/gif\n",
        ),
        (
            json!({"text_body": [t("text/plain")], "file_attachments": [t("image/gif")]}),
            "multipart/mixed\n  text/plain\n  image/gif\n",
        ),
        (
            json!({"file_attachments": [t("image/gif"), t("application/zip")]}),
            "multipart/mixed\n  image/gif\n  application/zip\n",
        ),
    ];
    for (s, want) in cases {
        let (raw, _) = render_vec(&spec(s.clone()), &NoBlobs).await;
        check_lines(&raw, 78);
        assert_eq!(outline(&view(&raw)), want, "{s}");
    }
}

#[tokio::test]
async fn date_and_message_id_are_filled_in() {
    let s = spec(json!({"headers": [["subject", "x"]],
                        "text_body": [{"content_type": "text/plain", "content": {"inline": "hi\r\n"}}]}));
    let (raw, _) = render_vec(&s, &NoBlobs).await;
    let msg = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(msg.date().unwrap().to_timestamp(), 1_700_000_000);
    let id = msg.message_id().unwrap();
    assert!(id.ends_with("@router.test"), "{id}");
    assert_eq!(id.len(), 32 + "@router.test".len());
    // The single part keeps its content exactly.
    assert_eq!(msg.body_text(0).as_deref(), Some("hi\r\n"));

    // Seeded: the same message twice; unseeded: different ids.
    let (again, _) = render_vec(&s, &NoBlobs).await;
    assert_eq!(raw, again);
    let mut o = opts();
    o.seed = None;
    let mut a = Vec::new();
    let mut b = Vec::new();
    render(&s, &NoBlobs, &o, &mut a).await.unwrap();
    render(&s, &NoBlobs, &o, &mut b).await.unwrap();
    assert_ne!(a, b);
}

#[tokio::test]
async fn utf8_addresses_need_smtputf8() {
    let s = spec(json!({"headers": [
            ["from", [{"address": "alice@example.com"}]],
            ["to", [{"display_name": "Ли", "address": "用户@例子.广告"}]]],
        "text_body": [{"content_type": "text/plain", "content": {"inline": "hi"}}]}));
    let (raw, r) = render_vec(&s, &NoBlobs).await;
    assert!(r.needs_smtputf8);
    let head = header_block(&raw);
    assert!(head.contains("<用户@例子.广告>"), "{head}");
    let msg = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        addrs(msg.to()),
        vec![(Some("Ли".into()), "用户@例子.广告".into())]
    );

    // Bcc is not rendered, so it does not call for SMTPUTF8 either.
    let s = spec(
        json!({"headers": [["bcc", [{"address": "用户@例子.广告"}]]],
        "text_body": [{"content_type": "text/plain", "content": {"inline": "hi"}}]}),
    );
    assert!(!render_vec(&s, &NoBlobs).await.1.needs_smtputf8);
}

#[test]
fn render_headers_is_the_header_block() {
    let s = spec(full_spec());
    let h = String::from_utf8(render_headers(&s, &opts()).unwrap()).unwrap();
    assert!(h.ends_with("\r\n") && !h.ends_with("\r\n\r\n"));
    assert!(h.starts_with("from: "));
    assert!(!h.contains("hidden@example.org"));
    assert!(!h.to_ascii_lowercase().contains("mime-version"));
    assert!(!h.to_ascii_lowercase().contains("content-type"));
    let parsed = MessageParser::default()
        .parse_headers(h.as_bytes())
        .unwrap();
    assert_eq!(parsed.subject(), Some(SUBJECT));
    assert_eq!(parsed.message_id(), Some("abc@xyz"));

    let s = spec(json!({"headers": [["subject", "only"]]}));
    let h = String::from_utf8(render_headers(&s, &opts()).unwrap()).unwrap();
    let parsed = MessageParser::default()
        .parse_headers(h.as_bytes())
        .unwrap();
    assert!(parsed.date().is_some() && parsed.message_id().is_some());
}

#[tokio::test]
async fn headers_only_spec_renders_without_body() {
    let s = spec(json!({"headers": [["subject", "ping"]]}));
    let (raw, _) = render_vec(&s, &NoBlobs).await;
    assert!(raw.ends_with(b"\r\n\r\n"));
    let text = String::from_utf8(raw).unwrap();
    assert!(!text.contains("MIME-Version"));
    assert!(text.starts_with("subject: ping\r\n"));
}

#[tokio::test]
async fn blob_errors_name_the_part() {
    let s = spec(json!({
        "text_body": [{"content_type": "text/plain", "content": {"inline": "ok"}}],
        "file_attachments": [
            {"content_type": "image/png", "content": {"create_id": "a"}},
            {"content_type": "text/plain", "content": {"create_id": "b"}}]}));
    // Missing blob.
    let mut out = Vec::new();
    let e = render(&s, &MemBlobs::with(&[("b", b"x")]), &opts(), &mut out)
        .await
        .unwrap_err();
    match e {
        RenderError::Blob { part, key, .. } => {
            assert_eq!(part, "file_attachments[0]");
            assert_eq!(key, "a");
        }
        e => panic!("{e}"),
    }
    // Text blob that is not UTF-8: refused before anything is written.
    let mut out = Vec::new();
    let e = render(
        &s,
        &MemBlobs::with(&[("a", b"x"), ("b", b"caf\xe9")]),
        &opts(),
        &mut out,
    )
    .await
    .unwrap_err();
    match e {
        RenderError::NotUtf8 { part } => assert_eq!(part, "file_attachments[1]"),
        e => panic!("{e}"),
    }
    assert!(out.is_empty());
}

#[tokio::test]
async fn render_validates_specs_built_in_code() {
    let mut s = spec(json!({"headers": [["subject", "fine"]]}));
    s.headers[0].value = koukan_message::HeaderValue::Text("bad\r\nBcc: x@y".into());
    let mut out = Vec::new();
    match render(&s, &NoBlobs, &opts(), &mut out).await {
        Err(RenderError::Spec(e)) => assert_eq!(e.path, "headers[0][1]"),
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
    assert!(render_headers(&s, &opts()).is_err());
}

#[test]
fn render_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let s = spec(json!({"headers": [["subject", "x"]]}));
    let blobs = MemBlobs::default();
    let o = opts();
    let mut out: Vec<u8> = Vec::new();
    let fut = render(&s, &blobs, &o, &mut out);
    assert_send(&fut);
}
