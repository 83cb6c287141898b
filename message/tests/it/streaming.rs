//! Rendering a 50 MB blob: one chunk read at a time, bounded writes, and
//! the base64 decodes back to the blob.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use koukan_message::{BlobSource, CHUNK, render};
use serde_json::json;
use tokio::io::AsyncWrite;

use crate::common::{opts, spec};

const SIZE: u64 = 50 * 1024 * 1024 + 17;

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Generates the blob on demand and counts the bytes handed out that are
/// still alive (each chunk's owner decrements on drop).
#[derive(Default)]
struct Generated {
    outstanding: Arc<AtomicUsize>,
    peak_outstanding: AtomicUsize,
    max_request: AtomicUsize,
    reads: AtomicUsize,
}

struct Counted {
    data: Vec<u8>,
    outstanding: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.outstanding
            .fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

impl BlobSource for Generated {
    fn len<'a>(&'a self, _: &'a str) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async { Ok(SIZE) })
    }
    fn read<'a>(&'a self, _: &'a str, offset: u64, max: usize) -> BoxFuture<'a, io::Result<Bytes>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.max_request.fetch_max(max, Ordering::SeqCst);
            // Hand out a little less than asked now and then: the encoder
            // must keep its lines consistent across uneven chunks.
            let n = if offset.is_multiple_of(3) {
                max.saturating_sub(5).max(1)
            } else {
                max
            };
            let n = n.min((SIZE - offset) as usize);
            let data: Vec<u8> = (offset..offset + n as u64).map(byte_at).collect();
            let now = self.outstanding.fetch_add(n, Ordering::SeqCst) + n;
            self.peak_outstanding.fetch_max(now, Ordering::SeqCst);
            Ok(Bytes::from_owner(Counted {
                data,
                outstanding: self.outstanding.clone(),
            }))
        })
    }
}

/// Checks the output as it streams by, keeping only the current line:
/// line lengths, and the base64 body of the attachment decoded and
/// compared with the generated blob.
#[derive(Default)]
struct Checker {
    line: Vec<u8>,
    lines: usize,
    max_write: usize,
    total: u64,
    state: State,
    decoded: u64,
    mismatch: Option<u64>,
    longest_b64: usize,
}

#[derive(Default, PartialEq, Debug)]
enum State {
    #[default]
    Before,
    AttachmentHeaders,
    Base64,
    After,
}

impl Checker {
    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.line);
        assert!(
            line.len() <= 998,
            "line {} has {} octets",
            self.lines,
            line.len()
        );
        self.lines += 1;
        match self.state {
            State::Before if line.starts_with(b"Content-Type: application/octet-stream") => {
                self.state = State::AttachmentHeaders
            }
            State::AttachmentHeaders if line.is_empty() => self.state = State::Base64,
            State::Base64 if line.starts_with(b"--") => self.state = State::After,
            State::Base64 => {
                self.longest_b64 = self.longest_b64.max(line.len());
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&line)
                    .expect("valid base64 line");
                for b in bytes {
                    if self.mismatch.is_none() && b != byte_at(self.decoded) {
                        self.mismatch = Some(self.decoded);
                    }
                    self.decoded += 1;
                }
            }
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }
}

impl AsyncWrite for Checker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.max_write = self.max_write.max(buf.len());
        self.total += buf.len() as u64;
        for &b in buf {
            if b == b'\n' {
                assert_eq!(self.line.pop(), Some(b'\r'), "LF without CR");
                self.line_done();
            } else {
                self.line.push(b);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn fifty_megabytes_stream_through_in_chunks() {
    let s = spec(json!({
        "headers": [["subject", "big"]],
        "text_body": [{"content_type": "text/plain", "content": {"inline": "see attachment\r\n"}}],
        "file_attachments": [{"content_type": "application/octet-stream", "filename": "big.bin",
                              "content": {"create_id": "big"}}]
    }));
    let blobs = Generated::default();
    let mut out = Checker::default();
    let r = render(&s, &blobs, &opts(), &mut out).await.unwrap();

    assert_eq!(r.length, out.total);
    assert!(out.line.is_empty(), "output ends with CRLF");
    assert_eq!(out.state, State::After);
    assert_eq!(out.mismatch, None, "decoded content differs");
    assert_eq!(out.decoded, SIZE);
    assert_eq!(out.longest_b64, 76);

    // One chunk at a time: never more asked for, never more alive.
    assert_eq!(blobs.max_request.load(Ordering::SeqCst), CHUNK);
    assert!(blobs.peak_outstanding.load(Ordering::SeqCst) <= CHUNK);
    assert_eq!(blobs.outstanding.load(Ordering::SeqCst), 0);
    assert!(blobs.reads.load(Ordering::SeqCst) as u64 >= SIZE / CHUNK as u64);
    // Bounded writes: a chunk's base64 and no more.
    assert!(
        out.max_write < 128 * 1024,
        "write of {} bytes",
        out.max_write
    );
    const { assert!(CHUNK < 1024 * 1024) };
}

#[tokio::test]
async fn text_blobs_are_read_twice_in_chunks() {
    // A text blob is scanned (UTF-8, encoding choice) then written.
    struct Text(AtomicUsize, AtomicUsize);
    const N: u64 = 3 * CHUNK as u64 + 100;
    fn text_at(i: u64) -> u8 {
        if i % 80 == 78 {
            b'\r'
        } else if i % 80 == 79 {
            b'\n'
        } else {
            b'a' + (i % 26) as u8
        }
    }
    impl BlobSource for Text {
        fn len<'a>(&'a self, _: &'a str) -> BoxFuture<'a, io::Result<u64>> {
            Box::pin(async { Ok(N) })
        }
        fn read<'a>(
            &'a self,
            _: &'a str,
            offset: u64,
            max: usize,
        ) -> BoxFuture<'a, io::Result<Bytes>> {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
                self.1.fetch_max(max, Ordering::SeqCst);
                let end = (offset + max as u64).min(N);
                Ok((offset..end).map(text_at).collect::<Vec<u8>>().into())
            })
        }
    }
    let s = spec(json!({"headers": [["subject", "t"]],
        "text_body": [{"content_type": "text/plain", "content": {"create_id": "t"}}]}));
    let blobs = Text(AtomicUsize::new(0), AtomicUsize::new(0));
    let mut out = Vec::new();
    render(&s, &blobs, &opts(), &mut out).await.unwrap();
    assert_eq!(blobs.0.load(Ordering::SeqCst), 8);
    assert_eq!(blobs.1.load(Ordering::SeqCst), CHUNK);
    let v = crate::common::view(&out);
    assert_eq!(v.cte.as_deref(), Some("quoted-printable")); // single part, no final CRLF
    let want: Vec<u8> = (0..N).map(text_at).collect();
    assert_eq!(v.content.as_deref(), Some(&want[..]));
}
