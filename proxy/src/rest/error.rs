//! Error answers: an HTTP status and the JSON body of
//! [`koukan_rest::ApiError`], with `Retry-After` where trying again later
//! can work.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use koukan_rest::{ApiError, ErrorKind};
use koukan_storage::StoreError;

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub body: ApiError,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Extra headers (a 416's `Content-Range`).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Error {
    pub fn new(status: StatusCode, body: ApiError) -> Self {
        Self {
            status,
            body,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// The status the error's kind is answered with.
    pub fn api(body: ApiError) -> Self {
        let status = StatusCode::from_u16(body.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let retry_after = matches!(
            body.error,
            ErrorKind::TooManyRequests | ErrorKind::Unavailable
        )
        .then_some(1);
        Self {
            retry_after,
            ..Self::new(status, body)
        }
    }

    pub fn kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::api(ApiError::new(kind, message))
    }

    pub fn field(kind: ErrorKind, field: &str, message: impl Into<String>) -> Self {
        Self::api(ApiError::field(kind, field, message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::kind(ErrorKind::NotFound, message)
    }

    pub fn header(name: &str, message: impl Into<String>) -> Self {
        Self::field(ErrorKind::InvalidHeader, name, message)
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A storage failure: the client may retry (503), except a missing
    /// record (404) or a blob conflict (416).
    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::not_found(format!("not found: {what}")),
            StoreError::BlobConflict { reason, .. } => {
                Self::kind(ErrorKind::RangeNotSatisfiable, reason)
            }
            StoreError::Full(_) => Self::kind(
                ErrorKind::Unavailable,
                "insufficient storage, try again later",
            ),
            e => {
                tracing::warn!(error = %e, "REST request failed on storage");
                Self::kind(
                    ErrorKind::Unavailable,
                    "storage temporarily unavailable, try again later",
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}
