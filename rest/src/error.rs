//! The JSON error body every non-2xx answer carries.

use serde::{Deserialize, Serialize};

/// What kind of problem: a stable, machine-readable string per class of
/// error, so clients can branch on it without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The entity is not JSON, or not the JSON expected (a field of the
    /// wrong type, unknown, `null`, read-only or conflicting).
    InvalidJson,
    /// A field that parsed but whose value is not acceptable (an invalid
    /// address, a bad message-builder spec).
    InvalidField,
    /// A header that is malformed or missing (`Request-Timeout`,
    /// `Content-Range`, `If-Match`).
    InvalidHeader,
    /// The request needs an entity and has none.
    EmptyEntity,
    /// The request has the wrong `Content-Type`.
    UnsupportedMediaType,
    /// No such sender, transaction or blob.
    NotFound,
    /// `If-Match` does not match the current version.
    PreconditionFailed,
    /// The transaction is not in a state that allows this (a PUT after
    /// finalization, a PATCH on a first-class transaction).
    Conflict,
    /// An `Idempotency-Key` reused with a different request.
    IdempotencyMismatch,
    /// A blob range that does not continue what is stored.
    RangeNotSatisfiable,
    /// Over a configured size limit.
    TooLarge,
    /// Over a configured rate or concurrency limit; `Retry-After` says
    /// when to try again.
    TooManyRequests,
    /// Not authenticated (a listener with API keys).
    Unauthorized,
    /// The proxy cannot take the request now (storage unavailable or
    /// full); `Retry-After` says when to try again.
    Unavailable,
    /// Something went wrong in the proxy; the request may be retried.
    Internal,
}

/// `{"error": kind, "message": text, "field": path}`: `field` names the
/// JSON field path (`rcpt_to[0].m`) or header (`request-timeout`) at
/// fault, when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(error: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(error: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status this kind of error is answered with.
    pub fn status(&self) -> u16 {
        match self.error {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidField
            | ErrorKind::InvalidHeader
            | ErrorKind::EmptyEntity => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::TooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RangeNotSatisfiable => 416,
            ErrorKind::IdempotencyMismatch => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
