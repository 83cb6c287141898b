//! Small text helpers shared by the spec reader and the parser: the string
//! forms of typed headers (parsed with mail-parser's field parsers) and
//! the address / message-id syntax checks.

use mail_parser::parsers::MessageStream;
use mail_parser::{DateTime, HeaderValue as MpValue};

use crate::spec::{Address, Date};

/// Parses a header field body as an RFC 5322 address list (groups are
/// flattened). `None` when nothing address-like is in it.
pub(crate) fn parse_address_list(s: &str) -> Option<Vec<Address>> {
    let raw = format!("{s}\r\n");
    match MessageStream::new(raw.as_bytes()).parse_address() {
        MpValue::Address(a) => {
            let list = flatten_addresses(&a);
            if list.iter().any(|a| a.address.is_empty()) || list.is_empty() {
                None
            } else {
                Some(list)
            }
        }
        _ => None,
    }
}

/// The mailboxes of a parsed address header, groups flattened; a mailbox
/// without an address gets `""` (the parser reports what it saw).
pub(crate) fn flatten_addresses(a: &mail_parser::Address<'_>) -> Vec<Address> {
    let one = |addr: &mail_parser::Addr<'_>| Address {
        display_name: addr
            .name
            .as_deref()
            .map(str::to_owned)
            .filter(|n| !n.is_empty()),
        address: addr.address.as_deref().unwrap_or_default().to_owned(),
    };
    match a {
        mail_parser::Address::List(list) => list.iter().map(one).collect(),
        mail_parser::Address::Group(groups) => groups
            .iter()
            .flat_map(|g| g.addresses.iter().map(one))
            .collect(),
    }
}

/// Parses an RFC 5322 date.
pub(crate) fn parse_date(s: &str) -> Option<Date> {
    let raw = format!("{s}\r\n");
    match MessageStream::new(raw.as_bytes()).parse_date() {
        MpValue::DateTime(dt) if dt.is_valid() => Some(date_of(&dt)),
        _ => None,
    }
}

pub(crate) fn date_of(dt: &DateTime) -> Date {
    let offset = i32::from(dt.tz_hour) * 3600 + i32::from(dt.tz_minute) * 60;
    Date {
        unix_secs: dt.to_timestamp(),
        tz_offset: if dt.tz_before_gmt { -offset } else { offset },
    }
}

/// Ids out of a string: `abc@xyz` (the parser's message-id form) or
/// `<a@x> <b@y>` (in-reply-to / references as the parser emits them).
pub(crate) fn split_ids(s: &str) -> Vec<String> {
    s.replace(['<', '>'], " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// RFC 5322 `atext`, extended with non-ASCII (RFC 6532).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Checks an addr-spec (`local@domain`, RFC 5322 §3.4.1 with RFC 6532
/// UTF-8): dot-atom or quoted-string local part of at most 64 octets
/// (RFC 5321), a host name or an address literal as domain.
pub(crate) fn check_addr_spec(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("empty address".into());
    }
    if addr.len() > 254 {
        return Err("address longer than 254 bytes".into());
    }
    if addr.chars().any(char::is_control) {
        return Err("control character in address".into());
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("not an addr-spec: no '@'".into());
    };
    if local.len() > 64 {
        return Err("local part longer than 64 bytes".into());
    }
    let local_ok = if local.len() >= 2 && local.starts_with('"') && local.ends_with('"') {
        quoted_ok(&local[1..local.len() - 1])
    } else {
        dot_atom(local)
    };
    if !local_ok {
        return Err(format!("invalid local part {local:?}"));
    }
    let domain_ok = if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // dtext: printable ASCII except [ ] \
        !lit.is_empty()
            && lit
                .chars()
                .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
    } else {
        domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            })
    };
    if !domain_ok {
        return Err(format!("invalid domain {domain:?}"));
    }
    Ok(())
}

/// The inside of a quoted-string: qtext, non-ASCII, or quoted pairs.
fn quoted_ok(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(q) if q == ' ' || q == '\t' || q.is_ascii_graphic() || !q.is_ascii() => {}
                _ => return false,
            },
            '"' => return false,
            c if c == ' ' || c == '\t' || c.is_ascii_graphic() || !c.is_ascii() => {}
            _ => return false,
        }
    }
    true
}

/// A message id as the spec carries it (without `<>`).
pub(crate) fn check_msg_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty message id".into());
    }
    if id.len() > crate::spec::MAX_ID_LEN {
        return Err(format!(
            "message id longer than {} bytes",
            crate::spec::MAX_ID_LEN
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(format!(
            "invalid character {c:?} in message id (give it without <>)"
        ));
    }
    Ok(())
}
