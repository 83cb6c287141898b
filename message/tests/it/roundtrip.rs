//! builder → MIME → parser → builder, for the reference's examples.

use koukan_message::{Content, Parsed, Part, Spec, parse};
use serde_json::{Map, Value, json};

use crate::common::{MemBlobs, check_lines, outline, render_vec, view};

/// The parser's output as builder input: the root's headers without the
/// MIME ones, the three stanzas, and the blobs.
fn respec(p: &Parsed) -> (Spec, MemBlobs) {
    let mut v = Map::new();
    let headers: Vec<Value> = p.json["parts"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            let n = h[0].as_str().unwrap();
            n != "mime-version" && !n.starts_with("content-")
        })
        .cloned()
        .collect();
    v.insert("headers".into(), Value::Array(headers));
    for k in ["text_body", "related_attachments", "file_attachments"] {
        if let Some(s) = p.json.get(k) {
            v.insert(k.into(), s.clone());
        }
    }
    let spec = Spec::from_json(&Value::Object(v)).unwrap_or_else(|e| panic!("parsed spec: {e}"));
    let blobs = MemBlobs(
        p.blobs
            .iter()
            .map(|(id, b)| (id.clone(), b.to_vec()))
            .collect(),
    );
    (spec, blobs)
}

fn content(part: &Part, blobs: &MemBlobs) -> Vec<u8> {
    match &part.content {
        Content::Inline(s) => s.as_bytes().to_vec(),
        Content::CreateId(id) | Content::ReuseUri(id) => blobs.0[id].clone(),
    }
}

async fn round_trip(original: Value, blobs: MemBlobs, tree: &str) {
    let s1 = Spec::from_json(&original).unwrap();
    let (raw1, _) = render_vec(&s1, &blobs).await;
    check_lines(&raw1, 78);
    assert_eq!(outline(&view(&raw1)), tree);
    let p1 = parse(&raw1, 1 << 20).unwrap();

    let (s2, blobs2) = respec(&p1);
    let (raw2, _) = render_vec(&s2, &blobs2).await;
    assert_eq!(outline(&view(&raw2)), tree);
    let p2 = parse(&raw2, 1 << 20).unwrap();

    // The parser sees the same message both times.
    assert_eq!(p1.json, p2.json);
    assert_eq!(p1.blobs, p2.blobs);

    // And the second spec says what the first said.
    for (a, b, name) in [
        (&s1.text_body, &s2.text_body, "text_body"),
        (
            &s1.related_attachments,
            &s2.related_attachments,
            "related_attachments",
        ),
        (
            &s1.file_attachments,
            &s2.file_attachments,
            "file_attachments",
        ),
    ] {
        assert_eq!(a.len(), b.len(), "{name}");
        for (i, (pa, pb)) in a.iter().zip(b).enumerate() {
            assert!(
                pa.content_type.eq_ignore_ascii_case(&pb.content_type),
                "{name}[{i}]"
            );
            assert_eq!(pa.content_id, pb.content_id, "{name}[{i}]");
            if name == "file_attachments" {
                assert_eq!(pa.filename, pb.filename, "{name}[{i}]");
            }
            assert_eq!(content(pa, &blobs), content(pb, &blobs2), "{name}[{i}]");
        }
    }
    for h in s1
        .headers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("bcc"))
    {
        let back = s2
            .headers
            .iter()
            .find(|h2| h2.name.eq_ignore_ascii_case(&h.name))
            .unwrap_or_else(|| panic!("{} lost", h.name));
        assert_eq!(back.value, h.value, "{}", h.name);
    }
}

#[tokio::test]
async fn example_1_3() {
    round_trip(
        json!({
            "headers": [["subject", "status report"],
                        ["from", [{"display_name": "Carol", "address": "carol@example.org"}]]],
            "text_body": [{"content_type": "text/plain", "content": {"inline": "all systems nominal"}}]
        }),
        MemBlobs::default(),
        "text/plain\n",
    )
    .await;
}

const TREE_2_2: &str = "multipart/mixed\n  multipart/alternative\n    multipart/related\n      text/html\n      image/png\n    text/plain\n  image/png\n";

#[tokio::test]
async fn example_2_2_four_stanzas() {
    let spec: Value = serde_json::from_str(include_str!("../data/message_builder.json")).unwrap();
    round_trip(spec.clone(), MemBlobs::default(), TREE_2_2).await;

    // The same with the REST convention applied: inline contents as blobs.
    let mut s = Spec::from_json(&spec).unwrap();
    let stored = s.normalize_inline();
    let blobs = MemBlobs(
        stored
            .into_iter()
            .map(|(id, c)| (id, c.into_bytes()))
            .collect(),
    );
    round_trip(serde_json::to_value(&s).unwrap(), blobs, TREE_2_2).await;
}

#[tokio::test]
async fn example_2_3_as_a_spec() {
    round_trip(
        json!({
            "headers": [
                ["from", [{"display_name": "Grace", "address": "grace@example.org"}]],
                ["to", [{"address": "team@example.org"}]],
                ["bcc", [{"address": "boss@example.org"}]],
                ["subject", "weekly ☃"],
                ["message-id", ["m1@example.org"]],
                ["in-reply-to", ["m0@example.org"]],
                ["date", {"unix_secs": 1712000000, "tz_offset": 7200}]
            ],
            "text_body": [
                {"content_type": "text/plain", "content": {"inline": "hi\nthere"}},
                {"content_type": "text/html", "content": {"create_id": "html"}}
            ],
            "related_attachments": [
                {"content_type": "image/png", "content_id": "logo1", "content": {"create_id": "png"}}
            ],
            "file_attachments": [
                {"content_type": "application/pdf", "filename": "report.pdf",
                 "content": {"create_id": "pdf"}}
            ]
        }),
        MemBlobs::with(&[
            ("html", "<p>hi <img src=\"cid:logo1\"> ünïcode</p>".as_bytes()),
            ("png", b"\x89PNG\r\n\x1a\n\x00"),
            ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),
        ]),
        "multipart/mixed\n  multipart/alternative\n    multipart/related\n      text/plain\n      image/png\n    text/html\n  application/pdf\n",
    )
    .await;
}

#[tokio::test]
async fn html_first_alternatives() {
    round_trip(
        json!({
            "headers": [["subject", "alt"]],
            "text_body": [
                {"content_type": "text/html", "content": {"inline": "<p>hi</p>"}},
                {"content_type": "text/plain", "content": {"inline": "hi"}}
            ]
        }),
        MemBlobs::default(),
        "multipart/alternative\n  text/html\n  text/plain\n",
    )
    .await;
}
