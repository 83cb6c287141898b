//! MAIL and RCPT commands, checked against what the peer announced.
//!
//! The rule is never to change what the message needs: a parameter whose
//! meaning the peer would have to honour (SMTPUTF8, BODY=8BITMIME,
//! REQUIRETLS) is either passed on to a peer that supports it or the
//! command fails here, with nothing sent. Parameters that only express a
//! wish (SIZE towards a peer without SIZE, DSN requests towards a peer
//! without DSN, AUTH=) are dropped, as a relay without those extensions
//! would do. Anything else is passed on only if the peer announces an
//! extension of that name.

use koukan_chain::transaction::{EsmtpParam, Mailbox, Response};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_BINARY_MIME, EXT_CHUNKING, EXT_DSN, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8,
};

use crate::session::Extensions;

/// What the MAIL command needs from the rest of the transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MailNeeds {
    /// BODY=BINARYMIME: the body must go with BDAT.
    pub binary: bool,
}

fn no_smtputf8() -> Response {
    Response::new(550, "5.6.7 upstream does not support SMTPUTF8")
}

/// Rejects anything that could break the command line framing. The server
/// side parsed these already; this guards against a filter producing them.
fn check_syntax(mb: &Mailbox) -> Result<(), Response> {
    let bad_addr = mb
        .address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>');
    let bad_word = |s: &str| s.is_empty() || s.chars().any(|c| c.is_control() || c == ' ');
    let bad_param = mb.params.iter().any(|p| {
        bad_word(&p.keyword) || p.keyword.contains('=') || p.value.as_deref().is_some_and(bad_word)
    });
    if bad_addr || bad_param {
        return Err(Response::new(
            501,
            "5.5.2 invalid characters in address or parameter",
        ));
    }
    Ok(())
}

fn push_param(cmd: &mut String, p: &EsmtpParam) {
    cmd.push(' ');
    cmd.push_str(&p.keyword);
    if let Some(v) = &p.value {
        cmd.push('=');
        cmd.push_str(v);
    }
}

/// The MAIL command line (without CRLF), or the reply explaining why the
/// transaction cannot go to this peer.
pub(crate) fn mail_command(
    mb: &Mailbox,
    ext: &Extensions,
    tls: bool,
    chunking: bool,
) -> Result<(String, MailNeeds), Response> {
    check_syntax(mb)?;
    let mut needs = MailNeeds::default();
    let mut cmd = format!("MAIL FROM:<{}>", mb.address);
    let utf8_param = mb.param("SMTPUTF8").is_some();
    if (utf8_param || !mb.address.is_ascii()) && !ext.has(EXT_SMTP_UTF8) {
        return Err(no_smtputf8());
    }
    for p in &mb.params {
        let keep = match p.keyword.to_ascii_uppercase().as_str() {
            "SMTPUTF8" => true,
            "BODY" => {
                let value = p.value.as_deref().unwrap_or("").to_ascii_uppercase();
                match value.as_str() {
                    "8BITMIME" if ext.has(EXT_8BIT_MIME) => true,
                    "8BITMIME" => {
                        return Err(Response::new(
                            550,
                            "5.6.3 upstream does not support 8BITMIME",
                        ));
                    }
                    "BINARYMIME" if ext.has(EXT_BINARY_MIME) && chunking => {
                        needs.binary = true;
                        true
                    }
                    "BINARYMIME" => {
                        return Err(Response::new(
                            550,
                            "5.6.3 upstream does not support BINARYMIME",
                        ));
                    }
                    // BODY=7BIT is the default; the parameter itself is only
                    // defined for peers with 8BITMIME.
                    "7BIT" => ext.has(EXT_8BIT_MIME),
                    _ => {
                        return Err(Response::new(
                            555,
                            format!("5.5.4 unsupported BODY value {value:?}"),
                        ));
                    }
                }
            }
            "SIZE" => {
                let Some(size) = p.value.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
                    return Err(Response::new(501, "5.5.4 invalid SIZE parameter"));
                };
                if !ext.has(EXT_SIZE) {
                    false
                } else if ext.size > 0 && size > ext.size as u64 {
                    return Err(Response::new(
                        552,
                        format!(
                            "5.3.4 message size {size} exceeds upstream limit {}",
                            ext.size
                        ),
                    ));
                } else {
                    true
                }
            }
            // DSN requests: a relay to a non-DSN server drops them (RFC 3461 4).
            "RET" | "ENVID" => ext.has(EXT_DSN),
            // We are not authenticated upstream; RFC 4954 5 lets us omit it.
            "AUTH" => false,
            // RFC 8689: must never be dropped.
            "REQUIRETLS" if tls && ext.has(EXT_REQUIRE_TLS) => true,
            "REQUIRETLS" => {
                return Err(Response::new(
                    550,
                    "5.7.30 REQUIRETLS not supported by upstream",
                ));
            }
            kw if ext.has_keyword(kw) => true,
            kw => {
                return Err(Response::new(
                    555,
                    format!("5.5.4 MAIL parameter {kw} not supported by upstream"),
                ));
            }
        };
        if keep {
            push_param(&mut cmd, p);
        }
    }
    Ok((cmd, needs))
}

