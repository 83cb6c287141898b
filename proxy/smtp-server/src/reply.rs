//! Locally generated replies. Every one carries an RFC 3463 enhanced status
//! code (we advertise ENHANCEDSTATUSCODES); replies from the chain are
//! passed through verbatim and never built here.

use koukan_chain::Response;

/// A fixed reply, cheap to keep in a `const`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub text: &'static str,
}

const fn r(code: u16, text: &'static str) -> Reply {
    Reply { code, text }
}

impl Reply {
    pub fn response(self) -> Response {
        Response::new(self.code, self.text)
    }
}

impl From<Reply> for Response {
    fn from(r: Reply) -> Self {
        r.response()
    }
}

pub(crate) const OK: Reply = r(250, "2.0.0 OK");
pub(crate) const BYE: Reply = r(221, "2.0.0 bye");
pub(crate) const VRFY: Reply = r(
    252,
    "2.5.0 cannot VRFY user, but will accept message and attempt delivery",
);
pub(crate) const HELP: Reply = r(
    214,
    "2.0.0 commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
);
pub(crate) const START_DATA: Reply = r(354, "start mail input; end with <CRLF>.<CRLF>");
pub(crate) const START_TLS: Reply = r(220, "2.0.0 ready to start TLS");

pub(crate) const UNKNOWN_COMMAND: Reply = r(500, "5.5.2 command not recognized");
pub(crate) const LINE_TOO_LONG: Reply = r(500, "5.5.2 line too long");
pub(crate) const BAD_CHARACTERS: Reply = r(500, "5.5.2 invalid characters in command");
pub(crate) const NOT_IMPLEMENTED: Reply = r(502, "5.5.1 command not implemented");

pub(crate) const NEED_HELO: Reply = r(503, "5.5.1 send EHLO or HELO first");
pub(crate) const NESTED_MAIL: Reply = r(503, "5.5.1 sender already specified");
pub(crate) const NEED_MAIL: Reply = r(503, "5.5.1 need MAIL command first");
pub(crate) const NEED_RCPT: Reply = r(503, "5.5.1 need RCPT command first");
pub(crate) const SENDER_REJECTED: Reply = r(503, "5.5.1 sender was not accepted");
pub(crate) const NO_VALID_RCPTS: Reply = r(554, "5.5.1 no valid recipients");
pub(crate) const DATA_AFTER_BDAT: Reply = r(503, "5.5.1 DATA not allowed after BDAT");
pub(crate) const ALREADY_TLS: Reply = r(503, "5.5.1 TLS already active");
pub(crate) const ALREADY_AUTH: Reply = r(503, "5.5.1 already authenticated");
pub(crate) const AUTH_IN_TX: Reply = r(503, "5.5.1 AUTH not allowed during a mail transaction");

pub(crate) const BAD_SENDER: Reply = r(501, "5.1.7 invalid sender address");
pub(crate) const BAD_RECIPIENT: Reply = r(501, "5.1.3 invalid recipient address");
pub(crate) const NEED_SMTPUTF8: Reply = r(553, "5.6.7 non-ASCII address requires SMTPUTF8");

/// A BDAT size smtp-proto cannot represent: see `session::bdat_size_out_of_range`.
pub(crate) const BDAT_SIZE_OUT_OF_RANGE: Reply = r(501, "5.5.4 BDAT chunk size out of range");

pub(crate) const TOO_MANY_RCPTS: Reply = r(452, "4.5.3 too many recipients");
pub(crate) const SIZE_EXCEEDED: Reply =
    r(552, "5.3.4 message size exceeds fixed maximum message size");

pub(crate) const AUTH_REQUIRED: Reply = r(530, "5.7.0 authentication required");
pub(crate) const AUTH_OK: Reply = r(235, "2.7.0 authentication successful");
pub(crate) const AUTH_FAILED: Reply = r(535, "5.7.8 authentication credentials invalid");
pub(crate) const AUTH_NEEDS_TLS: Reply = r(
    538,
    "5.7.11 encryption required for requested authentication mechanism",
);
pub(crate) const AUTH_CANCELLED: Reply = r(501, "5.7.0 authentication cancelled");
pub(crate) const AUTH_BAD_BASE64: Reply = r(501, "5.5.2 invalid base64 data");
/// AUTH during a lockout (RFC 4954 §6: 454 is a temporary authentication
/// failure; 4.7.0 as the other security refusals).
pub(crate) const AUTH_LOCKED: Reply = r(
    454,
    "4.7.0 too many authentication failures, try again later",
);
pub(crate) const AUTH_MECHANISM: Reply = r(504, "5.5.4 unrecognized authentication mechanism");

pub(crate) const TIMEOUT: Reply = r(421, "4.4.2 timeout, closing connection");
pub(crate) const SHUTTING_DOWN: Reply = r(421, "4.3.2 shutting down");
pub(crate) const TOO_MANY_CONNECTIONS: Reply = r(421, "4.3.2 too many connections");
pub(crate) const TOO_MANY_ERRORS: Reply = r(421, "4.7.0 too many errors, closing connection");

pub(crate) const UPSTREAM_TIMEOUT: Reply = r(451, "4.4.1 upstream did not answer in time");
pub(crate) const INTERNAL_ERROR_CLOSING: Reply = r(421, "4.3.0 internal error, closing connection");
pub(crate) const UNANSWERED: Reply = r(451, "4.3.0 internal error: no response from the chain");

/// A syntax error naming the expected syntax (501 5.5.4).
pub(crate) fn syntax(expected: &str) -> Response {
    Response::new(501, format!("5.5.4 syntax: {expected}"))
}

pub(crate) fn invalid_param(param: &str) -> Response {
    Response::new(501, format!("5.5.4 invalid {} parameter", printable(param)))
}

pub(crate) fn unsupported_param(param: &str) -> Response {
    Response::new(
        555,
        format!("5.5.4 unsupported parameter {}", printable(param)),
    )
}

/// Final reply to a message with a line over `max_data_line_length`
/// (5.6.0: a problem with the content, RFC 3463).
pub(crate) fn data_line_too_long(max: usize) -> Response {
    Response::new(
        554,
        format!("5.6.0 message has a line longer than {max} octets"),
    )
}

pub(crate) fn bdat_received(n: u64) -> Response {
    Response::new(250, format!("2.0.0 {n} octets received"))
}

/// Client text echoed in a reply: printable ASCII only, bounded, so a
/// client cannot inject reply lines or control characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_final_reply_has_an_enhanced_code() {
        for r in [
            OK,
            BYE,
            VRFY,
            HELP,
            START_TLS,
            UNKNOWN_COMMAND,
            LINE_TOO_LONG,
            NEED_HELO,
            TOO_MANY_RCPTS,
            SIZE_EXCEEDED,
            AUTH_NEEDS_TLS,
            TIMEOUT,
            UPSTREAM_TIMEOUT,
            INTERNAL_ERROR_CLOSING,
            BDAT_SIZE_OUT_OF_RANGE,
            AUTH_LOCKED,
        ] {
            assert!(r.response().enhanced_code().is_some(), "{r:?}");
        }
        assert!(data_line_too_long(1000).enhanced_code().is_some());
        assert_eq!(
            unsupported_param("X=\r\n250 ok").text,
            "5.5.4 unsupported parameter X=250ok"
        );
    }
}
