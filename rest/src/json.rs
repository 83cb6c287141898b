//! Transaction JSON: what a POST creates (REST_CREATE), what a GET reads
//! (REST_READ), and their parts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorKind};

/// An ESMTP parameter: `{"k": "SIZE", "p": "1234"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpParam {
    pub k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
}

/// An envelope address without angle brackets (`""`: the null
/// reverse-path) and its ESMTP parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub m: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub e: Vec<EsmtpParam>,
}

impl Mailbox {
    pub fn new(m: impl Into<String>) -> Self {
        Self {
            m: m.into(),
            e: Vec::new(),
        }
    }
}

/// An SMTP reply: `{"code": 250, "message": "2.0.0 ok"}`. On input the
/// message may be left out; it then reads as the original's default text
/// for the code's class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub code: u16,
    #[serde(default)]
    pub message: Option<String>,
}

impl Response {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }

    /// The text, or the original's default for the code.
    pub fn text(&self) -> &str {
        match &self.message {
            Some(m) => m,
            None => match self.code {
                200..=299 => "ok",
                400..=499 => "temporary error",
                500..=599 => "permanent error",
                _ => "internal error",
            },
        }
    }
}

/// The body of a create (or update) request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BodyRequest {
    /// The RFC 822 message itself (UTF-8).
    Inline(String),
    /// A finalized body or blob of an earlier transaction:
    /// `/transactions/{tx}/body` or `/transactions/{tx}/blob/{id}`, or an
    /// absolute URL whose path is one of those.
    ReuseUri(String),
    /// A message-builder spec (see `koukan-message`), rendered to MIME once
    /// its blobs are in.
    MessageBuilder(Value),
}

/// `[host, port]`.
pub type HostPort = (String, u16);

/// A create request (REST_CREATE), parsed strictly.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TxCreate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<HostPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_host: Option<HostPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<Mailbox>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rcpt_to: Vec<Mailbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_meta: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<SenderRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_output: Option<Map<String, Value>>,
}

/// `{"name": …, "tag": …}`: in a create request only the tag counts (the
/// name is the URL's), in a read it is the `{}` placeholder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Fields only the server writes: present in a request, they are an
/// error (the original's "not valid in this context").
const READ_ONLY: &[&str] = &[
    "mail_response",
    "rcpt_response",
    "data_response",
    "attempt_count",
    "final_attempt_reason",
    "cancelled",
    "notification",
    "retry",
];

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(ErrorKind::InvalidJson, field, message)
}

fn typed<T: serde::de::DeserializeOwned>(field: &str, v: &Value) -> Result<T, ApiError> {
    serde_json::from_value(v.clone()).map_err(|e| invalid(field, e.to_string()))
}

fn host_port(field: &str, v: &Value) -> Result<HostPort, ApiError> {
    typed::<HostPort>(field, v).map_err(|_| invalid(field, "expected [host, port]"))
}

/// A list, each element parsed on its own so an error names it
/// (`rcpt_to[1]`).
fn typed_list<T: serde::de::DeserializeOwned>(field: &str, v: &Value) -> Result<Vec<T>, ApiError> {
    let Value::Array(list) = v else {
        return Err(invalid(field, "expected a list"));
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| typed(&format!("{field}[{i}]"), item))
        .collect()
}

/// The deepest nesting a request's JSON may have: deep enough for any
/// message-builder spec, shallow enough that walking it is cheap.
pub const MAX_JSON_DEPTH: usize = 32;

/// Whether `v` nests deeper than `max` (arrays and objects count a level).
pub fn too_deep(v: &Value, max: usize) -> bool {
    // Iterative, so a hostile document cannot overflow the stack here.
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

/// The original's rules for any field's value: never `null`, never an
/// empty list; and no `null` inside the envelope fields either
/// (`{"m": null}`, a tag of null), which serde would read as absent.
fn check_value(field: &str, value: &Value) -> Result<(), ApiError> {
    if value.is_null() {
        return Err(invalid(field, "null is not a valid value"));
    }
    if matches!(
        field,
        "mail_from" | "rcpt_to" | "sender" | "remote_host" | "local_host"
    ) && let Some(path) = null_inside(field, value)
    {
        return Err(invalid(&path, "null is not a valid value"));
    }
    if value.as_array().is_some_and(|a| a.is_empty()) {
        return Err(invalid(field, "an empty list is not a valid value"));
    }
    Ok(())
}

/// The path of the first `null` inside `v`, if any.
fn null_inside(path: &str, v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(path.to_owned()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| null_inside(&format!("{path}[{i}]"), x)),
        Value::Object(o) => o
            .iter()
            .find_map(|(k, x)| null_inside(&format!("{path}.{k}"), x)),
        _ => None,
    }
}