/// The RCPT command line (without CRLF), or this recipient's own failure.
pub(crate) fn rcpt_command(mb: &Mailbox, ext: &Extensions) -> Result<String, Response> {
    check_syntax(mb)?;
    if !mb.address.is_ascii() && !ext.has(EXT_SMTP_UTF8) {
        return Err(no_smtputf8());
    }
    let mut cmd = format!("RCPT TO:<{}>", mb.address);
    for p in &mb.params {
        let keep = match p.keyword.to_ascii_uppercase().as_str() {
            "NOTIFY" | "ORCPT" => ext.has(EXT_DSN),
            kw if ext.has_keyword(kw) => true,
            kw => {
                return Err(Response::new(
                    555,
                    format!("5.5.4 RCPT parameter {kw} not supported by upstream"),
                ));
            }
        };
        if keep {
            push_param(&mut cmd, p);
        }
    }
    Ok(cmd)
}

/// Whether the body goes with BDAT.
pub(crate) fn use_bdat(ext: &Extensions, use_chunking: bool) -> bool {
    use_chunking && ext.has(EXT_CHUNKING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Reply;

    fn ext(lines: &[&str]) -> Extensions {
        let mut raw = Vec::new();
        let all: Vec<&str> = std::iter::once("mx.test")
            .chain(lines.iter().copied())
            .collect();
        for (i, l) in all.iter().enumerate() {
            let sep = if i + 1 == all.len() { ' ' } else { '-' };
            raw.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
        Extensions::from_ehlo(&Reply { code: 250, raw })
    }

    fn mail(mb: Mailbox, e: &Extensions) -> Result<String, Response> {
        mail_command(&mb, e, false, false).map(|(c, _)| c)
    }

    #[test]
    fn passes_supported_params() {
        let e = ext(&["SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN"]);
        let mb = Mailbox::new("a@b")
            .with_param("SIZE", Some("10"))
            .with_param("BODY", Some("8BITMIME"))
            .with_param("SMTPUTF8", None)
            .with_param("RET", Some("HDRS"))
            .with_param("AUTH", Some("<>"));
        assert_eq!(
            mail(mb, &e).unwrap(),
            "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS"
        );
    }

    #[test]
    fn drops_wishes_the_peer_cannot_honour() {
        let e = ext(&["PIPELINING"]);
        let mb = Mailbox::new("")
            .with_param("SIZE", Some("10"))
            .with_param("ENVID", Some("x"))
            .with_param("BODY", Some("7BIT"));
        assert_eq!(mail(mb, &e).unwrap(), "MAIL FROM:<>");
        let r = Mailbox::new("c@d")
            .with_param("NOTIFY", Some("NEVER"))
            .with_param("ORCPT", Some("rfc822;c@d"));
        assert_eq!(rcpt_command(&r, &e).unwrap(), "RCPT TO:<c@d>");
    }

    #[test]
    fn refuses_to_downgrade() {
        let e = ext(&["SIZE 100"]);
        let err = mail(Mailbox::new("a@b").with_param("SMTPUTF8", None), &e).unwrap_err();
        assert_eq!(
            err,
            Response::new(550, "5.6.7 upstream does not support SMTPUTF8")
        );
        let err = mail(Mailbox::new("ü@b"), &e).unwrap_err();
        assert_eq!(err.code, 550);
        let err = mail(Mailbox::new("a@b").with_param("BODY", Some("8BITMIME")), &e).unwrap_err();
        assert_eq!(
            err,
            Response::new(550, "5.6.3 upstream does not support 8BITMIME")
        );
        let err = mail(
            Mailbox::new("a@b").with_param("BODY", Some("BINARYMIME")),
            &ext(&["BINARYMIME"]),
        )
        .unwrap_err();
        assert_eq!(err.code, 550, "BINARYMIME needs CHUNKING");
        let err = mail(Mailbox::new("a@b").with_param("REQUIRETLS", None), &e).unwrap_err();
        assert_eq!(err.code, 550);
        let err = mail(Mailbox::new("a@b").with_param("SIZE", Some("101")), &e).unwrap_err();
        assert_eq!(
            err,
            Response::new(552, "5.3.4 message size 101 exceeds upstream limit 100")
        );
        assert!(mail(Mailbox::new("a@b").with_param("SIZE", Some("100")), &e).is_ok());
        let err = rcpt_command(&Mailbox::new("ü@b"), &e).unwrap_err();
        assert_eq!(err.code, 550);
    }

    #[test]
    fn unknown_params_need_the_extension() {
        let mb = Mailbox::new("a@b").with_param("MT-PRIORITY", Some("3"));
        let err = mail(mb.clone(), &ext(&[])).unwrap_err();
        assert_eq!(
            err,
            Response::new(
                555,
                "5.5.4 MAIL parameter MT-PRIORITY not supported by upstream"
            )
        );
        assert_eq!(
            mail(mb, &ext(&["MT-PRIORITY MIXER"])).unwrap(),
            "MAIL FROM:<a@b> MT-PRIORITY=3"
        );
    }

    #[test]
    fn binarymime_needs_bdat() {
        let e = ext(&["BINARYMIME", "CHUNKING"]);
        let mb = Mailbox::new("a@b").with_param("BODY", Some("BINARYMIME"));
        let (cmd, needs) = mail_command(&mb, &e, false, true).unwrap();
        assert_eq!(cmd, "MAIL FROM:<a@b> BODY=BINARYMIME");
        assert!(needs.binary);
        assert!(mail_command(&mb, &e, false, false).is_err());
    }

    #[test]
    fn rejects_line_breaks() {
        let err = mail(Mailbox::new("a@b>\r\nRCPT TO:<x@y"), &ext(&[])).unwrap_err();
        assert_eq!(err.code, 501);
    }
}
