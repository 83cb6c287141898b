//! Line length control. RFC 5322 §2.1.1 caps lines at 998 octets and asks
//! for 78; an upstream's reply text is outside our control, so every line we
//! write from it goes through here.

/// Preferred line length (RFC 5322 §2.1.1 "SHOULD").
pub(crate) const PREFERRED: usize = 78;

/// Words longer than this are cut so that no line can reach the hard
/// 998-octet limit, whatever the input.
const MAX_WORD: usize = 900;

/// Cuts `word` into pieces of at most [`MAX_WORD`] bytes on char
/// boundaries.
fn pieces(word: &str) -> impl Iterator<Item = &str> {
    let mut rest = word;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(MAX_WORD);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// Breaks `text` (one logical line, words separated by single spaces) into
/// lines of at most `width` bytes where the words allow. The first line
/// starts with `first`, the others with `cont`.
///
/// With `first = "Name: "` and `cont = " "` this is RFC 5322 folding: the
/// continuation's leading space stands in for the separator it replaced, so
/// unfolding (deleting the CRLFs) restores `text` exactly. The one
/// exception is a word longer than [`MAX_WORD`], which can't be folded
/// legally and is cut, gaining a space when unfolded; no SMTP reply line
/// (512 octets, RFC 5321 §4.5.3.1.5) is that long.
pub(crate) fn wrap(text: &str, first: &str, cont: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    // Whether `line` holds a word yet: never break before the first one,
    // or we'd emit a line with nothing but the prefix.
    let mut has_word = false;
    for (i, word) in text.split(' ').enumerate() {
        for (j, piece) in pieces(word).enumerate() {
            let sep = usize::from(i > 0 || j > 0);
            if has_word && line.len() + sep + piece.len() > width {
                lines.push(std::mem::replace(&mut line, cont.to_owned()));
            } else if sep == 1 {
                line.push(' ');
            }
            line.push_str(piece);
            has_word = true;
        }
        if word.is_empty() && i > 0 {
            // Consecutive spaces: keep them, never break on an empty word.
            line.push(' ');
        }
    }
    lines.push(line);
    lines
}

/// Appends a header-style field `name: value`, folded, CRLF-terminated.
pub(crate) fn push_field(out: &mut String, name: &str, value: &str) {
    for line in wrap(value, &format!("{name}: "), " ", PREFERRED) {
        out.push_str(&line);
        out.push_str("\r\n");
    }
}
