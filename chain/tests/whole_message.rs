//! Whole-message filters: the body is held back, spooled once, read whole
//! by the filter, then streamed inward in bounded chunks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use koukan_chain::body::{
    HeaderBlock, HeaderEnd, Message, MessageFilter, REPLAY_CHUNK, SpoolOptions, Verdict,
    WholeMessageLayer,
};
use koukan_chain::{
    BoxTxService, Ingress, Mailbox, Response, SessionInfo, Terminal, TerminalService, TxContext,
    TxUpdate, UpdateResponse, boxed, call_caught,
};
use tower::{Layer, Service};

fn ctx() -> Arc<TxContext> {
    let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
    Arc::new(TxContext::new(
        "tx",
        Ingress::Smtp(Arc::new(SessionInfo {
            listener: "in".into(),
            peer: addr,
            local: addr,
            ehlo_host: None,
            esmtp: true,
            tls: None,
            auth_user: None,
        })),
        "s",
        "t",
    ))
}

/// What the terminal received.
#[derive(Default)]
struct Received {
    envelope: usize,
    chunks: Vec<(usize, bool)>,
    data: Vec<u8>,
}

/// Accepts everything; answers the last chunk with 250, or `early` to the
/// first chunk when set.
struct Sink {
    got: Arc<Mutex<Received>>,
    early: Option<Response>,
}

impl Terminal for Sink {
    fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
        Box::pin(async move {
            let mut got = self.got.lock().unwrap();
            if u.mail_from.is_some() || !u.rcpt_to.is_empty() {
                got.envelope += 1;
            }
            let mut r = UpdateResponse::fill(&u, &Response::new(250, "ok"));
            if let Some(b) = &u.body {
                got.chunks.push((b.data.len(), b.last));
                got.data.extend_from_slice(&b.data);
                if self.early.is_some() {
                    r.data = self.early.clone();
                }
            }
            r
        })
    }
}

/// Records what it saw of the message, and the spools alive then.
#[derive(Default)]
struct Seen {
    whole: Vec<u8>,
    header: Option<HeaderBlock>,
    live_spools: usize,
    checks: usize,
}

struct Inspect {
    seen: Arc<Mutex<Seen>>,
    verdict: Verdict,
}

impl MessageFilter for Inspect {
    fn check<'a>(&'a self, ctx: &'a TxContext, message: &'a Message) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let header = message.header_block(1024).await.unwrap();
            // Odd-sized pieces: the reader must not care.
            let mut reader = message.reader(0, 7919);
            let mut whole = Vec::new();
            while let Some(piece) = reader.next().await.unwrap() {
                assert!(piece.len() <= 7919);
                whole.extend_from_slice(&piece);
            }
            assert_eq!(whole.len() as u64, message.len());
            let mut seen = self.seen.lock().unwrap();
            seen.whole = whole;
            seen.header = Some(header);
            seen.live_spools = ctx.body.live();
            seen.checks += 1;
            self.verdict.clone()
        })
    }
}

fn inspect(
    ctx: &Arc<TxContext>,
    verdict: Verdict,
    inner: BoxTxService,
) -> (Arc<Mutex<Seen>>, BoxTxService) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let layer = WholeMessageLayer::new(
        Arc::new(Inspect {
            seen: seen.clone(),
            verdict,
        }),
        ctx.clone(),
        Arc::new(SpoolOptions::default()),
    );
    (seen, boxed(layer.layer(inner)))
}

fn sink(early: Option<Response>) -> (Arc<Mutex<Received>>, BoxTxService) {
    let got = Arc::new(Mutex::new(Received::default()));
    (
        got.clone(),
        boxed(TerminalService::new(Sink { got, early })),
    )
}

/// Prepends `X-Changed: 1\r\n` to the body chunk whose index is `at`.
struct Rewrite {
    inner: BoxTxService,
    at: usize,
    seen: usize,
}

impl Service<TxUpdate> for Rewrite {
    type Response = UpdateResponse;
    type Error = Infallible;
    type Future = <BoxTxService as Service<TxUpdate>>::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut u: TxUpdate) -> Self::Future {
        if let Some(b) = u.body.as_mut() {
            if self.seen == self.at {
                let mut d = BytesMut::from(&b"X-Changed: 1\r\n"[..]);
                d.extend_from_slice(&b.data);
                b.data = d.freeze();
            }
            self.seen += 1;
        }
        self.inner.call(u)
    }
}

fn message(len: usize) -> Vec<u8> {
    let head = b"Subject: test\r\n\r\n";
    let mut m: Vec<u8> = head.iter().copied().take(len).collect();
    let mut i = 0u32;
    while m.len() < len {
        m.push(b'a' + (i % 26) as u8);
        i += 1;
    }
    m
}

