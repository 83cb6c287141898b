//! Turning an upstream SMTP reply into the `Status:` and `Diagnostic-Code:`
//! values of a delivery status notification.
//!
//! Replies arrive in two shapes and both are accepted:
//! - wire form, every line prefixed with the code: `550-5.1.1 a\r\n550 5.1.1 b`;
//! - `code text` with the continuation lines unprefixed, which is what
//!   `format!("{} {}", r.code, r.text)` gives for a `koukan_chain::Response`
//!   whose text holds several `\n`-separated lines: `550 5.1.1 a\n5.1.1 b`.

use crate::Action;

/// A reply split into its parts. `text` pieces are already stripped of the
/// per-line code and the repeated enhanced code.
struct Reply<'a> {
    code: Option<&'a str>,
    enhanced: Option<&'a str>,
    text: Vec<&'a str>,
}

/// `class.subject.detail` (RFC 3463 §2: 1*3 digits for subject and detail);
/// `None` unless well formed. Returns the class digit.
fn status_class(s: &str) -> Option<u8> {
    let mut parts = s.split('.');
    let class = parts.next()?;
    let digits = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
    let class = match class {
        "2" => b'2',
        "4" => b'4',
        "5" => b'5',
        _ => return None,
    };
    let subject = parts.next()?;
    let detail = parts.next()?;
    (digits(subject) && digits(detail) && parts.next().is_none()).then_some(class)
}

/// A status usable in a failure/delay report: well formed and of class 4
/// or 5 (a 2.x.x "success" status would contradict `Action: failed`).
pub(crate) fn is_failure_status(s: &str) -> bool {
    matches!(status_class(s), Some(b'4' | b'5'))
}

/// Splits a leading three-digit reply code (`NNN`, `NNN-`, `NNN `) off a line.
fn split_code(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    match b.get(3) {
        None => Some((&line[..3], "")),
        Some(b' ' | b'-') => Some((&line[..3], &line[4..])),
        Some(_) => None,
    }
}

/// Splits a leading word off `s` if it equals `word`.
fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(word)?;
    if rest.is_empty() || rest.starts_with([' ', '\t']) {
        Some(rest.trim_start())
    } else {
        None
    }
}

fn parse(reply: &str) -> Reply<'_> {
    // `lines()` accepts both CRLF and bare LF.
    let mut lines = reply.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return Reply {
            code: None,
            enhanced: None,
            text: Vec::new(),
        };
    };
    let (code, rest) = match split_code(first) {
        Some((code, rest)) => (Some(code), rest.trim_start()),
        None => (None, first),
    };
    // The enhanced code only counts when its class agrees with the reply
    // code (RFC 3463 §2 / RFC 2034 §4); `550 4.2.2` is contradictory and we
    // then fall back to the reply class instead of trusting either half.
    let word = rest.split_whitespace().next().unwrap_or("");
    let enhanced = match (code, status_class(word)) {
        (Some(code), Some(class)) if code.as_bytes()[0] == class => Some(word),
        _ => None,
    };
    let rest = match enhanced {
        Some(e) => strip_word(rest, e).unwrap_or(rest),
        None => rest,
    };
    let mut text = vec![rest];
    for line in lines {
        let mut line = line;
        if let Some(code) = code
            && let Some((c, r)) = split_code(line)
            && c == code
        {
            line = r.trim_start();
        }
        if let Some(e) = enhanced {
            line = strip_word(line, e).unwrap_or(line);
        }
        text.push(line);
    }
    text.retain(|t| !t.is_empty());
    Reply {
        code,
        enhanced,
        text,
    }
}

/// The RFC 3463 status for a recipient whose delivery ended with `reply`:
/// the reply's own enhanced code when it has one matching its class, else
/// `4.0.0` / `5.0.0` by the reply code's class. A reply with neither (no
/// parseable code, or a 2xx/3xx one) gets the generic code for `action`.
pub fn status_from_reply(reply: &str, action: Action) -> String {
    let parsed = parse(reply);
    if let Some(e) = parsed.enhanced
        && is_failure_status(e)
    {
        return e.to_owned();
    }
    match parsed.code.map(|c| c.as_bytes()[0]) {
        Some(b'4') => "4.0.0".to_owned(),
        Some(b'5') => "5.0.0".to_owned(),
        _ => action.generic_status().to_owned(),
    }
}

/// The `Diagnostic-Code: smtp;` value for `reply`: one line, `code
/// [enhanced] text`, with a multi-line reply's lines joined by single
/// spaces and their repeated code and enhanced code dropped (so
/// `550-5.1.1 a` / `550 5.1.1 b` becomes `550 5.1.1 a b`). Control
/// characters become spaces, since the value is a header-style field.
pub fn diagnostic_from_reply(reply: &str) -> String {
    let parsed = parse(reply);
    let mut words: Vec<&str> = Vec::with_capacity(parsed.text.len() + 2);
    words.extend(parsed.code);
    words.extend(parsed.enhanced);
    words.extend(parsed.text);
    crate::clean(&words.join(" "))
}
