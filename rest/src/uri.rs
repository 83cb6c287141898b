//! The paths of a transaction's resources, and the parse of a
//! `reuse_uri` (absolute URLs accepted: only the path counts).

/// A body or blob a `reuse_uri` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobRef {
    /// `/transactions/{tx}/body`
    Body { tx: String },
    /// `/transactions/{tx}/blob/{id}`
    Blob { tx: String, blob: String },
}

pub fn tx_path(tx: &str) -> String {
    format!("/transactions/{tx}")
}

pub fn body_path(tx: &str) -> String {
    format!("/transactions/{tx}/body")
}

/// The blob id percent-encoded: ids may hold characters a URI cannot
/// (`"`, `<`, `{`, non-ASCII, ...).
pub fn blob_path(tx: &str, blob: &str) -> String {
    format!("/transactions/{tx}/blob/{}", encode_segment(blob))
}

/// `s` as one path segment: every byte but RFC 3986's `pchar`
/// (unreserved, sub-delims, `:` and `@`) percent-encoded.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment as the API hands them out: non-empty, URL-safe.
fn segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Parses a `reuse_uri`: a path, or an absolute http(s) URL whose path is
/// one of a transaction's resources. `None` for anything else.
pub fn parse_blob_uri(uri: &str) -> Option<BlobRef> {
    let path = match uri.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => &rest[rest.find('/')?..],
        Some(_) => return None,
        None => uri,
    };
    let path = path.split(['?', '#']).next()?;
    let parts: Vec<&str> = path.strip_prefix("/transactions/")?.split('/').collect();
    match parts.as_slice() {
        [tx, "body"] if segment(tx) => Some(BlobRef::Body { tx: (*tx).into() }),
        [tx, "blob", blob] if segment(tx) && segment(blob) => Some(BlobRef::Blob {
            tx: (*tx).into(),
            blob: (*blob).into(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_are_encoded() {
        assert_eq!(blob_path("t", "inline0"), "/transactions/t/blob/inline0");
        assert_eq!(blob_path("t", "a+b@c:d"), "/transactions/t/blob/a+b@c:d");
        assert_eq!(
            blob_path("t", "x y/\"é"),
            "/transactions/t/blob/x%20y%2F%22%C3%A9"
        );
    }

    #[test]
    fn reuse_uris() {
        assert_eq!(
            parse_blob_uri("/transactions/abc/body"),
            Some(BlobRef::Body { tx: "abc".into() })
        );
        assert_eq!(
            parse_blob_uri("http://router:8000/transactions/abc/blob/inline0"),
            Some(BlobRef::Blob {
                tx: "abc".into(),
                blob: "inline0".into()
            })
        );
        for bad in [
            "/transactions",
            "/transactions/123",
            "/transactions/123/blob/",
            "/transactions//body",
            "ftp://x/transactions/a/body",
            "/transactions/a/body/x",
            "/transactions/a%2f/body",
        ] {
            assert_eq!(parse_blob_uri(bad), None, "{bad}");
        }
    }
}