/// Sends MAIL+RCPT, then `msg` in pieces of `piece` octets; returns each
/// body update's data reply.
async fn send(svc: &mut BoxTxService, msg: &[u8], piece: usize) -> Vec<Option<Response>> {
    let mut env = TxUpdate::mail(Mailbox::new("a@example.com"));
    env.rcpt_to = vec![koukan_chain::Recipient::new(Mailbox::new("b@example.com"))];
    let r = call_caught(svc, env).await.unwrap();
    assert_eq!(r.mail.unwrap().code, 250);
    assert_eq!(r.rcpts.len(), 1);
    let pieces: Vec<&[u8]> = if msg.is_empty() {
        vec![&[][..]]
    } else {
        msg.chunks(piece).collect()
    };
    let n = pieces.len();
    let mut replies = Vec::new();
    for (i, p) in pieces.into_iter().enumerate() {
        let r = call_caught(svc, TxUpdate::body(Bytes::copy_from_slice(p), i + 1 == n))
            .await
            .unwrap();
        replies.push(r.data);
    }
    replies
}

/// Empty, one octet, exactly one chunk, one chunk and one octet, many
/// chunks: the inner side gets the same message, in chunks of at most
/// REPLAY_CHUNK with only the last marked last, and nothing before the
/// client's last chunk.
#[tokio::test]
async fn boundaries() {
    for len in [0, 1, REPLAY_CHUNK, REPLAY_CHUNK + 1, 5 * REPLAY_CHUNK + 17] {
        for piece in [1000, REPLAY_CHUNK, 3 * REPLAY_CHUNK] {
            let msg = message(len);
            let ctx = ctx();
            let (got, inner) = sink(None);
            let (seen, mut svc) = inspect(&ctx, Verdict::Accept, inner);
            let replies = send(&mut svc, &msg, piece).await;
            let case = format!("len {len}, pieces of {piece}");
            let (last, rest) = replies.split_last().unwrap();
            assert!(rest.iter().all(Option::is_none), "{case}: {replies:?}");
            assert_eq!(last.as_ref().map(|r| r.code), Some(250), "{case}");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.checks, 1, "{case}");
            assert!(seen.whole == msg, "{case}: the filter read the message");
            let got = got.lock().unwrap();
            assert_eq!(got.envelope, 1, "{case}");
            assert!(got.data == msg, "{case}: the inner side got the message");
            assert!(
                got.chunks.iter().all(|(n, _)| *n <= REPLAY_CHUNK),
                "{case}: {:?}",
                got.chunks
            );
            let lasts: Vec<usize> = (0..got.chunks.len()).filter(|i| got.chunks[*i].1).collect();
            assert_eq!(lasts, [got.chunks.len() - 1], "{case}: one last chunk");
            assert_eq!(
                got.chunks.len(),
                len.div_ceil(REPLAY_CHUNK).max(1),
                "{case}"
            );
        }
    }
}

#[tokio::test]
async fn header_block_forms() {
    async fn header(msg: &[u8], limit: usize) -> HeaderBlock {
        let ctx = ctx();
        let seen = Arc::new(Mutex::new(None));
        struct H(Arc<Mutex<Option<HeaderBlock>>>, usize);
        impl MessageFilter for H {
            fn check<'a>(&'a self, _: &'a TxContext, m: &'a Message) -> BoxFuture<'a, Verdict> {
                Box::pin(async move {
                    *self.0.lock().unwrap() = Some(m.header_block(self.1).await.unwrap());
                    Verdict::Accept
                })
            }
        }
        let (_, inner) = sink(None);
        let mut svc = boxed(
            WholeMessageLayer::new(
                Arc::new(H(seen.clone(), limit)),
                ctx,
                Arc::new(SpoolOptions::default()),
            )
            .layer(inner),
        );
        send(&mut svc, msg, 3).await;
        seen.lock().unwrap().take().unwrap()
    }
    let h = header(b"A: 1\r\nB: 2\r\n\r\nbody\r\n", 100).await;
    assert_eq!(&h.bytes[..], b"A: 1\r\nB: 2\r\n");
    assert_eq!(h.end, HeaderEnd::Blank { body_offset: 14 });
    let h = header(b"\r\nbody only\r\n", 100).await;
    assert!(h.bytes.is_empty());
    assert_eq!(h.body_offset(), Some(2));
    let h = header(b"A: 1\r\nB: 2\r\n", 100).await;
    assert_eq!(h.end, HeaderEnd::EndOfMessage);
    assert_eq!(&h.bytes[..], b"A: 1\r\nB: 2\r\n");
    // The blank line right at the limit still counts; one octet less and
    // the block is too long.
    let h = header(b"A: 1\r\nB: 2\r\n\r\nx", 12).await;
    assert_eq!(h.end, HeaderEnd::Blank { body_offset: 14 });
    let h = header(b"A: 1\r\nB: 2\r\n\r\nx", 11).await;
    assert_eq!(h.end, HeaderEnd::TooLong);
    assert_eq!(&h.bytes[..], b"A: 1\r\nB: 2\r");
    let h = header(b"", 100).await;
    assert_eq!(h.end, HeaderEnd::EndOfMessage);
}