impl TxCreate {
    /// Parses a create request: an object whose keys are REST_CREATE
    /// fields, none `null`, no list empty.
    pub fn parse(v: &Value) -> Result<Self, ApiError> {
        let Value::Object(map) = v else {
            return Err(ApiError::new(
                ErrorKind::InvalidJson,
                "the request entity must be a JSON object",
            ));
        };
        let mut tx = TxCreate::default();
        for (key, value) in map {
            let field = key.as_str();
            check_value(field, value)?;
            match field {
                "remote_host" => tx.remote_host = Some(host_port(field, value)?),
                "local_host" => tx.local_host = Some(host_port(field, value)?),
                "mail_from" => tx.mail_from = Some(typed(field, value)?),
                "rcpt_to" => {
                    let Value::Array(list) = value else {
                        return Err(invalid(field, "expected a list of mailboxes"));
                    };
                    for (i, m) in list.iter().enumerate() {
                        tx.rcpt_to.push(typed(&format!("rcpt_to[{i}]"), m)?);
                    }
                }
                "body" => tx.body = Some(typed(field, value)?),
                "smtp_meta" => tx.smtp_meta = Some(typed(field, value)?),
                "sender" => {
                    tx.sender = Some(typed(field, value).map_err(|_| {
                        invalid(field, "sender may only contain name and tag (strings)")
                    })?)
                }
                "filter_output" => tx.filter_output = Some(typed(field, value)?),
                f if READ_ONLY.contains(&f) => {
                    return Err(invalid(field, "read-only field: the server sets it"));
                }
                "rcpt_to_list_offset" => {
                    return Err(invalid(field, "only valid in an update (PATCH)"));
                }
                _ => return Err(invalid(field, "unknown field")),
            }
        }
        Ok(tx)
    }
}

/// An empty object: the read form of a field that is present but not
/// echoed back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholder {}

/// Where a blob is and whether it is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStatus {
    pub uri: String,
    /// `true` once complete; left out while not (as the original does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
}

/// A message-builder body as read: its blobs (the spec is not echoed);
/// a receiving application also gives the `uri` to POST the parsed spec
/// to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBuilderRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_status: Option<BTreeMap<String, BlobStatus>>,
}

/// The body of a read: the raw body's status, or a message builder's
/// blobs, or (a receiving application) both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_status: Option<BlobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_builder: Option<MessageBuilderRead>,
}

/// A transaction as read (REST_READ): placeholders for the request's
/// fields, the latest attempt's responses, and its progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TxRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Placeholder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<HostPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_host: Option<HostPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<Placeholder>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rcpt_to: Vec<Placeholder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Placeholder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Placeholder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_output: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyRead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_response: Option<Response>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rcpt_response: Vec<Response>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_response: Option<Response>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_attempt_reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