/// Two whole-message filters in a row: one spool, both read it, the
/// terminal gets the message once.
#[tokio::test]
async fn two_filters_spool_once() {
    let msg = message(3 * REPLAY_CHUNK + 5);
    let ctx = ctx();
    let (got, inner) = sink(None);
    let (seen_inner, svc) = inspect(&ctx, Verdict::Accept, inner);
    let (seen_outer, mut svc) = inspect(&ctx, Verdict::Accept, svc);
    let replies = send(&mut svc, &msg, 1000).await;
    assert_eq!(replies.last().unwrap().as_ref().unwrap().code, 250);
    for seen in [&seen_outer, &seen_inner] {
        let seen = seen.lock().unwrap();
        assert!(seen.whole == msg);
        assert_eq!(seen.live_spools, 1, "one spool for both filters");
    }
    assert!(got.lock().unwrap().data == msg);
}

/// A filter between them that changes the body: the inner one spools its
/// own copy and reads the message as changed, whichever chunk changed
/// (the first, or a later one after it had followed the outer spool).
#[tokio::test]
async fn a_changed_body_is_spooled_again() {
    for at in [0, 2] {
        let msg = message(3 * REPLAY_CHUNK + 5);
        let ctx = ctx();
        let (got, inner) = sink(None);
        let (seen_inner, svc) = inspect(&ctx, Verdict::Accept, inner);
        let svc = boxed(Rewrite {
            inner: svc,
            at,
            seen: 0,
        });
        let (seen_outer, mut svc) = inspect(&ctx, Verdict::Accept, svc);
        let replies = send(&mut svc, &msg, 1000).await;
        assert_eq!(replies.last().unwrap().as_ref().unwrap().code, 250);
        let mut changed = msg.clone();
        let pos = at * REPLAY_CHUNK;
        changed.splice(pos..pos, b"X-Changed: 1\r\n".iter().copied());
        assert!(seen_outer.lock().unwrap().whole == msg);
        let inner_seen = seen_inner.lock().unwrap();
        assert!(inner_seen.whole == changed, "at {at}");
        assert_eq!(inner_seen.live_spools, 2, "at {at}");
        assert!(got.lock().unwrap().data == changed, "at {at}");
    }
}

#[tokio::test]
async fn a_rejection_sends_no_body_inward() {
    let ctx = ctx();
    let (got, inner) = sink(None);
    let no = Response::new(550, "5.6.0 malformed message");
    let (_, mut svc) = inspect(&ctx, Verdict::Reject(no.clone()), inner);
    let replies = send(&mut svc, &message(2 * REPLAY_CHUNK), 1000).await;
    assert_eq!(replies.last().unwrap().as_ref(), Some(&no));
    {
        let got = got.lock().unwrap();
        assert_eq!(got.envelope, 1, "the envelope went inward");
        assert!(got.chunks.is_empty(), "no body went inward");
    }
    // A chunk after the answer gets the same answer.
    let again = call_caught(&mut svc, TxUpdate::body("x", true))
        .await
        .unwrap();
    assert_eq!(again.data, Some(no));
}

#[tokio::test]
async fn an_early_inner_reply_ends_the_replay() {
    let ctx = ctx();
    let busy = Response::new(452, "4.3.1 upstream full");
    let (got, inner) = sink(Some(busy.clone()));
    let (_, mut svc) = inspect(&ctx, Verdict::Accept, inner);
    let replies = send(&mut svc, &message(4 * REPLAY_CHUNK), 1000).await;
    assert_eq!(replies.last().unwrap().as_ref(), Some(&busy));
    assert_eq!(got.lock().unwrap().chunks.len(), 1, "stopped at the first");
}

#[tokio::test]
async fn spool_directory_is_used() {
    let ctx = ctx();
    let (got, inner) = sink(None);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let layer = WholeMessageLayer::new(
        Arc::new(Inspect {
            seen: seen.clone(),
            verdict: Verdict::Accept,
        }),
        ctx.clone(),
        Arc::new(SpoolOptions {
            dir: Some("/nonexistent/koukan-spool".into()),
        }),
    );
    let mut svc = boxed(layer.layer(inner));
    let replies = send(&mut svc, b"Subject: x\r\n\r\nhi\r\n", 5).await;
    // The first chunk fails to spool: an early temporary failure.
    assert_eq!(replies[0].as_ref().map(|r| r.code), Some(451));
    assert_eq!(seen.lock().unwrap().checks, 0);
    assert!(got.lock().unwrap().chunks.is_empty());
    // A directory that exists works.
    let dir = tempfile::tempdir().unwrap();
    let (got, inner) = sink(None);
    let layer = WholeMessageLayer::new(
        Arc::new(Inspect {
            seen,
            verdict: Verdict::Accept,
        }),
        ctx,
        Arc::new(SpoolOptions {
            dir: Some(dir.path().to_owned()),
        }),
    );
    let mut svc = boxed(layer.layer(inner));
    let replies = send(&mut svc, b"Subject: x\r\n\r\nhi\r\n", 5).await;
    assert_eq!(replies.last().unwrap().as_ref().map(|r| r.code), Some(250));
    assert_eq!(&got.lock().unwrap().data[..], b"Subject: x\r\n\r\nhi\r\n");
}