impl TxRead {
    /// Parses a read strictly, as the `rest_output` client reads a
    /// receiving application's replies: an object of REST_READ fields,
    /// none `null`, no list empty, the placeholders exactly `{}` (a
    /// receiver echoing `mail_from` back, or `filter_output` with data,
    /// is a broken one), no request-only field (`smtp_meta`). Errors name
    /// the field.
    pub fn parse(v: &Value) -> Result<Self, ApiError> {
        let Value::Object(map) = v else {
            return Err(ApiError::new(
                ErrorKind::InvalidJson,
                "a transaction must be a JSON object",
            ));
        };
        let mut out = TxRead::default();
        for (key, value) in map {
            let field = key.as_str();
            check_value(field, value)?;
            match field {
                "sender" => out.sender = Some(typed(field, value)?),
                "remote_host" => out.remote_host = Some(host_port(field, value)?),
                "local_host" => out.local_host = Some(host_port(field, value)?),
                "mail_from" => out.mail_from = Some(typed(field, value)?),
                "rcpt_to" => out.rcpt_to = typed_list(field, value)?,
                "retry" => out.retry = Some(typed(field, value)?),
                "notification" => out.notification = Some(typed(field, value)?),
                "filter_output" => {
                    let map: Map<String, Value> = typed(field, value)?;
                    if !map.is_empty() {
                        return Err(invalid(field, "must be the placeholder {} in a read"));
                    }
                    out.filter_output = Some(map);
                }
                "body" => out.body = Some(typed(field, value)?),
                "mail_response" => out.mail_response = Some(typed(field, value)?),
                "rcpt_response" => out.rcpt_response = typed_list(field, value)?,
                "data_response" => out.data_response = Some(typed(field, value)?),
                "attempt_count" => out.attempt_count = Some(typed(field, value)?),
                "final_attempt_reason" => out.final_attempt_reason = Some(typed(field, value)?),
                "cancelled" => out.cancelled = typed(field, value)?,
                _ => return Err(invalid(field, "not a field of a transaction read")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_submission_parses() {
        let tx = TxCreate::parse(&json!({
            "mail_from": {"m": "carol@example.org", "e": [{"k": "SIZE", "p": "12"}]},
            "rcpt_to": [{"m": "dave@example.net"}],
            "sender": {"tag": "t"},
            "body": {"inline": "Subject: x\r\n\r\nhi\r\n"}
        }))
        .unwrap();
        assert_eq!(tx.mail_from.as_ref().unwrap().m, "carol@example.org");
        assert_eq!(tx.mail_from.as_ref().unwrap().e[0].p.as_deref(), Some("12"));
        assert_eq!(tx.rcpt_to, vec![Mailbox::new("dave@example.net")]);
        assert_eq!(tx.sender.unwrap().tag.as_deref(), Some("t"));
        assert!(matches!(tx.body, Some(BodyRequest::Inline(_))));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (json!({"mail_from": null}), "mail_from"),
            (json!({"rcpt_to": []}), "rcpt_to"),
            (json!({"bogus": 1}), "bogus"),
            (json!({"attempt_count": 1}), "attempt_count"),
            (json!({"rcpt_to": [{"m": "a@b"}, {"x": 1}]}), "rcpt_to[1]"),
            (json!({"sender": {"name": "a", "x": 1}}), "sender"),
            (json!({"remote_host": "1.2.3.4"}), "remote_host"),
            (json!({"body": {"inline": "a", "reuse_uri": "b"}}), "body"),
            (json!({"sender": {"tag": null}}), "sender.tag"),
            (
                json!({"rcpt_to": [{"m": "a@b", "e": [{"k": "X", "p": null}]}]}),
                "rcpt_to[0].e[0].p",
            ),
        ];
        for (v, field) in cases {
            let e = TxCreate::parse(&v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{v}: {e}");
            assert_eq!(e.status(), 400);
        }
        assert!(TxCreate::parse(&json!([1])).unwrap_err().field.is_none());
    }

    #[test]
    fn depth_is_bounded() {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!([v]);
        }
        assert!(too_deep(&v, MAX_JSON_DEPTH));
        assert!(!too_deep(&json!({"a": [[1]]}), 3));
        assert!(too_deep(&json!({"a": [[1]]}), 2));
    }

    #[test]
    fn reads_serialize_like_the_original() {
        let read = TxRead {
            sender: Some(Placeholder {}),
            mail_from: Some(Placeholder {}),
            rcpt_to: vec![Placeholder {}],
            body: Some(BodyRead {
                blob_status: Some(BlobStatus {
                    uri: "/transactions/x/body".into(),
                    finalized: true,
                }),
                message_builder: None,
            }),
            mail_response: Some(Response::new(250, "ok")),
            attempt_count: Some(1),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            json!({"sender": {}, "mail_from": {}, "rcpt_to": [{}],
                "body": {"blob_status": {"uri": "/transactions/x/body", "finalized": true}},
                "mail_response": {"code": 250, "message": "ok"}, "attempt_count": 1})
        );
        let back: TxRead = serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
        assert_eq!(back, read);
        assert_eq!(
            Response {
                code: 451,
                message: None
            }
            .text(),
            "temporary error"
        );
    }

    #[test]
    fn reads_parse_strictly() {
        let ok = TxRead::parse(&json!({
            "remote_host": ["198.51.100.7", 50123],
            "mail_from": {}, "rcpt_to": [{}, {}], "sender": {}, "filter_output": {},
            "mail_response": {"code": 250, "message": "ok"},
            "rcpt_response": [{"code": 250}],
            "body": {"blob_status": {"uri": "http://a/transactions/r1/body"},
                     "message_builder": {"uri": "http://a/transactions/r1/message_builder"}}
        }))
        .unwrap();
        assert_eq!(ok.rcpt_to.len(), 2);
        assert_eq!(ok.rcpt_response[0].text(), "ok");
        assert_eq!(ok.remote_host, Some(("198.51.100.7".to_owned(), 50123)));
        let cases = [
            (json!({"mail_from": {"m": "a@b"}}), "mail_from"),
            (json!({"rcpt_to": [{}, {"m": "a@b"}]}), "rcpt_to[1]"),
            (json!({"sender": {"name": "x"}}), "sender"),
            (json!({"filter_output": {"k": 1}}), "filter_output"),
            (json!({"smtp_meta": {"tls": true}}), "smtp_meta"),
            (json!({"mail_response": null}), "mail_response"),
            (json!({"rcpt_response": []}), "rcpt_response"),
            (
                json!({"rcpt_response": [{"code": "x"}]}),
                "rcpt_response[0]",
            ),
            (json!({"remote_host": "h"}), "remote_host"),
            (json!({"body": {"blob_status": {}}}), "body"),
        ];
        for (v, field) in cases {
            let e = TxRead::parse(&v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{v}: {e}");
        }
        assert!(TxRead::parse(&json!("x")).is_err());
    }
}
